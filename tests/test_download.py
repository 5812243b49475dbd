"""The downloader against a loopback image host: concurrency, retries, slow and broken links, redirects."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tagvision.sources.base import Candidate
from tagvision.sources.download import Downloader
from tests.conftest import CLOTHING, photos
from tests.fake_providers import FakeServer


@pytest.fixture
def host():
    """A loopback image host (downloaders here allow private addresses to reach it)."""
    fake = FakeServer()
    for n, path in enumerate(photos(CLOTHING, "train", "hat", 12)):
        fake.photos[f"p{n}"] = path
    fake.routes["/moved"] = lambda _request: (302, {"Location": fake.image_url("p0")}, b"")
    yield fake
    fake.close()


def candidate(url: str, n: int = 0) -> Candidate:
    return Candidate(provider="test", provider_id=f"c{n}", url=url)


def test_good_broken_slow_redirected_and_rate_limited_links(host: FakeServer, tmp_path: Path) -> None:
    host.broken.add("p1")
    host.slow.add("p2")
    host.rate_limited_once.add("p3")
    tiny = tmp_path / "tiny.jpg"
    from PIL import Image

    Image.new("RGB", (100, 80), "red").save(tiny)
    host.photos["tiny"] = tiny
    host.photos["html"] = tmp_path / "page.html"
    (tmp_path / "page.html").write_text("<html>not an image</html>")
    urls = {
        "good": host.image_url("p0"),
        "broken": host.image_url("p1"),
        "slow": host.image_url("p2"),
        "limited": host.image_url("p3"),
        "moved": f"{host.url}/moved",
        "tiny": host.image_url("tiny"),
        "html": host.image_url("html"),
        "private": "http://169.254.169.254/latest/meta-data",
    }
    downloader = Downloader(timeout=1.0, backoff=0.1, allow_private=True)
    started = time.monotonic()
    results = {
        r.candidate.provider_id: r for r in downloader.download([candidate(url, name) for name, url in urls.items()])
    }
    elapsed = time.monotonic() - started
    status = {name: results[f"c{name}"].status for name in urls}
    assert status == {
        "good": "OK",
        "broken": "ErrorSource",
        "slow": "ErrorSource",
        "limited": "OK",
        "moved": "OK",
        "tiny": "ErrorImageTooSmall",
        "html": "ErrorImageFormat",
        "private": "ErrorSource",
    }
    assert "timed out" in results["cslow"].message
    assert results["cmoved"].data == results["cgood"].data and results["cgood"].dhash == results["cmoved"].dhash
    assert len(host.requests_to("/img/p3")) == 2 and elapsed >= 1.0  # retried after Retry-After: 1
    assert host.requests_to("/img/p1") and len(host.requests_to("/img/p1")) == 1  # a 404 is not retried
    assert results["cgood"].facts.width > 224 and results["cgood"].facts.format == "JPEG"


def test_concurrency_is_bounded_overall_and_per_host(host: FakeServer) -> None:
    host.image_latency = 0.2
    in_flight, peak = [0], [0]
    lock = threading.Lock()
    original = host._answer

    def counting(request):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return original(request)
        finally:
            with lock:
                in_flight[0] -= 1

    host._answer = counting
    started = time.monotonic()
    results = list(
        Downloader(workers=8, per_host=3, allow_private=True).download(
            [candidate(host.image_url(f"p{n}"), n) for n in range(12)]
        )
    )
    elapsed = time.monotonic() - started
    assert [r.status for r in results] == ["OK"] * 12
    assert peak[0] == 3  # one host: at most 3 at a time
    assert elapsed >= 0.2 * 12 / 3 * 0.9


def test_stop_and_window_limit_what_is_taken(host: FakeServer) -> None:
    taken: list[int] = []

    def lazily():
        for n in range(12):
            taken.append(n)
            yield candidate(host.image_url(f"p{n}"), n)

    stop = threading.Event()
    out = []
    for result in Downloader(workers=8, allow_private=True).download(lazily(), stop, window=lambda: 2):
        out.append(result)
        if len(out) == 3:
            stop.set()
    assert len(taken) <= 5 and len(out) == len(taken)  # at most 2 in flight; nothing taken after the stop
