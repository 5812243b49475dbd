"""Scoring jobs through a real `tagvision serve`: the Training API extension, the portal page, and an
iteration served in int8 once its precision is set (the official SDK still reads the iteration)."""

from __future__ import annotations

import csv
import http.server
import io
import json
import re
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLOTHING, photos
from tests.server import Server

pytestmark = pytest.mark.slow
TAGS = ("dress", "hat", "shoes")
COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"


def wait_for(get, done, what: str) -> dict:
    deadline = time.monotonic() + 600
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} did not finish: {value}"
        time.sleep(0.3)


@pytest.fixture
def trained(tmp_path: Path):
    """A server whose project has a published quick iteration, and a library root holding a catalogue."""
    library = tmp_path / "library"
    for tag in TAGS:
        (library / "spring" / tag).mkdir(parents=True)
        for path in photos(CLOTHING, "test", tag, 3):
            shutil.copy(path, library / "spring" / tag / path.name)
    (library / "spring" / "broken.jpg").write_bytes(b"\xff\xd8\xffnot a photo")
    with Server(tmp_path / "server", env={"TAGVISION_LIBRARY_ROOTS": str(library)}) as server:
        t = httpx.Client(base_url=server.training(), headers=server.training_headers, timeout=120)
        pid = t.post("/projects", params={"name": "shop", "domainId": COMPACT}).raise_for_status().json()["id"]
        for tag in TAGS:
            tag_id = t.post(f"/projects/{pid}/tags", params={"name": tag}).raise_for_status().json()["id"]
            files = [("imageData", p.read_bytes()) for p in photos(CLOTHING, "train", tag, 6)]
            t.post(f"/projects/{pid}/images", params={"tagIds": tag_id}, files=files).raise_for_status()
        iteration = t.post(f"/projects/{pid}/train").raise_for_status().json()
        iteration = wait_for(
            lambda: t.get(f"/projects/{pid}/iterations/{iteration['id']}").json(),
            lambda i: i["status"] != "Training",
            "training",
        )
        assert iteration["status"] == "Completed", iteration
        t.post(
            f"/projects/{pid}/iterations/{iteration['id']}/publish", params={"publishName": "v1", "predictionId": "x"}
        ).raise_for_status()
        yield server, t, pid, iteration["id"], library


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def finished(t: httpx.Client, pid: str, scoring_id: str) -> dict:
    return wait_for(
        lambda: t.get(f"/projects/{pid}/scorings/{scoring_id}").raise_for_status().json(),
        lambda s: s["status"] != "Running",
        "scoring",
    )


def test_a_scoring_job_over_a_library_folder_and_over_urls(trained, tmp_path: Path) -> None:
    server, t, pid, iteration_id, library = trained
    outside = t.post(f"/projects/{pid}/scorings", json={"folder": str(tmp_path)})
    assert outside.status_code == 400 and outside.json()["code"] == "BadRequestInvalid"
    assert "TAGVISION_LIBRARY_ROOTS" in outside.json()["message"]
    neither = t.post(f"/projects/{pid}/scorings", json={"top": 2})
    assert neither.status_code == 400

    started = t.post(f"/projects/{pid}/scorings", json={"folder": str(library / "spring"), "top": 2})
    assert started.status_code == 200, started.text
    job = started.json()
    assert (job["status"], job["iterationId"], job["precision"], job["top"]) == (
        "Running",
        iteration_id,
        "Float32",
        2,
    )
    job = finished(t, pid, job["id"])
    assert job["status"] == "Completed", job
    assert job["progress"]["done"] == job["progress"]["total"] == 10
    assert (job["progress"]["scored"], job["progress"]["errors"]) == (9, {"ErrorImageFormat": 1})
    lines = t.get(f"/projects/{pid}/scorings/{job['id']}/results").raise_for_status().text.splitlines()
    rows = {json.loads(line)["image"]: json.loads(line) for line in lines}
    assert rows[str(library / "spring" / "broken.jpg")]["errorCode"] == "ErrorImageFormat"
    for tag in TAGS:
        for path in (library / "spring" / tag).iterdir():
            predictions = rows[str(path)]["predictions"]
            assert len(predictions) == 2 and predictions[0]["probability"] >= predictions[1]["probability"]
    table = list(csv.DictReader(io.StringIO(t.get(f"/projects/{pid}/scorings/{job['id']}/results?format=csv").text)))
    assert {r["image"] for r in table} == set(rows) and set(table[0]) >= {"tag_1", "probability_2", "error_code"}

    # The same photos by URL, from a loopback server (the test server allows private addresses).
    www = partial(_Quiet, directory=str(library))
    photo_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), www)
    threading.Thread(target=photo_server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{photo_server.server_address[1]}"
        urls = [f"{base}/{p.relative_to(library)}" for p in sorted((library / "spring" / "hat").iterdir())]
        by_url = t.post(f"/projects/{pid}/scorings", json={"urls": [*urls, f"{base}/nothing.jpg"], "top": 2}).json()
        by_url = finished(t, pid, by_url["id"])
    finally:
        photo_server.shutdown()
    assert by_url["status"] == "Completed" and by_url["source"] == {"urls": 4, "urlsBlob": by_url["source"]["urlsBlob"]}
    assert by_url["progress"]["errors"] == {"BadRequestImageUrl": 1}
    downloaded = t.get(f"/projects/{pid}/scorings/{by_url['id']}/results").text
    url_rows = [json.loads(line) for line in downloaded.splitlines()]
    for url, row in zip(urls, url_rows, strict=False):
        same = rows[str(library / Path(url.split(base + "/")[1]))]
        assert row["image"] == url and row["predictions"] == same["predictions"]
    listed = t.get(f"/projects/{pid}/scorings").raise_for_status().json()
    assert [j["id"] for j in listed] == [by_url["id"], job["id"]]


def test_an_int8_iteration_is_served_in_int8_and_the_sdk_still_reads_it(trained) -> None:
    from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
    from msrest.authentication import ApiKeyCredentials

    server, t, pid, iteration_id, library = trained
    photo = next((library / "spring" / "hat").iterdir()).read_bytes()
    p = httpx.Client(base_url=server.prediction(), headers=server.prediction_headers, timeout=600)
    url = f"/{pid}/classify/iterations/v1/image/nostore"
    fp32 = {x["tagName"]: x["probability"] for x in p.post(url, content=photo).raise_for_status().json()["predictions"]}
    bad = t.patch(f"/projects/{pid}/iterations/{iteration_id}", json={"precision": "int4"})
    assert bad.status_code == 400 and bad.json()["code"] == "BadRequestInvalid"
    set_to = t.patch(f"/projects/{pid}/iterations/{iteration_id}", json={"precision": "Int8"}).raise_for_status()
    assert set_to.json()["precision"] == "Int8" and set_to.json()["name"] == "Iteration 1"
    int8 = {x["tagName"]: x["probability"] for x in p.post(url, content=photo).raise_for_status().json()["predictions"]}
    assert max(fp32, key=fp32.get) == max(int8, key=int8.get)
    assert fp32 != int8  # really the int8 model: its probabilities differ a little
    assert max(abs(fp32[k] - int8[k]) for k in fp32) < 0.2
    exports = t.get(f"/projects/{pid}/iterations/{iteration_id}/export").raise_for_status().json()
    assert [(e["flavor"], e["status"]) for e in exports] == [("Int8", "Done")]  # made once, kept as the export

    trainer = CustomVisionTrainingClient(server.endpoint, ApiKeyCredentials(in_headers=server.training_headers))
    iteration = trainer.get_iteration(pid, iteration_id)
    assert iteration.status == "Completed" and iteration.publish_name == "v1"
    assert trainer.update_iteration(pid, iteration_id, name="Spring").name == "Spring"
    assert t.get(f"/projects/{pid}/iterations/{iteration_id}").json()["precision"] == "Int8"  # a rename keeps it
    job = t.post(f"/projects/{pid}/scorings", json={"folder": str(library / "spring" / "hat")}).json()
    assert job["precision"] == "Int8"  # scoring follows the iteration's setting unless asked otherwise
    assert finished(t, pid, job["id"])["status"] == "Completed"


def test_the_portal_starts_a_job_and_offers_its_results(trained) -> None:
    server, t, pid, iteration_id, library = trained
    portal = httpx.Client(base_url=server.endpoint, timeout=120, follow_redirects=True)
    token = re.search(r'name="csrf" value="([^"]+)"', portal.get("/login").text).group(1)
    portal.post("/login", data={"key": server.training_key, "csrf": token, "next": "/"}).raise_for_status()
    page = portal.get(f"/projects/{pid}/scoring")
    assert page.status_code == 200 and "Score a catalogue" in page.text and str(library) in page.text
    token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    back = f"/projects/{pid}/scoring"
    shoes = str(library / "spring" / "shoes")
    after = portal.post(back, data={"csrf": token, "folder": shoes, "top": "1", "next": back})
    assert after.status_code == 200 and "Scoring jobs" in after.text
    (job,) = t.get(f"/projects/{pid}/scorings").json()
    finished(t, pid, job["id"])
    page = portal.get(f"/projects/{pid}/scoring").text
    assert "3 of 3" in page and "Completed" in page
    table = list(csv.DictReader(io.StringIO(portal.get(f"/projects/{pid}/scoring/{job['id']}/results.csv").text)))
    assert len(table) == 3 and all(r["tag_1"] in TAGS for r in table)
    refused = portal.post(back, data={"csrf": token, "folder": "/etc", "next": back})
    assert "TAGVISION_LIBRARY_ROOTS" in refused.text
