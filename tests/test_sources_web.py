"""The web providers against loopback fakes of their APIs, serving real clothing photos.

Every URL here is 127.0.0.1 (the fakes) or ``.invalid`` (an unreachable provider, which a stand-in
resolver fails at once): no test touches the internet. Pacing and retry waits run on a
:class:`ManualClock`: the tests assert the waits a provider chose, not how long the machine took.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tagvision.clock import ManualClock
from tagvision.config import Settings
from tagvision.fetch import FetchError, fetch
from tagvision.images import validate
from tagvision.sources.base import Candidate, ProviderError, ProviderUnavailable
from tagvision.sources.bing import BingProvider
from tagvision.sources.openverse import OpenverseProvider
from tagvision.sources.wikimedia import WikimediaProvider
from tests.conftest import CLOTHING, photos
from tests.fake_providers import FakeServer, json_response, unresolvable
from tests.fake_providers.bing import make_bing
from tests.fake_providers.openverse import make_openverse
from tests.fake_providers.wikimedia import make_wikimedia

TAGS = ("dress", "hat", "shoes")
KEY = "test-key"


@dataclass
class Setup:
    make: Callable[..., FakeServer]
    build: Callable[..., Any]  # (base url, page size, **options) -> provider
    path: str  # the search route
    page_param: str  # the request parameter that moves through the results
    pace: float = 0.0  # the seconds the provider leaves between two calls, as built here


SETUPS = {
    "openverse": Setup(
        make_openverse,
        lambda url, size, **kw: OpenverseProvider(url, page_size=size, min_interval=0, **kw),
        "/v1/images/",
        "page",
    ),
    "wikimedia": Setup(
        make_wikimedia,
        lambda url, size, **kw: WikimediaProvider(f"{url}/w/api.php", page_size=size, **kw),
        "/w/api.php",
        "gsroffset",
        pace=0.2,
    ),
    "bing": Setup(
        make_bing,
        lambda url, size, **kw: BingProvider(url, KEY, page_size=size, **kw),
        "/v7.0/images/search",
        "offset",
    ),
}
providers = pytest.mark.parametrize("name", sorted(SETUPS))


@pytest.fixture(scope="module")
def photos_by_tag() -> dict[str, list[Path]]:
    return {tag: photos(CLOTHING, "train", tag, 25) for tag in TAGS}


@pytest.fixture
def serve(photos_by_tag):
    started: list[FakeServer] = []

    def start(name: str, **knobs) -> FakeServer:
        started.append(SETUPS[name].make(photos_by_tag, **knobs))
        return started[-1]

    yield start
    for fake in started:  # shutting down waits out the server's 0.5 s poll: let it finish beside the next test
        threading.Thread(target=fake.close, daemon=True).start()


def searched(fake: FakeServer, name: str) -> list[dict[str, str]]:
    return [r.query for r in fake.requests_to(SETUPS[name].path)]


@providers
def test_search_pages_to_exactly_the_limit(serve, name):
    fake = serve(name, duplicate=True, broken=True, svg=True)
    provider = SETUPS[name].build(fake.url, 10, clock=ManualClock())  # paced in virtual time
    found = list(provider.search("Dress", 22))
    provider.close()

    assert len(found) == 22
    assert len({c.provider_id for c in found}) == 22  # the repeated entry on page 2 came once
    assert all(c.provider == name and c.key == f"{name}:{c.provider_id}" for c in found)
    assert not any(".svg" in c.url for c in found)
    pages = searched(fake, name)
    assert len(pages) == 3 and len({p.get(SETUPS[name].page_param) for p in pages}) == 3
    for c in found:
        assert c.url.startswith(fake.url + "/img/")
        assert c.landing_page and c.landing_page.startswith(fake.url) and c.title and c.attribution
        assert c.width and c.height
        if c.url.rsplit("/", 1)[1].removesuffix(".jpg") in fake.broken:
            with pytest.raises(FetchError) as err:
                fetch(c.url, max_bytes=6_000_000, allow_private=True)
            assert err.value.status == 404
        else:
            facts = validate(fetch(c.url, max_bytes=6_000_000, allow_private=True).data)
            assert facts.format == "JPEG"
    assert sum(c.url.rsplit("/", 1)[1].removesuffix(".jpg") in fake.broken for c in found) == 1


@providers
def test_search_stops_at_the_last_page(serve, name):
    fake = serve(name)
    provider = SETUPS[name].build(fake.url, 10, clock=ManualClock())
    assert len(list(provider.search("hat", 100))) == 25
    assert len(searched(fake, name)) == 3  # 10 + 10 + 5, nothing asked past the end
    assert list(provider.search("zebra", 10)) == []
    assert len(searched(fake, name)) == 4


@providers
def test_search_is_lazy(serve, name):
    fake = serve(name)
    results = SETUPS[name].build(fake.url, 10).search("shoes", 22)
    assert searched(fake, name) == []
    next(results)
    assert len(searched(fake, name)) == 1


@providers
def test_rate_limited_page_is_retried_after_retry_after(serve, name):
    fake = serve(name, rate_limit_nth=2)
    clock = ManualClock()
    provider = SETUPS[name].build(fake.url, 10, clock=clock)
    found = list(provider.search("hat", 15))
    pace = SETUPS[name].pace
    # Page 2 waited for the pace (if any), then met the 429 and waited its Retry-After, not the 0.5 s backoff;
    # the retry came over a second after page 2, so it needed no pacing.
    assert clock.slept == pytest.approx([pace, 1.0] if pace else [1.0])
    assert len(found) == 15
    pages = searched(fake, name)
    assert len(pages) == 3 and pages[1] == pages[2]  # page 2, refused with 429, then asked again


@providers
def test_unreachable_provider_fails_fast_naming_the_offline_way(name, monkeypatch):
    looked_up = unresolvable(monkeypatch)
    clock = ManualClock()
    provider = SETUPS[name].build("http://no-such-host.invalid", 10, clock=clock)
    with pytest.raises(ProviderUnavailable) as err:
        list(provider.search("dress", 5))
    assert looked_up == ["no-such-host.invalid"] and clock.slept == []  # one try: no retry, no backoff
    assert "--provider library" in str(err.value) and err.value.code == "ErrorSourceUnreachable"


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("openverse", {"detail": "Internal server error."}),
        ("bing", {"_type": "ErrorResponse"}),
        ("wikimedia", {"error": {"code": "internal_api_error", "info": "boom"}}),
    ],
)
def test_nonsense_answer_is_a_provider_error(serve, name, answer):
    fake = serve(name)
    fake.routes[SETUPS[name].path] = lambda _request: json_response(answer)
    with pytest.raises(ProviderError) as err:
        list(SETUPS[name].build(fake.url, 10).search("dress", 5))
    assert err.value.code == "ErrorSource" and name in err.value.message


# Openverse


def test_openverse_composes_attribution_when_the_api_has_none():
    provider = OpenverseProvider("http://no-such-host.invalid")
    item = {
        "id": "abc",
        "url": "http://127.0.0.1:9/img/abc.jpg",
        "title": "Red dress",
        "creator": "Ana",
        "license": "by-nc-sa",
        "license_version": "3.0",
        "source": "flickr",
        "filetype": "jpg",
    }
    candidate = provider._candidate(item)
    assert candidate is not None and candidate.licence == "CC BY-NC-SA 3.0"
    assert candidate.attribution == '"Red dress" by Ana is licensed under CC BY-NC-SA 3.0 (via flickr).'
    public = provider._candidate({**item, "license": "pdm", "license_version": "1.0", "title": None, "creator": ""})
    assert public is not None and public.licence == "Public Domain Mark 1.0"
    assert public.attribution == "This work is licensed under Public Domain Mark 1.0 (via flickr)."
    assert provider._candidate({**item, "filetype": "svg"}) is None


def test_openverse_maps_licence_and_attribution_anonymously(serve):
    fake = serve("openverse")
    found = list(
        OpenverseProvider(fake.url, page_size=50, min_interval=0, license_type="commercial").search("dress", 25)
    )
    pages = [r for r in fake.log if r.path == "/v1/images/"]
    assert [p.query["page_size"] for p in pages] == ["20", "20"]  # anonymous pages are at most 20
    assert all("authorization" not in p.headers and p.query["license_type"] == "commercial" for p in pages)
    assert [c.licence for c in found[:3]] == ["CC BY 2.0", "CC BY-SA 4.0", "CC0 1.0"]
    first = found[0]
    assert first.attribution == (
        '"Dress photo 0" by Photographer 0 is licensed under CC BY 2.0. To view a copy '
        "of this license, visit https://creativecommons.org/licenses/by/2.0/."
    )
    assert (first.creator, first.creator_url, first.title) == (
        "Photographer 0",
        f"{fake.url}/people/0",
        "Dress photo 0",
    )
    assert first.licence_url == "https://creativecommons.org/licenses/by/2.0/"
    assert first.landing_page == f"{fake.url}/photos/{first.provider_id}"
    assert first.source()["licence"] == "CC BY 2.0"


def test_openverse_client_credentials_get_a_bearer_token_and_larger_pages(serve):
    fake = serve("openverse", client_id="tv-client", client_secret="tv-secret")
    provider = OpenverseProvider(
        fake.url, client_id="tv-client", client_secret="tv-secret", page_size=50, min_interval=0
    )
    assert len(list(provider.search("shoes", 25))) == 25
    token, search = fake.log
    assert (token.method, token.path) == ("POST", "/v1/auth_tokens/token/")
    assert token.query == {"grant_type": "client_credentials", "client_id": "tv-client", "client_secret": "tv-secret"}
    assert search.headers["authorization"].startswith("Bearer ") and search.query["page_size"] == "25"
    list(provider.search("hat", 5))
    assert [r.method for r in fake.log] == ["POST", "GET", "GET"]  # the token is reused

    wrong = OpenverseProvider(fake.url, client_id="tv-client", client_secret="nope", min_interval=0)
    with pytest.raises(ProviderError) as err:
        list(wrong.search("hat", 5))
    assert err.value.code == "Unauthorized" and "TAGVISION_OPENVERSE_CLIENT_ID" in err.value.message


def test_providers_from_settings(serve, monkeypatch):
    fakes = {
        name: serve(name, client_id="id", client_secret="secret") if name == "openverse" else serve(name)
        for name in SETUPS
    }
    for name, value in {
        "OPENVERSE_URL": fakes["openverse"].url,
        "OPENVERSE_CLIENT_ID": "id",
        "OPENVERSE_CLIENT_SECRET": "secret",
        "OPENVERSE_LICENSE_TYPE": "modification",
        "WIKIMEDIA_URL": f"{fakes['wikimedia'].url}/w/api.php",
        "BING_ENDPOINT": fakes["bing"].url,
        "BING_KEY": KEY,
        "BING_MARKET": "en-GB",
    }.items():
        monkeypatch.setenv(f"TAGVISION_{name}", value)
    for kind in (OpenverseProvider, WikimediaProvider, BingProvider):
        provider = kind.from_settings(Settings.load().providers)
        assert len(list(provider.search("dress", 3))) == 3
        provider.close()
    assert fakes["openverse"].requests_to("/v1/images/")[0].query["license_type"] == "modification"
    assert fakes["bing"].requests_to("/v7.0/")[0].query["mkt"] == "en-GB"


# Wikimedia Commons


def test_wikimedia_request_user_agent_thumbnails_and_metadata(serve):
    fake = serve("wikimedia", svg=True)
    clock = ManualClock()
    found = list(WikimediaProvider(f"{fake.url}/w/api.php", page_size=10, clock=clock).search("dress", 25))
    requests = fake.requests_to("/w/api.php")
    assert len(found) == 25 and len(requests) == 3
    assert clock.slept == pytest.approx([0.2, 0.2])  # paced at most 5 requests a second
    assert all("tagvision" in r.headers["user-agent"] for r in requests)
    first = requests[0].query
    assert first["gsrsearch"] == "dress filetype:bitmap" and first["iiurlwidth"] == "1024"
    assert first["maxlag"] == "5" and set(first["iiprop"].split("|")) == {"url", "size", "mime", "extmetadata"}
    assert requests[1].query["gsroffset"] == "10" and requests[1].query["continue"] == "gsroffset||"
    assert all(c.title and "drawing" not in c.title for c in found)  # the SVG drawing was skipped
    assert [c.title for c in found[:2]] == ["Dress photo 0", "Dress photo 1"]  # in search rank, not page-id order
    by_title = {c.title: c for c in found}
    zero, one, two = by_title["Dress photo 0"], by_title["Dress photo 1"], by_title["Dress photo 2"]
    assert zero.url.startswith(f"{fake.url}/img/")  # the 1024 px rendering, not the original
    assert zero.attribution == "Photo: Photographer 0 for the dress collection"
    assert (zero.licence, zero.licence_url) == ("CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0")
    assert zero.creator_url == f"{fake.url}/wiki/User:Photographer_0"
    assert zero.landing_page == f"{fake.url}/wiki/File:Dress_photo_0.jpg"
    assert one.attribution == "Photographer 1, CC BY 2.0, via Wikimedia Commons"
    assert (two.creator, two.licence, two.licence_url) == ("Studio 2 & Co", "Public domain", None)


def test_wikimedia_waits_out_maxlag(serve):
    fake = serve("wikimedia", lagged=1)
    clock = ManualClock()
    found = list(WikimediaProvider(f"{fake.url}/w/api.php", clock=clock).search("hat", 5))
    assert len(found) == 5 and len(fake.requests_to("/w/api.php")) == 2
    assert clock.slept == [5.0]  # the default lag_wait, before asking again


def test_wikimedia_refuses_clients_without_a_descriptive_user_agent(serve):
    fake = serve("wikimedia")
    with pytest.raises(ProviderError) as err:
        list(WikimediaProvider(f"{fake.url}/w/api.php", user_agent="python-httpx/0.28").search("hat", 5))
    assert "403" in err.value.message


# Bing


def test_bing_maps_unknown_licence_and_follows_next_offset(serve):
    fake = serve("bing", next_offset_gap=2)
    found = list(BingProvider(fake.url, KEY, page_size=10).search("shoes", 15))
    requests = fake.requests_to("/v7.0/images/search")
    assert [r.query["offset"] for r in requests] == ["0", "12"]
    assert all(r.headers["ocp-apim-subscription-key"] == KEY for r in requests)
    assert requests[0].query["mkt"] == "en-US" and requests[0].query["safeSearch"] == "Moderate"
    assert len(found) == 15
    first: Candidate = found[0]
    assert first.licence is None and first.licence_url is None and first.attribution == "via 127.0.0.1"
    assert (first.title, first.landing_page) == ("Shoes photo 0", f"{fake.url}/shop/shoes/0.html")
    assert first.provider_id == first.url.rsplit("/", 1)[1].removesuffix(".jpg")  # the imageId


@pytest.mark.parametrize(("endpoint", "key"), [("http://127.0.0.1:9", None), (None, KEY), (None, None)])
def test_bing_without_endpoint_or_key_is_not_configured(endpoint, key, monkeypatch):
    with pytest.raises(ProviderError) as err:
        BingProvider(endpoint, key)
    assert err.value.code == "BadRequestProviderNotConfigured"
    assert "TAGVISION_BING_ENDPOINT" in err.value.message and "TAGVISION_BING_KEY" in err.value.message
    monkeypatch.delenv("TAGVISION_BING_KEY", raising=False)
    monkeypatch.setenv("TAGVISION_BING_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(ProviderError, match="TAGVISION_BING_KEY"):
        BingProvider.from_settings(Settings.load().providers)


def test_bing_wrong_key_is_unauthorized(serve):
    fake = serve("bing")
    with pytest.raises(ProviderError) as err:
        list(BingProvider(fake.url, "wrong-key").search("hat", 5))
    assert err.value.code == "Unauthorized"
    assert len(fake.requests_to("/v7.0/images/search")) == 1  # a refused key is not retried
