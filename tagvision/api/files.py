"""Signed downloads: training and prediction images, thumbnails and export bundles.

A link from the API (``originalImageUri``, ``thumbnailUri``, ``downloadUri``) works without a
key header until it expires; a request that carries the Training-Key works without a link.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tagvision import images
from tagvision.api.auth import matches
from tagvision.api.links import FILES_PATH, KINDS
from tagvision.errors import NotFound
from tagvision.service import Service

router = APIRouter(prefix=FILES_PATH, tags=["Files"])
SHA256 = re.compile(r"[0-9a-f]{64}")


@router.get(
    "/{kind}/{ident}",
    summary="Download an image, thumbnail or export through a signed link",
    response_class=Response,
    responses={200: {"content": {"image/*": {}, "application/zip": {}}}},
)
async def download(
    request: Request, kind: str, ident: str, expires: Annotated[int, Query()] = 0, sig: Annotated[str, Query()] = ""
) -> Response:
    service: Service = request.app.state.service
    if kind not in KINDS:
        raise NotFound(f"Unknown file kind {kind!r}.", code="NotFound")
    keyed = matches(request.headers.get("training-key"), service.keys.current().training)
    if not keyed and not request.app.state.links.valid(kind, ident, expires, sig):
        raise HTTPException(
            401,
            detail={
                "code": "Unauthorized",
                "message": "This link is not valid or has "
                "expired; ask the API for a fresh one, or send the Training-Key.",
            },
        )
    return await run_in_threadpool(_file, service, kind, ident)


def _file(service: Service, kind: str, ident: str) -> Response:
    cache = {"Cache-Control": "private, max-age=3600"}
    if kind == "export":
        name, data = service.exports.file(ident)
        return Response(
            data,
            media_type="application/zip",
            headers={**cache, "Content-Disposition": f'attachment; filename="{name}"'},
        )
    blobs = service.ctx.blobs
    if not SHA256.fullmatch(ident) or not blobs.exists(ident):
        raise NotFound("This image is no longer stored.", code="NotFoundImage")
    data = blobs.get(ident)
    if kind.endswith("thumbnail"):
        return Response(images.thumbnail_jpeg(data), media_type="image/jpeg", headers=cache)
    fmt = images.sniff_format(data)
    return Response(data, media_type=images.FORMATS.get(fmt or "", "application/octet-stream"), headers=cache)
