"""ASGI middleware: case-insensitive Custom Vision paths, and body size limits.

Microsoft's samples write ``/Training/`` and ``/Prediction/`` as often as the lower-case
forms, so the literal words of our routes (and GUIDs) are lower-cased before routing.
A published iteration's name (the segment after ``iterations`` in prediction paths) keeps
its case. Bodies are counted as they arrive and refused with 413 past the route's limit,
before they fill memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tagvision.images import MAX_PREDICTION_BYTES, MAX_TRAINING_BYTES

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MAX_BATCH = 64
MULTIPART_SLACK = 64 * 1024
BodyLimits = tuple[tuple[re.Pattern, int, str], ...]  # (path pattern, byte limit, code): the first match wins
LIMITS: BodyLimits = (  # the API's; the portal declares its own, and the server passes both
    (
        re.compile(r"/prediction/[^/]+/classify/iterations/[^/]+/image(/nostore)?$"),
        MAX_PREDICTION_BYTES + MULTIPART_SLACK,
        "BadRequestImageSizeBytes",
    ),
    (
        re.compile(r"/training/projects/[^/]+/quicktest/image$"),
        MAX_TRAINING_BYTES + MULTIPART_SLACK,
        "BadRequestImageSizeBytes",
    ),
    (
        re.compile(r"/training/projects/[^/]+/images$"),
        MAX_BATCH * (MAX_TRAINING_BYTES + MULTIPART_SLACK),
        "BadRequestExceededBatchSize",
    ),
    (
        re.compile(r"/training/projects/[^/]+/images/files$"),
        MAX_BATCH * MAX_TRAINING_BYTES * 4 // 3 + 1024 * 1024,
        "BadRequestExceededBatchSize",
    ),
)
DEFAULT_LIMIT = 1024 * 1024


class CaseInsensitivePaths:
    def __init__(self, app: ASGIApp, literals: Iterable[str]) -> None:
        self.app = app
        self.literals = {w.lower() for w in literals}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].lower().startswith("/customvision/"):
            segments = scope["path"].split("/")
            for i, segment in enumerate(segments):
                if i > 0 and segments[i - 1].lower() == "iterations" and "/prediction/" in scope["path"].lower():
                    continue  # a publish name keeps its case
                if segment.lower() in self.literals or GUID.match(segment):
                    segments[i] = segment.lower()
            path = "/".join(segments)
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses a body past the limit of the first of ``limits`` whose pattern its path matches (else 1 MiB)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        limit, code = DEFAULT_LIMIT, "BadRequestExceededBatchSize"
        for pattern, size, what in self.limits:
            if pattern.search(scope["path"]):
                limit, code = size, what
                break
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, limit, code)
            return
        received = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused and not started:
                return  # the route saw a disconnect; answer 413 below instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await _refuse(send, limit, code)


async def _refuse(send: Send, limit: int, code: str) -> None:
    body = json.dumps(
        {"code": code, "message": f"The request body is larger than this route's limit of {limit // 1024} KiB."}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
