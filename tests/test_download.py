"""The downloader against a loopback image host: concurrency, retries, slow and broken links, redirects.

Waits and deadlines run on a :class:`ManualClock`, and the host holds its answers until the test lets them
go, so what is asserted (the waits chosen, the bound on downloads in flight) never rests on machine speed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tagvision.clock import ManualClock
from tagvision.sources import reasons
from tagvision.sources.base import Candidate
from tagvision.sources.download import Downloader
from tests.conftest import CLOTHING, photos
from tests.fake_providers import FakeServer

SLOW = 3600.0  # seconds of virtual time the slow link takes, far beyond any download's deadline


@pytest.fixture
def host():
    """A loopback image host (downloaders here allow private addresses to reach it)."""
    fake = FakeServer()
    for n, path in enumerate(photos(CLOTHING, "train", "hat", 12)):
        fake.photos[f"p{n}"] = path
    fake.routes["/moved"] = lambda _request: (302, {"Location": fake.image_url("p0")}, b"")
    yield fake
    fake.close()


def candidate(url: str, n: int | str = 0) -> Candidate:
    return Candidate(provider="test", provider_id=f"c{n}", url=url)


def test_good_broken_slow_redirected_and_rate_limited_links(host: FakeServer, tmp_path: Path) -> None:
    clock = ManualClock()
    slow = host.photos["p2"].read_bytes()

    def answer_slowly(_request):  # the clock moves past the deadline before the body goes out
        clock.advance(SLOW)
        return 200, {"Content-Type": "image/jpeg"}, slow

    host.routes["/slow.jpg"] = answer_slowly
    host.broken.add("p1")
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
        "slow": f"{host.url}/slow.jpg",
        "limited": host.image_url("p3"),
        "moved": f"{host.url}/moved",
        "tiny": host.image_url("tiny"),
        "html": host.image_url("html"),
        "private": "http://169.254.169.254/latest/meta-data",
    }
    # One at a time: the slow link moves the shared clock, which must not cut into another download's deadline.
    downloader = Downloader(workers=1, timeout=600.0, backoff=0.1, clock=clock, allow_private=True, min_side=224)
    results = {
        r.candidate.provider_id: r for r in downloader.download([candidate(url, name) for name, url in urls.items()])
    }
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
    assert {name: results[f"c{name}"].reason for name in urls if status[name] != "OK"} == {
        "broken": reasons.PROVIDER_ERROR,
        "slow": reasons.PROVIDER_ERROR,
        "tiny": reasons.TOO_SMALL,
        "html": reasons.NOT_AN_IMAGE,
        "private": reasons.PROVIDER_ERROR,
    }
    assert results["ctiny"].detail == {"width": 100, "height": 80, "minSide": 224}
    assert Downloader(allow_private=True).one(candidate(urls["tiny"])).status == "OK"  # no minimum by default
    assert "timed out after 600 s" in results["cslow"].message
    assert results["cmoved"].data == results["cgood"].data and results["cgood"].dhash == results["cmoved"].dhash
    # The slow link timed out 4 times, with backoff doubling between; p3 waited its Retry-After: 1, not 0.1 s.
    assert len(host.requests_to("/slow.jpg")) == 4 and len(host.requests_to("/img/p3")) == 2
    assert clock.slept == [0.1, 0.2, 0.4, 1.0]
    assert host.requests_to("/img/p1") and len(host.requests_to("/img/p1")) == 1  # a 404 is not retried
    assert results["cgood"].facts.width > 224 and results["cgood"].facts.format == "JPEG"


def test_concurrency_is_bounded_overall_and_per_host(host: FakeServer) -> None:
    """The host holds every answer until the test lets them go: three requests arrive, and no fourth."""
    release, changed = threading.Event(), threading.Condition()
    in_flight, peak = [0], [0]
    original = host._answer

    def held(request):
        with changed:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            changed.notify_all()
        try:
            release.wait()
            return original(request)
        finally:
            with changed:
                in_flight[0] -= 1

    host._answer = held
    results = []
    downloader = Downloader(workers=8, per_host=3, allow_private=True)
    candidates = [candidate(host.image_url(f"p{n}"), n) for n in range(12)]
    worker = threading.Thread(target=lambda: results.extend(downloader.download(candidates)), daemon=True)
    worker.start()
    try:
        with changed:
            assert changed.wait_for(lambda: in_flight[0] >= 3, timeout=600)
        time.sleep(0.2)  # room for a fourth to arrive if the bound were broken; a slow machine only waits longer
        with changed:
            assert in_flight[0] == 3
    finally:
        release.set()
        worker.join(600)
    assert [r.status for r in results] == ["OK"] * 12
    assert peak[0] == 3  # one host: at most 3 at a time, although 8 workers were free


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
