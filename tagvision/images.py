"""Decoding and validation of uploaded images.

Everything here works on the bytes of one upload and never touches storage or
HTTP. The rules follow Azure Custom Vision: an image is refused with an
:class:`~tagvision.errors.ImageError` whose ``code`` is an ImageCreateStatus value.

* ``ErrorImageSize``: the upload is empty or larger than the byte limit. The
  length is checked before anything is decoded.
* ``ErrorImageFormat``: not a JPEG, PNG, BMP, GIF or WebP (decided from the magic
  bytes, never from a file name), or the data is corrupt or truncated.
* ``ErrorImageDimensions``: a side is longer than allowed, the sides differ by more
  than :data:`MAX_ASPECT` to 1 (Custom Vision's limit), or the image has more pixels
  than :data:`MAX_PIXELS` (a decompression-bomb guard checked from the header before
  any pixel data is decoded).

Memory is bounded per process: every decode first reserves, from :data:`DECODES`, the
bytes its pixels will take (known from the header), and waits while other decodes
hold the budget; a caller that set :func:`patience` gives up after that many seconds
with :class:`~tagvision.errors.Busy`. Decoding for a target size (``min_side``) decodes
JPEG at the smallest DCT scale that keeps it (draft mode) and box-reduces other formats
before any conversion, so only the decode itself is full-size. The worst case is the
budget plus one reduced copy per decode in flight.

Animated GIF and WebP images are reduced to their first frame. Widths and heights
are reported as displayed, that is after the EXIF orientation is applied.

Importing this module sets Pillow's ``Image.MAX_IMAGE_PIXELS`` to
:data:`MAX_PIXELS`, so Pillow's own bomb check agrees with ours: it warns above
that many pixels and refuses outright above twice as many.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image

from tagvision.errors import Busy, ImageError, TagvisionError

MAX_TRAINING_BYTES = 6 * 1024 * 1024
MAX_PREDICTION_BYTES = 4 * 1024 * 1024
MAX_SIDE = 10240
MAX_PIXELS = 10240 * 10240
MAX_ASPECT = 25  # the longer side at most this many times the shorter (Custom Vision's limit)
DEFAULT_DECODE_BUDGET = 1 << 30  # bytes of decoded pixels a process holds at once
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
# Bytes per pixel a decode holds at its peak, by the mode Pillow decodes into: the decoded pixels (Pillow keeps
# RGB and two-band modes in 4 bytes a pixel), plus the full-size copies made before the image is reduced
# (palette to RGB(A), 16-bit grey to 8-bit, and the premultiplied-alpha copy Pillow's reduce makes of an
# image with alpha). tests/test_images_limits.py checks them against measured peaks.
_DECODED_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "RGB": 4, "YCbCr": 4, "RGBA": 4, "CMYK": 4, "I": 4, "F": 4}
_CONVERTED_BYTES = {"1": 4, "P": 8, "PA": 8, "LA": 4, "RGBA": 4, "I;16": 5, "I;16L": 5, "I;16B": 5, "I;16N": 5, "I": 1}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7})


class DecodeBudget:
    """The bytes of decoded pixels one process may hold at once, shared by every thread that decodes."""

    def __init__(self, max_bytes: int = DEFAULT_DECODE_BUDGET) -> None:
        self.max_bytes, self.held = max_bytes, 0
        self._changed = threading.Condition()

    def configure(self, max_bytes: int) -> None:
        with self._changed:
            self.max_bytes = max_bytes
            self._changed.notify_all()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        """Reserve ``cost`` bytes for the block; waits for them (at most :func:`patience` seconds, if set)."""
        if cost > self.max_bytes:
            raise ImageError(
                f"Decoding this image takes {cost / 2**20:,.0f} MB; this server decodes at most "
                f"{self.max_bytes / 2**20:,.0f} MB at once.",
                code=_DIMENSIONS,
            )
        wait = _PATIENCE.get()
        deadline = None if wait is None else time.monotonic() + wait
        with self._changed:
            while self.held + cost > self.max_bytes:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Busy("The server is decoding as many images as its memory allows; try again shortly.")
                self._changed.wait(left)
            self.held += cost
        try:
            yield
        finally:
            with self._changed:
                self.held -= cost
                self._changed.notify_all()


DECODES = DecodeBudget()
_PATIENCE: ContextVar[float | None] = ContextVar("decode_patience", default=None)


@contextmanager
def patience(seconds: float | None) -> Iterator[None]:
    """Decodes in this context (and threads that copy it) wait at most ``seconds`` for the budget."""
    token = _PATIENCE.set(seconds)
    try:
        yield
    finally:
        _PATIENCE.reset(token)


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
    _check_bytes(data, max_bytes)
    name, img = _open(data, max_side=max_side)
    width, height = img.size
    with img, _decoding(name):
        if name == "JPEG":
            img.draft(None, (1, 1))  # the smallest request gets the 1/8 scale
        with DECODES.hold(_cost(img, convert=False, full_size=(width, height))):
            img.load()
        if img.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
            width, height = height, width
    return _facts(data, name, width, height)


def inspect(data: bytes, *, max_bytes: int, min_side: int) -> tuple[ImageFacts, Image.Image]:
    """:func:`validate` and :func:`open_rgb` in one decode (a prediction needs both): the facts, and the upright
    RGB image no smaller than ``min_side``. Decoding for ``min_side`` reads the whole file, so a truncated or
    corrupt one is refused as :func:`validate` refuses it."""
    _check_bytes(data, max_bytes)
    name, size, rgb = _decode(data, min_side)
    return _facts(data, name, *size), rgb


def open_rgb(data: bytes, *, min_side: int | None = None) -> Image.Image:
    """Decode ``data`` into an upright RGB image (first frame, transparency on white).

    With ``min_side``, the image is made no larger than it must be to keep its shorter side at least
    ``min_side`` pixels: JPEG decoded at the smallest DCT scale (1, 1/2, 1/4 or 1/8), other formats
    box-reduced by a whole factor right after decoding (``predict_standalone`` does the same). Without
    it, the image keeps its full size.
    """
    return _decode(data, min_side)[2]


def _decode(data: bytes, min_side: int | None) -> tuple[str, tuple[int, int], Image.Image]:
    """(format, the size as displayed, the upright RGB image) of :func:`open_rgb`."""
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be at least 1, not {min_side}")
    name, img = _open(data, max_side=MAX_SIDE)
    width, height = img.size
    with img, _decoding(name):
        if min_side is not None and name == "JPEG":
            # Draft scales both sides by one factor chosen from the shorter side,
            # so the stored orientation gives the same result as the displayed one.
            img.draft("RGB", (min_side, min_side))
        with DECODES.hold(_cost(img, convert=True, full_size=(width, height))):
            img.load()
            small = _reducible(img) if name == "JPEG" else _reduced(_reducible(img), min_side)
        orientation = img.getexif().get(ExifTags.Base.Orientation)  # after load: a PNG's may follow its pixels
        if orientation in _TRANSPOSE:
            small = small.transpose(_TRANSPOSE[orientation])
        if orientation in _QUARTER_TURNS:
            width, height = height, width
        return name, (width, height), _to_rgb(small)


def _check_bytes(data: bytes, max_bytes: int) -> None:
    if len(data) > max_bytes:
        raise ImageError(
            f"The image is {len(data):,} bytes, larger than the limit of {max_bytes:,} bytes.",
            code=_SIZE,
        )


def _facts(data: bytes, name: str, width: int, height: int) -> ImageFacts:
    return ImageFacts(
        sha256=hashlib.sha256(data).hexdigest(),
        format=name,
        content_type=FORMATS[name],
        width=width,
        height=height,
        size_bytes=len(data),
    )


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
    if name == "JPEG":
        _check_jpeg_density(data, *img.size)
    return name, img


def _check_dimensions(width: int, height: int, *, max_side: int) -> None:
    if max(width, height) > max_side:
        raise ImageError(
            f"The image is {width} x {height} pixels; neither side may be longer than {max_side} pixels.",
            code=_DIMENSIONS,
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(
            f"The image is {width} x {height} pixels; the longer side may be at most {MAX_ASPECT} times the shorter.",
            code=_DIMENSIONS,
        )
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The image has {width * height:,} pixels ({width} x {height}); the limit is {MAX_PIXELS:,} pixels.",
            code=_DIMENSIONS,
        )


def _check_jpeg_density(data: bytes, width: int, height: int) -> None:
    """Refuse a Huffman-coded JPEG with less than one bit per 8x8 block of its luma: every block codes at
    least its DC difference, so such a file claims a size its data cannot hold (libjpeg would fill the
    missing blocks with grey and report success). Arithmetic-coded JPEGs are exempt."""
    blocks = -(-width // 8) * -(-height // 8)
    if len(data) * 8 >= blocks or _sof_marker(data) not in _HUFFMAN_SOF:
        return
    raise ImageError(
        f"The JPEG claims {width} x {height} pixels but holds only {len(data):,} bytes: it is truncated or corrupt.",
        code=_FORMAT,
    )


def _sof_marker(data: bytes) -> int | None:
    """The JPEG's start-of-frame marker (0xC0-0xCF but DHT, JPG and DAC), read from its segment headers."""
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return marker
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _cost(img: Image.Image, *, convert: bool, full_size: tuple[int, int]) -> int:
    """Bytes a decode of ``img`` (at its size now, after any draft) holds at its peak. A progressive JPEG also
    keeps every DCT coefficient of the full-size image (2 bytes each) until its last scan, whatever the draft."""
    per_pixel = _DECODED_BYTES.get(img.mode, 2 if img.mode.startswith("I;16") else 8)
    if convert:
        per_pixel += _CONVERTED_BYTES.get(img.mode, 0)
    coefficients = full_size[0] * full_size[1] * len(img.getbands()) * 2 if img.info.get("progressive") else 0
    return img.width * img.height * per_pixel + coefficients


def _reducible(img: Image.Image) -> Image.Image:
    """``img`` in a mode :meth:`Image.reduce` takes (palette to RGB(A), 16-bit grey to 8-bit)."""
    if img.mode in _GREY_16_BIT:
        return img.convert("I").point([v >> 8 for v in range(65536)], "L")
    if img.mode in ("P", "PA", "1"):
        return img.convert("RGBA" if img.has_transparency_data else "RGB")
    return img


def _reduced(img: Image.Image, min_side: int | None) -> Image.Image:
    """``img`` box-reduced by the largest whole factor that keeps its shorter side at least ``min_side``."""
    factor = min(img.size) // min_side if min_side else 1
    return img.reduce(factor) if factor > 1 else img


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Turn whatever Pillow raises while reading ``name`` data into an ImageError.

    Pillow's plugins signal bad data with many exception types (OSError,
    SyntaxError, ValueError, struct.error, EOFError, ...) and warnings may have
    been turned into errors, so any exception counts.
    """
    try:
        yield
    except TagvisionError:  # a limit of ours, already said
        raise
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
    """Convert any mode :func:`_reducible` leaves to 8-bit RGB."""
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")
