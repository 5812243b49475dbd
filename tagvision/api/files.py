"""Signed downloads: training and prediction images, thumbnails and export bundles.

A link from the API (``originalImageUri``, ``thumbnailUri``, ``downloadUri``) works without a
key header until it expires; a request that carries the Training-Key works without a link.
The links and the bytes come from the service (``tagvision.service.files``).
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from tagvision.errors import NotFound
from tagvision.service import Service
from tagvision.service.files import FILES_PATH, KINDS

router = APIRouter(prefix=FILES_PATH, tags=["Files"])
CACHE = {"Cache-Control": "private, max-age=3600"}


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
    keyed = service.keys.is_training_key(request.headers.get("training-key"))
    if not keyed and not service.files.valid(kind, ident, expires, sig):
        raise HTTPException(
            401,
            detail={
                "code": "Unauthorized",
                "message": "This link is not valid or has "
                "expired; ask the API for a fresh one, or send the Training-Key.",
            },
        )
    file = await run_in_threadpool(service.files.get, kind, ident)
    headers = dict(CACHE)  # served as stored, and (as every response) marked nosniff: never sniffed into HTML
    if file.filename is not None:
        headers["Content-Disposition"] = attachment(file.filename)
    if file.path is not None:
        return FileResponse(file.path, media_type=file.media_type, headers=headers)
    return Response(file.data, media_type=file.media_type, headers=headers)


def attachment(filename: str) -> str:
    """A ``Content-Disposition`` for ``filename`` whatever it holds (RFC 6266): an ASCII ``filename`` with
    anything else replaced, and the exact name UTF-8 percent-encoded in ``filename*`` (RFC 5987)."""
    fallback = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
