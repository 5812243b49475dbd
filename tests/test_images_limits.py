"""Limits that keep decoding safe: the memory budget, the aspect ratio, and JPEGs that claim more than they hold."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tagvision import images
from tagvision.errors import Busy, ImageError
from tagvision.images import DecodeBudget, open_rgb, patience, validate


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


@pytest.fixture
def costs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes every decode reserves from the process's budget, in order."""
    held: list[int] = []
    hold = images.DECODES.hold

    def recording(cost: int):
        held.append(cost)
        return hold(cost)

    monkeypatch.setattr(images.DECODES, "hold", recording)
    return held


def test_a_decode_reserves_what_its_pixels_take_from_the_header(costs: list[int]) -> None:
    rgba16 = encode(Image.new("RGBA", (3000, 2000)), "PNG")  # Pillow decodes 16-bit RGBA to 8 bits a channel
    validate(rgba16)
    open_rgb(rgba16, min_side=256)
    grey16 = encode(Image.new("I;16", (1000, 800)), "PNG")
    open_rgb(grey16, min_side=256)
    palette = encode(Image.new("P", (1000, 800)), "GIF")
    open_rgb(palette, min_side=256)
    jpeg = encode(Image.new("RGB", (4000, 3000)), "JPEG")
    validate(jpeg)  # at 1/8 scale
    open_rgb(jpeg, min_side=256)  # at 1/8 scale: 500 x 375 keeps 256
    assert costs == [
        3000 * 2000 * 4,  # validating: the decoded pixels
        3000 * 2000 * (4 + 4),  # decoding to reduce: and the premultiplied copy Pillow's reduce makes
        1000 * 800 * (2 + 5),  # 16-bit grey, then 32-bit and 8-bit copies to scale it
        1000 * 800 * (1 + 8),  # palette, then RGB(A) to reduce it (and, with alpha, its premultiplied copy)
        500 * 375 * 4,  # Pillow keeps RGB in 4 bytes a pixel
        500 * 375 * 4,
    ]


def test_large_non_jpeg_images_are_reduced_before_any_conversion() -> None:
    data = encode(Image.new("RGBA", (2600, 2600), (255, 0, 0, 128)), "PNG")
    rgb = open_rgb(data, min_side=256)
    assert rgb.size == (260, 260) and rgb.getpixel((5, 5)) == (255, 127, 127)  # 10x box-reduced, on white


def test_decodes_beyond_the_budget_wait_for_it() -> None:
    budget = DecodeBudget(max_bytes=100)
    order: list[str] = []

    def second() -> None:
        with budget.hold(50):
            order.append(f"second, holding {budget.held}")

    with budget.hold(80):
        waiting = threading.Thread(target=second)
        waiting.start()
        time.sleep(0.05)  # a chance to pass the budget wrongly; a slow machine only makes the check weaker
        order.append("first done")
    waiting.join(10)
    assert order == ["first done", "second, holding 50"] and budget.held == 0


def test_a_caller_with_patience_gets_busy_instead_of_waiting_forever() -> None:
    budget = DecodeBudget(max_bytes=100)
    with budget.hold(80), patience(0.0), pytest.raises(Busy) as caught, budget.hold(50):
        pass
    assert caught.value.code == "TooManyRequests" and caught.value.http_status == 429
    assert budget.held == 0


def test_an_image_larger_than_the_whole_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "DECODES", DecodeBudget(max_bytes=1_000_000))
    with pytest.raises(ImageError) as caught:
        validate(encode(Image.new("RGB", (1000, 1000)), "PNG"))
    assert caught.value.code == "ErrorImageDimensions" and "decodes at most 1 MB at once" in caught.value.message


@pytest.mark.parametrize(("width", "height"), [(26, 1), (1, 26), (10240, 1), (2600, 100)])
def test_images_longer_than_25_to_1_are_refused(width: int, height: int) -> None:
    data = encode(Image.new("RGB", (width, height)), "PNG")
    with pytest.raises(ImageError) as caught:
        validate(data)
    assert caught.value.code == "ErrorImageDimensions"
    assert caught.value.message == (
        f"The image is {width} x {height} pixels; the longer side may be at most 25 times the shorter."
    )


def test_an_image_of_exactly_25_to_1_is_accepted() -> None:
    assert validate(encode(Image.new("RGB", (2500, 100)), "PNG")).width == 2500


def claims(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG) with its frame header rewritten to claim ``width`` x ``height``."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 9 :]


def test_a_jpeg_claiming_more_pixels_than_its_data_can_hold_is_refused() -> None:
    small = encode(Image.new("RGB", (64, 64), (200, 30, 30)), "JPEG")
    forged = claims(small, 10000, 10000)
    with pytest.raises(ImageError) as caught:
        validate(forged)
    assert caught.value.code == "ErrorImageFormat" and "truncated or corrupt" in caught.value.message
    # A real, highly compressible image of the same size is far above the floor of one bit per block.
    assert len(encode(Image.new("L", (2000, 2000), 255), "JPEG")) * 8 >= (2000 // 8) ** 2


PEAK_PROBE = """
import sys
from pathlib import Path
from tagvision import images
data = Path(sys.argv[1]).read_bytes()
costs = []
hold = images.DECODES.hold
images.DECODES.hold = lambda cost: costs.append(cost) or hold(cost)
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field))
Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from here
before = status("VmRSS:")
images.open_rgb(data, min_side=256)
print(status("VmHWM:") - before, costs[0])
"""


@pytest.mark.parametrize(
    ("mode", "fmt", "params"),
    [
        ("RGBA", "PNG", {}),
        ("I;16", "PNG", {}),
        ("P", "GIF", {}),
        ("RGB", "BMP", {}),
        ("LA", "PNG", {}),
        ("RGB", "JPEG", {"progressive": True}),  # its coefficients stay in memory until the last scan
    ],
)
def test_what_a_decode_reserves_covers_what_it_really_takes(mode: str, fmt: str, params: dict, tmp_path) -> None:
    """The budget bounds memory only if each decode reserves at least its real peak (a fresh process, 12 MP;
    the image is made here, so the child's peak is the decode's alone)."""
    import subprocess
    import sys

    path = tmp_path / f"image.{fmt.lower()}"
    noise = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    image = Image.fromarray(noise).convert(mode) if fmt == "JPEG" else Image.new(mode, (4000, 3000))
    image.save(path, fmt, **params)
    ran = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(path)], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    peak, reserved = map(int, ran.stdout.split())
    assert peak <= reserved + 8 * 2**20, f"{mode}: peak {peak / 2**20:.0f} MB, reserved {reserved / 2**20:.0f} MB"
