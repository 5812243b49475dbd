"""Tests for tagvision.images: formats, refusals with their codes, colour handling."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from tagvision import images
from tagvision.errors import ImageError
from tagvision.images import (
    FORMATS,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_TRAINING_BYTES,
    ImageFacts,
    open_rgb,
    sniff_format,
    thumbnail_jpeg,
    validate,
)

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SHOES = DATASETS / "clothing-small" / "train" / "shoes"

Colour = tuple[int, int, int]

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def noise_image(width: int = 256, height: int = 256) -> Image.Image:
    """Random pixels: they do not compress, so pixel data is most of any encoding."""
    pixels = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def noise_jpeg(width: int = 256, height: int = 256) -> bytes:
    return encode(noise_image(width, height), "JPEG", quality=90)


def first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def halves(width: int, height: int, left: Colour, right: Colour) -> Image.Image:
    """An RGB image whose left half is ``left`` and right half is ``right``."""
    img = Image.new("RGB", (width, height), right)
    img.paste(left, (0, 0, width // 2, height))
    return img


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, built row by row so huge sizes cost no memory."""
    row = b"\x00" * (1 + (width + 7) // 8)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif, quality=95)


def assert_close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> None:
    assert len(actual) == len(expected)
    assert all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True)), (actual, expected)


def refusal(call: Callable[[], object]) -> ImageError:
    with pytest.raises(ImageError) as info:
        call()
    return info.value


# --- accepted formats ------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("JPEG", {"quality": 90}),
        ("PNG", {}),
        ("BMP", {}),
        ("GIF", {}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_each_format_is_accepted_with_exact_facts(fmt: str, params: dict[str, Any]) -> None:
    data = encode(halves(40, 30, RED, BLUE), fmt, **params)

    facts = validate(data)

    assert facts == ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        content_type=FORMATS[fmt],
        width=40,
        height=30,
        size_bytes=len(data),
    )
    rgb = open_rgb(data)
    assert (rgb.mode, rgb.size) == ("RGB", (40, 30))
    assert_close(rgb.getpixel((5, 15)), RED, tolerance=12)
    assert_close(rgb.getpixel((35, 15)), BLUE, tolerance=12)


def test_sha256_is_hashlib_hex_digest_of_the_original_bytes() -> None:
    data = encode(Image.new("RGB", (8, 8), GREEN), "PNG")

    assert validate(data).sha256 == hashlib.sha256(data).hexdigest()
    assert validate(data + b"\0").sha256 == hashlib.sha256(data + b"\0").hexdigest()
    assert validate(data).sha256 != validate(data + b"\0").sha256


def test_facts_are_frozen() -> None:
    facts = validate(encode(Image.new("RGB", (8, 8)), "PNG"))

    with pytest.raises(dataclasses.FrozenInstanceError):
        facts.width = 1  # type: ignore[misc]


@pytest.mark.parametrize(("fmt", "params"), [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animation_gives_its_first_frame(fmt: str, params: dict[str, Any]) -> None:
    frames = [Image.new("RGB", (24, 16), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **params)
    with Image.open(io.BytesIO(data)) as check:
        assert check.n_frames == 3

    facts = validate(data)
    rgb = open_rgb(data)

    assert (facts.format, facts.width, facts.height) == (fmt, 24, 16)
    assert rgb.size == (24, 16)
    assert rgb.getpixel((12, 8)) == RED


# --- EXIF orientation ------------------------------------------------------


def test_orientation_6_swaps_sides_in_facts_and_in_open_rgb() -> None:
    # Orientation 6: the stored left column is displayed as the top row.
    data = with_orientation(halves(40, 30, RED, BLUE), 6)

    facts = validate(data)
    rgb = open_rgb(data)

    assert (facts.width, facts.height) == (30, 40)
    assert rgb.size == (30, 40)
    assert_close(rgb.getpixel((15, 5)), RED)
    assert_close(rgb.getpixel((15, 35)), BLUE)


@pytest.mark.parametrize(("orientation", "size"), [(1, (40, 30)), (3, (40, 30)), (5, (30, 40)), (8, (30, 40))])
def test_orientations_other_than_6(orientation: int, size: tuple[int, int]) -> None:
    data = with_orientation(Image.new("RGB", (40, 30), GREEN), orientation)

    facts = validate(data)

    assert (facts.width, facts.height) == size
    assert open_rgb(data).size == size


# --- colour modes ----------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "CMYK"
        assert "adobe" in check.info  # Pillow writes Adobe (inverted) CMYK

    rgb = open_rgb(data)

    assert validate(data).format == "JPEG"
    assert rgb.mode == "RGB"
    assert_close(rgb.getpixel((8, 8)), RED)


def test_palette_png_transparent_index_becomes_white() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *GREEN])
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    data = encode(img, "PNG", transparency=0)

    rgb = open_rgb(data)

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 0)) == GREEN


def test_gif_transparent_index_becomes_white() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE])
    img.putpixel((1, 0), 1)
    data = encode(img, "GIF", transparency=0)

    rgb = open_rgb(data)

    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 0)) == BLUE


def test_rgba_png_is_composited_on_white() -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(10, 20, 30, 0), (200, 100, 50, 255), (0, 0, 0, 128)])

    rgb = open_rgb(encode(img, "PNG"))

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 0)) == (200, 100, 50)
    assert_close(rgb.getpixel((2, 0)), (127, 127, 127), tolerance=1)


def test_la_png_is_composited_on_white() -> None:
    img = Image.new("LA", (2, 1))
    img.putdata([(0, 0), (50, 255)])

    rgb = open_rgb(encode(img, "PNG"))

    assert rgb.getpixel((0, 0)) == WHITE
    assert rgb.getpixel((1, 0)) == (50, 50, 50)


def test_rgb_png_with_transparent_colour_is_composited_on_white() -> None:
    img = Image.new("RGB", (2, 1), RED)
    img.putpixel((1, 0), GREEN)

    rgb = open_rgb(encode(img, "PNG", transparency=GREEN))

    assert rgb.getpixel((0, 0)) == RED
    assert rgb.getpixel((1, 0)) == WHITE


def test_16_bit_grey_png_is_scaled_not_clipped() -> None:
    img = Image.new("I;16", (4, 1))
    img.putdata([65535, 32768, 255, 0])
    data = encode(img, "PNG")
    with Image.open(io.BytesIO(data)) as check:
        assert check.mode == "I;16"

    rgb = open_rgb(data)

    assert rgb.mode == "RGB"
    assert [rgb.getpixel((x, 0)) for x in range(4)] == [(255,) * 3, (128,) * 3, (0,) * 3, (0,) * 3]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_modes_scale_by_256(mode: str) -> None:
    # PNG only decodes to I;16, so the other 16-bit modes are checked on the converters.
    img = Image.new(mode, (3, 1))
    img.putdata([65535, 32768, 511])

    rgb = images._to_rgb(images._reducible(img))

    assert [rgb.getpixel((x, 0)) for x in range(3)] == [(255,) * 3, (128,) * 3, (1,) * 3]


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_one_bit_image_becomes_black_and_white_rgb(fmt: str) -> None:
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)

    rgb = open_rgb(encode(img, fmt))

    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((1, 0)) == WHITE


def test_greyscale_jpeg_becomes_rgb() -> None:
    rgb = open_rgb(encode(Image.new("L", (8, 8), 200), "JPEG", quality=95))

    assert rgb.mode == "RGB"
    assert_close(rgb.getpixel((4, 4)), (200, 200, 200), tolerance=2)


# --- ErrorImageSize --------------------------------------------------------


def test_oversize_is_refused_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("Image.open must not be called for oversize data")

    monkeypatch.setattr(images.Image, "open", no_decoding)

    error = refusal(lambda: validate(b"\xff" * 1025, max_bytes=1024))
    assert error.code == "ErrorImageSize"
    assert "1,025" in error.message and "1,024" in error.message

    default = refusal(lambda: validate(b"\xff" * (MAX_TRAINING_BYTES + 1)))
    assert default.code == "ErrorImageSize"
    assert f"{MAX_TRAINING_BYTES:,}" in default.message


def test_size_limit_is_inclusive() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")

    assert validate(data, max_bytes=len(data)).size_bytes == len(data)
    assert refusal(lambda: validate(data, max_bytes=len(data) - 1)).code == "ErrorImageSize"


def test_prediction_limit_is_4_mib() -> None:
    limit = images.MAX_PREDICTION_BYTES
    assert limit == 4 * 1024 * 1024

    error = refusal(lambda: validate(b"\xff" * (limit + 1), max_bytes=limit))

    assert error.code == "ErrorImageSize"


@pytest.mark.parametrize("call", [validate, open_rgb, thumbnail_jpeg])
def test_empty_data_is_a_size_error(call: Callable[[bytes], object]) -> None:
    error = refusal(lambda: call(b""))

    assert error.code == "ErrorImageSize"
    assert "empty" in error.message


# --- ErrorImageFormat ------------------------------------------------------


def corrupt_png_crc() -> bytes:
    data = bytearray(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    data[29] ^= 0xFF  # last byte of the IHDR checksum
    return bytes(data)


def corrupt_png_idat() -> bytes:
    data = encode(Image.new("RGB", (64, 64), RED), "PNG")
    start = data.index(b"IDAT") + 4
    return data[:start] + b"\x00\x00" + data[start + 2 :]  # break the zlib header


def truncated_jpeg() -> bytes:
    return first_half(noise_jpeg())


def png_with_short_ihdr() -> bytes:
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    return data[:8] + struct.pack(">I", 3) + data[12:]  # IHDR length 13 -> 3


def png_with_wrong_idat_length() -> bytes:
    data = encode(noise_image(), "PNG")
    start = data.index(b"IDAT") - 4
    return data[:start] + struct.pack(">I", 16) + data[start + 4 :]


NOT_IMAGES: dict[str, Callable[[], bytes]] = {
    "random bytes": lambda: random.Random(3).randbytes(4096),
    "text": lambda: b"hello, this is a plain text file\n" * 20,
    "html": lambda: b"<!DOCTYPE html><html><body><img src='x.jpg'></body></html>",
    "svg": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "pdf": lambda: encode(Image.new("RGB", (8, 8)), "PDF"),
    "tiff": lambda: encode(Image.new("RGB", (8, 8)), "TIFF"),
    "ico": lambda: encode(Image.new("RGB", (16, 16)), "ICO"),
    "text starting with BM": lambda: b"BMW makes cars, not bitmaps." * 4,
    "riff wave": lambda: b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 32,
    "png signature only": lambda: b"\x89PNG\r\n\x1a\n",
    "jpeg signature only": lambda: b"\xff\xd8\xff",
    "gif signature only": lambda: b"GIF89a",
    "webp header only": lambda: b"RIFF\x04\x00\x00\x00WEBP",
    "png with zeroed header": lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    "truncated jpeg": truncated_jpeg,
    "truncated png": lambda: first_half(encode(noise_image(), "PNG")),
    "truncated webp": lambda: first_half(encode(noise_image(), "WEBP")),
    "truncated gif": lambda: first_half(encode(noise_image(), "GIF")),
    "truncated bmp": lambda: first_half(encode(noise_image(), "BMP")),
    "png with bad crc": corrupt_png_crc,
    "png with corrupt idat": corrupt_png_idat,
    "png with short ihdr": png_with_short_ihdr,
    "png with wrong idat length": png_with_wrong_idat_length,
}


@pytest.mark.parametrize("call", [validate, open_rgb, thumbnail_jpeg], ids=["validate", "open_rgb", "thumbnail"])
@pytest.mark.parametrize("kind", list(NOT_IMAGES))
def test_not_an_image_or_broken_is_a_format_error(kind: str, call: Callable[[bytes], object]) -> None:
    error = refusal(lambda: call(NOT_IMAGES[kind]()))

    assert error.code == "ErrorImageFormat"
    assert type(error) is ImageError


def test_unsupported_format_message_names_the_supported_ones() -> None:
    error = refusal(lambda: validate(NOT_IMAGES["tiff"]()))

    assert error.message == "The file is not a JPEG, PNG, BMP, GIF or WebP image."


def test_truncated_jpeg_message() -> None:
    assert validate(noise_jpeg()).format == "JPEG"

    error = refusal(lambda: validate(truncated_jpeg()))

    assert error.message == "The JPEG image is corrupt or truncated and could not be decoded."


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        (truncated_jpeg, OSError),
        (png_with_short_ihdr, ValueError),
        (png_with_wrong_idat_length, SyntaxError),
    ],
)
def test_every_pillow_exception_type_becomes_image_error(make: Callable[[], bytes], cause: type[Exception]) -> None:
    error = refusal(lambda: open_rgb(make()))

    assert error.code == "ErrorImageFormat"
    assert type(error.__cause__) is cause


def test_mutated_files_only_ever_raise_image_error() -> None:
    rng = random.Random(11)
    base = noise_image(48, 32)
    originals = [encode(base, fmt) for fmt in FORMATS]
    outcomes: set[str] = set()
    for original in originals:
        for _ in range(40):
            data = bytearray(original)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cut = bytes(data[: rng.randint(1, len(data))]) if rng.random() < 0.5 else bytes(data)
            for call in (validate, open_rgb):
                try:
                    call(cut)
                    outcomes.add("accepted")
                except ImageError as error:
                    outcomes.add(error.code)
    assert "ErrorImageFormat" in outcomes
    assert outcomes <= {"accepted", "ErrorImageFormat", "ErrorImageDimensions"}


# --- ErrorImageDimensions --------------------------------------------------


def test_pillow_settings_are_consistent() -> None:
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS == MAX_SIDE * MAX_SIDE
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("call", [validate, open_rgb], ids=["validate", "open_rgb"])
def test_decompression_bomb_is_a_dimensions_error(call: Callable[[bytes], object]) -> None:
    data = bilevel_png(20000, 20000)
    assert len(data) < 100_000

    error = refusal(lambda: call(data))

    assert error.code == "ErrorImageDimensions"
    assert f"{MAX_PIXELS:,}" in error.message
    assert isinstance(error.__cause__, Image.DecompressionBombError)


@pytest.mark.filterwarnings("error")
def test_largest_allowed_image_is_decoded_without_a_bomb_warning() -> None:
    data = bilevel_png(MAX_SIDE, MAX_SIDE)

    facts = validate(data)

    assert (facts.format, facts.width, facts.height) == ("PNG", MAX_SIDE, MAX_SIDE)


@pytest.mark.parametrize(("width", "height"), [(MAX_SIDE + 1, 1), (1, MAX_SIDE + 1)])
@pytest.mark.parametrize("call", [validate, open_rgb], ids=["validate", "open_rgb"])
def test_side_over_the_limit(width: int, height: int, call: Callable[[bytes], object]) -> None:
    error = refusal(lambda: call(bilevel_png(width, height)))

    assert error.code == "ErrorImageDimensions"
    assert error.message == (f"The image is {width} x {height} pixels; neither side may be longer than 10240 pixels.")


def test_max_side_parameter_is_inclusive() -> None:
    data = encode(Image.new("RGB", (40, 30)), "PNG")

    assert validate(data, max_side=40).width == 40
    error = refusal(lambda: validate(data, max_side=39))
    assert error.code == "ErrorImageDimensions"
    assert error.message == ("The image is 40 x 30 pixels; neither side may be longer than 39 pixels.")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_count_over_the_limit_with_a_larger_max_side() -> None:
    side = MAX_SIDE + 1

    error = refusal(lambda: validate(bilevel_png(side, side), max_side=20000))

    assert error.code == "ErrorImageDimensions"
    assert error.message == (
        f"The image has {side * side:,} pixels ({side} x {side}); the limit is 104,857,600 pixels."
    )


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_bomb_warning_turned_into_an_error_is_a_dimensions_error() -> None:
    side = MAX_SIDE + 1

    error = refusal(lambda: validate(bilevel_png(side, side), max_side=20000))

    assert error.code == "ErrorImageDimensions"
    assert isinstance(error.__cause__, Image.DecompressionBombWarning)


# --- draft decoding --------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    gradient = np.linspace(0, 255, 2000, dtype=np.uint8)
    pixels = np.stack([np.tile(gradient, (1500, 1))] * 3, axis=-1)
    return encode(Image.fromarray(pixels), "JPEG", quality=85)


@pytest.mark.parametrize(
    ("min_side", "size"),
    [
        (None, (2000, 1500)),
        (1500, (2000, 1500)),
        (751, (2000, 1500)),
        (750, (1000, 750)),
        (256, (500, 375)),
        (188, (500, 375)),
        (187, (250, 188)),
        (1, (250, 188)),
    ],
)
def test_draft_keeps_the_shorter_side_at_least_min_side(
    big_jpeg: bytes, min_side: int | None, size: tuple[int, int]
) -> None:
    rgb = open_rgb(big_jpeg, min_side=min_side)

    assert rgb.mode == "RGB"
    assert rgb.size == size
    assert min(rgb.size) >= (min_side or 0)


def test_validate_decodes_jpeg_at_one_eighth_scale(monkeypatch: pytest.MonkeyPatch, big_jpeg: bytes) -> None:
    loaded: list[tuple[int, int]] = []
    load = JpegImagePlugin.JpegImageFile.load

    def recording_load(self: JpegImagePlugin.JpegImageFile) -> Any:
        loaded.append(self.size)
        return load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", recording_load)

    facts = validate(big_jpeg)

    assert (facts.width, facts.height) == (2000, 1500)
    assert loaded and set(loaded) == {(250, 188)}


def test_draft_accounts_for_exif_rotation() -> None:
    data = with_orientation(Image.new("RGB", (2000, 1500), GREEN), 6)

    assert open_rgb(data, min_side=256).size == (375, 500)
    assert open_rgb(data).size == (1500, 2000)
    assert validate(data).width == 1500


def test_formats_without_draft_are_box_reduced_to_keep_min_side() -> None:
    data = encode(Image.new("RGB", (2000, 1500), GREEN), "PNG")

    assert open_rgb(data, min_side=256).size == (400, 300)  # 1500 // 256 = 5
    assert open_rgb(data, min_side=751).size == (2000, 1500)
    assert open_rgb(data).size == (2000, 1500)


def test_min_side_must_be_positive(big_jpeg: bytes) -> None:
    with pytest.raises(ValueError, match="min_side"):
        open_rgb(big_jpeg, min_side=0)


# --- thumbnails ------------------------------------------------------------


def thumbnail_of(data: bytes, **params: int) -> Image.Image:
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(data, **params)))
    assert thumb.format == "JPEG"
    assert thumb.mode == "RGB"
    return thumb


def test_thumbnail_fits_the_longer_side(big_jpeg: bytes) -> None:
    assert thumbnail_of(big_jpeg).size == (256, 192)
    assert thumbnail_of(big_jpeg, size=100).size == (100, 75)


def test_thumbnail_is_upright_and_never_enlarged() -> None:
    rotated = with_orientation(Image.new("RGB", (2000, 1500), GREEN), 6)

    assert thumbnail_of(rotated).size == (192, 256)
    assert thumbnail_of(encode(Image.new("RGB", (40, 30)), "PNG")).size == (40, 30)


def test_thumbnail_flattens_transparency_on_white() -> None:
    data = encode(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), "PNG")

    assert_close(thumbnail_of(data, size=32).getpixel((16, 16)), WHITE, tolerance=2)


def test_thumbnail_quality_changes_the_size() -> None:
    noisy = noise_jpeg(512, 512)

    assert len(thumbnail_jpeg(noisy, quality=20)) < len(thumbnail_jpeg(noisy, quality=95))


@pytest.mark.parametrize(("size", "quality"), [(0, 85), (256, -1), (256, 101)])
def test_thumbnail_rejects_bad_arguments(big_jpeg: bytes, size: int, quality: int) -> None:
    with pytest.raises(ValueError):
        thumbnail_jpeg(big_jpeg, size=size, quality=quality)


# --- sniffing --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"GIF87a\x01\x00", "GIF"),
        (b"GIF89a\x01\x00", "GIF"),
        (b"BM\x36\x00\x00\x00", "BMP"),
        (b"RIFF\x00\x10\x00\x00WEBPVP8 ", "WEBP"),
        (b"", None),
        (b"\xff\xd8", None),
        (b"\x89PNG", None),
        (b"GIF88a", None),
        (b"RIFF\x00\x10\x00\x00WAVEfmt ", None),
        (b"II*\x00", None),
        (b"MM\x00*", None),
        (b"\x00\x00\x01\x00\x01\x00", None),
        (b"%PDF-1.4", None),
        (b"<svg", None),
        (b"photo.jpg", None),
    ],
)
def test_sniff_format(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sniff_format_of_real_encodings(fmt: str) -> None:
    assert sniff_format(encode(Image.new("RGB", (8, 8)), fmt)) == fmt


# --- a real photo ----------------------------------------------------------


@pytest.fixture(scope="module")
def photo() -> bytes:
    found = sorted(SHOES.glob("*.jpg")) if SHOES.is_dir() else []
    if not found:
        pytest.skip(f"no real photos: {SHOES} is missing or has no .jpg files")
    return found[0].read_bytes()


def test_real_photo(photo: bytes) -> None:
    with Image.open(io.BytesIO(photo)) as reference:
        upright = reference.size
        if reference.getexif().get(0x0112) in (5, 6, 7, 8):
            upright = upright[::-1]

    facts = validate(photo)
    full = open_rgb(photo)
    drafted = open_rgb(photo, min_side=64)

    assert facts == ImageFacts(
        sha256=hashlib.sha256(photo).hexdigest(),
        format="JPEG",
        content_type="image/jpeg",
        width=upright[0],
        height=upright[1],
        size_bytes=len(photo),
    )
    assert (full.mode, full.size) == ("RGB", upright)
    assert min(drafted.size) >= 64
    assert drafted.size[0] * drafted.size[1] <= full.size[0] * full.size[1]
    assert max(thumbnail_of(photo, size=128).size) == min(128, max(upright))


def test_real_photo_cut_in_half_is_a_format_error(photo: bytes) -> None:
    error = refusal(lambda: validate(first_half(photo)))

    assert error.code == "ErrorImageFormat"
