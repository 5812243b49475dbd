"""A loopback Unsplash: ``GET /search/photos`` and the download endpoint, as unsplash.com/documentation says.

Requests need ``Authorization: Client-ID <key>`` (401 ``{"errors": [...]}`` otherwise);
``per_page`` is capped at 30; answers carry ``total``/``total_pages`` and
``X-Ratelimit-Limit/-Remaining``; a spent hourly limit is answered 403 "Rate Limit Exceeded".
``links.download_location`` points at ``/photos/<id>/download``, which records each authorised
ping in ``server.pings``. Images are the real photos, served at ``/img/<id>.jpg``.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from PIL import Image

from tests.fake_providers import FakeServer, Request, json_response

MAX_PAGE = 30
UNAUTHORIZED = {"errors": ["OAuth error: The access token is invalid"]}


def make_unsplash(
    photos_by_tag: dict[str, list[Path]],
    key: str,
    *,
    rate_limit_at: int | None = None,
    hourly: int = 50,
    overlap: int = 0,
) -> FakeServer:
    """``rate_limit_at``: the Nth search (1-based) is answered 429 with ``Retry-After: 1``.
    ``hourly``: requests allowed (demo apps get 50). ``overlap``: each page repeats that many
    photos of the previous one (results that shift)."""
    server = FakeServer()
    server.pings = []  # photo ids whose download endpoint was called with the key
    by_tag: dict[str, list[dict]] = {}
    for tag, paths in photos_by_tag.items():
        by_tag[tag.lower()] = []
        for path in paths:
            n = len(server.photos)
            photo_id = f"u{n:04d}Xk_{tag[:3]}"
            server.photos[photo_id] = path
            by_tag[tag.lower()].append(_photo(server, n, photo_id, path, tag))
    lock, state = threading.Lock(), {"searches": 0, "used": 0}

    def limited(request: Request, search: bool):
        """The error answer for this request, if any, and the rate-limit headers."""
        if request.headers.get("authorization") != f"Client-ID {key}":
            return json_response(UNAUTHORIZED, 401), {}
        with lock:
            state["searches"] += search
            if search and state["searches"] == rate_limit_at:
                return (429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"Too Many Requests"), {}
            state["used"] += 1
            used = state["used"]
        headers = {"X-Ratelimit-Limit": str(hourly), "X-Ratelimit-Remaining": str(max(0, hourly - used))}
        if used > hourly:
            return (403, {"Content-Type": "text/plain", **headers}, b"Rate Limit Exceeded"), headers
        return None, headers

    def search(request: Request):
        refused, headers = limited(request, True)
        if refused:
            return refused
        page, per_page = int(request.query.get("page", 1)), min(int(request.query.get("per_page", 10)), MAX_PAGE)
        found = by_tag.get(request.query.get("query", "").strip().lower(), [])
        start = (page - 1) * (per_page - overlap)
        return json_response(
            {
                "total": len(found),
                "total_pages": math.ceil(len(found) / per_page),
                "results": found[start : start + per_page],
            },
            headers=headers,
        )

    def download(request: Request):
        refused, headers = limited(request, False)
        if refused:
            return refused
        photo_id = request.path.split("/")[2]
        with lock:
            server.pings.append(photo_id)
        return json_response({"url": server.image_url(photo_id)}, headers=headers)

    server.routes["/search/photos"] = search
    for photo_id in server.photos:
        server.routes[f"/photos/{photo_id}/download"] = download
    return server


def _photo(server: FakeServer, n: int, photo_id: str, path: Path, tag: str) -> dict:
    with Image.open(path) as img:
        width, height = img.size
    image = server.image_url(photo_id)
    user = f"user{n % 5}"
    return {
        "id": photo_id,
        "width": width,
        "height": height,
        "color": "#60544D",
        "description": f"A {tag} on a plain background" if n % 2 else None,
        "alt_description": f"a {tag}",
        "urls": {
            "raw": image,
            "full": f"{image}?q=85",
            "regular": f"{image}?w=1080&fit=max",
            "small": f"{image}?w=400",
            "thumb": f"{image}?w=200",
        },
        "links": {
            "self": f"{server.url}/photos/{photo_id}",
            "html": f"https://unsplash.com/photos/{photo_id}",
            "download": f"https://unsplash.com/photos/{photo_id}/download",
            "download_location": f"{server.url}/photos/{photo_id}/download?ixid=M3w1",
        },
        "user": {
            "id": user,
            "username": user,
            "name": f"Photographer {user}",
            "links": {"html": f"https://unsplash.com/@{user}"},
        },
    }
