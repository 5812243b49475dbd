"""Pexels, Unsplash and Pixabay adapters against loopback fakes of their documented APIs, with real photos.

No test touches the internet: every provider gets its fake's URL, and images are fetched from 127.0.0.1.
Waits for rate limits and quotas run on a :class:`ManualClock` shared by provider and fake: the tests
assert the waits the provider chose, not how long the machine took.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from tagvision.clock import ManualClock
from tagvision.config import Settings
from tagvision.fetch import fetch
from tagvision.images import validate
from tagvision.sources.base import ProviderError
from tagvision.sources.pexels import PexelsProvider
from tagvision.sources.pixabay import PixabayProvider
from tagvision.sources.unsplash import UnsplashProvider
from tests.conftest import CLOTHING, photos
from tests.fake_providers import FakeServer
from tests.fake_providers.pexels import make_pexels
from tests.fake_providers.pixabay import make_pixabay
from tests.fake_providers.unsplash import make_unsplash

KEY = "k3y-S3cr3t-0123456789abcdef"
TAGS = ("dress", "hat", "shoes")


@dataclass(frozen=True)
class Spec:
    name: str
    make: Callable[..., FakeServer]
    provider: type
    search_path: str
    max_page: int
    env: str  # the provider's settings are TAGVISION_<env>_KEY and TAGVISION_<env>_URL
    licence: str
    attribution: str  # with {name} for the creator

    def open(self, fake: FakeServer, key: str = KEY, **kwargs: Any):
        return self.provider(key, fake.url, **kwargs)

    def searches(self, fake: FakeServer) -> list[dict[str, str]]:
        return [r.query for r in fake.requests_to(self.search_path)]


SPECS = [
    Spec(
        "pexels", make_pexels, PexelsProvider, "/v1/search", 80, "PEXELS", "Pexels License", "Photo by {name} on Pexels"
    ),
    Spec(
        "unsplash",
        make_unsplash,
        UnsplashProvider,
        "/search/photos",
        30,
        "UNSPLASH",
        "Unsplash License",
        "Photo by {name} on Unsplash",
    ),
    Spec(
        "pixabay",
        make_pixabay,
        PixabayProvider,
        "/api/",
        200,
        "PIXABAY",
        "Pixabay Content License",
        "Image by {name} from Pixabay",
    ),
]
BY_NAME = {spec.name: spec for spec in SPECS}
each = pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])


@pytest.fixture(scope="module")
def library() -> dict[str, list[Path]]:
    """25 real clothing photos for each of three tags."""
    return {tag: photos(CLOTHING, "train", tag, 25) for tag in TAGS}


@pytest.fixture(scope="module")
def running() -> Iterator[list[FakeServer]]:
    """Every fake of this module, closed together at its end (each close waits up to half a second)."""
    fakes: list[FakeServer] = []
    yield fakes
    closing = [threading.Thread(target=fake.close) for fake in fakes]
    for thread in closing:
        thread.start()
    for thread in closing:
        thread.join()


@pytest.fixture
def serve(library, running) -> Callable[..., FakeServer]:
    def start(spec: Spec, **knobs: Any) -> FakeServer:
        running.append(spec.make(library, KEY, **knobs))
        return running[-1]

    return start


def image_id(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1].removesuffix(".jpg")


@each
def test_exact_limit_over_several_pages(spec: Spec, serve, library) -> None:
    fake = serve(spec)
    provider = spec.open(fake, page_size=10)
    found = list(provider.search("Dress", 23))
    assert len(found) == 23
    assert len({c.provider_id for c in found}) == 23
    pages = spec.searches(fake)
    assert [q["page"] for q in pages] == ["1", "2", "3"]
    assert {q["per_page"] for q in pages} == {"10"}
    dresses = {path.name for path in library["dress"]}
    assert all(fake.photos[image_id(c.url)].name in dresses for c in found)
    assert list(provider.search("umbrella", 5)) == []
    provider.close()


@each
def test_page_size_respects_the_documented_maximum(spec: Spec, serve) -> None:
    fake = serve(spec)
    provider = spec.open(fake, page_size=1000)
    assert len(list(provider.search("hat", 25))) == 25
    assert len(list(provider.search("hat", 1000))) == 25  # all there is, then it stops
    sizes = [int(q["per_page"]) for q in spec.searches(fake)]
    assert sizes and all(size <= spec.max_page for size in sizes)
    provider.close()


@each
def test_duplicates_across_pages_are_dropped(spec: Spec, serve) -> None:
    fake = serve(spec, overlap=3)
    provider = spec.open(fake, page_size=10)
    found = list(provider.search("shoes", 15))
    assert len(found) == 15 and len({c.provider_id for c in found}) == 15
    assert len(spec.searches(fake)) == 2  # page 2 starts with three of page 1, then five new ones
    provider.close()


@each
def test_candidates_carry_licence_attribution_and_download(spec: Spec, serve) -> None:
    fake = serve(spec)
    provider = spec.open(fake, page_size=8)
    found = list(provider.search("hat", 12))
    assert len(found) == 12
    for candidate in found:
        path = fake.photos[image_id(candidate.url)]
        assert candidate.provider == spec.name and candidate.key == f"{spec.name}:{candidate.provider_id}"
        assert candidate.licence == spec.licence and candidate.licence_url.startswith("https://")
        assert candidate.creator and candidate.attribution == spec.attribution.format(name=candidate.creator)
        assert candidate.creator_url.startswith("https://") and candidate.landing_page.startswith("https://")
        assert candidate.title
        with Image.open(path) as img:
            assert (candidate.width, candidate.height) == img.size
        data = fetch(candidate.url, max_bytes=6_000_000, allow_private=True).data
        assert data == path.read_bytes()
        facts = validate(data)
        assert facts.format == "JPEG" and (facts.width, facts.height) == (candidate.width, candidate.height)
    source = found[0].source()
    assert source["licence"] == spec.licence and source["attribution"] == found[0].attribution
    assert KEY not in repr(found)
    provider.close()


@each
def test_missing_key_names_the_setting(spec: Spec, monkeypatch) -> None:
    monkeypatch.delenv(f"TAGVISION_{spec.env}_KEY", raising=False)
    with pytest.raises(ProviderError) as caught:
        spec.provider.from_settings(Settings.load().providers)
    assert caught.value.code == "BadRequestProviderNotConfigured"
    assert f"TAGVISION_{spec.env}_KEY" in caught.value.message


@each
def test_settings_configure_key_and_url(spec: Spec, serve, monkeypatch) -> None:
    fake = serve(spec)
    monkeypatch.setenv(f"TAGVISION_{spec.env}_KEY", KEY)
    monkeypatch.setenv(f"TAGVISION_{spec.env}_URL", fake.url)
    provider = spec.provider.from_settings(Settings.load().providers)
    assert provider.name == spec.name
    assert len(list(provider.search("hat", 4))) == 4
    provider.close()


@each
def test_wrong_key_is_unauthorized_and_never_echoed(spec: Spec, serve) -> None:
    fake = serve(spec)
    wrong = "wr0ng-" + KEY
    provider = spec.open(fake, key=wrong)
    with pytest.raises(ProviderError) as caught:
        next(provider.search("hat", 5))
    assert caught.value.code == "Unauthorized"
    assert wrong not in str(caught.value) and KEY not in str(caught.value)
    assert len(spec.searches(fake)) == 1  # a refused key is not retried
    provider.close()


@each
def test_429_is_retried_after_retry_after(spec: Spec, serve) -> None:
    fake = serve(spec, rate_limit_at=2)
    clock = ManualClock()
    provider = spec.open(fake, page_size=10, clock=clock)
    found = list(provider.search("dress", 20))
    assert clock.slept == [1.0]  # the server's Retry-After, not the first backoff (0.5 s)
    assert len(found) == 20
    assert [q["page"] for q in spec.searches(fake)] == ["1", "2", "2"]
    provider.close()


def test_pexels_picks_large2x_not_the_original(serve) -> None:
    fake = serve(BY_NAME["pexels"])
    provider = PexelsProvider(KEY, fake.url)
    candidate = next(provider.search("shoes", 1))
    assert parse_qs(urlsplit(candidate.url).query)["dpr"] == ["2"]
    assert fake.requests_to("/v1/search")[0].headers["authorization"] == KEY
    provider.close()


def test_pexels_spent_quota_stops_instead_of_hammering(serve) -> None:
    clock = ManualClock()
    reset = clock.time() + 86400  # a day away: more than the provider would wait
    fake = serve(BY_NAME["pexels"], quota=1, quota_reset=reset, clock=clock)
    provider = PexelsProvider(KEY, fake.url, page_size=10, clock=clock)
    found = []
    until = f"{datetime.fromtimestamp(reset, UTC):%Y-%m-%d %H:%M} UTC"
    with pytest.raises(ProviderError, match=f"quota is used up until {until}"):
        found.extend(provider.search("dress", 20))
    assert len(found) == 10 and clock.slept == []  # stopped at once: no wait, no retry
    assert len(fake.requests_to("/v1/search")) == 1
    provider.close()


def test_pexels_waits_for_a_near_quota_reset(serve) -> None:
    clock = ManualClock()
    fake = serve(BY_NAME["pexels"], quota=1, quota_reset=clock.time() + 2, clock=clock)
    provider = PexelsProvider(KEY, fake.url, page_size=10, clock=clock)
    assert len(list(provider.search("dress", 20))) == 20
    assert clock.slept == [2.0]  # waited for X-Ratelimit-Reset (a UNIX time 2 s ahead) ...
    assert len(fake.requests_to("/v1/search")) == 2  # ... rather than meeting a 429
    provider.close()


def test_unsplash_ping_url_and_utm_parameters(serve) -> None:
    fake = serve(BY_NAME["unsplash"])
    provider = UnsplashProvider(KEY, fake.url, app_name="tagvision-test")
    found = list(provider.search("dress", 5))
    for candidate in found:
        assert candidate.ping_url == f"{fake.url}/photos/{candidate.provider_id}/download?ixid=M3w1"
        for link in (candidate.creator_url, candidate.landing_page):
            query = parse_qs(urlsplit(link).query)
            assert query == {"utm_source": ["tagvision-test"], "utm_medium": ["referral"]}
        assert "?w=1080" in candidate.url  # urls.regular
    request = fake.requests_to("/search/photos")[0]
    assert request.headers["authorization"] == f"Client-ID {KEY}" and request.headers["accept-version"] == "v1"
    assert provider.kept(found[0]) is True
    assert fake.pings == [found[0].provider_id]
    assert fake.requests_to(f"/photos/{found[0].provider_id}/download")[0].query == {"ixid": "M3w1"}
    elsewhere = replace(found[1], ping_url="http://127.0.0.2:9/photos/x/download")
    assert provider.kept(elsewhere) is False  # never sent: it would carry the key
    assert fake.pings == [found[0].provider_id]
    provider.close()


def test_unsplash_failed_ping_is_logged_not_raised(serve, caplog) -> None:
    fake = serve(BY_NAME["unsplash"], hourly=1)
    provider = UnsplashProvider(KEY, fake.url)
    candidate = next(provider.search("hat", 1))
    assert provider.kept(candidate) is False and fake.pings == []
    assert "could not record the download" in caplog.text and "hourly request limit" in caplog.text
    provider.close()


def test_unsplash_spent_hourly_limit_is_not_called_a_bad_key(serve) -> None:
    fake = serve(BY_NAME["unsplash"], hourly=1)
    provider = UnsplashProvider(KEY, fake.url, page_size=10)
    with pytest.raises(ProviderError) as caught:
        list(provider.search("dress", 20))
    assert caught.value.code != "Unauthorized" and "hourly request limit (1)" in caught.value.message
    provider.close()


def test_pixabay_paces_by_the_rate_limit_headers(serve) -> None:
    clock = ManualClock()
    fake = serve(BY_NAME["pixabay"], limit=2, window=1.0, clock=clock)
    provider = PixabayProvider(KEY, fake.url, page_size=5, clock=clock)
    found = list(provider.search("hat", 15))
    assert len(found) == 15
    assert clock.slept == [1.0]  # the third call waited for X-RateLimit-Reset (1 s) ...
    assert fake.throttled == 0 and len(fake.requests_to("/api/")) == 3  # ... so no call met a 429
    provider.close()


def test_pixabay_request_shape_and_small_limits(serve) -> None:
    fake = serve(BY_NAME["pixabay"])
    provider = PixabayProvider(KEY, fake.url)
    assert len(list(provider.search("hat", 1))) == 1
    query = fake.requests_to("/api/")[0].query
    assert query == {"key": KEY, "q": "hat", "image_type": "photo", "per_page": "3", "page": "1", "safesearch": "true"}
    provider.close()


def test_pixabay_errors_never_echo_the_key(serve) -> None:
    fake = serve(BY_NAME["pixabay"], echoing_404s=1)
    provider = PixabayProvider(KEY, fake.url)
    with pytest.raises(ProviderError) as caught:
        list(provider.search("hat", 5))
    assert "404" in caught.value.message and "<key>" in caught.value.message
    assert KEY not in str(caught.value) and KEY not in repr(caught.value.args)
