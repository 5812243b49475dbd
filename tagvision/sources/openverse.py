"""Openverse: openly licensed images from Flickr, Wikimedia, museums and more, with ready-made attribution.

``GET {base}/v1/images/?q=&page=&page_size=[&license_type=&license=]`` answers ``result_count``,
``page_count`` and ``results`` (``id``, ``title``, ``url``, ``creator``, ``creator_url``, ``license``,
``license_version``, ``license_url``, ``foreign_landing_url``, ``attribution``, ``filetype``, ``width``,
``height``, ``source``). Anonymous clients may ask for at most 20 per page (more is refused with 401)
and every client for at most 20 pages; registered clients trade ``client_id``/``client_secret`` at
``POST {base}/v1/auth_tokens/token/`` (form-encoded ``grant_type=client_credentials``) for a bearer
token and may ask for up to 500 per page.

Sources: https://api.openverse.org/v1/ (API reference); WordPress/openverse
``api/api/serializers/media_serializers.py`` (page size and page limits, response fields),
``api/conf/settings/openverse.py`` (MAX_ANONYMOUS_PAGE_SIZE=20, MAX_AUTHED_PAGE_SIZE=500,
MAX_PAGINATION_DEPTH=20) and ``api/api/views/oauth2_views.py`` (token endpoint, form encoding only).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx

from tagvision.clock import SYSTEM, Clock
from tagvision.sources.base import Candidate, ProviderError, ProviderHTTP, ProviderUnavailable, take_new

if TYPE_CHECKING:
    from tagvision.config import ProviderSettings

ANONYMOUS_PAGE_SIZE = 20
AUTHED_PAGE_SIZE = 500
MAX_PAGES = 20
_FILETYPES = frozenset({"jpg", "jpeg", "png", "gif", "webp", "bmp"})
_LICENCE_NAMES = {
    "cc0": "CC0",
    "pdm": "Public Domain Mark",
    "sampling+": "CC Sampling+",
    "nc-sampling+": "CC NC-Sampling+",
}


class OpenverseProvider:
    """Search Openverse anonymously, or with client credentials for larger pages."""

    name = "openverse"

    def __init__(
        self,
        base_url: str = "https://api.openverse.org",
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
        license_type: str | None = None,
        license: str | None = None,
        page_size: int = AUTHED_PAGE_SIZE,
        min_interval: float = 1.0,
        transport: httpx.BaseTransport | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.credentials = (client_id, client_secret) if client_id and client_secret else None
        self.filters = {k: v for k, v in (("license_type", license_type), ("license", license)) if v}
        cap = AUTHED_PAGE_SIZE if self.credentials else ANONYMOUS_PAGE_SIZE
        self.page_size = max(1, min(page_size, cap))
        self._http = ProviderHTTP(self.name, base_url, min_interval=min_interval, transport=transport, clock=clock)
        self._token_expires = 0.0

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> OpenverseProvider:
        return cls(
            settings.openverse_url or "https://api.openverse.org",
            client_id=settings.openverse_client_id,
            client_secret=settings.openverse_client_secret,
            license_type=settings.openverse_license_type,
            license=settings.openverse_license,
        )

    def search(self, query: str, limit: int) -> Iterator[Candidate]:
        size = min(self.page_size, max(limit, 1))
        seen: set[str] = set()
        page = 1
        while len(seen) < limit and page <= MAX_PAGES:
            self._authorize()
            data = self._http.get_json("/v1/images/", {"q": query, "page": page, "page_size": size, **self.filters})
            results = data.get("results") if isinstance(data, dict) else None
            if not isinstance(results, list):
                raise ProviderError("openverse answered a search without a 'results' list.")
            yield from take_new(results, self._candidate, seen, limit)
            if len(seen) >= limit:
                return
            if page >= int(data.get("page_count") or 0):
                return
            page += 1

    def close(self) -> None:
        self._http.close()

    def _authorize(self) -> None:
        """Fetch (or renew) the bearer token when client credentials are set."""
        if self.credentials is None or self._http.clock.monotonic() < self._token_expires:
            return
        client_id, client_secret = self.credentials
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
        client = self._http.client()
        client.headers.pop("Authorization", None)
        try:
            response = client.post("/v1/auth_tokens/token/", data=form)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ProviderUnavailable(self.name, str(exc) or type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"openverse did not issue a token: {exc or type(exc).__name__}.") from None
        if response.status_code in (400, 401, 403):
            raise ProviderError(
                "openverse refused the client credentials (TAGVISION_OPENVERSE_CLIENT_ID / "
                "TAGVISION_OPENVERSE_CLIENT_SECRET).",
                code="Unauthorized",
            )
        if response.status_code != 200:
            raise ProviderError(f"openverse answered HTTP {response.status_code} for a token.")
        token = response.json()
        client.headers["Authorization"] = f"Bearer {token['access_token']}"
        self._token_expires = self._http.clock.monotonic() + float(token.get("expires_in") or 3600) - 60

    def _candidate(self, item: dict[str, Any]) -> Candidate | None:
        filetype = (item.get("filetype") or "jpg").lower()
        if not item.get("id") or not item.get("url") or filetype not in _FILETYPES:
            return None
        title, creator = item.get("title") or None, item.get("creator") or None
        licence = _licence(item.get("license"), item.get("license_version"))
        attribution = item.get("attribution") or _attribution(title, creator, licence, item.get("source"))
        return Candidate(
            provider=self.name,
            provider_id=str(item["id"]),
            url=item["url"],
            landing_page=item.get("foreign_landing_url") or None,
            title=title,
            creator=creator,
            creator_url=item.get("creator_url") or None,
            licence=licence,
            licence_url=item.get("license_url") or None,
            attribution=attribution,
            width=item.get("width"),
            height=item.get("height"),
        )


def _licence(code: str | None, version: str | None) -> str | None:
    """``by`` + ``2.0`` -> ``CC BY 2.0``; ``cc0`` -> ``CC0 1.0``; ``pdm`` -> ``Public Domain Mark 1.0``."""
    if not code:
        return None
    name = _LICENCE_NAMES.get(code.lower(), f"CC {code.upper()}")
    return f"{name} {version}" if version else name


def _attribution(title: str | None, creator: str | None, licence: str | None, source: str | None) -> str:
    text = f'"{title}"' if title else "This work"
    text += f" by {creator}" if creator else ""
    text += f" is licensed under {licence}" if licence else ""
    return text + (f" (via {source})" if source else "") + "."
