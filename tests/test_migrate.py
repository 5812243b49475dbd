"""``tagvision migrate``: a real tagvision server as the source (seeded as an Azure project would be, 330 real
photos over several pages, a kill -9 halfway and a re-run), and a loopback fake of Azure's own ways (SAS links
on another host, 429 bursts, v3.3 and v3.2 paging, object detection) with the waits on a ManualClock."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tagvision.clock import ManualClock
from tagvision.config import Settings
from tagvision.service import Service
from tagvision.service.migrations import MigrationRequest, parse_time
from tagvision.sources.customvision import normalise_endpoint
from tests.conftest import CLOTHING, MODELS, need, photos
from tests.fake_azure import KEY, FakeAzure, HoldingProxy
from tests.server import Server

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
OD_GENERAL = "da2e3a8a-40a5-4171-82f4-58522f70fbc1"
DEADLINE = 600.0


def cli_env() -> dict[str, str]:
    return {**os.environ, "TAGVISION_ALLOW_PRIVATE_URLS": "1", "TAGVISION_MODELS_DIR": str(MODELS)}


def open_service(data_dir: Path, monkeypatch, allow_private: bool = True) -> Service:
    monkeypatch.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "1" if allow_private else "0")
    return Service.open(Settings.load(data_dir))


def contents(svc: Service, project: str) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]:
    """sha256 -> (tag names, metadata) of every image of a project here."""
    return {i.sha256: (tuple(sorted(n for _, n, _ in i.tags)), i.metadata) for i in svc.images.list(project)}


# --------------------------------------------------------------------------- a tagvision server as the source


def _post(server: Server, path: str, **kwargs) -> dict:
    response = httpx.post(server.training(path), headers=server.training_headers, timeout=300, **kwargs)
    assert response.status_code in (200, 207), response.text
    return response.json()


def _upload(server: Server, project_id: str, files: list[Path], tag_ids: list[str], metadata: dict) -> list[str]:
    ids = []
    for start in range(0, len(files), 64):
        entries = [
            {"name": f.name, "contents": base64.b64encode(f.read_bytes()).decode(), "tagIds": tag_ids}
            for f in files[start : start + 64]
        ]
        body = _post(server, f"/projects/{project_id}/images/files", json={"images": entries, "metadata": metadata})
        ids += [r["image"]["id"] for r in body["images"] if r["image"]]
    return ids


def seed_as_azure_users_do(server: Server) -> None:
    """A multiclass project of 270 images (two pages at take=256: 240 tagged, 10 on a Negative tag, 20
    untagged; metadata per batch and, on 30 images, per image) and a multilabel one of 60 (8 untagged)."""
    mc = _post(server, "/projects", params={"name": "clothes", "classificationType": "Multiclass", "domainId": COMPACT})
    for name, count in (("dress", 50), ("hat", 50), ("shoes", 50), ("pants", 50), ("shorts", 40)):
        tag = _post(server, f"/projects/{mc['id']}/tags", params={"name": name, "description": f"{name} photos"})
        ids = _upload(server, mc["id"], photos(CLOTHING, "train", name, count), [tag["id"]], {"shop": name})
        for k, image_id in enumerate(ids[:6]):
            _post(server, f"/projects/{mc['id']}/images/metadata", params={"imageIds": image_id}, json={"sku": f"{k}"})
    negative = _post(server, f"/projects/{mc['id']}/tags", params={"name": "not clothing", "type": "Negative"})
    _upload(server, mc["id"], photos(CLOTHING, "train", "skirt", 10), [negative["id"]], {})
    _upload(server, mc["id"], photos(CLOTHING, "train", "t-shirt", 20), [], {"batch": "unlabelled"})

    ml = _post(server, "/projects", params={"name": "clothes-ml", "classificationType": "Multilabel"})
    top, warm, formal = (
        _post(server, f"/projects/{ml['id']}/tags", params={"name": n})["id"] for n in ("top", "warm", "formal")
    )
    _upload(server, ml["id"], photos(CLOTHING, "validation", "longsleeve", 20), [top, warm], {"season": "winter"})
    _upload(server, ml["id"], photos(CLOTHING, "validation", "shirt", 20), [top, formal], {})
    _upload(server, ml["id"], photos(CLOTHING, "validation", "outwear", 12), [warm], {"season": "autumn"})
    _upload(server, ml["id"], photos(CLOTHING, "validation", "shoes", 8), [], {})


def source_contents(server: Server) -> dict[str, dict]:
    """Project name -> {sha256: (tag names, metadata)} and its tags, read back from the source's API."""
    out = {}
    headers = server.training_headers
    for project in httpx.get(server.training("/projects"), headers=headers).json():
        images, skip = {}, 0
        while page := httpx.get(
            server.training(f"/projects/{project['id']}/images"), params={"take": 256, "skip": skip}, headers=headers
        ).json():
            skip += len(page)
            for i in page:
                images[i["sha256"]] = (tuple(sorted(t["tagName"] for t in i["tags"] or [])), i["metadata"] or {})
        tags = httpx.get(server.training(f"/projects/{project['id']}/tags"), headers=headers).json()
        out[project["name"]] = {"images": images, "tags": {t["name"]: t["type"] for t in tags}}
    return out


def _rows(database: Path, query: str) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute(query).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_a_tagvision_source_comes_over_whole_and_a_kill_then_a_rerun_leave_one_copy_of_each(
    tmp_path: Path, monkeypatch
) -> None:
    need(CLOTHING)
    with Server(tmp_path / "source") as source:
        seed_as_azure_users_do(source)
        expected = source_contents(source)
        total = sum(len(p["images"]) for p in expected.values())
        assert total >= 300 and max(len(p["images"]) for p in expected.values()) > 256, "several pages"

        proxy = HoldingProxy(source.endpoint, hold_after=150)
        target = tmp_path / "target"
        database = target / "tagvision.db"
        command = [sys.executable, "-m", "tagvision.cli", "migrate", "--endpoint", proxy.url, "--training-key"]
        command += [source.training_key, "--all", "--concurrency", "4", "--data-dir", str(target)]
        try:
            with open(tmp_path / "first.log", "wb") as log:
                process = subprocess.Popen(command, env=cli_env(), stdout=log, stderr=log)
                assert proxy.holding.wait(DEADLINE), (tmp_path / "first.log").read_text()
                # Every download before the held ones is stored in whole batches of 32 before the run stalls.
                deadline = time.monotonic() + DEADLINE
                while _rows(database, "select count(*) from images") < 128 and time.monotonic() < deadline:
                    time.sleep(0.05)
                process.send_signal(signal.SIGKILL)
                process.wait(60)
            assert process.returncode == -signal.SIGKILL
            halfway = _rows(database, "select count(*) from images")
            assert 128 <= halfway < total
            with sqlite3.connect(database) as connection:
                assert connection.execute("pragma integrity_check").fetchone()[0] == "ok"
                for (sha,) in connection.execute("select sha256 from images"):
                    blob = target / "blobs" / sha[:2] / sha[2:]
                    assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha

            proxy.hold_after = None
            proxy.release()
            rerun = subprocess.run(command + ["--json"], env=cli_env(), capture_output=True, text=True, timeout=900)
        finally:
            proxy.close()
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads(rerun.stdout)
    assert report["apiVersion"] == "v3.4-preview"
    assert sum(p["alreadyThere"] for p in report["projects"]) == halfway
    assert sum(p["added"] for p in report["projects"]) == total - halfway
    assert all(not p["refused"] and p["error"] is None for p in report["projects"])

    assert _rows(database, "select count(*) from projects") == 2
    assert _rows(database, "select count(*) from images") == total, "exactly one copy of each image"
    svc = open_service(target, monkeypatch)
    try:
        for name, source_project in expected.items():
            assert contents(svc, name) == source_project["images"]
            assert {t.name: t.type for t in svc.projects.list_tags(name)} == source_project["tags"]
        assert svc.projects.get("clothes").classification_type == "Multiclass"
        assert svc.projects.get("clothes-ml").classification_type == "Multilabel"
        assert svc.projects.get("clothes").domain == COMPACT
    finally:
        svc.close()


# --------------------------------------------------------------------------- Azure's own ways, on a fake


def _jpeg(path: Path) -> tuple[bytes, tuple[int, int]]:
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        return data, img.size


def seed_azure(azure: FakeAzure) -> dict:
    """A multiclass project (Negative tag, untagged images, metadata, one corrupt image, one broken link), a
    multilabel one, and an object-detection one with regions."""
    mc = azure.add_project("shop", "Multiclass", COMPACT, "phone photos")
    tags = {n: azure.add_tag(mc, n, description=f"{n}s") for n in ("dress", "hat", "shoes")}
    negative = azure.add_tag(mc, "other", "Negative")
    for name, tag in tags.items():
        for k, path in enumerate(photos(CLOTHING, "train", name, 6)):
            azure.add_image(mc, *_jpeg(path), tags=[tag], metadata={"sku": f"{name}-{k}", "aisle": "3"})
    for path in photos(CLOTHING, "train", "skirt", 2):
        azure.add_image(mc, *_jpeg(path), tags=[negative])
    for path in photos(CLOTHING, "train", "pants", 3):
        azure.add_image(mc, *_jpeg(path), metadata={"batch": "unlabelled"})
    corrupt = azure.add_image(mc, b"\xff\xd8\xff not really a jpeg", (400, 533), tags=[tags["hat"]])
    broken = azure.add_image(mc, *_jpeg(photos(CLOTHING, "train", "hat", 7)[-1]), tags=[tags["hat"]])
    del azure.blobs.blobs[f"{mc.id}/{broken.id}"]
    for image in mc.images[:3]:
        azure.blobs.busy_once.add(f"{mc.id}/{image.id}")

    ml = azure.add_project("looks", "Multilabel", COMPACT)
    top, warm = azure.add_tag(ml, "top"), azure.add_tag(ml, "warm")
    for path in photos(CLOTHING, "validation", "longsleeve", 4):
        azure.add_image(ml, *_jpeg(path), tags=[top, warm])
    for path in photos(CLOTHING, "validation", "shirt", 3):
        azure.add_image(ml, *_jpeg(path), tags=[top])

    od = azure.add_project("shelf", None, OD_GENERAL)
    hat, shoe = azure.add_tag(od, "hat"), azure.add_tag(od, "shoe")
    for path in photos(CLOTHING, "test", "hat", 3):
        box = {"tagId": hat, "left": 0.1, "top": 0.2, "width": 0.5, "height": 0.25}
        azure.add_image(od, *_jpeg(path), regions=[box, {**box, "tagId": shoe, "left": 0.6, "width": 0.3}])
    return {"corrupt": corrupt.id, "broken": broken.id, "busy": 3}


def fake_contents(azure: FakeAzure, name: str, skip: set[str] = frozenset()) -> dict:
    project = next(p for p in azure.projects if p.name == name)
    names = {t["id"]: t["name"] for t in project.tags}
    return {
        hashlib.sha256(i.data).hexdigest(): (tuple(sorted(names[t] for t in i.tags)), i.metadata)
        for i in project.images
        if i.id not in skip
    }


@pytest.mark.slow
def test_an_azure_source_sas_links_on_another_host_429_bursts_and_v33_paging(tmp_path: Path, monkeypatch) -> None:
    need(CLOTHING)
    clock = ManualClock()
    azure = FakeAzure(versions=("v3.3",), max_page=7, burst=4, retry_after=2, clock=clock)
    svc = open_service(tmp_path / "data", monkeypatch)
    try:
        faults = seed_azure(azure)
        request = MigrationRequest(azure.endpoint, KEY, every=True, concurrency=4)
        report = svc.migrations.run(request, clock=clock)
        shop, looks, shelf = report.projects

        assert report.version == "v3.3" and azure.calls[0][0] == "v3.4-preview", "the preview is tried first"
        assert all(int(q.get("take", 0)) <= 256 for _, _, q in azure.calls)
        assert report.throttled == azure.throttled > 0
        assert clock.slept.count(2.0) == azure.throttled, "every 429 waited its Retry-After"
        assert clock.slept.count(1.0) == faults["busy"], "every busy blob waited its Retry-After"
        assert not any("training-key" in headers for _, headers in azure.blobs.requests), "the key stays home"

        assert {(r.image_id, r.status) for r in shop.refused} == {
            (faults["corrupt"], "ErrorImageFormat"),
            (faults["broken"], "ErrorSource"),
        }
        assert shop.added == 23 and looks.added == 7 and shelf.added == 3
        assert contents(svc, "shop") == fake_contents(azure, "shop", {faults["corrupt"], faults["broken"]})
        assert contents(svc, "looks") == fake_contents(azure, "looks")
        assert {t.name: (t.type, t.description) for t in svc.projects.list_tags("shop")} == {
            "dress": ("Regular", "dresss"),
            "hat": ("Regular", "hats"),
            "shoes": ("Regular", "shoess"),
            "other": ("Negative", ""),
        }
        project = svc.projects.get("shop")
        assert (project.description, project.classification_type, project.domain) == (
            "phone photos",
            "Multiclass",
            COMPACT,
        )
        created = sorted(i.created for i in svc.images.list("shop"))
        assert created[0].isoformat().startswith("2024-03-01T00:00:00.123456"), "the source's times are kept"

        assert shelf.detection and not svc.projects.get("shelf").trainable
        assert svc.projects.get("shelf").to_json()["settings"]["domainId"] == OD_GENERAL
        regions = sorted((r["tagName"], r["left"], r["width"]) for i in svc.images.list("shelf") for r in i.regions)
        assert regions == sorted([("hat", 0.1, 0.5), ("shoe", 0.6, 0.3)] * 3)
        with pytest.raises(Exception, match="object detection") as refused:
            svc.training.start("shelf")
        assert refused.value.code == "BadRequestNotSupported"

        downloads = len(azure.blobs.requests)
        again = svc.migrations.run(request, clock=clock)
        assert [p.added for p in again.projects] == [0, 0, 0]
        assert [p.already_there for p in again.projects] == [23, 7, 3]
        assert len(azure.blobs.requests) == downloads + 2, "only the two that did not come are tried again"
    finally:
        svc.close()
        azure.close()


def test_a_v32_source_is_read_through_its_tagged_and_untagged_lists(tmp_path: Path, monkeypatch) -> None:
    need(CLOTHING)
    clock = ManualClock()
    azure = FakeAzure(versions=("v3.2",), max_page=2, clock=clock)
    project = azure.add_project("old", "Multilabel", COMPACT)
    tag = azure.add_tag(project, "hat")
    for k, path in enumerate(photos(CLOTHING, "train", "hat", 5)):
        azure.add_image(project, *_jpeg(path), tags=[tag] if k % 2 else [])
    svc = open_service(tmp_path / "data", monkeypatch)
    try:
        report = svc.migrations.run(MigrationRequest(azure.endpoint, KEY, ("old",)), clock=clock)
        assert report.version == "v3.2" and report.projects[0].added == 5
        assert {p for v, p, _ in azure.calls if v == "v3.2"} >= {
            f"/projects/{project.id}/images/tagged",
            f"/projects/{project.id}/images/untagged",
        }
        assert contents(svc, "old") == fake_contents(azure, "old")
    finally:
        svc.close()
        azure.close()


def test_a_private_source_is_refused_unless_the_operator_allows_it_and_a_wrong_key_says_so(
    tmp_path: Path, monkeypatch
) -> None:
    azure = FakeAzure(versions=("v3.4-preview",))
    azure.add_project("p", "Multiclass", COMPACT)
    svc = open_service(tmp_path / "data", monkeypatch, allow_private=False)
    try:
        with pytest.raises(Exception, match="non-public") as refused:
            svc.migrations.run(MigrationRequest(azure.endpoint, KEY, every=True))
        assert refused.value.code == "BadRequestSourceUrl"
        assert svc.projects.list() == []
    finally:
        svc.close()
    svc = open_service(tmp_path / "data", monkeypatch)
    try:
        with pytest.raises(Exception, match="refused the Training-Key") as wrong:
            svc.migrations.run(MigrationRequest(azure.endpoint, "wrong", every=True))
        assert wrong.value.code == "ErrorSourceUnauthorized"
        with pytest.raises(Exception, match="Name the projects") as unnamed:
            svc.migrations.run(MigrationRequest(azure.endpoint, KEY))
        assert "p" in unnamed.value.message
    finally:
        svc.close()
        azure.close()


@pytest.mark.slow
def test_migrate_train_prints_the_source_figures_beside_tagvisions_per_tag(tmp_path: Path) -> None:
    need(CLOTHING)
    azure = FakeAzure(versions=("v3.3", "v3.4-preview"))
    project = azure.add_project("shop", "Multiclass", COMPACT)
    tags = {n: azure.add_tag(project, n) for n in ("dress", "hat", "shoes")}
    for name, tag in tags.items():
        for path in photos(CLOTHING, "train", name, 6):
            azure.add_image(project, *_jpeg(path), tags=[tag])
    project.iterations = [
        {
            "id": "it-1",
            "name": "Iteration 1",
            "status": "Completed",
            "publishName": "",
            "created": "2024-01-01T00:00:00Z",
        },
        {
            "id": "it-2",
            "name": "Iteration 2",
            "status": "Completed",
            "publishName": "prod",
            "created": "2024-02-01T00:00:00Z",
        },
    ]
    per_tag = [
        {"id": tag, "name": n, "precision": 0.9, "recall": 0.8, "averagePrecision": 0.85} for n, tag in tags.items()
    ]
    project.performance["it-2"] = {
        "perTagPerformance": per_tag,
        "precision": 0.9,
        "recall": 0.8,
        "averagePrecision": 0.85,
    }
    try:
        command = [
            sys.executable,
            "-m",
            "tagvision.cli",
            "migrate",
            "--endpoint",
            azure.endpoint,
            "--training-key",
            KEY,
        ]
        command += ["--project", "shop", "--train", "--threshold", "0.6", "--data-dir", str(tmp_path / "data")]
        table = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=900)
        assert table.returncode == 0, table.stderr[-3000:]
        assert "Iteration 2 (published as prod)" in table.stdout and "threshold 60%" in table.stdout
        assert " 90.0% " in table.stdout and "hat" in table.stdout
        as_json = subprocess.run(command + ["--json"], env=cli_env(), capture_output=True, text=True, timeout=900)
        assert as_json.returncode == 0, as_json.stderr[-3000:]
        (comparison,) = json.loads(as_json.stdout)["comparisons"]
        assert comparison["sourceIteration"] == "Iteration 2 (published as prod)" and comparison["threshold"] == 0.6
        assert {r["tag"] for r in comparison["perTag"]} == {"dress", "hat", "shoes"}
        for row in comparison["perTag"]:
            assert row["source"] == {"precision": 0.9, "recall": 0.8, "averagePrecision": 0.85}
            assert 0.0 <= row["tagvision"]["precision"] <= 1.0 and 0.0 <= row["tagvision"]["recall"] <= 1.0
    finally:
        azure.close()


def test_endpoints_and_times_are_read_as_custom_vision_writes_them() -> None:
    assert normalise_endpoint("HTTPS://Res.CognitiveServices.Azure.com/") == "https://res.cognitiveservices.azure.com"
    assert normalise_endpoint("https://h/customvision/v3.3/Training/") == "https://h"
    assert normalise_endpoint("http://h:8000/prefix/") == "http://h:8000/prefix"
    with pytest.raises(Exception, match="not an http"):
        normalise_endpoint("ftp://h")
    assert parse_time("2017-12-19T15:56:10.1234567Z").isoformat() == "2017-12-19T15:56:10.123456+00:00"
    assert parse_time("2017-12-19T15:56:10Z").isoformat() == "2017-12-19T15:56:10+00:00"
    assert parse_time("2017-12-19T15:56:10") is not None and parse_time("yesterday") is None
