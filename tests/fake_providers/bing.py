"""A loopback Bing Image Search v7 endpoint: ``GET /v7.0/images/search``.

Speaks the documented protocol (learn.microsoft.com bing-image-search reference: query parameters,
response objects, paging): the key in ``Ocp-Apim-Subscription-Key`` (401 with the Azure gateway's
``{"error": {"code": "401", ...}}`` otherwise), ``q``/``count`` (default 35, at most 150)/``offset``/
``mkt``/``safeSearch``, and an ``Images`` answer with ``value[]`` of ``Image`` objects,
``totalEstimatedMatches``, ``currentOffset`` and ``nextOffset``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

from tests.fake_providers import FakeServer, Request, json_response


def make_bing(
    photos_by_tag: dict[str, list[Path]],
    *,
    key: str = "test-key",
    rate_limit_nth: int | None = None,
    duplicate: bool = False,
    broken: bool = False,
    svg: bool = False,
    next_offset_gap: int = 0,
) -> FakeServer:
    """Photos of tag ``t`` answer ``q=t``. Knobs: the ``rate_limit_nth`` search answered 429
    (``Retry-After: 1``); the first result repeated at the top of page 2; the second photo's link broken;
    an SVG result second on page 1; ``nextOffset`` running ``next_offset_gap`` ahead of
    ``offset + len(value)`` (as when Bing drops duplicates it found)."""
    fake = FakeServer()
    searches = [0]
    images: dict[str, list[dict]] = {}
    for tag, paths in photos_by_tag.items():
        images[tag.lower()] = []
        for n, path in enumerate(paths):
            image_id = hashlib.sha1(f"bing/{tag}/{path.name}".encode()).hexdigest().upper()
            fake.photos[image_id] = path
            if broken and n == 1:
                fake.broken.add(image_id)
            images[tag.lower()].append(_image(fake, tag, n, image_id, path))
        if svg:
            drawing = _image(fake, tag, 99, hashlib.sha1(f"svg/{tag}".encode()).hexdigest().upper(), paths[0])
            drawing.update(encodingFormat="svg", contentUrl=f"{fake.url}/img/{tag}-drawing.svg")
            images[tag.lower()].insert(1, drawing)

    def search(request: Request):
        searches[0] += 1
        if request.headers.get("ocp-apim-subscription-key") != key:
            return json_response(
                {
                    "error": {
                        "code": "401",
                        "message": "Access denied due to invalid subscription "
                        "key or wrong API endpoint. Make sure to provide a valid key for an "
                        "active subscription and use a correct regional API endpoint for your "
                        "resource.",
                    }
                },
                401,
            )
        if searches[0] == rate_limit_nth:
            return json_response(
                {"error": {"code": "429", "message": "Rate limit is exceeded. Try again in 1 seconds."}},
                429,
                {"Retry-After": "1"},
            )
        q = request.query
        count, offset = min(int(q.get("count", 35)), 150), int(q.get("offset", 0))
        if q.get("safeSearch", "Moderate") not in ("Off", "Moderate", "Strict") or not q.get("q"):
            return json_response(
                {
                    "_type": "ErrorResponse",
                    "errors": [
                        {
                            "code": "InvalidRequest",
                            "subCode": "ParameterInvalidValue",
                            "message": "Parameter has invalid value.",
                            "parameter": "safeSearch" if q.get("q") else "q",
                        }
                    ],
                },
                400,
            )
        items = list(images.get(q["q"].strip().lower(), []))
        if duplicate and len(items) > count:
            items.insert(count, items[0])
        value = items[offset : offset + count]
        return json_response(
            {
                "_type": "Images",
                "instrumentation": {"_type": "ResponseInstrumentation"},
                "readLink": f"{fake.url}/v7.0/images/search?q={q['q']}",
                "webSearchUrl": f"{fake.url}/images/search?q={q['q']}&FORM=OIIARP",
                "queryContext": {
                    "originalQuery": q["q"],
                    "alterationDisplayQuery": q["q"],
                    "alterationOverrideQuery": f"+{q['q']}",
                    "adultIntent": False,
                },
                "totalEstimatedMatches": len(items),
                "currentOffset": offset,
                "nextOffset": offset + len(value) + next_offset_gap,
                "value": value,
            }
        )

    fake.routes["/v7.0/images/search"] = search
    return fake


def _image(fake: FakeServer, tag: str, n: int, image_id: str, path: Path) -> dict:
    with Image.open(path) as img:
        width, height = img.size
    page = f"{fake.url}/shop/{tag}/{n}.html"
    return {
        "webSearchUrl": f"{fake.url}/images/search?view=detailv2&id={image_id}",
        "name": f"{tag.title()} photo {n}",
        "thumbnailUrl": f"{fake.url}/th?id=OIP.{image_id}",
        "datePublished": "2022-03-01T12:00:00.0000000Z",
        "isFamilyFriendly": True,
        "contentUrl": fake.image_url(image_id),
        "hostPageUrl": page,
        "contentSize": f"{path.stat().st_size} B",
        "encodingFormat": "jpeg",
        "hostPageDisplayUrl": page,
        "width": width,
        "height": height,
        "hostPageDiscoveredDate": "2022-02-01T00:00:00.0000000Z",
        "thumbnail": {"width": 474, "height": round(474 * height / width)},
        "imageInsightsToken": f"ccid_{image_id[:8]}*cp_{image_id[8:24]}",
        "insightsMetadata": {"pagesIncludingCount": 1, "availableSizesCount": 1},
        "imageId": image_id,
        "accentColor": "8B4D3F",
    }
