"""Pexels photo search: https://www.pexels.com/api/documentation/ (read for this module).

What the API documents and asks:

* ``GET https://api.pexels.com/v1/search?query=&per_page=&page=`` with the key as the whole
  ``Authorization`` header. ``per_page`` is at most 80 (help.pexels.com, "What steps can I take to
  avoid hitting the rate limit"). The answer holds ``photos``, ``total_results`` and, while more
  pages follow, ``next_page``.
* A photo has ``id``, ``url`` (its page on Pexels), ``photographer``, ``photographer_url``, ``alt``,
  ``width``/``height`` (the original's) and ``src`` sizes: ``original`` (full size, often several
  MB), ``large2x`` (940x650 at twice the density, so up to 1880x1300), ``large`` (940x650), ...
  We take ``large2x``; ``width``/``height`` stay those Pexels reports for the original.
* Guidelines: "Always credit our photographers when possible (e.g. "Photo by John Doe on Pexels"
  with a link to the photo page on Pexels)". Photos are under the Pexels License.
* Quota: 200 requests an hour and 20,000 a month by default. Every 200 answer carries
  ``X-Ratelimit-Limit``, ``X-Ratelimit-Remaining`` and ``X-Ratelimit-Reset`` (a UNIX timestamp);
  a 429 answer does not (help.pexels.com, "How do I see how many requests I have remaining").
  Once ``X-Ratelimit-Remaining`` reaches 0 we wait for the reset when it is near and otherwise
  stop with a message, instead of spending retries on 429s.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.sources.base import Candidate, ProviderError, ProviderHTTP, take_new

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

NAME = "pexels"
DEFAULT_URL = "https://api.pexels.com"
MAX_PAGE = 80
LICENCE = "Pexels License"
LICENCE_URL = "https://www.pexels.com/license/"


class PexelsProvider:
    """Photos from Pexels for a search term, ``large2x`` size (at most 1880x1300)."""

    name = NAME

    def __init__(
        self,
        key: str,
        base_url: str = DEFAULT_URL,
        *,
        page_size: int = MAX_PAGE,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.page_size = max(1, min(page_size, MAX_PAGE))
        self.http = ProviderHTTP(NAME, base_url, headers={"Authorization": key}, transport=transport, clock=clock)
        self.http.client().event_hooks = {"response": [self._watch]}
        self._reset_at: float | None = None  # UNIX time the quota refills, once it ran out

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> PexelsProvider:
        key = settings.pexels_key
        if not key:
            raise ProviderError(
                "Pexels needs an API key: set TAGVISION_PEXELS_KEY (free at https://www.pexels.com/api/).",
                code="BadRequestProviderNotConfigured",
            )
        return cls(key, settings.pexels_url or DEFAULT_URL)

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        per_page = max(1, min(self.page_size, limit))
        seen: set[str] = set()
        page = 1
        while len(seen) < limit:
            self._wait_for_quota()
            body = self.http.get_json("/v1/search", {"query": query, "per_page": per_page, "page": page})
            photos = body.get("photos") if isinstance(body, dict) else None
            if not isinstance(photos, list):
                raise ProviderError("pexels answered a search without a 'photos' list.")
            yield from take_new(photos, _candidate, seen, limit)
            if len(seen) >= limit:
                return
            if not photos or not body.get("next_page"):
                return
            page += 1

    def close(self) -> None:
        self.http.close()

    def _watch(self, response: httpx.Response) -> None:
        """Remember when the quota refills once a 200 answer says none is left."""
        remaining, reset = response.headers.get("X-Ratelimit-Remaining"), response.headers.get("X-Ratelimit-Reset")
        if remaining is not None:
            self._reset_at = float(reset) if remaining == "0" and reset and reset.isdigit() else None

    def _wait_for_quota(self) -> None:
        if self._reset_at is None:
            return
        wait = self._reset_at - self.http.clock.time()
        if wait > self.http.max_wait:
            until = datetime.fromtimestamp(self._reset_at, UTC)
            raise ProviderError(
                f"pexels: the API key's request quota is used up until {until:%Y-%m-%d %H:%M} UTC "
                "(X-Ratelimit-Remaining: 0); try again then, or ask Pexels for a higher limit."
            )
        if wait > 0:
            self.http.clock.sleep(wait)
        self._reset_at = None


def _candidate(photo: Any) -> Candidate | None:
    if not isinstance(photo, dict) or photo.get("id") is None:
        return None
    src = photo.get("src") or {}
    url = src.get("large2x") or src.get("large") or src.get("original")
    if not url:
        return None
    name = photo.get("photographer") or None
    return Candidate(
        NAME,
        str(photo["id"]),
        url,
        landing_page=photo.get("url"),
        title=photo.get("alt") or None,
        creator=name,
        creator_url=photo.get("photographer_url"),
        licence=LICENCE,
        licence_url=LICENCE_URL,
        attribution=f"Photo by {name} on Pexels" if name else "Photo provided by Pexels",
        width=_int(photo.get("width")),
        height=_int(photo.get("height")),
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
