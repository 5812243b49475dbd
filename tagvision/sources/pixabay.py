"""Pixabay photo search: https://pixabay.com/api/docs/ (read for this module).

What the API documents and asks:

* ``GET https://pixabay.com/api/?key=&q=&image_type=photo&per_page=&page=&safesearch=true``; the
  key travels in the query string, so error messages are scrubbed of it. ``q`` is at most 100
  characters and ``per_page`` 3 to 200. The answer holds ``total``, ``totalHits`` (how many the API
  will page through, at most 500 a query) and ``hits``; a page past them is an error.
* A hit has ``id``, ``pageURL``, ``tags``, ``user``, ``user_id``, ``imageWidth``/``imageHeight``
  (the original's), ``webformatURL`` (640 px) and ``largeImageURL`` (1280 px), which we take.
* Rate limit: 100 requests per 60 seconds per key; answers carry ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` ("the remaining time in seconds after which
  the current rate limit window resets"). When none remain we wait for the reset before the next
  call; a 429 is retried by :class:`ProviderHTTP` after that same header.
* Permanent hot-linking is not allowed ("download them to your server first"): the downloader
  does. Results should be cached for 24 hours and the API is for real human requests, not mass
  downloads: gather modest numbers of images per tag.
* Images are under the Pixabay Content License; "show your users where the images ... are from".
  A wrong key is answered HTTP 400 with a text body about the "API key", not 401 (the docs' error
  section; wording seen in Swinject/SwinjectMVVMExample#6), which we report as ``Unauthorized``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.sources.base import Candidate, ProviderError, ProviderHTTP, take_new

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

NAME = "pixabay"
DEFAULT_URL = "https://pixabay.com"
MIN_PAGE, MAX_PAGE = 3, 200
MAX_WINDOW = 60.0  # seconds: the longest a rate-limit window lasts
LICENCE = "Pixabay Content License"
LICENCE_URL = "https://pixabay.com/service/license-summary/"


class PixabayProvider:
    """Photos from Pixabay for a search term, ``largeImageURL`` size (1280 px)."""

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
        self.page_size = max(MIN_PAGE, min(page_size, MAX_PAGE))
        self._key = key
        self.http = ProviderHTTP(NAME, base_url, transport=transport, clock=clock)
        self.http.client().event_hooks = {"response": [self._watch]}
        self._resume_at = 0.0  # clock.monotonic() when the spent rate-limit window resets

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> PixabayProvider:
        key = settings.pixabay_key
        if not key:
            raise ProviderError(
                "Pixabay needs an API key: set TAGVISION_PIXABAY_KEY (free at https://pixabay.com/api/docs/).",
                code="BadRequestProviderNotConfigured",
            )
        return cls(key, settings.pixabay_url or DEFAULT_URL)

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        per_page = max(MIN_PAGE, min(self.page_size, limit))
        seen: set[str] = set()
        page = 1
        while len(seen) < limit:
            body = self._get(
                {
                    "key": self._key,
                    "q": query[:100],
                    "image_type": "photo",
                    "per_page": per_page,
                    "page": page,
                    "safesearch": "true",
                }
            )
            hits = body.get("hits") if isinstance(body, dict) else None
            if not isinstance(hits, list):
                raise ProviderError("pixabay answered a search without a 'hits' list.")
            yield from take_new(hits, _candidate, seen, limit)
            if len(seen) >= limit:
                return
            total = body.get("totalHits")
            if not hits or not isinstance(total, int) or page * per_page >= total:
                return
            page += 1

    def close(self) -> None:
        self.http.close()

    def _get(self, params: dict[str, Any]) -> Any:
        wait = self._resume_at - self.http.clock.monotonic()
        if wait > 0:
            self.http.clock.sleep(wait)
        try:
            return self.http.get_json("/api/", params)
        except ProviderError as exc:  # never show the key, whatever the server or httpx put in the text
            if self._key and self._key in exc.message:
                exc.message = exc.message.replace(self._key, "<key>")
                exc.args = (exc.message,)
            raise

    def _watch(self, response: httpx.Response) -> None:
        """Pace by the rate-limit headers; name a refused key as such."""
        remaining, reset = response.headers.get("X-RateLimit-Remaining"), response.headers.get("X-RateLimit-Reset")
        if remaining == "0" and reset:
            now = self.http.clock.monotonic()
            try:
                self._resume_at = now + min(MAX_WINDOW, max(0.0, float(reset)))
            except ValueError:
                self._resume_at = now + MAX_WINDOW
        if response.status_code == 400 and b"api key" in response.read().lower():
            raise ProviderError(
                "pixabay refused the API key (HTTP 400: invalid or missing API key); check TAGVISION_PIXABAY_KEY.",
                code="Unauthorized",
            )


def _candidate(hit: Any) -> Candidate | None:
    if not isinstance(hit, dict) or hit.get("id") is None:
        return None
    url = hit.get("largeImageURL") or hit.get("webformatURL")
    if not url:
        return None
    user, user_id = hit.get("user") or None, hit.get("user_id")
    return Candidate(
        NAME,
        str(hit["id"]),
        url,
        landing_page=hit.get("pageURL"),
        title=hit.get("tags") or None,
        creator=user,
        creator_url=f"https://pixabay.com/users/{user}-{user_id}/" if user and user_id else None,
        licence=LICENCE,
        licence_url=LICENCE_URL,
        attribution=f"Image by {user} from Pixabay" if user else "Image from Pixabay",
        width=_int(hit.get("imageWidth")),
        height=_int(hit.get("imageHeight")),
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
