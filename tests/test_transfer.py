"""Projects as files: ``project export`` / ``project import`` on another data dir (predictions identical without
re-training), the archive's checks, and Custom Vision's ``export_project`` / ``import_project`` through the
official SDK from one server to another."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from azure.cognitiveservices.vision.customvision.prediction import CustomVisionPredictionClient
from azure.cognitiveservices.vision.customvision.training import CustomVisionTrainingClient
from azure.cognitiveservices.vision.customvision.training.models import (
    CustomVisionErrorException,
    ImageFileCreateBatch,
    ImageFileCreateEntry,
)
from msrest.authentication import ApiKeyCredentials

from tagvision import archive
from tagvision.config import Settings
from tagvision.service import NewImage, Service
from tests.conftest import CLOTHING, MODELS, need, photos
from tests.server import Server

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
TAGS = ("dress", "hat", "shoes")


def tagvision(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TAGVISION_MODELS_DIR": str(MODELS)}
    result = subprocess.run(
        [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def everything(svc: Service, project: str) -> dict:
    """What must survive a round trip, without ids: tags, images (by sha256), iterations and their figures."""
    iterations = svc.training.iterations(project)
    return {
        "project": {k: v for k, v in svc.projects.get(project).to_json().items() if k not in ("id", "created")},
        "tags": sorted((t.name, t.type, t.description, t.image_count) for t in svc.projects.list_tags(project)),
        "images": {
            i.sha256: (
                sorted(n for _, n, _ in i.tags),
                i.metadata,
                {k: v for k, v in i.source.items()},
                sorted((r["tagName"], r["left"], r["top"], r["width"], r["height"]) for r in i.regions),
                i.created.isoformat(),
            )
            for i in svc.images.list(project)
        },
        "iterations": [{k: v for k, v in i.to_json().items() if k not in ("id", "projectId")} for i in iterations],
        "performance": [
            _without_ids(svc.training.performance(project, i.id, t).to_json())
            for i in iterations
            if i.status == "Completed"
            for t in (0.3, 0.5, 0.9)
        ],
        "image_performances": [
            sorted(
                (v.image.sha256, tuple((p.tag_name, p.probability) for p in v.predictions))
                for v in svc.training.image_performances(project, i.id)
            )
            for i in iterations
            if i.status == "Completed"
        ],
    }


def _without_ids(performance: dict) -> dict:
    return {**performance, "perTagPerformance": [{**t, "id": None} for t in performance["perTagPerformance"]]}


def probabilities(svc: Service, project: str, files: list[Path], iteration: str) -> np.ndarray:
    results = svc.prediction.predict(project, [(str(f), f.read_bytes) for f in files], iteration)
    return np.array([[p.probability for p in sorted(r.predictions, key=lambda p: p.tag_name)] for r in results])


@pytest.mark.slow
def test_project_export_and_import_on_another_data_dir_predicts_identically_without_training(
    tmp_path: Path,
) -> None:
    need(CLOTHING)
    source, target = tmp_path / "a", tmp_path / "b"
    svc = Service.open(Settings.load(source))
    try:
        project = svc.projects.create("shoes", classification="multiclass", domain="general-compact", description="d")
        svc.projects.create_tags(project.id, list(TAGS))
        svc.projects.create_tags(project.id, ["none of these"], description="not clothing", type_="Negative")
        items = [
            NewImage(str(f), f.read_bytes, (tag,), {"file": f.name}, {"shop": tag, "row": str(k)})
            for tag in TAGS
            for k, f in enumerate(photos(CLOTHING, "train", tag, 6))
        ]
        items += [NewImage(str(f), f.read_bytes, ("none of these",)) for f in photos(CLOTHING, "train", "skirt", 5)]
        hat = next(t.id for t in svc.projects.list_tags(project.id) if t.name == "hat")
        region = {"regionId": "r1", "tagId": hat, "left": 0.1, "top": 0.2, "width": 0.3, "height": 0.4}
        items.append(NewImage("u", photos(CLOTHING, "train", "pants", 1)[0].read_bytes, (), regions=(region,)))
        svc.images.add(project.id, items)
        first = svc.training.train(project.id)
        svc.training.publish(project.id, first.id, "prod", "/subscriptions/x")
        svc.images.add(
            project.id,
            [NewImage(str(f), f.read_bytes, ("dress",)) for f in photos(CLOTHING, "train", "dress", 2, skip=6)],
        )
        second = svc.training.train(project.id)
        before = everything(svc, project.id)
        test_photos = [p for tag in TAGS for p in photos(CLOTHING, "test", tag, 2)]
        expected = {i.name: probabilities(svc, project.id, test_photos, iteration=i.id) for i in (first, second)}
    finally:
        svc.close()

    exported = tmp_path / "shoes.tvproj"
    tagvision("project", "export", "shoes", "-o", str(exported), data_dir=source)
    again = tmp_path / "again.tvproj"
    tagvision("project", "export", "shoes", "-o", str(again), data_dir=source)
    assert hashlib.sha256(exported.read_bytes()).digest() == hashlib.sha256(again.read_bytes()).digest()
    imported = json.loads(tagvision("project", "import", str(exported), "--json", data_dir=target).stdout)

    svc = Service.open(Settings.load(target))
    try:
        assert imported["id"] != project.id and imported["name"] == "shoes"
        assert everything(svc, "shoes") == before, "nothing lost"
        for name, wanted in expected.items():
            got = probabilities(svc, "shoes", test_photos, iteration=name)
            assert np.abs(got - wanted).max() <= 1e-6
        assert (
            svc.prediction.model("shoes", published="prod").iteration_id
            == svc.training.iteration("shoes", first.name).id
        )
        assert svc.training.iteration("shoes").id != second.id, "new ids"
        with pytest.raises(Exception) as not_needed:
            svc.training.start("shoes")
        assert not_needed.value.code == "BadRequestTrainingNotNeeded", "the imported iteration covers every image"
        assert svc.transfer.import_project(exported).name == "shoes (imported)"
    finally:
        svc.close()


def test_an_archive_that_cannot_be_trusted_is_refused_with_its_reason(tmp_path: Path, svc) -> None:
    need(CLOTHING)
    project = svc.projects.create("p")
    svc.projects.create_tags(project.id, ["hat"])
    path = photos(CLOTHING, "train", "hat", 1)[0]
    svc.images.add(project.id, [NewImage("h", path.read_bytes, ("hat",))])
    good = tmp_path / "p.tvproj"
    summary = svc.transfer.export_project("p", good)
    assert (summary.tags, summary.images, summary.iterations) == (1, 1, 0)

    def rewritten(name: str, change) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, change(info.filename, src.read(info.filename)))
        return out

    newer = rewritten(
        "newer.tvproj", lambda n, d: d.replace(b'"version": 1', b'"version": 99') if n == archive.MANIFEST else d
    )
    damaged = rewritten("damaged.tvproj", lambda n, d: d[:-10] + b"0" * 10 if n.startswith(archive.FILES) else d)
    huge = b"\0" * (7 * 1024 * 1024)
    huge_sha = hashlib.sha256(huge).hexdigest()
    original_sha = svc.images.list("p")[0].sha256
    oversized = rewritten(
        "oversized.tvproj",
        lambda n, d: huge if n.startswith(archive.FILES) else d.replace(original_sha.encode(), huge_sha.encode()),
    )
    with zipfile.ZipFile(oversized, "a") as z:  # the file under its new name
        z.writestr(archive.FILES + huge_sha, huge)
    junk = tmp_path / "junk.tvproj"
    junk.write_bytes(b"not a zip")
    cases = ((newer, "version 99"), (damaged, "damaged"), (oversized, "at most"), (junk, "not a tagvision project"))
    for bad, reason in cases:
        with pytest.raises(Exception, match=reason) as refused:
            svc.transfer.import_project(bad)
        assert refused.value.code == "BadRequestInvalidProjectArchive"
    assert [p.name for p in svc.projects.list()] == ["p"], "nothing half-imported"


def _trainer(server: Server) -> CustomVisionTrainingClient:
    return CustomVisionTrainingClient(
        server.endpoint, ApiKeyCredentials(in_headers={"Training-key": server.training_key})
    )


def _predictor(server: Server) -> CustomVisionPredictionClient:
    return CustomVisionPredictionClient(
        server.endpoint, ApiKeyCredentials(in_headers={"Prediction-key": server.prediction_key})
    )


@pytest.mark.slow
def test_sdk_export_project_on_one_server_and_import_project_on_another(tmp_path: Path) -> None:
    need(CLOTHING)
    with Server(tmp_path / "one") as one, Server(tmp_path / "two") as two:
        trainer = _trainer(one)
        project = trainer.create_project("moving", domain_id=COMPACT, classification_type="Multilabel")
        tags = {n: trainer.create_tag(project.id, n) for n in TAGS}
        entries = [
            ImageFileCreateEntry(name=p.name, contents=p.read_bytes(), tag_ids=[tags[n].id])
            for n in TAGS
            for p in photos(CLOTHING, "train", n, 6)
        ]
        trainer.create_images_from_files(project.id, ImageFileCreateBatch(images=entries, metadata={"k": "v"}))
        iteration = trainer.train_project(project.id)
        deadline = time.monotonic() + 600
        while (iteration := trainer.get_iteration(project.id, iteration.id)).status == "Training":
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert iteration.status == "Completed"
        trainer.publish_iteration(project.id, iteration.id, "prod", "/subscriptions/x")

        exported = trainer.export_project(project.id)
        assert (exported.image_count, exported.tag_count, exported.iteration_count) == (18, 3, 1)
        other = _trainer(two)
        moved = other.import_project(exported.token, name="moved")
        assert moved.name == "moved" and moved.settings.classification_type == "Multilabel"
        assert moved.settings.domain_id == COMPACT and moved.status == "Succeeded"
        (copied,) = other.get_iterations(moved.id)
        assert copied.status == "Completed" and copied.publish_name == "prod"
        assert sorted(t.name for t in other.get_tags(moved.id)) == sorted(TAGS)
        images = other.get_images(moved.id, take=256)
        assert len(images) == 18 and all(i.metadata == {"k": "v"} for i in images)

        for path in photos(CLOTHING, "test", "hat", 2):
            here = _predictor(one).classify_image(project.id, "prod", path.read_bytes())
            there = _predictor(two).classify_image(moved.id, "prod", path.read_bytes())
            assert {p.tag_name: p.probability for p in here.predictions} == pytest.approx(
                {p.tag_name: p.probability for p in there.predictions}, abs=1e-6
            )

        with pytest.raises(CustomVisionErrorException) as bad:
            other.import_project("not a token")
        assert bad.value.error.code == "BadRequestInvalidImportToken"
