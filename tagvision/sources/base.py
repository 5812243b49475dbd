"""What every image source hands the downloader: candidates with their licence and attribution.

A provider turns a tag name into :class:`Candidate` images, page by page, and knows nothing
about projects or storage. Network providers speak their own search API through
:class:`ProviderHTTP` (timeouts, retries with backoff on 429 and 5xx honouring ``Retry-After``,
pacing between calls, all waits on an injectable :class:`~tagvision.clock.Clock`); the local
library reads a folder. The downloader (:mod:`tagvision.sources.download`) fetches, validates
and de-duplicates what they find.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np

from tagvision.clock import SYSTEM, Clock
from tagvision.errors import TagvisionError
from tagvision.fetch import retry_after

USER_AGENT = "tagvision/0.1 (self-hosted image classification; +https://github.com/tagvision)"


class ProviderError(TagvisionError):
    """A provider could not be searched (unreachable, refused the key, answered nonsense)."""

    code = "ErrorSource"
    http_status = 502


class ProviderUnavailable(ProviderError):
    """The provider cannot be reached at all (no network, DNS failure): fail fast, name the offline way.

    Its own code tells interfaces that a local library is the way out, without reading the message.
    """

    code = "ErrorSourceUnreachable"

    def __init__(self, provider: str, cause: str) -> None:
        super().__init__(
            f"{provider} cannot be reached ({cause}). Without network access, gather images from "
            "a folder instead: --provider library --library DIR."
        )


@dataclass(frozen=True)
class Candidate:
    """One image a provider found for a tag, with what its licence asks us to keep."""

    provider: str
    provider_id: str  # stable at the provider: re-runs skip what is already in the project
    url: str  # the image file (for the library: a file:// path, read without the network)
    landing_page: str | None = None  # the page that shows the image and its licence
    title: str | None = None
    creator: str | None = None
    creator_url: str | None = None
    licence: str | None = None  # e.g. "CC BY-SA 4.0", "Pexels License", "Unsplash License"
    licence_url: str | None = None
    attribution: str | None = None  # the text to show beside the image
    width: int | None = None
    height: int | None = None
    path: Path | None = None  # the local file, for the library provider
    ping_url: str | None = None  # GET once the image is kept, where the provider asks for it (Unsplash)
    # (plain, flipped) backbone embeddings where the provider already computed them (the library ranks by look)
    embedding: tuple[np.ndarray, np.ndarray] | None = field(default=None, compare=False, repr=False)
    # The look's Verdict (tagvision.sources.look) where the provider judged it among its whole pool (the library)
    verdict: Any = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.provider_id}"

    def source(self) -> dict[str, Any]:
        """What is stored with the image (``Image.source``)."""
        out = {
            "key": self.key,
            "provider": self.provider,
            "url": self.url,
            "landingPage": self.landing_page,
            "title": self.title,
            "creator": self.creator,
            "creatorUrl": self.creator_url,
            "licence": self.licence,
            "licenceUrl": self.licence_url,
            "attribution": self.attribution,
        }
        return {k: v for k, v in out.items() if v is not None}


class Provider(Protocol):
    """A source of candidate images for a tag name."""

    name: str

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        """Up to ``limit`` candidates for ``query``, best first, fetching further pages as needed.

        Raises :class:`ProviderUnavailable` when the provider cannot be reached, and
        :class:`ProviderError` when it refuses (bad key, quota) or answers nonsense.
        """
        ...


@dataclass
class ProviderHTTP:
    """JSON GETs to one provider's API: timeouts, retries with backoff, ``Retry-After``, pacing.

    ``min_interval`` seconds separate the starts of two calls (the provider's rate limit);
    429 and 5xx answers and transport errors are retried ``retries`` times with exponential
    backoff (or the server's ``Retry-After``, capped at ``max_wait``). ``clock`` is read and slept on
    for all of it.
    """

    provider: str
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = 15.0
    retries: int = 4
    backoff: float = 0.5
    max_wait: float = 30.0
    min_interval: float = 0.0
    transport: httpx.BaseTransport | None = None
    clock: Clock = SYSTEM
    _last: float = float("-inf")  # when the last call started: the first never waits
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _client: httpx.Client | None = None

    def client(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.base_url,
                timeout=self.timeout,
                trust_env=False,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json", **self.headers},
                transport=self.transport,
            )
        return self._client

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        attempt = 0
        while True:
            self._pace()
            try:
                response = self.client().get(path, params=params)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempt == 0 and _no_network(exc):
                    raise ProviderUnavailable(self.provider, str(exc) or type(exc).__name__) from None
                if attempt >= self.retries:
                    raise ProviderUnavailable(self.provider, str(exc) or type(exc).__name__) from None
                self._sleep(attempt, None)
                attempt += 1
                continue
            except httpx.HTTPError as exc:
                if attempt >= self.retries:
                    raise ProviderError(f"{self.provider} did not answer: {exc or type(exc).__name__}.") from None
                self._sleep(attempt, None)
                attempt += 1
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt >= self.retries:
                    raise ProviderError(
                        f"{self.provider} answered HTTP {response.status_code} {attempt + 1} times; try again later."
                    )
                self._sleep(attempt, _wait_hint(response, self.clock))
                attempt += 1
                continue
            if response.status_code in (401, 403):
                raise ProviderError(
                    f"{self.provider} refused the request (HTTP {response.status_code}); check its API key.",
                    code="Unauthorized",
                )
            if response.status_code >= 400:
                raise ProviderError(f"{self.provider} answered HTTP {response.status_code}: {response.text[:200]}")
            try:
                return response.json()
            except ValueError:
                raise ProviderError(f"{self.provider} answered something that is not JSON.") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def _pace(self) -> None:
        with self._lock:
            wait = self._last + self.min_interval - self.clock.monotonic()
            if wait > 0:
                self.clock.sleep(wait)
            self._last = self.clock.monotonic()

    def _sleep(self, attempt: int, hint: float | None) -> None:
        self.clock.sleep(min(self.max_wait, hint if hint is not None else self.backoff * 2**attempt))


def take_new(
    items: Iterable[Any], to_candidate: Callable[[Any], Candidate | None], seen: set[str], limit: int
) -> Iterator[Candidate]:
    """The candidates of one page of results, skipping unusable items and provider ids already in ``seen``
    (which it extends), until ``seen`` holds ``limit``."""
    for item in items:
        if len(seen) >= limit:
            return
        candidate = to_candidate(item)
        if candidate is None or candidate.provider_id in seen:
            continue
        seen.add(candidate.provider_id)
        yield candidate


def _wait_hint(response: httpx.Response, clock: Clock) -> float | None:
    """Seconds to wait from ``Retry-After`` or the common rate-limit reset headers (UNIX times read on ``clock``)."""
    hint = retry_after(response.headers.get("Retry-After"), clock)
    if hint is not None:
        return hint
    for name in ("X-RateLimit-Reset", "X-Ratelimit-Reset"):
        value = response.headers.get(name, "")
        if value.isdigit():
            number = int(value)
            return max(0.0, number - clock.time()) if number > 10**9 else float(number)
    return None


def _no_network(exc: Exception) -> bool:
    """DNS failures and unreachable networks: nothing a retry will fix soon."""
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "name or service not known",
            "temporary failure in name resolution",
            "network is unreachable",
            "no address associated",
            "nodename nor servname",
        )
    )
