"""Concurrency and faults against a real server: 8 uploaders beside a training and predictions,
``kill -9`` mid-upload and mid-training, and what a restart finds.

Each kill lands at a point the test forces (tests/gates.py), not after a sleep that hopes the work
is still going: a database write lock the test holds, or a named pipe in place of a photo's blob."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLOTHING, photos
from tests.gates import blob_path, put_back, reader_arrived, swap_for_fifo, wait_until, write_lock
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


def wait_trained(t: httpx.Client, pid: str, iteration_id: str, timeout: float = 600) -> dict:
    """The iteration once it is no longer Training (a give-up deadline only: pytest-timeout guards first)."""
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
def test_kill_between_an_uploads_blobs_and_its_rows_then_restart(tmp_path: Path) -> None:
    """``kill -9`` at a forced point: 5 batches acknowledged, and the 6th has its blobs written while its rows
    wait for the database's write lock, which the test holds."""
    with Server(tmp_path / "data") as server:  # stopped whatever happens
        t = training_client(server)
        pid, tag_ids = make_project(t, "killed", {"hat": [], "shoes": []})
        paths = photos(CLOTHING, "train", "hat", 60) + photos(CLOTHING, "train", "shoes", 60)
        batches = [("hat" if start < 60 else "shoes", paths[start : start + 4]) for start in range(0, len(paths), 4)]
        for tag, batch in batches[:5]:
            upload(t, pid, tag_ids[tag], batch)
        tag, in_flight = batches[5]
        answers: list[object] = []

        def sixth_batch() -> None:
            with training_client(server) as client:
                try:
                    answers.append(upload(client, pid, tag_ids[tag], in_flight))
                except httpx.TransportError as exc:
                    answers.append(exc)  # the server died under us

        thread = threading.Thread(target=sixth_batch)
        with write_lock(server.data_dir / "tagvision.db"):
            thread.start()
            blobs = [blob_path(server.data_dir, p.read_bytes()) for p in in_flight]
            wait_until(lambda: all(b.is_file() for b in blobs), server.process, "the sixth batch's blobs", server.log)
            server.kill()
        thread.join(60)
        assert len(answers) == 1 and isinstance(answers[0], httpx.TransportError), answers

        rows = check_store(server.data_dir)
        assert rows == 5 * 4, "the acknowledged batches are kept, and no row of the batch in flight"
        assert all(b.is_file() for b in blobs)  # left unreferenced: harmless

        server.start()
        t = training_client(server)
        assert t.get(f"/projects/{pid}/images/count").json() == rows
        statuses = []
        for tag, batch in batches:
            statuses += [i["status"] for i in upload(t, pid, tag_ids[tag], batch)]
        assert statuses.count("OKDuplicate") == rows and statuses.count("OK") == len(paths) - rows
        assert t.get(f"/projects/{pid}/images/count").json() == len(paths)
        server.stop()
        assert check_store(server.data_dir) == len(paths)


@pytest.mark.process
@pytest.mark.slow
def test_kill_during_training_is_resumed_after_restart(tmp_path: Path) -> None:
    """``kill -9`` at a forced point: the training is embedding, and waits on one photo's blob, which the
    test has swapped for a named pipe."""
    with Server(tmp_path / "data") as server:  # stopped whatever happens
        t = training_client(server)
        tags = {tag: photos(CLOTHING, "train", tag, 40, skip=60) for tag in ("dress", "pants", "shirt", "skirt")}
        pid, _ = make_project(t, "interrupted", tags)
        held = tags["shirt"][20].read_bytes()
        swap_for_fifo(blob_path(server.data_dir, held))
        started = t.post(f"/projects/{pid}/train").raise_for_status().json()
        assert started["status"] == "Training"
        writer = wait_until(
            lambda: reader_arrived(blob_path(server.data_dir, held)),
            server.process,
            "the training to reach it",
            server.log,
        )
        assert t.get(f"/projects/{pid}/iterations/{started['id']}").json()["status"] == "Training"
        server.kill()
        os.close(writer)
        put_back(blob_path(server.data_dir, held), held)
        check_store(server.data_dir)
        with sqlite3.connect(server.data_dir / "tagvision.db") as db:
            status = db.execute("SELECT status FROM iterations WHERE id = ?", (started["id"],)).fetchone()[0]
        assert status == "Training", "the kill landed mid-training"

        server.start()
        t = training_client(server)
        finished = wait_trained(t, pid, started["id"])
        assert finished["status"] == "Completed", finished["trainingErrorDetails"]
        assert [i["status"] for i in t.get(f"/projects/{pid}/iterations").json()] == ["Completed"]
        performance = t.get(f"/projects/{pid}/iterations/{started['id']}/performance").json()
        assert len(performance["perTagPerformance"]) == 4 and performance["precision"] > 0.5
        server.stop()
