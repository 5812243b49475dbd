"""Loopback stand-ins for the image-search providers, serving real photos from ../shared/datasets.

Each provider module builds a :class:`FakeServer` and adds the routes of that provider's
documented search API. The server also serves the photos themselves under ``/img/<id>.jpg``
with knobs for the faults a downloader meets: per-image latency, broken links (404), redirects,
rate-limit answers (429 with ``Retry-After``) and exact duplicates. :func:`unresolvable` stands in
for a resolver that cannot find a provider's host.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

Handler = Callable[["Request"], tuple[int, dict[str, str], bytes]]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None):
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body).encode()


@dataclass
class FakeServer:
    """A threaded HTTP server on 127.0.0.1; ``routes`` maps a path to a handler."""

    routes: dict[str, Handler] = field(default_factory=dict)
    photos: dict[str, Path] = field(default_factory=dict)  # image id -> file served at /img/<id>.jpg
    image_latency: float = 0.0  # seconds before each image answer
    broken: set[str] = field(default_factory=set)  # image ids answered 404
    rate_limited_once: set[str] = field(default_factory=set)  # image ids answered 429 on their first request
    log: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                request = Request(
                    "GET",
                    parts.path,
                    {k: v[-1] for k, v in parse_qs(parts.query).items()},
                    {k.lower(): v for k, v in self.headers.items()},
                )
                with server._lock:
                    server.log.append(request)
                status, headers, body = server._answer(request)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def image_url(self, image_id: str) -> str:
        return f"{self.url}/img/{image_id}.jpg"

    def requests_to(self, prefix: str) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.path.startswith(prefix)]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:
        if request.path.startswith("/img/"):
            image_id = request.path[5:].rsplit(".", 1)[0]
            if self.image_latency:
                time.sleep(self.image_latency)
            with self._lock:
                if image_id in self.rate_limited_once:
                    self.rate_limited_once.discard(image_id)
                    return 429, {"Retry-After": "1", "Content-Type": "text/plain"}, b"slow down"
            if image_id in self.broken or image_id not in self.photos:
                return 404, {"Content-Type": "text/plain"}, b"gone"
            return 200, {"Content-Type": "image/jpeg"}, self.photos[image_id].read_bytes()
        handler = self.routes.get(request.path)
        if handler is None:
            return 404, {"Content-Type": "application/json"}, b'{"error": "no such route"}'
        return handler(request)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def unresolvable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every ``.invalid`` host fail to resolve at once, as glibc's resolver says it; the names looked up
    are appended to the list returned. Real DNS on a test machine may be slow, absent or answer otherwise."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name.endswith(".invalid"):
            asked.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked
