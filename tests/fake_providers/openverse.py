"""A loopback Openverse API: ``GET /v1/images/`` and ``POST /v1/auth_tokens/token/``.

Speaks the documented protocol (https://api.openverse.org/v1/, WordPress/openverse ``api/``):
``q``/``page``/``page_size`` with ``result_count``, ``page_count`` and ``results`` in the
ImageSerializer's shape; anonymous ``page_size`` above 20 is refused with 401, pages beyond the last
(or beyond 20) with 400; a form-encoded client-credentials POST issues a bearer token, and a request
with an unknown bearer is refused with 401.
"""

from __future__ import annotations

import math
import secrets
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from PIL import Image

from tests.fake_providers import FakeServer, Request, json_response

LICENCES = (("by", "2.0"), ("by-sa", "4.0"), ("cc0", "1.0"))


def make_openverse(
    photos_by_tag: dict[str, list[Path]],
    *,
    rate_limit_nth: int | None = None,
    duplicate: bool = False,
    broken: bool = False,
    svg: bool = False,
    client_id: str | None = None,
    client_secret: str | None = None,
) -> FakeServer:
    """Photos of tag ``t`` answer the query ``t``. Knobs: the ``rate_limit_nth`` search answered 429
    (``Retry-After: 1``); the first result repeated at the top of page 2; the second photo's link broken;
    an SVG drawing second on page 1; client credentials that the token endpoint accepts."""
    fake = FakeServer()
    tokens: set[str] = set()
    searches = [0]
    results: dict[str, list[dict]] = {}
    for tag, paths in photos_by_tag.items():
        results[tag.lower()] = []
        for n, path in enumerate(paths):
            image_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"openverse/{tag}/{path.name}"))
            fake.photos[image_id] = path
            if broken and n == 1:
                fake.broken.add(image_id)
            results[tag.lower()].append(_result(fake, tag, n, image_id, path))
    if svg:
        for tag, items in results.items():
            items.insert(
                1,
                {
                    **items[0],
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"svg/{tag}")),
                    "filetype": "svg",
                    "url": f"{fake.url}/img/{tag}-drawing.svg",
                },
            )

    def images(request: Request):
        searches[0] += 1
        if searches[0] == rate_limit_nth:
            return json_response(
                {"detail": "Request was throttled. Expected available in 1 second."}, 429, {"Retry-After": "1"}
            )
        authorization = request.headers.get("authorization")
        if authorization is not None and authorization.removeprefix("Bearer ") not in tokens:
            return json_response({"detail": "Authentication credentials were not provided."}, 401)
        page, page_size = int(request.query.get("page", 1)), int(request.query.get("page_size", 20))
        if authorization is None and page_size > 20:
            return json_response({"detail": "Ensure this value is less than or equal to 20."}, 401)
        items = list(results.get(request.query.get("q", "").strip().lower(), []))
        if duplicate and len(items) > page_size:
            items.insert(page_size, items[0])
        page_count = min(math.ceil(len(items) / page_size), 20)
        if page > max(page_count, 1) or page > 20:
            return json_response({"detail": "Invalid page."}, 400)
        return json_response(
            {
                "result_count": len(items),
                "page_count": page_count,
                "page_size": page_size,
                "page": page,
                "results": items[(page - 1) * page_size : page * page_size],
                "warnings": [],
            }
        )

    def token(request: Request):
        if request.method != "POST":
            return json_response({"detail": 'Method "GET" not allowed.'}, 405)
        if request.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return json_response({"error": "unsupported_grant_type"}, 400)
        form = request.query
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type"}, 400)
        if client_id is None or (form.get("client_id"), form.get("client_secret")) != (client_id, client_secret):
            return json_response({"error": "invalid_client"}, 401)
        tokens.add(issued := secrets.token_urlsafe(24))
        return json_response(
            {"access_token": issued, "expires_in": 36000, "token_type": "Bearer", "scope": "read write groups"}
        )

    fake.routes["/v1/images/"] = images
    fake.routes["/v1/auth_tokens/token/"] = token
    fake.httpd.RequestHandlerClass.do_POST = _post_handler(fake)  # type: ignore[attr-defined]
    return fake


def _result(fake: FakeServer, tag: str, n: int, image_id: str, path: Path) -> dict:
    with Image.open(path) as img:
        width, height = img.size
    code, version = LICENCES[n % len(LICENCES)]
    kind = "publicdomain/zero" if code == "cc0" else "licenses/" + code
    licence_url = f"https://creativecommons.org/{kind}/{version}/"
    name = "CC0" if code == "cc0" else f"CC {code.upper()}"
    title, creator = f"{tag.title()} photo {n}", f"Photographer {n}"
    return {
        "id": image_id,
        "title": title,
        "indexed_on": "2024-05-01T00:00:00Z",
        "foreign_landing_url": f"{fake.url}/photos/{image_id}",
        "url": fake.image_url(image_id),
        "creator": creator,
        "creator_url": f"{fake.url}/people/{n}",
        "license": code,
        "license_version": version,
        "license_url": licence_url,
        "provider": "flickr",
        "source": "flickr",
        "category": "photograph",
        "filesize": path.stat().st_size,
        "filetype": "jpg",
        "tags": [{"name": tag, "accuracy": None}],
        "attribution": f'"{title}" by {creator} is licensed under {name} {version}. To view a copy of this '
        f"license, visit {licence_url}.",
        "fields_matched": ["title"],
        "mature": False,
        "height": height,
        "width": width,
        "thumbnail": f"{fake.url}/v1/images/{image_id}/thumb/",
        "detail_url": f"{fake.url}/v1/images/{image_id}/",
        "related_url": f"{fake.url}/v1/images/{image_id}/related/",
        "unstable__sensitivity": [],
    }


def _post_handler(fake: FakeServer):
    """FakeServer answers GETs; the token endpoint is a form POST (the form arrives as ``Request.query``)."""

    def do_post(handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0)).decode()
        request = Request(
            "POST",
            urlsplit(handler.path).path,
            {k: v[-1] for k, v in parse_qs(body).items()},
            {k.lower(): v for k, v in handler.headers.items()},
        )
        with fake._lock:
            fake.log.append(request)
        route = fake.routes.get(request.path)
        status, headers, payload = route(request) if route else json_response({"error": "no such route"}, 404)
        handler.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(payload))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    return do_post
