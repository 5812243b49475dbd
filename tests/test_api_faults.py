"""Concurrency and faults against a real server: 8 uploaders beside a training and predictions,
``kill -9`` mid-upload and mid-training, and what a restart finds."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLOTHING, photos
from tests.server import Server

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"


def training_client(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.training(), headers=server.training_headers, timeout=120)


def make_project(t: httpx.Client, name: str, tags: dict[str, list[Path]]) -> tuple[str, dict[str, str]]:
    pid = t.post("/projects", params={"name": name, "domainId": COMPACT}).raise_for_status().json()["id"]
    ids = {}
    for tag, paths in tags.items():
        ids[tag] = t.post(f"/projects/{pid}/tags", params={"name": tag}).raise_for_status().json()["id"]
        if paths:
            upload(t, pid, ids[tag], paths)
    return pid, ids


def upload(t: httpx.Client, pid: str, tag_id: str, paths: list[Path]) -> list[dict]:
    response = t.post(
        f"/projects/{pid}/images",
        params={"tagIds": tag_id},
        files=[("imageData", (p.name, p.read_bytes())) for p in paths],
    )
    assert response.status_code in (200, 207), response.text
    return response.json()["images"]


def wait_trained(t: httpx.Client, pid: str, iteration_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        iteration = t.get(f"/projects/{pid}/iterations/{iteration_id}").raise_for_status().json()
        if iteration["status"] != "Training":
            return iteration
        time.sleep(0.2)
    raise AssertionError(f"iteration {iteration_id} still Training after {timeout} s")


def check_store(data_dir: Path) -> int:
    """SQLite integrity, and every image row's blob present with the content its key names."""
    with sqlite3.connect(data_dir / "tagvision.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        hashes = [row[0] for row in db.execute("SELECT sha256 FROM images")]
    for sha in hashes:
        blob = data_dir / "blobs" / sha[:2] / sha[2:]
        assert blob.is_file(), f"image row without its blob: {sha}"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
    return len(hashes)


@pytest.mark.process
@pytest.mark.slow
def test_eight_uploaders_while_training_and_predicting(server: Server) -> None:
    t = training_client(server)
    seed = {tag: photos(CLOTHING, "train", tag, 6) for tag in ("dress", "hat", "shoes")}
    pid, tag_ids = make_project(t, "busy", seed)
    first = t.post(f"/projects/{pid}/train").raise_for_status().json()
    assert wait_trained(t, pid, first["id"])["status"] == "Completed"
    t.post(
        f"/projects/{pid}/iterations/{first['id']}/publish", params={"publishName": "live", "predictionId": "x"}
    ).raise_for_status()
    before = t.get(f"/projects/{pid}/images/count").json()

    # 8 uploaders, 12 photos each, one request per photo, all tagged; distinct from the seed photos.
    pool = [(tag, p) for tag in ("dress", "hat", "shoes") for p in photos(CLOTHING, "train", tag, 32, skip=6)]
    shares = [pool[k::8][:12] for k in range(8)]
    accepted: list[str] = []
    failures: list[str] = []
    lock = threading.Lock()

    def uploader(share: list[tuple[str, Path]]) -> None:
        with training_client(server) as client:
            for tag, path in share:
                response = client.post(
                    f"/projects/{pid}/images",
                    params={"tagIds": tag_ids[tag]},
                    files=[("imageData", (path.name, path.read_bytes()))],
                )
                with lock:
                    if response.status_code == 200:
                        accepted.extend(i["image"]["id"] for i in response.json()["images"] if i["status"] == "OK")
                    else:
                        failures.append(f"{response.status_code} {response.text[:200]}")

    predictions: list[int] = []
    test_photos = photos(CLOTHING, "test", "hat", 4) + photos(CLOTHING, "test", "shoes", 4)

    def predictor() -> None:
        url = server.prediction(f"/{pid}/classify/iterations/live/image")
        with httpx.Client(headers=server.prediction_headers, timeout=120) as client:
            for path in test_photos * 2:
                response = client.post(url, files={"imageData": path.read_bytes()})
                with lock:
                    predictions.append(response.status_code)

    retrain: dict = {}

    def trainer() -> None:
        with training_client(server) as client:
            started = client.post(f"/projects/{pid}/train", params={"forceTrain": "true"}).raise_for_status().json()
            retrain.update(wait_trained(client, pid, started["id"]))

    threads = [threading.Thread(target=uploader, args=(share,)) for share in shares]
    threads += [threading.Thread(target=predictor), threading.Thread(target=trainer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)

    assert failures == []
    assert predictions == [200] * len(test_photos) * 2
    assert retrain["status"] == "Completed"
    assert len(accepted) == len(set(accepted)) == sum(len(s) for s in shares) == 96
    after = t.get(f"/projects/{pid}/images/count").json()
    assert after == before + len(accepted)
    found = set()
    for start in range(0, len(accepted), 256):
        ids = ",".join(accepted[start : start + 256])
        found |= {i["id"] for i in t.get(f"/projects/{pid}/images/id", params={"imageIds": ids}).json()}
    assert found == set(accepted)
    stored = t.post(f"/projects/{pid}/predictions/query", json={"maxCount": 100}).json()["results"]
    assert len(stored) == len(test_photos) * 2
    assert check_store(server.data_dir) == after


@pytest.mark.process
def test_kill_during_uploads_then_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    t = training_client(server)
    pid, tag_ids = make_project(t, "killed", {"hat": [], "shoes": []})
    paths = photos(CLOTHING, "train", "hat", 60) + photos(CLOTHING, "train", "shoes", 60)
    done: list[int] = []

    def uploader() -> None:
        with training_client(server) as client:
            for start in range(0, len(paths), 4):
                tag = "hat" if start < 60 else "shoes"
                try:
                    upload(client, pid, tag_ids[tag], paths[start : start + 4])
                except (httpx.TransportError, AssertionError):
                    return  # the server died under us
                done.append(start)

    thread = threading.Thread(target=uploader)
    thread.start()
    while len(done) < 5:
        time.sleep(0.01)
    server.kill()
    thread.join(60)
    assert len(done) < len(paths) // 4, "the kill came too late to interrupt anything"

    rows = check_store(server.data_dir)
    assert rows >= len(done) * 4

    server.start()
    t = training_client(server)
    assert t.get(f"/projects/{pid}/images/count").json() == rows
    statuses = []
    for start in range(0, len(paths), 4):
        tag = "hat" if start < 60 else "shoes"
        statuses += [i["status"] for i in upload(t, pid, tag_ids[tag], paths[start : start + 4])]
    assert statuses.count("OKDuplicate") == rows and statuses.count("OK") == len(paths) - rows
    assert t.get(f"/projects/{pid}/images/count").json() == len(paths)
    server.stop()
    assert check_store(server.data_dir) == len(paths)


@pytest.mark.process
@pytest.mark.slow
def test_kill_during_training_is_resumed_after_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "data").start()
    t = training_client(server)
    tags = {tag: photos(CLOTHING, "train", tag, 40, skip=60) for tag in ("dress", "pants", "shirt", "skirt")}
    pid, _ = make_project(t, "interrupted", tags)
    started = t.post(f"/projects/{pid}/train").raise_for_status().json()
    assert started["status"] == "Training"
    time.sleep(0.3)  # embedding 160 new photos takes seconds: still training
    assert t.get(f"/projects/{pid}/iterations/{started['id']}").json()["status"] == "Training"
    server.kill()
    check_store(server.data_dir)

    server.start()
    t = training_client(server)
    finished = wait_trained(t, pid, started["id"])
    assert finished["status"] == "Completed", finished["trainingErrorDetails"]
    assert [i["status"] for i in t.get(f"/projects/{pid}/iterations").json()] == ["Completed"]
    performance = t.get(f"/projects/{pid}/iterations/{started['id']}/performance").json()
    assert len(performance["perTagPerformance"]) == 4 and performance["precision"] > 0.5
    server.stop()
