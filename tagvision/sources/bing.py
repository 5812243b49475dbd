"""Bing Image Search v7 and compatible endpoints (Microsoft retired its own on 11 August 2025).

``GET {endpoint}/v7.0/images/search?q=&count=&offset=&mkt=&safeSearch=`` with the key in
``Ocp-Apim-Subscription-Key`` answers an ``Images`` object: ``value[]`` of ``Image`` (``imageId``,
``contentUrl``, ``hostPageUrl``, ``name``, ``width``, ``height``, ``encodingFormat``, ...),
``totalEstimatedMatches`` and ``nextOffset``, the offset to ask for next (Bing drops duplicates, so it
may run ahead of ``offset + count``). ``count`` is at most 150. Bing says nothing about licences, so a
candidate carries no licence and credits the page it was found on.

Sources: https://learn.microsoft.com/en-us/bing/search-apis/bing-image-search/reference/query-parameters,
https://learn.microsoft.com/en-us/bing/search-apis/bing-image-search/reference/response-objects,
https://learn.microsoft.com/en-us/bing/search-apis/bing-image-search/how-to/search-response and
https://learn.microsoft.com/en-us/bing/search-apis/bing-web-search/page-results (count, offset, nextOffset).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.sources.base import Candidate, ProviderError, ProviderHTTP, take_new

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

MAX_COUNT = 150
FORMATS = frozenset({"jpeg", "png", "gif", "animatedgif", "bmp", "webp"})


class BingProvider:
    """Search a Bing Image Search v7-compatible endpoint with a subscription key."""

    name = "bing"

    def __init__(
        self,
        endpoint: str | None,
        key: str | None,
        *,
        page_size: int = 50,
        market: str = "en-US",
        safe_search: str = "Moderate",
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        if not endpoint or not key:
            raise ProviderError(
                "Bing image search is not configured: set TAGVISION_BING_ENDPOINT (e.g. "
                "https://api.bing.microsoft.com) and TAGVISION_BING_KEY.",
                code="BadRequestProviderNotConfigured",
            )
        self.page_size = max(1, min(page_size, MAX_COUNT))
        self.market, self.safe_search = market, safe_search
        self._http = ProviderHTTP(
            self.name, endpoint, headers={"Ocp-Apim-Subscription-Key": key}, transport=transport, clock=clock
        )

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> BingProvider:
        return cls(
            settings.bing_endpoint,
            settings.bing_key,
            market=settings.bing_market or "en-US",
            safe_search=settings.bing_safesearch or "Moderate",
        )

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        count = min(self.page_size, max(limit, 1))
        seen: set[str] = set()
        offset = 0
        while len(seen) < limit:
            data = self._http.get_json(
                "/v7.0/images/search",
                {"q": query, "count": count, "offset": offset, "mkt": self.market, "safeSearch": self.safe_search},
            )
            values = data.get("value") if isinstance(data, dict) else None
            if not isinstance(values, list):
                raise ProviderError("bing answered a search without a 'value' list.")
            yield from take_new(values, self._candidate, seen, limit)
            if len(seen) >= limit:
                return
            next_offset = data.get("nextOffset")
            next_offset = next_offset if isinstance(next_offset, int) else offset + count
            total = data.get("totalEstimatedMatches")
            if not values or next_offset <= offset or (isinstance(total, int) and next_offset >= total):
                return
            offset = next_offset

    def close(self) -> None:
        self._http.close()

    def _candidate(self, item: dict[str, Any]) -> Candidate | None:
        url = item.get("contentUrl")
        encoding = str(item.get("encodingFormat") or "jpeg").lower()
        if not url or encoding not in FORMATS:
            return None
        page = item.get("hostPageUrl") or None
        host = urlsplit(page).hostname if page else None
        return Candidate(
            provider=self.name,
            provider_id=str(item.get("imageId") or url),
            url=url,
            landing_page=page,
            title=item.get("name") or None,
            licence=None,
            attribution=f"via {host}" if host else None,
            width=item.get("width"),
            height=item.get("height"),
        )
