"""A loopback Pixabay: ``GET /api/`` as https://pixabay.com/api/docs/ describes it.

The key is the ``key`` query parameter (a wrong one is answered 400 "[ERROR 400] Invalid or
missing API key" as text); ``per_page`` must be 3..200 and ``page`` within ``totalHits`` (400
otherwise); every answer carries ``X-RateLimit-Limit/-Remaining/-Reset`` (seconds until the window
resets) and a request over the limit is answered 429. ``server.throttled`` counts those 429s.
Images are the real photos, served at ``/img/<id>.jpg``.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from PIL import Image

from tagvision.clock import SYSTEM, Clock
from tests.fake_providers import FakeServer, Request, json_response


def make_pixabay(
    photos_by_tag: dict[str, list[Path]],
    key: str,
    *,
    rate_limit_at: int | None = None,
    limit: int = 100,
    window: float = 60.0,
    echoing_404s: int = 0,
    overlap: int = 0,
    clock: Clock = SYSTEM,
) -> FakeServer:
    """``rate_limit_at``: the Nth search (1-based) is answered 429 with ``Retry-After: 1``.
    ``limit`` requests per ``window`` seconds of ``clock``. ``echoing_404s``: the first N searches answer 404
    with a page that echoes the request (key included), as some proxies do. ``overlap``: each
    page repeats that many photos of the previous one (results that shift)."""
    server = FakeServer()
    server.throttled = 0
    by_tag: dict[str, list[dict]] = {}
    for tag, paths in photos_by_tag.items():
        by_tag[tag.lower()] = []
        for path in paths:
            photo_id = 2_000_000 + len(server.photos)
            server.photos[str(photo_id)] = path
            by_tag[tag.lower()].append(_hit(server, photo_id, path, tag))
    lock, state = threading.Lock(), {"searches": 0, "start": float("-inf"), "used": 0}  # the first opens a window

    def text(status: int, body: str, headers: dict[str, str]):
        return status, {"Content-Type": "text/plain; charset=utf-8", **headers}, body.encode()

    def search(request: Request):
        with lock:
            state["searches"] += 1
            now = clock.monotonic()
            if now - state["start"] >= window:
                state["start"], state["used"] = now, 0
            state["used"] += 1
            reset = math.ceil(state["start"] + window - now)
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(0, limit - state["used"])),
                "X-RateLimit-Reset": str(reset),
            }
            if state["used"] > limit or state["searches"] == rate_limit_at:
                server.throttled += 1
                return text(429, "[ERROR 429] Too many requests.", {"Retry-After": "1", **headers})
            if state["searches"] <= echoing_404s:
                return text(404, f"Not found: {request.path}?key={request.query.get('key')}", headers)
        if request.query.get("key") != key:
            return text(400, '[ERROR 400] "Invalid or missing API key"', headers)
        page, per_page = int(request.query.get("page", 1)), int(request.query.get("per_page", 20))
        if not 3 <= per_page <= 200:
            return text(400, '[ERROR 400] "per_page" is out of valid range.', headers)
        found = by_tag.get(request.query.get("q", "").strip().lower(), [])
        start = (page - 1) * (per_page - overlap)
        if page > 1 and start >= len(found):
            return text(400, '[ERROR 400] "page" is out of valid range.', headers)
        return json_response(
            {"total": len(found), "totalHits": len(found), "hits": found[start : start + per_page]}, headers=headers
        )

    server.routes["/api/"] = search
    return server


def _hit(server: FakeServer, photo_id: int, path: Path, tag: str) -> dict:
    with Image.open(path) as img:
        width, height = img.size
    image = server.image_url(str(photo_id))
    user, user_id = f"Maker{photo_id % 4}", 100 + photo_id % 4
    return {
        "id": photo_id,
        "pageURL": f"https://pixabay.com/photos/{tag}-{photo_id}/",
        "type": "photo",
        "tags": f"{tag}, clothing, fashion",
        "previewURL": f"{image}?s=150",
        "webformatURL": f"{image}?s=640",
        "largeImageURL": f"{image}?s=1280",
        "imageWidth": width,
        "imageHeight": height,
        "imageSize": path.stat().st_size,
        "views": 100,
        "downloads": 10,
        "likes": 1,
        "comments": 0,
        "user_id": user_id,
        "user": user,
        "userImageURL": "",
    }
