"""What makes the server safe to expose: bounded memory per request, names that cannot break headers, URL
fetches that cannot starve other routes, a Host header that is not trusted, sessions that end on logout.

In process (the real ASGI app, FastAPI's TestClient, a real SQLite file); remote image hosts are servers
of our own on loopback that hold their answers until the test lets them go.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tagvision import images
from tagvision.clock import ManualClock
from tagvision.config import Settings
from tagvision.server import create_app
from tagvision.service import NewImage, Service
from tagvision.service.sessions import LoginPace
from tests.conftest import CLOTHING, photos

TRAINING = "/customvision/v3.4-preview/training"
PREDICTION = "/customvision/v3.1/prediction"


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def open_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Opens the app with ``TAGVISION_*`` variables as given; yields (client, service)."""
    opened: list[tuple[TestClient, Service]] = []

    def open_(**env: str) -> tuple[TestClient, Service]:
        for name, value in env.items():
            monkeypatch.setenv(f"TAGVISION_{name.upper()}", value)
        service = Service.open(Settings.load(tmp_path / f"data{len(opened)}"))
        client = TestClient(create_app(service), base_url="http://127.0.0.1:8000")
        client.__enter__()
        opened.append((client, service))
        return client, service

    yield open_
    for client, service in opened:
        client.__exit__(None, None, None)
        service.close()


def training(service: Service) -> dict[str, str]:
    return {"Training-Key": service.keys.current().training}


def trained_project(service: Service, name: str = "shop") -> str:
    """A small real-photo project, trained (quick) and published as "live"; returns its id."""
    project = service.projects.create(name)
    service.projects.create_tags(name, ["hat", "shoes"])
    items = [
        NewImage(p.name, p.read_bytes, (tag,)) for tag in ("hat", "shoes") for p in photos(CLOTHING, "train", tag, 6)
    ]
    service.images.add(name, items)
    iteration = service.training.train(name)
    service.training.publish(name, iteration.id, "live")
    return project.id


# --------------------------------------------------------------------------- memory


@pytest.mark.slow  # trains on real photos
def test_a_request_that_cannot_get_decode_memory_in_time_gets_429(open_app) -> None:
    client, service = open_app(request_wait_seconds="0.2")
    pid = trained_project(service)
    headers = {"Prediction-Key": service.keys.current().prediction}
    url = f"{PREDICTION}/{pid}/classify/iterations/live/image/nostore"
    with images.DECODES.hold(images.DECODES.max_bytes):  # every byte of the budget is in use
        busy = client.post(url, headers=headers, content=png(800, 600))
    assert busy.status_code == 429 and busy.json()["code"] == "TooManyRequests"
    assert int(busy.headers["Retry-After"]) > 0
    assert client.post(url, headers=headers, content=png(800, 600)).status_code == 200  # once it is free


def test_an_image_whose_decode_alone_exceeds_the_budget_is_refused(open_app) -> None:
    client, service = open_app(decode_memory_mb="1")
    try:
        pid = service.projects.create("p").id
        tag = service.projects.create_tags("p", ["a"])[0].id
        response = client.post(
            f"{TRAINING}/projects/{pid}/images",
            params={"tagIds": tag},
            headers=training(service),
            content=png(800, 600),
        )
        assert response.json()["images"][0]["status"] == "ErrorImageDimensions"
    finally:
        images.DECODES.configure(images.DEFAULT_DECODE_BUDGET)


def test_thumbnails_are_made_once_and_kept(open_app, monkeypatch) -> None:
    client, service = open_app()
    pid = service.projects.create("p").id
    tag = service.projects.create_tags("p", ["a"])[0].id
    client.post(
        f"{TRAINING}/projects/{pid}/images", params={"tagIds": tag}, headers=training(service), content=png(900, 700)
    )
    link = client.get(f"{TRAINING}/projects/{pid}/images", headers=training(service)).json()[0]["thumbnailUri"]
    made = []
    original = images.thumbnail_jpeg
    monkeypatch.setattr(images, "thumbnail_jpeg", lambda *a, **k: made.append(1) or original(*a, **k))
    first, second = client.get(link), client.get(link)
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert made == [1] and Image.open(io.BytesIO(first.content)).size == (256, 199)
    assert first.headers["X-Content-Type-Options"] == "nosniff"


# --------------------------------------------------------------------------- names in headers


@pytest.mark.slow  # trains on real photos
@pytest.mark.parametrize(
    ("project", "iteration"),
    [("靴 sec", "Iter 😀"), ('x"; filename="evil.html', "plain"), ("shoes", 'a"b\\c;d')],
)
def test_export_downloads_carry_any_name_safely(open_app, project: str, iteration: str) -> None:
    client, service = open_app()
    pid = trained_project(service, project)
    iteration_id = service.training.iterations(pid)[0].id
    service.training.rename_iteration(pid, iteration_id, iteration)
    url = f"{TRAINING}/projects/{pid}/iterations/{iteration_id}/export"
    client.post(url, params={"platform": "ONNX"}, headers=training(service)).raise_for_status()
    service.jobs.wait()
    (export,) = client.get(url, headers=training(service)).json()
    download = client.get(export["downloadUri"])
    assert download.status_code == 200 and download.content[:2] == b"PK"
    disposition = download.headers["Content-Disposition"]
    fallback, encoded = disposition.split("; filename*=UTF-8''")
    assert fallback.startswith('attachment; filename="') and fallback.count('"') == 2  # one quoted ASCII name
    assert unquote(encoded) == f"{project}-{iteration}-ONNX.zip".replace(" ", "-")


@pytest.mark.slow  # trains on real photos
def test_iteration_names_follow_the_rule_for_names(open_app) -> None:
    client, service = open_app()
    pid = trained_project(service)
    iteration_id = service.training.iterations(pid)[0].id
    url = f"{TRAINING}/projects/{pid}/iterations/{iteration_id}"
    for bad in ("two\r\nlines", "tab\there", "   ", "x" * 300):
        response = client.patch(url, json={"name": bad}, headers=training(service))
        assert response.status_code == 400 and response.json()["code"] == "BadRequestIterationName", bad
    assert client.patch(url, json={"name": "Iter 😀"}, headers=training(service)).json()["name"] == "Iter 😀"


# --------------------------------------------------------------------------- slow remote hosts


class HeldHost:
    """An image host on loopback that holds every answer until ``release()``."""

    def __init__(self, body: bytes) -> None:
        self.release_event, self.arrived = threading.Event(), threading.Semaphore(0)
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                host.arrived.release()
                host.release_event.wait(600)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/photo.png"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release_event.set()
        self.server.shutdown()


def test_slow_url_fetches_hold_a_few_places_and_the_rest_get_429(open_app) -> None:
    client, service = open_app(url_fetchers="2", request_wait_seconds="0.2", allow_private_urls="1")
    pid = service.projects.create("p").id
    tag = service.projects.create_tags("p", ["a"])[0].id
    host = HeldHost(png(300, 300))
    results: list[int] = []
    body = {"images": [{"url": host.url}], "tagIds": [tag]}

    def add() -> None:
        results.append(
            client.post(f"{TRAINING}/projects/{pid}/images/urls", json=body, headers=training(service)).status_code
        )

    held = [threading.Thread(target=add) for _ in range(2)]
    try:
        for thread in held:
            thread.start()
        assert host.arrived.acquire(timeout=600) and host.arrived.acquire(timeout=600)  # both fetches are waiting
        full = client.post(f"{TRAINING}/projects/{pid}/images/urls", json=body, headers=training(service))
        assert full.status_code == 429 and full.json()["code"] == "TooManyRequests" and "Retry-After" in full.headers
        assert client.get(f"{TRAINING}/projects", headers=training(service)).status_code == 200  # others answer
    finally:
        host.close()
    for thread in held:
        thread.join(600)
    assert sorted(results) == [200, 207]  # the second of the same image is a duplicate


# --------------------------------------------------------------------------- hosts, sessions, queries


def test_links_come_from_the_public_url_and_untrusted_hosts_are_refused(open_app) -> None:
    client, service = open_app(public_url="https://vision.example.com/")
    pid = service.projects.create("p").id
    tag = service.projects.create_tags("p", ["a"])[0].id
    client.post(
        f"{TRAINING}/projects/{pid}/images", params={"tagIds": tag}, headers=training(service), content=png(300, 300)
    )
    (image,) = client.get(f"{TRAINING}/projects/{pid}/images", headers=training(service)).json()
    assert image["originalImageUri"].startswith("https://vision.example.com/tagvision/files/image/")
    evil = client.get(f"{TRAINING}/projects", headers={**training(service), "Host": "evil.example"})
    assert evil.status_code == 400 and evil.json()["code"] == "BadRequestInvalidHost"
    assert client.get(f"{TRAINING}/projects", headers={**training(service), "Host": "vision.example.com"}).is_success


def login(client: TestClient, key: str) -> None:
    page = client.get("/login")
    token = page.text.split('name="csrf" value="')[1].split('"')[0] if 'name="csrf"' in page.text else ""
    client.post("/login", data={"key": key, "next": "/", "csrf": token}, follow_redirects=False)


def test_logging_out_ends_the_session_for_every_copy_of_its_cookie(open_app) -> None:
    client, service = open_app()
    login(client, service.keys.current().training)
    assert client.get("/", follow_redirects=False).status_code == 200
    copy = dict(client.cookies)
    page = client.get("/")
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    client.cookies.clear()
    client.cookies.update(copy)  # someone kept the cookie from before the logout
    assert client.get("/", follow_redirects=False).headers["location"].startswith("/login")


def test_wrong_logins_are_paced_per_client() -> None:
    import asyncio

    clock = ManualClock()
    pace = LoginPace(delay=0.0, limit=3, window=60.0, clock=clock)

    async def attempts() -> None:
        for _ in range(3):
            pace.check("10.0.0.1")
            await pace.failed("10.0.0.1")

    asyncio.run(attempts())
    with pytest.raises(Exception) as caught:
        pace.check("10.0.0.1")
    assert caught.value.code == "TooManyRequests" and caught.value.retry_after == 61
    pace.check("10.0.0.2")  # another client is not held back
    clock.advance(61)
    pace.check("10.0.0.1")  # the window has passed


@pytest.mark.slow  # trains on real photos
def test_query_counts_and_thresholds_out_of_range_are_refused(open_app) -> None:
    client, service = open_app()
    pid = trained_project(service)
    iteration_id = service.training.iterations(pid)[0].id
    query = client.post(
        f"{TRAINING}/projects/{pid}/predictions/query", json={"maxCount": -1}, headers=training(service)
    )
    assert query.status_code == 400 and query.json()["code"] == "BadRequestInvalid"
    count = client.post(
        f"{TRAINING}/projects/{pid}/images/suggested/count",
        params={"iterationId": iteration_id},
        json={"threshold": 5},
        headers=training(service),
    )
    assert count.status_code == 400 and count.json()["code"] == "BadRequestInvalid"
