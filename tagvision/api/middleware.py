"""ASGI middleware: case-insensitive Custom Vision paths, body size limits, and the server's guards.

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

from tagvision import images
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


class Guards:
    """Answers only the Host headers the operator trusts (400 otherwise), marks every response
    ``X-Content-Type-Options: nosniff``, and lets a request wait at most ``wait_seconds`` for decode
    memory (:func:`tagvision.images.patience`) before it gets 429."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], wait_seconds: float) -> None:
        self.app, self.wait_seconds = app, wait_seconds
        self.allowed = tuple(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if not self.trusted(host):
            await _answer(send, 400, "BadRequestInvalidHost", f"This server does not answer for host {host!r}.")
            return

        async def marked_send(message: Message) -> None:
            headers = message.get("headers", [])
            if message["type"] == "http.response.start" and not any(k == b"x-content-type-options" for k, _ in headers):
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        with images.patience(self.wait_seconds):
            await self.app(scope, receive, marked_send)

    def trusted(self, host: str) -> bool:
        """``host`` (a Host header, maybe with a port) against the allowed names; ``*.example.com`` allows
        subdomains, ``*`` anything."""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]").lower()
        return any(
            allowed == "*" or name == allowed.strip("[]") or (allowed.startswith("*.") and name.endswith(allowed[1:]))
            for allowed in self.allowed
        )


async def _refuse(send: Send, limit: int, code: str) -> None:
    await _answer(send, 413, code, f"The request body is larger than this route's limit of {limit // 1024} KiB.")


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"code": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
