"""Bad input over HTTP against a real ``tagvision serve``: every refusal is a clear JSON error
``{"code", "message"}``, nothing is stored half-way, and the server keeps answering.

Raw ``httpx`` (not the SDK) so headers and bodies are exactly what a careless or hostile client
sends. One server (and one trained, published project) serves the whole module; a second server
with private URLs forbidden checks the SSRF guard.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import random
import re
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import CLOTHING, REPO, photos
from tests.server import Server

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
DETECTION = "da2e3a8a-40a5-4171-82f4-58522f70fbc1"
DUMMY = "6f1c1e0e-8a51-4d6b-9f43-2a4a1e7b9c01"  # a well-formed GUID that names nothing
MB = 1024 * 1024
PUBLISHED = "MyModel"
pytestmark = [pytest.mark.slow, pytest.mark.process]


# --------------------------------------------------------------------------- helpers


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


class Api:
    """Raw HTTP to one server: ``t`` for the Training API, ``p`` for the Prediction API (keys added)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(timeout=120, trust_env=False)

    def t(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
        return self.http.request(
            method, self.server.training(path), headers={**self.server.training_headers, **(headers or {})}, **kw
        )

    def p(self, method: str, path: str, *, headers: dict[str, str] | None = None, **kw) -> httpx.Response:
        return self.http.request(
            method, self.server.prediction(path), headers={**self.server.prediction_headers, **(headers or {})}, **kw
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
        """Whether these bytes are in the server's blob store."""
        sha = hashlib.sha256(data).hexdigest()
        return (self.server.data_dir / "blobs" / sha[:2] / sha[2:]).exists()

    def wait_trained(self, pid: str, iteration_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            iteration = self.ok(self.t("GET", f"/projects/{pid}/iterations/{iteration_id}"))
            if iteration["status"] != "Training":
                return iteration
            time.sleep(0.2)
        raise AssertionError(f"iteration {iteration_id} still Training after {timeout} s")


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


def raw_request(server: Server, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send only a request head (no body at all) and read the answer until the server closes."""
    host, port = server.endpoint.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    with Server(tmp_path_factory.mktemp("api-errors") / "data") as running:
        yield running


@pytest.fixture(scope="module")
def api(srv: Server) -> Api:
    return Api(srv)


@pytest.fixture(scope="module")
def trained(api: Api) -> Trained:
    return train_and_publish(api, "trained")


@pytest.fixture(scope="module")
def site():
    big = b"\xff\xd8\xff\xe0" + b"\0" * (7 * MB)
    running = Site(
        {
            "/good.jpg": (
                200,
                {"Content-Type": "image/jpeg", "Content-Length": str(len(good := photo("hat", 20)))},
                good,
            ),
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
    yield running
    running.close()


# --------------------------------------------------------------------------- keys


def test_missing_wrong_and_swapped_keys_are_401(api: Api, srv: Server, trained: Trained) -> None:
    http = api.http
    projects = srv.training("/projects")
    classify = srv.prediction(f"/{trained.pid}/classify/iterations/{PUBLISHED}/image")
    image = {"imageData": ("a.jpg", photo("hat", 0, "test"))}
    refusals = [
        http.get(projects),
        http.get(projects, headers={"Training-Key": "0" * 32}),
        http.get(projects, headers={"Training-Key": ""}),
        http.get(projects, headers={"Training-Key": srv.prediction_key}),  # the prediction key in the right header
        http.get(projects, headers={"Prediction-Key": srv.prediction_key}),  # the prediction header
        http.get(projects, headers={"Prediction-Key": srv.training_key}),  # the right key in the wrong header
        http.get(projects, headers={"Training-Key": srv.training_key + "x"}),
        http.get(projects, headers={"Training-Key": srv.training_key.upper()}),
        http.post(classify, files=image),
        http.post(classify, files=image, headers={"Prediction-Key": srv.training_key}),
        http.post(classify, files=image, headers={"Training-Key": srv.training_key}),
        http.post(classify, files=image, headers={"Prediction-Key": "nope"}),
    ]
    for response in refusals:
        assert_error(response, 401, "Unauthorized")
    for header in ("Training-Key", "Training-key", "training-key", "TRAINING-KEY"):
        assert http.get(projects, headers={header: srv.training_key}).status_code == 200, header
    for header in ("Prediction-Key", "prediction-key", "PREDICTION-KEY"):
        response = http.post(classify, files=image, headers={header: srv.prediction_key})
        assert response.status_code == 200, (header, response.text[:300])


def openapi_operations(api: Api) -> list[tuple[str, str]]:
    spec = api.http.get(f"{api.server.endpoint}/openapi.json").json()
    return [
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_api_route_needs_its_key(api: Api) -> None:
    checked = 0
    for method, template in openapi_operations(api):
        if "/training" in template:
            path = template.replace("{version}", "v3.4-preview")
        elif "/prediction" in template:
            path = template.replace("{version}", "v3.1")
        else:
            continue
        path = re.sub(r"\{[^}]+\}", lambda m: "dummy" if m[0] == "{publishedName}" else DUMMY, path)
        for headers in ({}, {"Training-Key": "wrong", "Prediction-Key": "wrong"}):
            response = api.http.request(method, f"{api.server.endpoint}{path}", headers=headers)
            assert_error(response, 401, "Unauthorized")
        checked += 1
    assert checked >= 45, f"only {checked} API operations in /openapi.json"


def test_regenerated_training_key_takes_effect_without_restart(api: Api, srv: Server) -> None:
    old = srv.training_key
    projects = srv.training("/projects")
    assert api.http.get(projects, headers={"Training-Key": old}).status_code == 200
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tagvision.cli",
            "keys",
            "--regenerate",
            "training",
            "--data-dir",
            str(srv.data_dir),
            "--json",
        ],
        cwd=REPO,
        env=srv.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    keys_file = srv.data_dir / "keys.json"
    stored = json.loads(keys_file.read_text())
    new = stored["trainingKey"]
    assert new != old and json.loads(result.stdout)["trainingKey"] == new
    assert stored["predictionKey"] == srv.prediction_key  # the other key is untouched
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    srv.training_key = new  # the rest of the module uses the new key
    assert_error(api.http.get(projects, headers={"Training-Key": old}), 401, "Unauthorized")
    assert api.http.get(projects, headers={"Training-Key": new}).status_code == 200
    assert api.http.get(projects, headers={"training-key": new}).status_code == 200


# --------------------------------------------------------------------------- unknown things


def test_unknown_ids_routes_methods_and_versions(api: Api, srv: Server, trained: Trained) -> None:
    pid, hat = trained.pid, trained.tags["hat"]
    image_id = api.ok(api.t("GET", f"/projects/{pid}/images", params={"take": 1}))[0]["id"]
    before = api.image_count(pid)
    assert_error(api.t("GET", f"/projects/{DUMMY}"), 404, "NotFoundProject")
    assert_error(api.t("GET", "/projects/not-a-project"), 404, "NotFoundProject")
    assert_error(api.t("DELETE", f"/projects/{DUMMY}"), 404, "NotFoundProject")
    assert_error(api.t("PATCH", f"/projects/{DUMMY}", json={"name": "x"}), 404, "NotFoundProject")
    assert_error(api.t("GET", f"/projects/{DUMMY}/images/count"), 404, "NotFoundProject")
    assert_error(
        api.t("POST", f"/projects/{DUMMY}/images", files={"imageData": ("a.jpg", photo("dress", 1))}),
        404,
        "NotFoundProject",
    )
    assert_error(api.t("GET", f"/projects/{pid}/tags/{DUMMY}"), 404, "NotFoundTag")
    assert_error(api.t("DELETE", f"/projects/{pid}/tags/{DUMMY}"), 404, "NotFoundTag")
    assert_error(api.t("PATCH", f"/projects/{pid}/tags/{DUMMY}", json={"name": "x"}), 404, "NotFoundTag")
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/images",
            params={"tagIds": DUMMY},
            files={"imageData": ("a.jpg", photo("dress", 1))},
        ),
        404,
        "NotFoundTag",
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/images/tags", json={"tags": [{"imageId": image_id, "tagId": DUMMY}]}),
        404,
        "NotFoundTag",
    )
    assert_error(
        api.t("DELETE", f"/projects/{pid}/images/tags", params={"imageIds": image_id, "tagIds": DUMMY}),
        404,
        "NotFoundTag",
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/images/tags", json={"tags": [{"imageId": DUMMY, "tagId": hat}]}),
        404,
        "NotFoundImage",
    )
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/performance"),
        ("GET", "/export"),
        ("DELETE", "/publish"),
    ):
        assert_error(api.t(method, f"/projects/{pid}/iterations/{DUMMY}{suffix}"), 404, "NotFoundIteration")
    assert_error(api.t("PATCH", f"/projects/{pid}/iterations/{DUMMY}", json={"name": "x"}), 404, "NotFoundIteration")
    assert_error(
        api.t(
            "POST", f"/projects/{pid}/iterations/{DUMMY}/publish", params={"publishName": "other", "predictionId": "x"}
        ),
        404,
        "NotFoundIteration",
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/quicktest/image",
            params={"iterationId": DUMMY},
            files={"imageData": ("a.jpg", photo("hat", 0, "test"))},
        ),
        404,
        "NotFoundIteration",
    )
    assert_error(api.t("GET", f"/domains/{DUMMY}"), 404, "NotFoundDomain")
    image = {"imageData": ("a.jpg", photo("hat", 0, "test"))}
    assert_error(api.p("POST", f"/{pid}/classify/iterations/NoSuchName/image", files=image), 404, "NotFoundIteration")
    assert_error(
        api.p("POST", f"/{pid}/classify/iterations/NoSuchName/url", json={"url": "http://x/a.jpg"}),
        404,
        "NotFoundIteration",
    )
    assert_error(
        api.p("POST", f"/{DUMMY}/classify/iterations/{PUBLISHED}/image", files=image),
        404,
        ("NotFoundIteration", "NotFoundProject"),
    )
    # routes and methods that do not exist
    for url in (
        f"{srv.endpoint}/nothing",
        srv.training("/nothing"),
        srv.training(f"/projects/{pid}/nothing"),
        srv.prediction(f"/{pid}/nothing"),
        f"{srv.endpoint}/customvision/v9.9/training/projects",
        f"{srv.endpoint}/customvision/v3.4/training/projects",
    ):
        headers = {**srv.training_headers, **srv.prediction_headers}
        assert_error(api.http.get(url, headers=headers), 404, "NotFound")
    assert_error(
        api.http.post(
            f"{srv.endpoint}/customvision/v9.9/training/projects", params={"name": "v99"}, headers=srv.training_headers
        ),
        404,
        "NotFound",
    )
    assert_error(
        api.http.post(
            f"{srv.endpoint}/customvision/v9.9/prediction/{pid}/classify/iterations/{PUBLISHED}/url",
            json={"url": "http://x/a.jpg"},
            headers=srv.prediction_headers,
        ),
        404,
        "NotFound",
    )
    for method, path in (
        ("PUT", "/projects"),
        ("DELETE", "/domains"),
        ("POST", f"/projects/{pid}/images/count"),
        ("GET", f"/projects/{pid}/train"),
    ):
        assert_error(api.t(method, path), 405)
    assert_error(api.p("GET", f"/{pid}/classify/iterations/{PUBLISHED}/image"), 405)
    assert api.image_count(pid) == before
    assert api.ok(api.t("GET", f"/projects/{pid}"))["id"] == pid


# --------------------------------------------------------------------------- images in batches


def test_bad_images_in_a_multipart_batch(api: Api) -> None:
    pid = api.project("multipart")
    tag = api.tag(pid, "dress")
    good = photo("dress", 2)
    bad = bad_images()
    parts = [("imageData", ("good.jpg", good))] + [("imageData", (name, data)) for name, data, _ in bad]
    response = api.t("POST", f"/projects/{pid}/images", params={"tagIds": tag}, files=parts)
    assert statuses(response) == ["OK"] + [want for _, _, want in bad]
    body = response.json()
    assert body["isBatchSuccessful"] is False
    assert body["images"][0]["image"]["id"]
    assert all(entry["image"] is None for entry in body["images"][1:]), body["images"]
    assert api.image_count(pid) == 1
    assert api.stored(good) and not any(api.stored(data) for _, data, _ in bad if data)
    # v3.0-v3.2 clients get 200 for a partly failed batch; still only good images land
    parts = [("imageData", ("good2.jpg", photo("dress", 3)))] + [("imageData", (n, d)) for n, d, _ in bad[:2]]
    old = api.http.post(
        api.server.endpoint + f"/customvision/v3.2/training/projects/{pid}/images",
        headers=api.server.training_headers,
        params={"tagIds": tag},
        files=parts,
    )
    assert statuses(old, 200) == ["OK", "ErrorImageFormat", "ErrorImageFormat"]
    # a raw octet-stream body is one image
    raw = api.t(
        "POST",
        f"/projects/{pid}/images",
        content=b"GIF89a" + b"\0" * 50,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert statuses(raw) == ["ErrorImageFormat"]
    assert api.image_count(pid) == 2
    assert api.ok(api.t("GET", f"/projects/{pid}/tags/{tag}"))["imageCount"] == 2


def test_bad_images_in_a_base64_batch(api: Api) -> None:
    pid = api.project("files")
    tag = api.tag(pid, "dress")
    bad = bad_images()
    entries = [{"name": "good.jpg", "contents": base64.b64encode(photo("dress", 4)).decode()}]
    entries += [{"name": name, "contents": base64.b64encode(data).decode()} for name, data, _ in bad]
    entries += [
        {"name": "not-base64.jpg", "contents": "this is ** not base64 !!"},
        {"name": "good2.jpg", "contents": base64.b64encode(photo("dress", 5)).decode()},
    ]
    response = api.t("POST", f"/projects/{pid}/images/files", json={"images": entries, "tagIds": [tag]})
    got = statuses(response)
    assert got == ["OK"] + [want for _, _, want in bad] + ["ErrorImageFormat", "OK"]
    assert api.image_count(pid) == 2
    assert not any(api.stored(data) for _, data, _ in bad if data)
    # the same good image again is a duplicate, not a second copy
    again = api.t("POST", f"/projects/{pid}/images/files", json={"images": entries[:1]})
    assert statuses(again) == ["OKDuplicate"]
    assert api.image_count(pid) == 2


def test_batch_limits(api: Api) -> None:
    pid = api.project("limits")
    tag = api.tag(pid, "colour")
    tiny = [png(16, 16, (i, 255 - i, 7)) for i in range(65)]
    too_many = api.t(
        "POST",
        f"/projects/{pid}/images",
        params={"tagIds": tag},
        files=[("imageData", (f"{i}.png", data)) for i, data in enumerate(tiny)],
    )
    assert_error(too_many, 400, "BadRequestExceededBatchSize")
    entries = [{"contents": base64.b64encode(data).decode()} for data in tiny]
    assert_error(
        api.t("POST", f"/projects/{pid}/images/files", json={"images": entries}), 400, "BadRequestExceededBatchSize"
    )
    urls = [{"url": f"http://127.0.0.1:9/{i}.png"} for i in range(65)]
    assert_error(
        api.t("POST", f"/projects/{pid}/images/urls", json={"images": urls}), 400, "BadRequestExceededBatchSize"
    )
    ids = ",".join(str(uuid.uuid4()) for _ in range(21))
    assert_error(
        api.t("POST", f"/projects/{pid}/images", params={"tagIds": ids}, files={"imageData": ("a.png", tiny[0])}), 400
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/images/files", json={"images": entries[:1], "tagIds": ids.split(",")}), 400
    )
    assert_error(api.t("GET", f"/projects/{pid}/images", params={"tagIds": ids}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/images/files", json={"images": []}), 400)
    assert api.image_count(pid) == 0
    # 64 is fine
    ok = api.t(
        "POST",
        f"/projects/{pid}/images",
        params={"tagIds": tag},
        files=[("imageData", (f"{i}.png", data)) for i, data in enumerate(tiny[:64])],
    )
    assert statuses(ok, 200) == ["OK"] * 64
    assert api.image_count(pid) == 64


# --------------------------------------------------------------------------- prediction and quick test


def test_bad_images_for_prediction_and_quick_test(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before = api.prediction_count(pid)
    test_photo = photo("shoes", 0, "test")
    routes = {
        "classify": (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/image", 4 * MB),
        "classify nostore": (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/image/nostore", 4 * MB),
        "quicktest": (api.t, f"/projects/{pid}/quicktest/image", 6 * MB),
    }
    for label, (call, path, limit) in routes.items():

        def post(**kw) -> httpx.Response:
            return call("POST", path, **kw)  # noqa: B023 (used at once)

        corrupt = b"\xff\xd8\xff\xe0" + random.Random(1).randbytes(3000)
        assert_error(post(files={"imageData": ("c.jpg", corrupt)}), 400, "BadRequestImageFormat")
        assert_error(
            post(content=corrupt, headers={"Content-Type": "application/octet-stream"}), 400, "BadRequestImageFormat"
        )
        assert_error(
            post(files={"imageData": ("r.jpg", random.Random(2).randbytes(3000))}), 400, "BadRequestImageFormat"
        )
        assert_error(post(files={"imageData": ("t.jpg", test_photo[:2000])}), 400, "BadRequestImageFormat")
        assert_error(post(files={"imageData": ("w.png", png(12000, 10))}), 400, "BadRequestImageDimensions")
        assert_error(
            post(files={"imageData": ("b.png", png_header_only(60000, 60000))}), 400, "BadRequestImageDimensions"
        )
        # over the limit by a little (the image check) and by a lot (the body limit)
        assert_error(
            post(files={"imageData": ("l.jpg", test_photo + b"\0" * (limit + 1 - len(test_photo)))}),
            (400, 413),
            "BadRequestImageSizeBytes",
        )
        assert_error(
            post(files={"imageData": ("h.jpg", test_photo + b"\0" * (limit + MB))}),
            (400, 413),
            "BadRequestImageSizeBytes",
        )
        assert_error(post(content=b"", headers={"Content-Type": "application/octet-stream"}), 400)
        assert_error(post(content=b""), 400)
        assert_error(post(files={"imageData": ("e.jpg", b"")}), 400)
        assert_error(post(json={"url": "http://example.com/a.jpg"}), 415, "UnsupportedMediaType")
        assert_error(post(content=b"hello", headers={"Content-Type": "text/plain"}), 415, "UnsupportedMediaType")
        assert_error(post(files=[("imageData", ("1.jpg", test_photo)), ("imageData", ("2.jpg", test_photo))]), 400)
        assert_error(post(content=b"--xyz--\r\n", headers={"Content-Type": "multipart/form-data; boundary=xyz"}), 400)
        assert_error(post(content=b"garbage", headers={"Content-Type": "multipart/form-data"}), 400)
        assert api.prediction_count(pid) == before, label
        assert not api.stored(corrupt), label
    # and good requests still work: stored once, not stored, stored once
    for label, (call, path, _) in routes.items():
        result = api.ok(call("POST", path, files={"imageData": ("s.jpg", test_photo)}))
        assert [p["tagName"] for p in result["predictions"]][0] == "shoes", label
    assert api.prediction_count(pid) == before + 2


# --------------------------------------------------------------------------- bodies


def test_body_size_limits(api: Api, srv: Server, trained: Trained) -> None:
    pid = trained.pid
    before = api.image_count(pid)
    big_json = json.dumps({"images": [{"url": "http://example.com/" + "a" * 2 * MB}]})
    assert_error(
        api.t("POST", f"/projects/{pid}/images/urls", content=big_json, headers={"Content-Type": "application/json"}),
        413,
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/predictions/query",
            content=b"{" + b" " * 2 * MB + b"}",
            headers={"Content-Type": "application/json"},
        ),
        413,
    )

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"maxCount": 5, "application": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    assert_error(
        api.t(
            "POST", f"/projects/{pid}/predictions/query", content=chunks(), headers={"Content-Type": "application/json"}
        ),
        413,
    )
    # a declared Content-Length over the limit is refused before any of the body is sent
    for path, length, content_type in (
        (f"/projects/{pid}/predictions/query", 2 * MB, "application/json"),
        (f"/projects/{pid}/images", 10**12, "multipart/form-data; boundary=x"),
        (f"/projects/{pid}/quicktest/image", 7 * MB, "application/octet-stream"),
    ):
        head = (
            f"POST {srv.training(path).removeprefix(srv.endpoint)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Training-Key: {srv.training_key}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        status, headers, body = raw_request(srv, head)
        assert status == 413, (path, status, body[:300])
        assert headers["content-type"].startswith("application/json")
        assert set(json.loads(body)) == {"code", "message"}
    head = (
        f"POST /customvision/v3.1/prediction/{pid}/classify/iterations/{PUBLISHED}/image HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nPrediction-Key: {srv.prediction_key}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {5 * MB}\r\n\r\n"
    )
    status, _, body = raw_request(srv, head)
    assert status == 413 and json.loads(body)["code"] == "BadRequestImageSizeBytes"
    assert api.image_count(pid) == before
    assert api.ok(api.t("GET", f"/projects/{pid}"))["id"] == pid


def test_malformed_and_mistyped_json(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before_images, before_predictions = api.image_count(pid), api.prediction_count(pid)
    json_type = {"Content-Type": "application/json"}
    files = f"/projects/{pid}/images/files"
    assert_error(api.t("POST", files, content=b'{"images": [', headers=json_type), 400, "BadRequestInvalid")
    assert_error(api.t("POST", files, content=b"{'images': []}", headers=json_type), 400, "BadRequestInvalid")
    assert_error(api.t("POST", files, content=b"\xff\xfe\x00garbage", headers=json_type), 400)
    assert_error(api.t("POST", files, json={"images": "x"}), 400)
    assert_error(api.t("POST", files, json=[1, 2, 3]), 400)
    assert_error(api.t("POST", files, json={"images": [{"contents": 5}]}), 400)
    assert_error(api.t("POST", files, json={"images": [{"name": "no contents"}]}), 400)
    assert_error(api.t("POST", files, json={"images": [{"contents": "AAAA"}], "tagIds": "not-a-list"}), 400)
    assert_error(
        api.t("POST", files, content=b"<images><image/></images>", headers={"Content-Type": "application/xml"}),
        415,
        "UnsupportedMediaType",
    )
    assert_error(api.t("POST", f"/projects/{pid}/images/urls", json={"images": [{}]}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/images/urls", json={"images": [{"url": None}]}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/images/tags", json={"tags": [{"imageId": "x"}]}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/quicktest/url", json={}), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/quicktest/url", content=b'{"url": ', headers=json_type),
        400,
        "BadRequestInvalid",
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/quicktest/url",
            content=b"<ImageUrl><Url>http://x/a.jpg</Url></ImageUrl>",
            headers={"Content-Type": "application/xml"},
        ),
        415,
        "UnsupportedMediaType",
    )
    assert_error(api.t("POST", f"/projects/{pid}/predictions/query", json={"maxCount": "many"}), 400)
    assert_error(api.t("PATCH", f"/projects/{pid}", json={"name": 5}), 400)
    assert_error(api.t("PATCH", f"/projects/{pid}/iterations/{trained.iteration}", json={"name": ["x"]}), 400)
    url = f"/{pid}/classify/iterations/{PUBLISHED}/url"
    assert_error(api.p("POST", url, json={}), 400)
    assert_error(api.p("POST", url, json={"url": 7}), 400)
    assert_error(api.p("POST", url, content=b"{", headers=json_type), 400, "BadRequestInvalid")
    assert_error(
        api.p("POST", url, content=b"<ImageUrl/>", headers={"Content-Type": "application/xml"}),
        415,
        "UnsupportedMediaType",
    )
    assert api.image_count(pid) == before_images
    assert api.prediction_count(pid) == before_predictions
    project = api.ok(api.t("GET", f"/projects/{pid}"))
    assert project["name"].startswith("trained-")


# --------------------------------------------------------------------------- names

GOOD_NAMES = [
    "🐱 cats & dogs 🐶",
    "👩\u200d💻 coder 👨\u200d👩\u200d👧 family 🏳️\u200d🌈",  # emoji ZWJ sequences
    "מודל עברית",
    "نموذج عربي",
    "می\u200cخواهم",  # Persian with a zero-width non-joiner
    "x\u0301\u0302 q\u0323\u0307 combining",
    "x'); DROP TABLE projects;--",
    "Robert'); DELETE FROM tags WHERE 1=1; --",
    '<script>alert("x")</script><img src=x onerror=alert(1)>',
    "%s %n {0} ${HOME} \\x00 %00",
    "a/b?c=d&e#f",
    "名前 " + "n" * 250,
    "a" * 255,
]
BAD_NAMES = [
    "",
    "   ",
    "a" * 256,
    "🐱" * 256,
    "a\x00b",
    "line\nbreak",
    "tab\there",
    "esc\x1b[31m",
    "del\x7f",
    "\u202eevil.exe",
    "bidi\u2066x\u2069",
]


def test_project_and_tag_names(api: Api) -> None:
    for name in GOOD_NAMES:
        assert unicodedata.normalize("NFC", name) == name  # so "round-trips exactly" is the right test
    created = {}
    for name in GOOD_NAMES:
        project = api.ok(api.t("POST", "/projects", params={"name": name, "domainId": COMPACT}))
        assert project["name"] == name
        assert api.ok(api.t("GET", f"/projects/{project['id']}"))["name"] == name
        created[name] = project["id"]
    for name in GOOD_NAMES:
        assert_error(api.t("POST", "/projects", params={"name": name}), 400, "BadRequestProjectNameNotUnique")
    for name in BAD_NAMES:
        assert_error(api.t("POST", "/projects", params={"name": name}), 400, "BadRequestProjectName")
    assert_error(api.t("POST", "/projects"), 400, "BadRequestProjectName")
    # decomposed input is stored composed (NFC), so "é" typed either way is one name
    decomposed = api.ok(api.t("POST", "/projects", params={"name": "Ame\u0301lie " + uuid.uuid4().hex[:6]}))
    assert decomposed["name"].startswith("Am\u00e9lie ")
    assert_error(api.t("POST", "/projects", params={"name": decomposed["name"]}), 400, "BadRequestProjectNameNotUnique")

    pid = created[GOOD_NAMES[0]]
    for name in GOOD_NAMES:
        tag = api.ok(api.t("POST", f"/projects/{pid}/tags", params={"name": name}))
        assert tag["name"] == name
        assert api.ok(api.t("GET", f"/projects/{pid}/tags/{tag['id']}"))["name"] == name
    for name in GOOD_NAMES:
        assert_error(api.t("POST", f"/projects/{pid}/tags", params={"name": name}), 400, "BadRequestTagNameNotUnique")
    api.tag(pid, "Hat")
    assert_error(api.t("POST", f"/projects/{pid}/tags", params={"name": "hat"}), 400, "BadRequestTagNameNotUnique")
    for name in BAD_NAMES:
        assert_error(api.t("POST", f"/projects/{pid}/tags", params={"name": name}), 400, "BadRequestTagName")
    assert_error(
        api.t("POST", f"/projects/{pid}/tags", params={"name": "x", "type": "Bogus"}), 400, "BadRequestTagType"
    )
    tag_names = [t["name"] for t in api.ok(api.t("GET", f"/projects/{pid}/tags"))]
    assert sorted(tag_names) == sorted(GOOD_NAMES + ["Hat"])
    # renames are held to the same rules
    some = api.ok(api.t("GET", f"/projects/{created[GOOD_NAMES[1]]}"))
    assert_error(api.t("PATCH", f"/projects/{some['id']}", json={"name": "a\x00b"}), 400, "BadRequestProjectName")
    assert_error(
        api.t("PATCH", f"/projects/{some['id']}", json={"name": GOOD_NAMES[2]}), 400, "BadRequestProjectNameNotUnique"
    )

    listed = api.ok(api.t("GET", "/projects"))
    names = [p["name"] for p in listed]
    for name in GOOD_NAMES:
        assert names.count(name) == 1, name
    assert not any(n in names for n in BAD_NAMES)
    assert api.ok(api.t("GET", f"/projects/{created[GOOD_NAMES[6]]}"))["name"] == "x'); DROP TABLE projects;--"
    api.project("after-names")  # the projects table still takes new rows


# --------------------------------------------------------------------------- query parameters


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/images", {"take": 257}),
        ("/images", {"take": -1}),
        ("/images", {"take": "ten"}),
        ("/images", {"skip": -1}),
        ("/images", {"taggingStatus": "Bogus"}),
        ("/images", {"orderBy": "Sideways"}),
        ("/images", {"$filter": "metadata=key eq"}),
        ("/images", {"$filter": "key = 'value'"}),
        ("/images/count", {"taggingStatus": "Bogus"}),
        ("/images/count", {"$filter": "metadata=k eq 'unterminated"}),
        ("/images/tagged", {"take": 1000}),
        ("/images/tagged", {"orderBy": "Sideways"}),
        ("/images/untagged", {"skip": -5}),
        ("/images/untagged", {"skip": 2**31}),
        ("/images", {"skip": 10**30}),  # past SQLite's integers
        ("/images/tagged", {"skip": 2**63}),
        ("/images/id", {"imageIds": ",".join(str(uuid.uuid4()) for _ in range(257))}),
        ("/iterations/{it}/performance", {"threshold": 2}),
        ("/iterations/{it}/performance", {"threshold": -0.1}),
        ("/iterations/{it}/performance", {"threshold": "high"}),
        ("/iterations/{it}/performance/images", {"take": 257}),
        ("/iterations/{it}/performance/images", {"orderBy": "Sideways"}),
        ("/iterations/{it}/performance/images", {"skip": 10**30}),
    ],
)
def test_bad_query_parameters(api: Api, trained: Trained, path: str, params: dict) -> None:
    response = api.t("GET", f"/projects/{trained.pid}" + path.replace("{it}", trained.iteration), params=params)
    assert_error(response, 400)


def test_bad_query_parameters_on_writes(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before = api.image_count(pid)
    assert_error(
        api.t("POST", "/projects", params={"name": "ct", "classificationType": "Sideways"}),
        400,
        "BadRequestProjectUnknownClassification",
    )
    assert_error(api.t("POST", f"/projects/{pid}/train", params={"forceTrain": "perhaps"}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/train", params={"reservedBudgetInHours": "lots"}), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/train", params={"reservedBudgetInHours": 10**30, "forceTrain": "true"}), 400
    )
    for continuation in ("junk", "-5", "9" * 40, str(2**63)):
        assert_error(
            api.t("POST", f"/projects/{pid}/predictions/query", json={"continuation": continuation}),
            400,
            "BadRequestPredictionInvalidQueryParameters",
        )
    assert_error(api.t("POST", f"/projects/{pid}/predictions/query", json={"orderBy": "Sideways"}), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/predictions/query", json={"tags": [{"id": t} for t in ("a", "b", "c")]}),
        400,
        "BadRequestPredictionTagsExceededCount",
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/predictions"), 400, "BadRequestPredictionIdsMissing")
    assert_error(
        api.p(
            "POST",
            f"/{pid}/classify/iterations/{PUBLISHED}/image",
            params={"application": "a" * 300},
            files={"imageData": ("a.jpg", photo("hat", 0, "test"))},
        ),
        400,
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/images"), 400)
    assert_error(api.t("DELETE", f"/projects/{pid}/images", params={"allImages": "maybe"}), 400)
    assert_error(api.t("DELETE", f"/projects/{pid}/images/tags", params={"imageIds": DUMMY}), 400)
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/quicktest/image",
            params={"store": "sometimes"},
            files={"imageData": ("a.jpg", photo("hat", 0, "test"))},
        ),
        400,
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/iterations/{trained.iteration}/publish",
            params={"publishName": "a/b", "predictionId": "x"},
        ),
        400,
        "BadRequestInvalidPublishName",
    )
    assert_error(
        api.t("POST", f"/projects/{pid}/iterations/{trained.iteration}/publish", params={"predictionId": "x"}), 400
    )
    assert api.image_count(pid) == before
    assert [i["id"] for i in api.ok(api.t("GET", f"/projects/{pid}/iterations"))] == [trained.iteration]


# --------------------------------------------------------------------------- URLs


def test_image_urls_that_fail(api: Api, trained: Trained, site: Site) -> None:
    pid = api.project("urls")
    tag = api.tag(pid, "hat")
    entries = [{"url": site.url(path)} for path in ("/good.jpg", "/missing.jpg", "/page.jpg", "/to-big", "/to-stream")]
    entries += [
        {"url": "ftp://127.0.0.1/a.jpg"},
        {"url": "not a url"},
        {"url": "http://user:pw@127.0.0.1/a.jpg"},
        {"url": "http://does-not-exist.invalid/a.jpg"},
    ]
    response = api.t("POST", f"/projects/{pid}/images/urls", json={"images": entries, "tagIds": [tag]})
    assert statuses(response) == [
        "OK",
        "ErrorSource",
        "ErrorImageFormat",
        "ErrorImageSize",
        "ErrorImageSize",
        "ErrorSource",
        "ErrorSource",
        "ErrorSource",
        "ErrorSource",
    ]
    assert api.image_count(pid) == 1

    before = api.prediction_count(trained.pid)
    single = [
        (api.t, f"/projects/{trained.pid}/quicktest/url"),
        (api.p, f"/{trained.pid}/classify/iterations/{PUBLISHED}/url"),
        (api.p, f"/{trained.pid}/classify/iterations/{PUBLISHED}/url/nostore"),
    ]
    for call, path in single:
        assert_error(call("POST", path, json={"url": site.url("/missing.jpg")}), 400, "BadRequestImageUrl")
        assert_error(call("POST", path, json={"url": site.url("/page.jpg")}), 400, "BadRequestImageFormat")
        assert_error(call("POST", path, json={"url": site.url("/to-big")}), 400, "BadRequestImageSizeBytes")
        assert_error(call("POST", path, json={"url": "file:///etc/passwd"}), 400, "BadRequestImageUrl")
        assert_error(call("POST", path, json={"url": ""}), 400)
    assert api.prediction_count(trained.pid) == before
    result = api.ok(
        api.p("POST", f"/{trained.pid}/classify/iterations/{PUBLISHED}/url", json={"url": site.url("/good.jpg")})
    )
    assert result["predictions"][0]["tagName"] == "hat"
    assert api.prediction_count(trained.pid) == before + 1


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A second server that refuses private addresses (the production default), with a trained project."""
    with Server(
        tmp_path_factory.mktemp("api-errors-ssrf") / "data", env={"TAGVISION_ALLOW_PRIVATE_URLS": "0"}
    ) as running:
        guarded_api = Api(running)
        yield guarded_api, train_and_publish(guarded_api, "guarded")


def test_private_urls_are_refused(guarded, site: Site) -> None:
    api, trained = guarded
    site.requests.clear()
    forbidden = [
        site.url("/good.jpg"),
        f"http://localhost:{site.port}/good.jpg",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/",
        f"http://[::ffff:127.0.0.1]:{site.port}/",
        "file:///etc/passwd",
        "http://10.0.0.1/",
        "http://192.168.1.1/a.jpg",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0.0.0.0/",
        "gopher://127.0.0.1:25/",
    ]
    pid = trained.pid
    images_before, predictions_before = api.image_count(pid), api.prediction_count(pid)
    response = api.t(
        "POST",
        f"/projects/{pid}/images/urls",
        json={"images": [{"url": url} for url in forbidden], "tagIds": [trained.tags["hat"]]},
    )
    assert statuses(response) == ["ErrorSource"] * len(forbidden)
    for url in forbidden:
        for call, path in (
            (api.t, f"/projects/{pid}/quicktest/url"),
            (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/url"),
            (api.p, f"/{pid}/classify/iterations/{PUBLISHED}/url/nostore"),
        ):
            assert_error(call("POST", path, json={"url": url}), 400, "BadRequestImageUrl")
    assert site.requests == [], "the guard let a request through to a loopback server"
    assert api.image_count(pid) == images_before
    assert api.prediction_count(pid) == predictions_before
    # the guarded server still works for uploads
    result = api.ok(
        api.p(
            "POST",
            f"/{pid}/classify/iterations/{PUBLISHED}/image",
            files={"imageData": ("h.jpg", photo("hat", 1, "test"))},
        )
    )
    assert result["predictions"][0]["tagName"] == "hat"
    assert api.server.process.poll() is None


# --------------------------------------------------------------------------- object detection


def test_object_detection_is_refused(api: Api, trained: Trained) -> None:
    pid = trained.pid
    before = api.image_count(pid)
    projects_before = len(api.ok(api.t("GET", "/projects")))
    not_supported = "BadRequestNotSupported"
    region = {"tagId": trained.tags["hat"], "left": 0.1, "top": 0.1, "width": 0.5, "height": 0.5}
    assert_error(
        api.t("POST", f"/projects/{pid}/images/regions", json={"regions": [{"imageId": DUMMY, **region}]}),
        400,
        not_supported,
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/images/regions", params={"regionIds": DUMMY}), 400, not_supported)
    assert_error(api.t("POST", f"/projects/{pid}/images/{DUMMY}/regionproposals"), 400, not_supported)
    contents = base64.b64encode(photo("hat", 30)).decode()
    assert_error(
        api.t("POST", f"/projects/{pid}/images/files", json={"images": [{"contents": contents, "regions": [region]}]}),
        400,
        not_supported,
    )
    image = {"imageData": ("h.jpg", photo("hat", 0, "test"))}
    for suffix in ("image", "image/nostore"):
        assert_error(api.p("POST", f"/{pid}/detect/iterations/{PUBLISHED}/{suffix}", files=image), 400, not_supported)
    for suffix in ("url", "url/nostore"):
        assert_error(
            api.p("POST", f"/{pid}/detect/iterations/{PUBLISHED}/{suffix}", json={"url": "http://example.com/a.jpg"}),
            400,
            not_supported,
        )
    for domain in (DETECTION, "a27d5ca5-bb19-49d8-a70a-fec086c47f5b"):
        assert_error(
            api.t("POST", "/projects", params={"name": f"od-{domain[:4]}", "domainId": domain}), 400, not_supported
        )
    assert_error(
        api.t("POST", "/projects", params={"name": "unknown-domain", "domainId": DUMMY}),
        400,
        "BadRequestProjectUnknownDomain",
    )
    assert_error(
        api.t("POST", "/projects", params={"name": "junk-domain", "domainId": "junk"}),
        400,
        "BadRequestProjectUnknownDomain",
    )
    project = api.ok(api.t("GET", f"/projects/{pid}"))
    detection_settings = {**project["settings"], "domainId": DETECTION}
    assert_error(api.t("PATCH", f"/projects/{pid}", json={**project, "settings": detection_settings}), 400)
    assert api.ok(api.t("GET", f"/projects/{pid}"))["settings"]["domainId"] == COMPACT
    assert len(api.ok(api.t("GET", "/projects"))) == projects_before
    assert api.image_count(pid) == before


# --------------------------------------------------------------------------- training, publishing, exporting


def test_training_publishing_and_export_rules(api: Api, trained: Trained) -> None:
    pid = api.project("training-rules")
    hat = api.tag(pid, "hat")
    api.upload(pid, hat, [photo("hat", i) for i in range(5, 17)])
    assert_error(api.t("POST", f"/projects/{pid}/train"), 400, "BadRequestTrainingValidationFailed")
    shoes = api.tag(pid, "shoes")
    api.upload(pid, shoes, [photo("shoes", i) for i in range(5, 7)])
    assert_error(api.t("POST", f"/projects/{pid}/train"), 400, "BadRequestTrainingValidationFailed")  # 2 < 5
    api.upload(pid, shoes, [photo("shoes", i) for i in range(7, 17)])
    assert_error(
        api.t("POST", f"/projects/{pid}/train", params={"trainingType": "Advanced", "budgetMinutes": 0.1}),
        400,
        "BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
    )
    assert_error(api.t("POST", f"/projects/{pid}/train", params={"trainingType": "Expert"}), 400, "BadRequestInvalid")
    assert_error(
        api.t("POST", f"/projects/{pid}/train", params={"trainingType": "Advanced", "budgetMinutes": -1}),
        400,
        "BadRequestInvalid",
    )
    assert_error(
        api.t(
            "POST",
            f"/projects/{pid}/train",
            json={"customBaseModelInfo": {"projectId": trained.pid, "iterationId": trained.iteration}},
        ),
        400,
        "BadRequestNotSupported",
    )
    assert api.ok(api.t("GET", f"/projects/{pid}/iterations")) == []  # the refusals left nothing behind

    first = api.t("POST", f"/projects/{pid}/train", params={"forceTrain": "true"})
    second = api.t("POST", f"/projects/{pid}/train", params={"forceTrain": "true"})
    publish = api.t(
        "POST",
        f"/projects/{pid}/iterations/{api.ok(first)['id']}/publish",
        params={"publishName": "early", "predictionId": "x"},
    )
    iteration = first.json()
    assert iteration["status"] == "Training"
    assert_error(second, 400, "BadRequestTrainingAlreadyInProgress")
    assert_error(publish, 400, "BadRequestIterationIsNotTrained")
    assert_error(api.t("DELETE", f"/projects/{pid}"), 400, "BadRequestTrainingAlreadyInProgress")
    assert api.wait_trained(pid, iteration["id"])["status"] == "Completed"
    assert len(api.ok(api.t("GET", f"/projects/{pid}/iterations"))) == 1
    assert_error(api.t("POST", f"/projects/{pid}/train"), 400, "BadRequestTrainingNotNeeded")

    it = iteration["id"]
    assert_error(api.t("POST", f"/projects/{pid}/iterations/{it}/export", params={"platform": "CoreML"}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/iterations/{it}/export", params={"platform": "Bogus"}), 400)
    assert_error(api.t("POST", f"/projects/{pid}/iterations/{it}/export"), 400)
    assert_error(
        api.t("POST", f"/projects/{pid}/iterations/{it}/export", params={"platform": "ONNX", "flavor": "ONNX99"}), 400
    )
    assert api.ok(api.t("GET", f"/projects/{pid}/iterations/{it}/export")) == []
    assert_error(
        api.t(
            "POST", f"/projects/{pid}/iterations/{DUMMY}/publish", params={"publishName": "ghost", "predictionId": "x"}
        ),
        404,
        "NotFoundIteration",
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/iterations/{it}/publish"), 400, "BadRequestIterationNotPublished")
    # a publish name may be any text without "/", and keeps its case
    fancy = "Modèle ✓ v1"
    assert (
        api.ok(
            api.t(
                "POST", f"/projects/{pid}/iterations/{it}/publish", params={"publishName": fancy, "predictionId": "x"}
            )
        )
        is True
    )
    image = {"imageData": ("h.jpg", photo("hat", 3, "test"))}
    assert api.ok(api.p("POST", f"/{pid}/classify/iterations/{fancy}/image/nostore", files=image))
    assert_error(
        api.p("POST", f"/{pid}/classify/iterations/{fancy.upper()}/image/nostore", files=image),
        404,
        "NotFoundIteration",
    )
    assert api.t("DELETE", f"/projects/{pid}/iterations/{it}/publish").status_code == 204
    assert_error(
        api.p("POST", f"/{pid}/classify/iterations/{fancy}/image/nostore", files=image), 404, "NotFoundIteration"
    )
    # the publish name of another project is no clash
    assert (
        api.ok(
            api.t(
                "POST",
                f"/projects/{pid}/iterations/{it}/publish",
                params={"publishName": PUBLISHED, "predictionId": "x"},
            )
        )
        is True
    )
    # a published iteration cannot be deleted
    assert_error(
        api.t("DELETE", f"/projects/{trained.pid}/iterations/{trained.iteration}"),
        400,
        "BadRequestIterationIsPublished",
    )
    assert_error(api.t("DELETE", f"/projects/{pid}/iterations/{it}"), 400, "BadRequestIterationIsPublished")
    assert api.ok(api.t("GET", f"/projects/{trained.pid}/iterations/{trained.iteration}"))["publishName"] == PUBLISHED
    assert_error(api.t("PATCH", f"/projects/{pid}/iterations/{it}", json={"name": ""}), 400)


# --------------------------------------------------------------------------- OpenAPI and path case

DOCUMENTED = [  # docs/custom-vision-api.md 2.1 and 2.2 (less export_project, import_project, get_artifact)
    ("GET", "/domains"),
    ("GET", "/domains/{domainId}"),
    ("GET", "/projects"),
    ("POST", "/projects"),
    ("GET", "/projects/{projectId}"),
    ("PATCH", "/projects/{projectId}"),
    ("DELETE", "/projects/{projectId}"),
    ("GET", "/projects/{projectId}/images"),
    ("POST", "/projects/{projectId}/images"),
    ("DELETE", "/projects/{projectId}/images"),
    ("GET", "/projects/{projectId}/images/count"),
    ("POST", "/projects/{projectId}/images/files"),
    ("GET", "/projects/{projectId}/images/id"),
    ("POST", "/projects/{projectId}/images/metadata"),
    ("POST", "/projects/{projectId}/images/predictions"),
    ("GET", "/projects/{projectId}/images/tagged"),
    ("GET", "/projects/{projectId}/images/tagged/count"),
    ("POST", "/projects/{projectId}/images/tags"),
    ("DELETE", "/projects/{projectId}/images/tags"),
    ("GET", "/projects/{projectId}/images/untagged"),
    ("GET", "/projects/{projectId}/images/untagged/count"),
    ("POST", "/projects/{projectId}/images/urls"),
    ("GET", "/projects/{projectId}/iterations"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}"),
    ("DELETE", "/projects/{projectId}/iterations/{iterationId}"),
    ("PATCH", "/projects/{projectId}/iterations/{iterationId}"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/export"),
    ("POST", "/projects/{projectId}/iterations/{iterationId}/export"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/performance"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/performance/images"),
    ("GET", "/projects/{projectId}/iterations/{iterationId}/performance/images/count"),
    ("POST", "/projects/{projectId}/iterations/{iterationId}/publish"),
    ("DELETE", "/projects/{projectId}/iterations/{iterationId}/publish"),
    ("DELETE", "/projects/{projectId}/predictions"),
    ("POST", "/projects/{projectId}/predictions/query"),
    ("POST", "/projects/{projectId}/quicktest/image"),
    ("POST", "/projects/{projectId}/quicktest/url"),
    ("GET", "/projects/{projectId}/tags"),
    ("POST", "/projects/{projectId}/tags"),
    ("GET", "/projects/{projectId}/tags/{tagId}"),
    ("DELETE", "/projects/{projectId}/tags/{tagId}"),
    ("PATCH", "/projects/{projectId}/tags/{tagId}"),
    ("POST", "/projects/{projectId}/tagsandregions/suggestions"),
    ("POST", "/projects/{projectId}/images/suggested"),
    ("POST", "/projects/{projectId}/images/suggested/count"),
    ("POST", "/projects/{projectId}/train"),
]
DOCUMENTED_PREDICTION = [
    ("POST", "/{projectId}/classify/iterations/{publishedName}/image"),
    ("POST", "/{projectId}/classify/iterations/{publishedName}/image/nostore"),
    ("POST", "/{projectId}/classify/iterations/{publishedName}/url"),
    ("POST", "/{projectId}/classify/iterations/{publishedName}/url/nostore"),
]


def test_openapi_lists_the_documented_routes(api: Api) -> None:
    operations = set(openapi_operations(api))
    wanted = {(m, "/customvision/{version}/training" + p) for m, p in DOCUMENTED}
    wanted |= {(m, "/customvision/{version}/prediction" + p) for m, p in DOCUMENTED_PREDICTION}
    assert len(wanted) >= 45
    assert sorted(wanted - operations) == []
    docs = api.http.get(f"{api.server.endpoint}/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    assert "<html" in docs.text.lower()


def test_paths_are_case_insensitive_but_publish_names_are_not(api: Api, srv: Server, trained: Trained) -> None:
    pid = trained.pid
    lower = api.ok(api.t("GET", "/projects"))
    for path in (
        "/customvision/v3.4-preview/Training/Projects",
        "/CustomVision/V3.4-Preview/TRAINING/projects",
        "/customvision/v3.3/training/PROJECTS",
    ):
        response = api.http.get(srv.endpoint + path, headers=srv.training_headers)
        assert response.status_code == 200, (path, response.text[:300])
        assert {p["id"] for p in response.json()} == {p["id"] for p in lower}
    upper = api.http.get(
        srv.endpoint + f"/customvision/v3.4-preview/Training/Projects/{pid.upper()}/Tags", headers=srv.training_headers
    )
    assert upper.status_code == 200 and {t["id"] for t in upper.json()} == set(trained.tags.values())
    image = {"imageData": ("h.jpg", photo("hat", 2, "test"))}
    works = api.http.post(
        srv.endpoint + f"/customvision/v3.1/Prediction/{pid.upper()}/Classify/Iterations/{PUBLISHED}/Image/NoStore",
        headers=srv.prediction_headers,
        files=image,
    )
    assert works.status_code == 200, works.text[:300]
    assert api.ok(api.p("POST", f"/{pid}/classify/iterations/{PUBLISHED}/image/nostore", files=image))
    for wrong_case in (PUBLISHED.lower(), PUBLISHED.upper()):
        assert_error(
            api.p("POST", f"/{pid}/classify/iterations/{wrong_case}/image/nostore", files=image),
            404,
            "NotFoundIteration",
        )
    assert_error(
        api.http.get(srv.endpoint + "/customvision/v3.4-preview/Training/Nothing", headers=srv.training_headers),
        404,
        "NotFound",
    )


# --------------------------------------------------------------------------- afterwards


def test_the_server_survived(api: Api, srv: Server) -> None:
    assert srv.process is not None and srv.process.poll() is None, srv.log()[-2000:]
    assert isinstance(api.ok(api.t("GET", "/projects")), list)
    assert "Traceback" not in srv.log(), srv.log()[-3000:]
    with sqlite3.connect(Path(srv.data_dir) / "tagvision.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert os.path.exists(srv.data_dir / "keys.json")
