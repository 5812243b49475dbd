"""What only a real ``tagvision serve`` shows: on its socket, a request whose declared body is over the
route's limit is answered 413 (JSON ``{"code", "message"}``) before any of the body is sent.

In-process tests (tests/test_api_images.py) cover the limits counted as a body arrives.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.api import DUMMY, MB, PUBLISHED
from tests.server import Server

pytestmark = pytest.mark.process


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


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(server: Server) -> None:
    pid = DUMMY  # the limit is checked before routing: no project is needed
    for path, length, content_type in (
        (f"/projects/{pid}/predictions/query", 2 * MB, "application/json"),
        (f"/projects/{pid}/images", 10**12, "multipart/form-data; boundary=x"),
        (f"/projects/{pid}/quicktest/image", 7 * MB, "application/octet-stream"),
    ):
        head = (
            f"POST {server.training(path).removeprefix(server.endpoint)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Training-Key: {server.training_key}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        )
        status, headers, body = raw_request(server, head)
        assert status == 413, (path, status, body[:300])
        assert headers["content-type"].startswith("application/json")
        assert set(json.loads(body)) == {"code", "message"}
    head = (
        f"POST /customvision/v3.1/prediction/{pid}/classify/iterations/{PUBLISHED}/image HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nPrediction-Key: {server.prediction_key}\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {5 * MB}\r\n\r\n"
    )
    status, _, body = raw_request(server, head)
    assert status == 413 and json.loads(body)["code"] == "BadRequestImageSizeBytes"
    assert "Traceback" not in server.log(), server.log()[-3000:]
