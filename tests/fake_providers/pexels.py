"""A loopback Pexels: ``GET /v1/search`` as https://www.pexels.com/api/documentation/ describes it.

The key is the whole ``Authorization`` header (401 otherwise); ``per_page`` is capped at 80;
``next_page`` appears while more follow; 200 answers carry ``X-Ratelimit-Limit/-Remaining/-Reset``
(a UNIX timestamp) and a spent quota is answered 429 without them, as Pexels' help centre says.
Images are the real photos, served at ``/img/<id>.jpg``.
"""

from __future__ import annotations

import threading
from pathlib import Path

from PIL import Image

from tagvision.clock import SYSTEM, Clock
from tests.fake_providers import FakeServer, Request, json_response

MAX_PAGE = 80


def make_pexels(
    photos_by_tag: dict[str, list[Path]],
    key: str,
    *,
    rate_limit_at: int | None = None,
    quota: int = 20_000,
    quota_reset: float | None = None,
    overlap: int = 0,
    clock: Clock = SYSTEM,
) -> FakeServer:
    """``rate_limit_at``: the Nth search (1-based) is answered 429 with ``Retry-After: 1``.
    ``quota``: searches allowed until ``quota_reset`` (UNIX time on ``clock``; default in 30 days), when it
    refills. ``overlap``: each page repeats that many photos of the previous one (results that shift)."""
    server = FakeServer()
    by_tag: dict[str, list[dict]] = {}
    for tag, paths in photos_by_tag.items():
        by_tag[tag.lower()] = []
        for path in paths:
            photo_id = 1_000_000 + len(server.photos)
            server.photos[str(photo_id)] = path
            by_tag[tag.lower()].append(_photo(server, photo_id, path, tag))
    month = 30 * 86400
    lock = threading.Lock()
    state = {"searches": 0, "used": 0, "reset": int(quota_reset if quota_reset is not None else clock.time() + month)}

    def search(request: Request):
        if request.headers.get("authorization") != key:
            return json_response({"error": "Authorization field missing or invalid"}, 401)
        with lock:
            state["searches"] += 1
            if state["searches"] == rate_limit_at:
                return 429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"Too Many Requests"
            if clock.time() >= state["reset"]:  # a new month: the quota refills
                state["used"], state["reset"] = 0, state["reset"] + month
            if state["used"] >= quota:
                return 429, {"Content-Type": "text/plain"}, b"Too Many Requests"
            state["used"] += 1
            limits = {
                "X-Ratelimit-Limit": str(quota),
                "X-Ratelimit-Remaining": str(quota - state["used"]),
                "X-Ratelimit-Reset": str(state["reset"]),
            }
        page, per_page = int(request.query.get("page", 1)), min(int(request.query.get("per_page", 15)), MAX_PAGE)
        found = by_tag.get(request.query.get("query", "").strip().lower(), [])
        start = (page - 1) * (per_page - overlap)
        body: dict = {
            "page": page,
            "per_page": per_page,
            "photos": found[start : start + per_page],
            "total_results": len(found),
        }
        if start + per_page < len(found):
            body["next_page"] = f"https://api.pexels.com/v1/search/?page={page + 1}&per_page={per_page}&query=x"
        return json_response(body, headers=limits)

    server.routes["/v1/search"] = search
    return server


def _photo(server: FakeServer, photo_id: int, path: Path, tag: str) -> dict:
    with Image.open(path) as img:
        width, height = img.size
    image = server.image_url(str(photo_id))
    maker = photo_id % 7
    return {
        "id": photo_id,
        "width": width,
        "height": height,
        "url": f"https://www.pexels.com/photo/{tag}-{photo_id}/",
        "photographer": f"Photographer {maker}",
        "photographer_url": f"https://www.pexels.com/@p{maker}",
        "photographer_id": maker,
        "avg_color": "#978E82",
        "alt": f"A {tag}",
        "liked": False,
        "src": {
            "original": image,
            "large2x": f"{image}?dpr=2&h=650&w=940",
            "large": f"{image}?h=650&w=940",
            "medium": f"{image}?h=350",
            "small": f"{image}?h=130",
            "tiny": f"{image}?h=200&w=280",
        },
    }
