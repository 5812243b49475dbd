"""Decoding and validation of uploaded images.

Everything here works on the bytes of one upload and never touches storage or
HTTP. The rules follow Azure Custom Vision: an image is refused with an
:class:`~tagvision.errors.ImageError` whose ``code`` is an ImageCreateStatus value.

* ``ErrorImageSize``: the upload is empty or larger than the byte limit. The
  length is checked before anything is decoded.
* ``ErrorImageFormat``: not a JPEG, PNG, BMP, GIF or WebP (decided from the magic
  bytes, never from a file name), or the data is corrupt or truncated.
* ``ErrorImageDimensions``: a side is longer than allowed, or the image has more
  pixels than :data:`MAX_PIXELS` (a decompression-bomb guard checked from the
  header before any pixel data is decoded).

Animated GIF and WebP images are reduced to their first frame. Widths and heights
are reported as displayed, that is after the EXIF orientation is applied.

Importing this module sets Pillow's ``Image.MAX_IMAGE_PIXELS`` to
:data:`MAX_PIXELS`, so Pillow's own bomb check agrees with ours: it warns above
that many pixels and refuses outright above twice as many.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from tagvision.errors import ImageError

MAX_TRAINING_BYTES = 6 * 1024 * 1024
MAX_PREDICTION_BYTES = 4 * 1024 * 1024
MAX_SIDE = 10240
MAX_PIXELS = 10240 * 10240
FORMATS = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "WEBP": "image/webp",
}

Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_SIZE = "ErrorImageSize"
_FORMAT = "ErrorImageFormat"
_DIMENSIONS = "ErrorImageDimensions"

_SUPPORTED = "JPEG, PNG, BMP, GIF or WebP"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
# EXIF orientations that rotate the image by a quarter turn (5-8 also mirror).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_GREY_16_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_WHITE = (255, 255, 255, 255)


@dataclass(frozen=True)
class ImageFacts:
    """What :func:`validate` learnt about an accepted image."""

    sha256: str
    format: str
    content_type: str
    width: int
    height: int
    size_bytes: int


def sniff_format(data: bytes) -> str | None:
    """Return the key of :data:`FORMATS` that the magic bytes announce, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def validate(data: bytes, *, max_bytes: int = MAX_TRAINING_BYTES, max_side: int = MAX_SIDE) -> ImageFacts:
    """Check that ``data`` is an acceptable image, decoding it fully, and describe it.

    JPEG data is decoded at 1/8 scale: the entropy-coded data is still read to
    the end, so truncation is caught, but far less work is done.
    """
    if len(data) > max_bytes:
        raise ImageError(
            f"The image is {len(data):,} bytes, larger than the limit of {max_bytes:,} bytes.",
            code=_SIZE,
        )
    name, img = _open(data, max_side=max_side)
    width, height = img.size
    with img, _decoding(name):
        if name == "JPEG":
            img.draft(None, (1, 1))  # the smallest request gets the 1/8 scale
        img.load()
        if img.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
            width, height = height, width
    return ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        format=name,
        content_type=FORMATS[name],
        width=width,
        height=height,
        size_bytes=len(data),
    )


def open_rgb(data: bytes, *, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` into an upright RGB image (first frame, transparency on white).

    With ``min_side``, a JPEG is decoded at the smallest scale (1, 1/2, 1/4 or
    1/8) that keeps its shorter side at least ``min_side`` pixels long; other
    formats are always decoded at full size.
    """
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, not {min_side}")
    name, img = _open(data, max_side=MAX_SIDE)
    with img, _decoding(name):
        if min_side is not None and name == "JPEG":
            # Draft scales both sides by one factor chosen from the shorter side,
            # so the stored orientation gives the same result as the displayed one.
            img.draft("RGB", (min_side, min_side))
        return _to_rgb(ImageOps.exif_transpose(img))


def thumbnail_jpeg(data: bytes, size: int = 256, quality: int = 85) -> bytes:
    """Return a JPEG of the upright image whose longer side is at most ``size``."""
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    if not 0 <= quality <= 100:
        raise ValueError(f"quality must be between 0 and 100, not {quality}")
    img = open_rgb(data, min_side=size)
    img.thumbnail((size, size))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def dhash(data: bytes) -> int:
    """A 64-bit difference hash of the upright image: near-identical images (resized, recompressed,
    lightly edited) differ in a few bits. Compare with :func:`hamming`."""
    img = open_rgb(data, min_side=64).convert("L").resize((9, 8), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _open(data: bytes, *, max_side: int) -> tuple[str, Image.Image]:
    """Identify ``data`` and read its header; nothing is decoded yet."""
    if not data:
        raise ImageError("The image is empty (0 bytes).", code=_SIZE)
    name = sniff_format(data)
    if name is None:
        raise ImageError(f"The file is not a {_SUPPORTED} image.", code=_FORMAT)
    with _decoding(name):
        img = Image.open(io.BytesIO(data), formats=[name])
    _check_dimensions(*img.size, max_side=max_side)
    return name, img


def _check_dimensions(width: int, height: int, *, max_side: int) -> None:
    if max(width, height) > max_side:
        raise ImageError(
            f"The image is {width} x {height} pixels; neither side may be longer than {max_side} pixels.",
            code=_DIMENSIONS,
        )
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The image has {width * height:,} pixels ({width} x {height}); the limit is {MAX_PIXELS:,} pixels.",
            code=_DIMENSIONS,
        )


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Turn whatever Pillow raises while reading ``name`` data into an ImageError.

    Pillow's plugins signal bad data with many exception types (OSError,
    SyntaxError, ValueError, struct.error, EOFError, ...) and warnings may have
    been turned into errors, so any exception counts.
    """
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"The image has more than {2 * MAX_PIXELS:,} pixels; the limit is {MAX_PIXELS:,} pixels.",
            code=_DIMENSIONS,
        ) from exc
    except Image.DecompressionBombWarning as exc:
        raise ImageError(
            f"The image has more than the limit of {MAX_PIXELS:,} pixels.",
            code=_DIMENSIONS,
        ) from exc
    except Exception as exc:
        raise ImageError(
            f"The {name} image is corrupt or truncated and could not be decoded.",
            code=_FORMAT,
        ) from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode Pillow decodes our formats into to 8-bit RGB."""
    if img.mode in _GREY_16_BIT:
        grey = np.clip(np.asarray(img, dtype=np.int64) // 256, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")
