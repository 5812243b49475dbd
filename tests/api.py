"""The HTTP API in this process, for the error-shape tests (tests/test_api_*.py).

``serving(create_app, data_dir)`` opens a service on a fresh data dir and drives the ASGI app
with Starlette's ``TestClient`` (httpx underneath, the app's lifespan run on entry), so the
requests are exactly what a careless or hostile client sends, without a server process.
What only a real process shows (a socket answered before its body arrives, a ``kill -9``)
is in tests/test_api_server.py and tests/test_api_faults.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import random
import sqlite3
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from tagvision.config import Settings
from tagvision.service import Service
from tests.conftest import CLOTHING, photos

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
DETECTION = "da2e3a8a-40a5-4171-82f4-58522f70fbc1"
DUMMY = "6f1c1e0e-8a51-4d6b-9f43-2a4a1e7b9c01"  # a well-formed GUID that names nothing
MB = 1024 * 1024
PUBLISHED = "MyModel"


def assert_error(
    response: httpx.Response,
    status: int | tuple[int, ...],
    code: str | tuple[str, ...] | None = None,
) -> dict:
    """The response is an error the SDK can read: the status, JSON ``{"code", "message"}`` and nothing else."""
    statuses = (status,) if isinstance(status, int) else status
    where = f"{response.request.method} {response.request.url.path}"
    assert response.status_code in statuses, f"{where}: {response.status_code} {response.text[:500]}"
    content_type = response.headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == "application/json", f"{where}: Content-Type {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"code", "message"}, f"{where}: {body}"
    assert isinstance(body["code"], str) and body["code"], f"{where}: {body}"
    assert isinstance(body["message"], str) and body["message"].strip(), f"{where}: {body}"
    if code is not None:
        codes = (code,) if isinstance(code, str) else code
        assert body["code"] in codes, f"{where}: expected {codes}, got {body}"
    return body


def statuses(response: httpx.Response, expected_status: int = 207) -> list[str]:
    """The per-image statuses of an ImageCreateSummary."""
    assert response.status_code == expected_status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    return [entry["status"] for entry in response.json()["images"]]


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def photo(tag: str, index: int, split: str = "train") -> bytes:
    return photos(CLOTHING, split, tag, 1, skip=index)[0].read_bytes()


def bad_images() -> list[tuple[str, bytes, str]]:
    """(name, bytes, the ImageCreateStatus it must get) for every kind of bad upload."""
    jpeg = photo("dress", 0)
    return [
        ("truncated.jpg", jpeg[: len(jpeg) // 2], "ErrorImageFormat"),
        ("random.jpg", random.Random(7).randbytes(6000), "ErrorImageFormat"),
        (
            "page.jpg",
            b"<!doctype html><html><head><title>x</title></head><body>not an image</body></html>",
            "ErrorImageFormat",
        ),
        (
            "evil.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><script>alert(1)</script>'
            b'<rect width="10" height="10"/></svg>',
            "ErrorImageFormat",
        ),
        ("empty.jpg", b"", "ErrorImageSize"),
        ("huge.jpg", jpeg + b"\0" * (7 * MB), "ErrorImageSize"),  # a real JPEG padded past 6 MB
        ("wide.png", png(12000, 10), "ErrorImageDimensions"),
        ("bomb.png", png_header_only(60000, 60000), "ErrorImageDimensions"),
    ]


class Tracebacks(logging.Handler):
    """Every log record that carries a traceback: what a server process would write to its log."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.found.append(self.format(record))


class Api:
    """Raw HTTP to the app: ``t`` for the Training API, ``p`` for the Prediction API (keys added).

    ``http`` is the ``TestClient`` (an ``httpx.Client``) for requests with a full URL; the keys are
    read from the data dir's ``keys.json``, as a client given them by ``tagvision keys`` has them.
    """

    endpoint = "http://testserver"

    def __init__(self, http: TestClient, data_dir: Path, tracebacks: Tracebacks) -> None:
        self.http = http
        self.data_dir = data_dir
        self.tracebacks = tracebacks

    @property
    def training_key(self) -> str:
        return json.loads((self.data_dir / "keys.json").read_text())["trainingKey"]

    @property
    def prediction_key(self) -> str:
        return json.loads((self.data_dir / "keys.json").read_text())["predictionKey"]

    @property
    def training_headers(self) -> dict[str, str]:
        return {"Training-Key": self.training_key}

    @property
    def prediction_headers(self) -> dict[str, str]:
        return {"Prediction-Key": self.prediction_key}

    def training(self, path: str = "") -> str:
        return f"{self.endpoint}/customvision/v3.4-preview/training{path}"

    def prediction(self, path: str = "") -> str:
        return f"{self.endpoint}/customvision/v3.1/prediction{path}"

    def t(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
        return self.http.request(
            method, self.training(path), headers={**self.training_headers, **(headers or {})}, **kw
        )

    def p(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
        return self.http.request(
            method, self.prediction(path), headers={**self.prediction_headers, **(headers or {})}, **kw
        )

    def ok(self, response: httpx.Response) -> dict | list | int:
        assert response.status_code == 200, f"{response.request.url}: {response.status_code} {response.text[:500]}"
        return response.json()

    def project(self, prefix: str, domain: str = COMPACT) -> str:
        return self.ok(
            self.t("POST", "/projects", params={"name": f"{prefix}-{uuid.uuid4().hex[:8]}", "domainId": domain})
        )["id"]

    def tag(self, pid: str, name: str) -> str:
        return self.ok(self.t("POST", f"/projects/{pid}/tags", params={"name": name}))["id"]

    def upload(self, pid: str, tag_id: str, images: list[bytes]) -> None:
        response = self.t(
            "POST",
            f"/projects/{pid}/images",
            params={"tagIds": tag_id},
            files=[("imageData", (f"{i}.jpg", data)) for i, data in enumerate(images)],
        )
        assert response.status_code == 200 and response.json()["isBatchSuccessful"], response.text[:500]

    def image_count(self, pid: str) -> int:
        return self.ok(self.t("GET", f"/projects/{pid}/images/count"))

    def prediction_count(self, pid: str) -> int:
        return len(self.ok(self.t("POST", f"/projects/{pid}/predictions/query", json={"maxCount": 256}))["results"])

    def stored(self, data: bytes) -> bool:
        """Whether these bytes are in the app's blob store."""
        sha = hashlib.sha256(data).hexdigest()
        return (self.data_dir / "blobs" / sha[:2] / sha[2:]).exists()

    def wait_trained(self, pid: str, iteration_id: str, timeout: float = 600) -> dict:
        """The iteration once it is no longer Training (a give-up deadline only: pytest-timeout guards first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            iteration = self.ok(self.t("GET", f"/projects/{pid}/iterations/{iteration_id}"))
            if iteration["status"] != "Training":
                return iteration
            time.sleep(0.2)
        raise AssertionError(f"iteration {iteration_id} still Training after {timeout} s")

    def assert_survived(self) -> None:
        """After everything a module threw at it: the app answers, logged no traceback, and the store is sound."""
        assert isinstance(self.ok(self.t("GET", "/projects")), list)
        assert self.tracebacks.found == [], "\n".join(self.tracebacks.found)[-3000:]
        with sqlite3.connect(self.data_dir / "tagvision.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert (self.data_dir / "keys.json").is_file()


@contextmanager
def serving(create_app: Callable[[Service], object], data_dir: Path) -> Iterator[Api]:
    """The app built by ``create_app`` over a service on ``data_dir``, its lifespan running, as an :class:`Api`."""
    service = Service.open(Settings.load(data_dir))
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    try:
        with TestClient(create_app(service), follow_redirects=False) as http:
            yield Api(http, data_dir, tracebacks)
    finally:
        logging.getLogger().removeHandler(tracebacks)
        service.close()


def openapi_operations(api: Api) -> list[tuple[str, str]]:
    spec = api.http.get(f"{api.endpoint}/openapi.json").json()
    return [
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    ]


@dataclass(frozen=True)
class Trained:
    pid: str
    tags: dict[str, str]
    iteration: str


def train_and_publish(api: Api, prefix: str) -> Trained:
    """2 tags x 5 real photos on General (compact), trained and published as :data:`PUBLISHED`."""
    pid = api.project(prefix)
    tags = {}
    for name in ("hat", "shoes"):
        tags[name] = api.tag(pid, name)
        api.upload(pid, tags[name], [p.read_bytes() for p in photos(CLOTHING, "train", name, 5)])
    iteration = api.ok(api.t("POST", f"/projects/{pid}/train"))["id"]
    assert api.wait_trained(pid, iteration)["status"] == "Completed"
    assert (
        api.ok(
            api.t(
                "POST",
                f"/projects/{pid}/iterations/{iteration}/publish",
                params={"publishName": PUBLISHED, "predictionId": "local"},
            )
        )
        is True
    )
    return Trained(pid, tags, iteration)


class Site:
    """A small HTTP server on 127.0.0.1 with fixed answers; it records every path asked for."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]]) -> None:
        self.routes = routes
        self.requests: list[str] = []
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                site.requests.append(self.path)
                status, headers, body = site.routes.get(
                    self.path, (404, {"Content-Type": "text/plain", "Content-Length": "9"}, b"not found")
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)  # the client may stop reading: that is the point of some routes

            def log_message(self, *_args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def image_site() -> Site:
    """Answers for the image-URL tests: a photo, an HTML page, and 7 MB behind redirects (sized and streamed)."""
    big = b"\xff\xd8\xff\xe0" + b"\0" * (7 * MB)
    good = photo("hat", 20)
    return Site(
        {
            "/good.jpg": (200, {"Content-Type": "image/jpeg", "Content-Length": str(len(good))}, good),
            "/page.jpg": (
                200,
                {"Content-Type": "text/html", "Content-Length": "38"},
                b"<html><body>an html page</body></html>",
            ),
            "/to-big": (302, {"Location": "/big.jpg", "Content-Length": "0"}, b""),
            "/big.jpg": (200, {"Content-Type": "image/jpeg", "Content-Length": str(len(big))}, big),
            "/to-stream": (302, {"Location": "/stream.jpg", "Content-Length": "0"}, b""),
            "/stream.jpg": (200, {"Content-Type": "image/jpeg"}, big),  # no Content-Length: read until too much
        }
    )
