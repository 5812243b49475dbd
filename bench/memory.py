"""The server's memory under the worst legal images, sent 16 at a time.

What: a real ``tagvision serve`` process (default settings: 1 GiB decode budget, requests wait up to
10 s for it), a small trained and published clothing-small project, then bursts of 16 concurrent
requests of each worst case to each route:

* images: a 10240 x 10240 16-bit RGBA PNG of zeros (under 1 MB on disk, 800 MB as raw pixels), a
  10240 x 10240 JPEG, a 6 MB progressive JPEG (4 MB for prediction), a 100-frame animated GIF;
* routes: ``classify/iterations/{name}/image/nostore`` (prediction), ``images`` (upload, each image
  made unique so it is stored), and the uploaded images' signed ``thumbnailUri`` (key-less GET).

The server's RSS (``/proc/PID/status``) is sampled every 20 ms: idle before, peak during, and a few
seconds after. Alongside each burst, one client sends ordinary 400 x 533 photos to prediction; its p50
latency is printed beside the same client's p50 on an idle server. Every answer must be 200 (or 207 for
an upload batch), or 429/400 with a JSON code. Run: ``python bench/memory.py``. Target (issue 14):
peak under 1.5 GB above idle with default settings, back near idle afterwards.
"""

from __future__ import annotations

import io
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageFile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import require  # noqa: E402
from serve import prepare, start_server  # noqa: E402

CLIENTS = 16
MB = 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Sampler:
    """Samples a process's RSS every 20 ms until stopped; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def png16_zeros(side: int) -> bytes:
    """A side x side 16-bit RGBA PNG of zeros, compressed row by row (never held as pixels)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row, parts = zlib.compressobj(9), b"\0" * (1 + side * 8), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 16, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def jpeg(img: Image.Image, limit: int, **params) -> bytes:
    """``img`` as JPEG at the highest quality that stays under ``limit`` bytes."""
    ImageFile.MAXBLOCK = max(ImageFile.MAXBLOCK, img.width * img.height * 4)  # progressive saves in one block
    for quality in (100, 98, 95, 90, 85, 80, 70, 60, 50, 40, 30):
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality, **params)
        if out.tell() <= limit:
            return out.getvalue()
    raise SystemExit("could not make a JPEG small enough")


def worst_images(photo: Path) -> dict[str, tuple[bytes, bytes]]:
    """name -> (bytes for prediction, bytes for upload)."""
    gradient = np.linspace(0, 255, 10240, dtype=np.uint8)
    big = Image.fromarray(np.stack([np.tile(gradient, (10240, 1))] * 3, axis=-1))
    big_jpeg = jpeg(big, 4 * MB)
    del big
    grain = np.random.default_rng(0).integers(-24, 24, (4000, 3000, 3))  # a photo's sensor noise, so it is 6 MB
    upscaled = Image.open(photo).convert("RGB").resize((3000, 4000), Image.Resampling.BICUBIC)
    upscaled = Image.fromarray(np.clip(np.asarray(upscaled, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    frames = [Image.new("P", (2000, 2000), k) for k in range(100)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=40)
    png = png16_zeros(10240)
    return {
        "10240² 16-bit RGBA PNG": (png, png),
        "10240² JPEG": (big_jpeg, big_jpeg),
        "progressive JPEG (4/6 MB)": (
            jpeg(upscaled, 4 * MB, progressive=True, subsampling=0),
            jpeg(upscaled, 6 * MB - 64 * 1024, progressive=True, subsampling=0),
        ),
        "100-frame animated GIF": (gif.getvalue(), gif.getvalue()),
    }


def unique(data: bytes, k: int) -> bytes:
    """``data`` with a few bytes appended (decoders ignore them), so each upload is a new image."""
    return data + f"tagvision-bench-{k}".encode()


def burst(send, count: int) -> tuple[Counter, float]:
    """``send(k)`` from ``CLIENTS`` threads, ``count`` times in all; -> status counts, seconds."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    todo = iter(range(count))

    def client() -> None:
        while True:
            with lock:
                k = next(todo, None)
            if k is None:
                return
            response = send(k)
            ok = response.status_code in (200, 207) or (
                response.status_code in (400, 429) and "code" in response.json()
            )
            with lock:
                statuses[str(response.status_code) if ok else f"{response.status_code}!"] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses, time.perf_counter() - started


def ordinary_p50(url: str, headers: dict[str, str], photos: list[bytes], stop: threading.Event) -> list[float]:
    """Latencies (ms) of ordinary predictions, one at a time, until ``stop``."""
    out: list[float] = []
    with httpx.Client(headers=headers, timeout=120) as http:
        k = 0
        while not stop.is_set():
            started = time.perf_counter()
            http.post(url, content=photos[k % len(photos)])
            out.append((time.perf_counter() - started) * 1000)
            k += 1
    return out


def main() -> None:
    train_dir, test_dir = require("clothing-small", "train"), require("clothing-small", "test")
    photos = [p.read_bytes() for p in sorted((test_dir / "hat").iterdir())[:10]]
    print("making the worst legal images ...", flush=True)
    worst = worst_images(sorted((test_dir / "shoes").iterdir())[0])
    for name, (predict, upload) in worst.items():
        print(f"  {name}: {len(predict) / MB:.2f} MB (prediction), {len(upload) / MB:.2f} MB (upload)")
    with tempfile.TemporaryDirectory(prefix="tagvision-bench-memory-") as tmp:
        process, endpoint, keys = start_server(Path(tmp))
        try:
            run(process.pid, endpoint, keys, prepare(endpoint, keys, train_dir), worst, photos)
        finally:
            process.terminate()
            process.wait(30)


def run(pid: int, endpoint: str, keys: dict[str, str], project: str, worst: dict, photos: list[bytes]) -> None:
    bench = Bench(pid, endpoint, keys, project, photos)
    stop = threading.Event()
    threading.Timer(5.0, stop.set).start()
    quiet = ordinary_p50(bench.predict_url, bench.predict_headers, photos, stop)
    time.sleep(2)
    bench.idle = rss(pid)
    print(f"\nidle RSS {bench.idle / MB:.0f} MB; ordinary prediction p50 on an idle server {np.median(quiet):.1f} ms\n")
    print(f"{'route':<12}{'image':<28}{'answers':<28}{'seconds':>8}{'peak above idle':>17}{'after':>8}{'p50':>9}")
    for name, (predict, upload) in worst.items():
        uploaded: list[str] = []
        bench.measure("predict", name, lambda k, data=predict: bench.predict(data))
        bench.measure("upload", name, lambda k, data=upload, into=uploaded: bench.upload(unique(data, k), into))
        if uploaded:
            bench.measure("thumbnail", name, lambda k, links=uploaded: bench.http.get(links[k % len(links)]))


class Bench:
    """The server under test and how each route is called."""

    def __init__(self, pid: int, endpoint: str, keys: dict[str, str], project: str, photos: list[bytes]) -> None:
        self.pid, self.photos, self.idle = pid, photos, 0
        self.predict_headers = {"Prediction-Key": keys["predictionKey"]}
        self.training_headers = {"Training-Key": keys["trainingKey"]}
        self.predict_url = f"{endpoint}/customvision/v3.1/prediction/{project}/classify/iterations/bench/image/nostore"
        self.training = f"{endpoint}/customvision/v3.4-preview/training/projects/{project}"
        self.http = httpx.Client(timeout=600)
        self.tag = self.http.get(f"{self.training}/tags", headers=self.training_headers).json()[0]["id"]

    def predict(self, data: bytes) -> httpx.Response:
        return self.http.post(self.predict_url, headers=self.predict_headers, content=data)

    def upload(self, data: bytes, links: list[str]) -> httpx.Response:
        url = f"{self.training}/images"
        response = self.http.post(url, params={"tagIds": self.tag}, headers=self.training_headers, content=data)
        if response.status_code in (200, 207):
            links.extend(i["image"]["thumbnailUri"] for i in response.json()["images"] if i.get("image"))
        return response

    def measure(self, route: str, name: str, send) -> None:
        """A burst of ``send`` beside ordinary predictions, with the server's RSS sampled throughout."""
        stop = threading.Event()
        latencies: list[float] = []

        def ordinary() -> None:
            latencies.extend(ordinary_p50(self.predict_url, self.predict_headers, self.photos, stop))

        side = threading.Thread(target=ordinary)
        sampler = Sampler(self.pid)
        side.start()
        statuses, seconds = burst(send, 2 * CLIENTS)
        stop.set()
        side.join()
        peak = sampler.stop()
        time.sleep(3)
        after = rss(self.pid)
        answers = ", ".join(f"{n}x{s}" for s, n in sorted(statuses.items()))
        p50 = np.median(latencies) if latencies else float("nan")
        print(
            f"{route:<12}{name:<28}{answers:<28}{seconds:>8.1f}{(peak - self.idle) / MB:>13.0f} MB"
            f"{(after - self.idle) / MB:>5.0f} MB{p50:>7.0f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
