"""A loopback Wikimedia Commons Action API: ``GET /w/api.php?action=query&generator=search&prop=imageinfo``.

Speaks the documented protocol (mediawiki.org API:Search, API:Imageinfo, API:Continue,
Manual:Maxlag_parameter): ``gsrsearch`` with the ``filetype:bitmap`` keyword, ``gsroffset``/``gsrlimit``
paging with a ``continue`` object, ``formatversion=2`` pages (a list in page-id order, rank in ``index``)
whose ``imageinfo`` carries ``url``, ``thumburl`` (the rendering asked for by ``iiurlwidth``),
``descriptionurl``, ``mime`` and HTML-formatted ``extmetadata`` (filtered by ``iiextmetadatafilter``).
Like Wikimedia it refuses clients without a descriptive User-Agent (403), and answers the ``maxlag`` error
with HTTP 200 and ``Retry-After``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from tests.fake_providers import FakeServer, Request, json_response

LICENCES = (
    ("CC BY-SA 4.0", "https://creativecommons.org/licenses/by-sa/4.0"),
    ("CC BY 2.0", "https://creativecommons.org/licenses/by/2.0"),
    ("Public domain", None),
)


def make_wikimedia(
    photos_by_tag: dict[str, list[Path]],
    *,
    rate_limit_nth: int | None = None,
    duplicate: bool = False,
    broken: bool = False,
    svg: bool = False,
    lagged: int = 0,
) -> FakeServer:
    """Photos of tag ``t`` answer ``gsrsearch=t filetype:bitmap``. Knobs: the ``rate_limit_nth`` request
    answered 429 (``Retry-After: 1``); the first result repeated at the top of the second batch; the second
    photo's link broken; an SVG drawing second in the first batch; the first ``lagged`` requests answered
    with the ``maxlag`` error."""
    fake = FakeServer()
    calls = [0]
    pages: dict[str, list[dict]] = {}
    pageid = 100_000  # counting down, so page-id order is not search rank
    for tag, paths in photos_by_tag.items():
        pages[tag.lower()] = []
        for n, path in enumerate(paths):
            pageid -= 1
            image_id = f"commons-{pageid}"
            fake.photos[image_id] = path
            if broken and n == 1:
                fake.broken.add(image_id)
            pages[tag.lower()].append(_page(fake, tag, n, pageid, image_id, path))
        if svg:
            drawing = _page(fake, tag, 99, pageid := pageid - 1, f"commons-{pageid}", paths[0])
            drawing["title"] = f"File:{tag.title()} drawing.svg"
            drawing["imageinfo"][0].update(mime="image/svg+xml", url=f"{fake.url}/originals/{tag}-drawing.svg")
            pages[tag.lower()].insert(1, drawing)

    def api(request: Request):
        calls[0] += 1
        if calls[0] == rate_limit_nth:
            return 429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"Too many requests."
        agent = request.headers.get("user-agent", "")
        if "/" not in agent or not any(s in agent for s in ("http", "@")) or agent.startswith("python-"):
            return 403, {"Content-Type": "text/plain"}, b"Please set a user-agent and respect our robot policy."
        q = request.query
        if calls[0] <= lagged and q.get("maxlag"):
            return json_response(
                {
                    "error": {
                        "code": "maxlag",
                        "info": "Waiting for 10.64.0.7: 6 seconds lagged.",
                        "host": "10.64.0.7",
                        "lag": 6,
                        "type": "db",
                    }
                },
                200,
                {"Retry-After": "5", "X-Database-Lag": "6", "MediaWiki-API-Error": "maxlag"},
            )
        expected = {
            "action": "query",
            "format": "json",
            "formatversion": "2",
            "generator": "search",
            "gsrnamespace": "6",
            "prop": "imageinfo",
        }
        if any(q.get(k) != v for k, v in expected.items()) or "extmetadata" not in q.get("iiprop", "").split("|"):
            return json_response({"error": {"code": "badvalue", "info": f"Unexpected parameters: {q}"}})
        terms = q.get("gsrsearch", "").split()
        items = list(pages.get(" ".join(t for t in terms if t != "filetype:bitmap").lower(), []))
        if "filetype:bitmap" not in terms:
            items = []  # only the bitmap search is modelled
        offset, limit = int(q.get("gsroffset", 0)), int(q.get("gsrlimit", 10))
        if duplicate and len(items) > limit:
            items.insert(limit, items[0])
        keep = set(q.get("iiextmetadatafilter", "").split("|")) - {""}
        batch = []
        for rank, page in enumerate(items[offset : offset + limit], start=offset + 1):
            info = dict(page["imageinfo"][0])
            info["extmetadata"] = {k: v for k, v in info["extmetadata"].items() if not keep or k in keep}
            batch.append({**page, "index": rank, "imageinfo": [info]})
        answer: dict = {"batchcomplete": True, "query": {"pages": sorted(batch, key=lambda p: p["pageid"])}}
        if offset + limit < len(items):
            answer["continue"] = {"gsroffset": offset + limit, "continue": "gsroffset||"}
        if not batch:
            answer.pop("query")
        return json_response(answer)

    fake.routes["/w/api.php"] = api
    return fake


def _page(fake: FakeServer, tag: str, n: int, pageid: int, image_id: str, path: Path) -> dict:
    with Image.open(path) as img:
        width, height = img.size
    title = f"{tag.title()} photo {n}"
    name = f"Studio {n} &amp; Co" if n % 3 == 2 else f"Photographer {n}"
    host = fake.url.removeprefix("http:")
    licence, licence_url = LICENCES[n % len(LICENCES)]
    meta = {
        "DateTime": {"value": "2021-06-01 10:00:00", "source": "mediawiki-metadata", "hidden": ""},
        "ObjectName": {"value": title, "source": "mediawiki-metadata", "hidden": ""},
        "Artist": {
            "value": f'<a href="{host}/wiki/User:Photographer_{n}" title="User:Photographer {n}">{name}</a>',
            "source": "commons-desc-page",
        },
        "LicenseShortName": {"value": licence, "source": "commons-desc-page", "hidden": ""},
        "UsageTerms": {"value": licence, "source": "commons-desc-page", "hidden": ""},
        "AttributionRequired": {"value": "false" if licence_url is None else "true", "source": "commons-desc-page"},
        "Copyrighted": {"value": "False" if licence_url is None else "True", "source": "commons-desc-page"},
    }
    if licence_url:
        meta["LicenseUrl"] = {"value": licence_url, "source": "commons-desc-page", "hidden": ""}
    if n == 0:
        meta["Attribution"] = {"value": f"Photo: <b>{name}</b> for the {tag} collection", "source": "commons-desc-page"}
    file_title = f"File:{title}.jpg"
    page_url = f"{fake.url}/wiki/{file_title.replace(' ', '_')}"
    return {
        "pageid": pageid,
        "ns": 6,
        "title": file_title,
        "imageinfo": [
            {
                "size": path.stat().st_size,
                "width": width,
                "height": height,
                "thumburl": fake.image_url(image_id),
                "thumbwidth": min(width, 1024),
                "thumbheight": height if width <= 1024 else round(height * 1024 / width),
                "url": f"{fake.url}/originals/{image_id}.jpg",
                "descriptionurl": page_url,
                "descriptionshorturl": f"{fake.url}/w/index.php?curid={pageid}",
                "mime": "image/jpeg",
                "extmetadata": meta,
            }
        ],
    }
