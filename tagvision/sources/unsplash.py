"""Unsplash photo search: https://unsplash.com/documentation and the API guidelines
(https://help.unsplash.com/en/articles/2511245-unsplash-api-guidelines), read for this module.

What the API documents and asks:

* ``GET https://api.unsplash.com/search/photos?query=&per_page=&page=`` with
  ``Authorization: Client-ID <access key>`` and ``Accept-Version: v1``; ``per_page`` is at most 30.
  The answer holds ``total``, ``total_pages`` and ``results``.
* A photo has ``id``, ``description``/``alt_description``, ``width``/``height`` (the original's),
  ``urls`` (``raw``, ``full``, ``regular`` = 1080 px wide, ``small``, ``thumb``), ``links.html``
  (its page), ``links.download_location`` and ``user`` (``name``, ``links.html``).
* Guidelines: use the ``photo.urls`` image URLs; when the app does "something similar to a
  download", send an authorised request to ``links.download_location`` (it is each candidate's
  ``ping_url``: call :meth:`UnsplashProvider.kept` for the images kept); credit "Photo by <name>
  on Unsplash" with links back whose query carries ``utm_source=<app name>&utm_medium=referral``
  (help.unsplash.com, "Guideline: Attribution" and "Guideline: Triggering a download").
* Photos are under the Unsplash License. Demo apps may make 50 requests an hour; answers carry
  ``X-Ratelimit-Limit``/``X-Ratelimit-Remaining``. A spent limit is answered 403 "Rate Limit
  Exceeded" (undocumented; seen in varietywalls/variety#457), reported as such, not as a bad key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.sources.base import Candidate, ProviderError, ProviderHTTP, take_new

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

log = logging.getLogger("tagvision.sources")
NAME = "unsplash"
DEFAULT_URL = "https://api.unsplash.com"
MAX_PAGE = 30
LICENCE = "Unsplash License"
LICENCE_URL = "https://unsplash.com/license"


class UnsplashProvider:
    """Photos from Unsplash for a search term, ``regular`` size (1080 px wide)."""

    name = NAME

    def __init__(
        self,
        key: str,
        base_url: str = DEFAULT_URL,
        *,
        page_size: int = MAX_PAGE,
        app_name: str = "tagvision",
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.page_size = max(1, min(page_size, MAX_PAGE))
        self.app_name = app_name
        self.http = ProviderHTTP(
            NAME,
            base_url,
            headers={"Authorization": f"Client-ID {key}", "Accept-Version": "v1"},
            transport=transport,
            clock=clock,
        )
        self.http.client().event_hooks = {"response": [_watch]}

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> UnsplashProvider:
        key = settings.unsplash_key
        if not key:
            raise ProviderError(
                "Unsplash needs an access key: set TAGVISION_UNSPLASH_KEY (register an app at "
                "https://unsplash.com/developers).",
                code="BadRequestProviderNotConfigured",
            )
        return cls(key, settings.unsplash_url or DEFAULT_URL, app_name=settings.unsplash_app or "tagvision")

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        per_page = max(1, min(self.page_size, limit))
        seen: set[str] = set()
        page = 1
        while len(seen) < limit:
            body = self.http.get_json("/search/photos", {"query": query, "per_page": per_page, "page": page})
            results = body.get("results") if isinstance(body, dict) else None
            if not isinstance(results, list):
                raise ProviderError("unsplash answered a search without a 'results' list.")
            yield from take_new(results, self._candidate, seen, limit)
            if len(seen) >= limit:
                return
            total_pages = body.get("total_pages")
            if not results or not isinstance(total_pages, int) or page >= total_pages:
                return
            page += 1

    def kept(self, candidate: Candidate) -> bool:
        """Tell Unsplash an image was kept (its download endpoint, with our key); False, logged, if that failed.

        Only a ``ping_url`` on the API's own host is called, as it carries the access key.
        """
        url = candidate.ping_url
        try:
            if not url or urlsplit(url).netloc != urlsplit(self.http.base_url).netloc:
                raise ProviderError(f"its download_location {url!r} is not on the API's host")
            self.http.get_json(url)
            return True
        except ProviderError as exc:
            log.warning("unsplash: could not record the download of %s: %s", candidate.provider_id, exc.message)
            return False

    def close(self) -> None:
        self.http.close()

    def _candidate(self, photo: Any) -> Candidate | None:
        if not isinstance(photo, dict) or not photo.get("id") or not (photo.get("urls") or {}).get("regular"):
            return None
        links, user = photo.get("links") or {}, photo.get("user") or {}
        name = user.get("name") or None
        return Candidate(
            NAME,
            str(photo["id"]),
            photo["urls"]["regular"],
            landing_page=self._utm(links.get("html")),
            title=photo.get("description") or photo.get("alt_description") or None,
            creator=name,
            creator_url=self._utm((user.get("links") or {}).get("html")),
            licence=LICENCE,
            licence_url=LICENCE_URL,
            attribution=f"Photo by {name} on Unsplash" if name else "Photo on Unsplash",
            width=_int(photo.get("width")),
            height=_int(photo.get("height")),
            ping_url=links.get("download_location"),
        )

    def _utm(self, url: str | None) -> str | None:
        """``url`` with Unsplash's referral parameters added to its query."""
        if not url:
            return None
        parts = urlsplit(url)
        query = [*parse_qsl(parts.query), ("utm_source", self.app_name), ("utm_medium", "referral")]
        return urlunsplit(parts._replace(query=urlencode(query)))


def _watch(response: httpx.Response) -> None:
    """A spent hourly limit comes as 403 "Rate Limit Exceeded": say so, not "check the key"."""
    if response.status_code == 403 and (
        response.headers.get("X-Ratelimit-Remaining") == "0" or b"rate limit" in response.read().lower()
    ):
        limit = response.headers.get("X-Ratelimit-Limit")
        raise ProviderError(
            f"unsplash: the access key's hourly request limit{f' ({limit})' if limit else ''} is "
            "used up; try again within the hour, or apply for production access to raise it."
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
