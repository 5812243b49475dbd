"""Wikimedia Commons: freely licensed photos through the MediaWiki Action API.

One ``GET api.php?action=query&generator=search&gsrsearch=<q> filetype:bitmap&gsrnamespace=6&gsrlimit=N
&prop=imageinfo&iiprop=url|size|mime|extmetadata&iiurlwidth=1024&format=json&formatversion=2`` returns a
page of File: pages (``pages[]`` with ``pageid``, ``title``, search rank ``index`` and ``imageinfo[0]``:
``url``, ``thumburl`` (a 1024 px rendering), ``descriptionurl``, ``mime``, ``width``/``height`` and
``extmetadata`` fields of the form ``{"value": ...}``, HTML-formatted). Further pages come from merging
the answer's ``continue`` object (``gsroffset``, ``continue``) into the next request. Wikimedia requires a
descriptive User-Agent with contact details and asks API clients to send ``maxlag`` and to back off when
it answers the ``maxlag`` error (with HTTP 200); requests are paced at most 5 per second.

Sources: https://www.mediawiki.org/wiki/API:Search, https://www.mediawiki.org/wiki/API:Imageinfo,
https://www.mediawiki.org/wiki/API:Continue, https://www.mediawiki.org/wiki/Manual:Maxlag_parameter,
https://commons.wikimedia.org/wiki/Commons:Credits#extmetadata (LicenseShortName, LicenseUrl, Artist,
ObjectName, Attribution) and https://meta.wikimedia.org/wiki/User-Agent_policy.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.sources.base import USER_AGENT, Candidate, ProviderError, ProviderHTTP, take_new

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

DEFAULT_URL = "https://commons.wikimedia.org/w/api.php"
BITMAP_MIMES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})  # not SVG, TIFF, PDF, video
MAX_PAGE_SIZE = 50
_TAG = re.compile(r"<[^>]+>")
_HREF = re.compile(r"""href=["']([^"']+)["']""")


class WikimediaProvider:
    """Search Wikimedia Commons for bitmap files and their licence metadata."""

    name = "wikimedia"

    def __init__(
        self,
        api_url: str = DEFAULT_URL,
        *,
        page_size: int = 20,
        user_agent: str = USER_AGENT,
        maxlag: int = 5,
        lag_wait: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.api_url = api_url
        self.page_size = max(1, min(page_size, MAX_PAGE_SIZE))
        self.maxlag, self.lag_wait = maxlag, lag_wait
        self._http = ProviderHTTP(
            self.name, api_url, headers={"User-Agent": user_agent}, min_interval=0.2, transport=transport, clock=clock
        )

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> WikimediaProvider:
        return cls(
            settings.wikimedia_url or DEFAULT_URL,
            user_agent=settings.wikimedia_user_agent or USER_AGENT,
        )

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        params: dict[str, Any] = {
            "action": "query",
            "format": "json",
            "formatversion": 2,
            "maxlag": self.maxlag,
            "generator": "search",
            "gsrsearch": f"{query} filetype:bitmap",
            "gsrnamespace": 6,
            "gsrlimit": min(self.page_size, max(limit, 1)),
            "prop": "imageinfo",
            "iiprop": "url|size|mime|extmetadata",
            "iiurlwidth": 1024,
            "iiextmetadatafilter": "LicenseShortName|LicenseUrl|Artist|ObjectName|Attribution",
        }
        seen: set[str] = set()
        lagged = 0
        while len(seen) < limit:
            data = self._http.get_json(self.api_url, params)
            if not isinstance(data, dict):
                raise ProviderError("wikimedia answered a search that is not a JSON object.")
            error = data.get("error") or {}
            if error.get("code") == "maxlag" and lagged < 3:
                lagged += 1
                self._http.clock.sleep(self.lag_wait)
                continue
            if error:
                raise ProviderError(f"wikimedia answered {error.get('code')}: {error.get('info')}")
            pages = (data.get("query") or {}).get("pages") or []
            yield from take_new(sorted(pages, key=lambda p: p.get("index", 0)), self._candidate, seen, limit)
            if len(seen) >= limit:
                return
            if not data.get("continue"):
                return
            params = {**params, **data["continue"]}

    def close(self) -> None:
        self._http.close()

    def _candidate(self, page: dict[str, Any]) -> Candidate | None:
        info = (page.get("imageinfo") or [{}])[0]
        if info.get("mime") not in BITMAP_MIMES or not (info.get("thumburl") or info.get("url")):
            return None
        meta = {k: v.get("value") for k, v in (info.get("extmetadata") or {}).items() if isinstance(v, dict)}
        landing = info.get("descriptionurl") or None
        creator, licence = _text(meta.get("Artist")), _text(meta.get("LicenseShortName"))
        href = _HREF.search(str(meta.get("Artist") or ""))
        file_title = str(page.get("title") or "").removeprefix("File:").rsplit(".", 1)[0] or None
        thumb = bool(info.get("thumburl"))
        return Candidate(
            provider=self.name,
            provider_id=str(page.get("pageid") or page.get("title")),
            url=info["thumburl"] if thumb else info["url"],
            landing_page=landing,
            title=_text(meta.get("ObjectName")) or file_title,
            creator=creator,
            creator_url=urljoin(landing or self.api_url, href.group(1)) if href else None,
            licence=licence,
            licence_url=_text(meta.get("LicenseUrl")),
            attribution=_text(meta.get("Attribution"))
            or ", ".join(p for p in (creator, licence, "via Wikimedia Commons") if p),
            width=info.get("thumbwidth" if thumb else "width"),
            height=info.get("thumbheight" if thumb else "height"),
        )


def _text(value: object) -> str | None:
    """Plain text from an extmetadata value (HTML tags dropped, entities decoded, spaces collapsed)."""
    text = " ".join(html.unescape(_TAG.sub(" ", str(value or ""))).split())
    return text or None
