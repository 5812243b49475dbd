"""Models that leave the server: `tagvision export` (fp32 and int8), the bundle's standalone predictor."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tagvision import backbone
from tests.conftest import CLOTHING, REPO, photos

pytestmark = pytest.mark.slow
TAGS = ("hat", "shoes", "dress", "pants")


def tagvision(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "tagvision.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_export_bundle_int8_and_the_standalone_predictor(tmp_path: Path, svc, data_dir: Path) -> None:
    from tagvision.service import NewImage

    svc.projects.create("shop", domain="general-compact")
    svc.projects.create_tags("shop", list(TAGS))
    items = [NewImage(p.name, p.read_bytes, (tag,)) for tag in TAGS for p in photos(CLOTHING, "train", tag, 10)]
    assert svc.images.add("shop", items).is_batch_successful
    svc.training.train("shop")
    unseen = [p for tag in TAGS for p in photos(CLOTHING, "test", tag, 6)]
    served = {
        p.name: {t.tag_name: t.probability for t in r.predictions}
        for p, r in zip(unseen, svc.prediction.predict("shop", [(p.name, p.read_bytes) for p in unseen]), strict=True)
    }
    svc.close()

    tagvision("export", "shop", "--out", str(tmp_path / "shop.zip"), data_dir=data_dir)
    with zipfile.ZipFile(tmp_path / "shop.zip") as bundle:
        assert sorted(bundle.namelist()) == ["labels.txt", "model.onnx", "predict.py"]
        labels = bundle.read("labels.txt").decode().splitlines()
        bundle.extractall(tmp_path / "bundle")
    assert sorted(labels) == sorted(TAGS)
    # The standalone predictor (onnxruntime, numpy, Pillow only) gives the server's probabilities.
    ran = subprocess.run(
        [sys.executable, str(tmp_path / "bundle" / "predict.py"), *map(str, unseen)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    for line in ran.stdout.splitlines():
        row = json.loads(line)
        got = {p["tagName"]: p["probability"] for p in row["predictions"]}
        want = served[Path(row["image"]).name]
        assert max(abs(got[t] - want[t]) for t in TAGS) < 1e-4

    # int8: smaller, and it agrees with fp32 on (nearly) every test photo.
    tagvision("export", "shop", "--format", "onnx-int8", "--out", str(tmp_path / "shop-int8.onnx"), data_dir=data_dir)
    fp32 = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "shop-int8.onnx"), providers=["CPUExecutionProvider"])
    assert (tmp_path / "shop-int8.onnx").stat().st_size < (tmp_path / "bundle" / "model.onnx").stat().st_size / 3
    meta = int8.get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == labels and "int8" in meta["quantization"]
    spec = backbone.BACKBONES["general-compact"]
    x = np.stack([backbone.preprocess_bytes(p.read_bytes(), spec) for p in unseen])
    (p32,) = fp32.run(["probabilities"], {"data": x})
    (p8,) = int8.run(["probabilities"], {"data": x})
    agreement = float((p32.argmax(1) == p8.argmax(1)).mean())
    assert agreement >= 0.9, agreement
    assert np.allclose(p8.sum(1), 1, atol=1e-3)


def test_export_of_a_fine_tuned_iteration(tmp_path: Path, svc, data_dir: Path, monkeypatch) -> None:
    """`train --advanced` then `export`: the bundle carries the iteration's own fine-tuned backbone and gives
    the server's probabilities; int8 of it agrees with fp32. The project is General (Lite2) and the network
    fine-tuned is Lite0 (two Lite2 schedules of enough epochs do not fit), so everything downstream has to feed
    it Lite0's input, not the domain's."""
    import functools
    import math

    from tagvision import finetune
    from tagvision.service import NewImage

    # Keep the fine-tuned network even if the quick head scores as well on a handful of validation photos; never
    # fine-tune Lite2; a refit whenever a schedule of 4 epochs fits (always: the hour-long budget never binds).
    recipe = functools.partial(
        finetune.Recipe, force_fine_tuned=True, larger_epochs=math.inf, max_epochs=4.0, refit_min_epochs=1.0
    )
    monkeypatch.setattr(finetune.job, "Recipe", recipe)
    svc.projects.create("shoes", domain="general")
    svc.projects.create_tags("shoes", list(TAGS[:3]))
    items = [
        NewImage(p.name, p.read_bytes, (tag,)) for tag in TAGS[:3] for p in photos(CLOTHING, "train", tag, 10, skip=20)
    ]
    assert svc.images.add("shoes", items).is_batch_successful
    iteration = svc.training.train("shoes", training_type="Advanced", budget_minutes=60)
    assert iteration.status == "Completed" and iteration.fine_tuned, iteration
    assert iteration.backbone == "efficientnet-lite0" and iteration.to_json()["backbone"] == "efficientnet-lite0"
    assert iteration.measured_on is not None and iteration.measured_on.retrained
    with svc.ctx.db.session() as session:  # a first run and its refit, served side by side (2560-d features)
        from tagvision.store.models import Iteration

        tuning = session.get(Iteration, iteration.id).details["advanced"]["fineTuning"]
    assert tuning["served"] == "the first run and its refit on every image, logits averaged", tuning
    unseen = [p for tag in TAGS[:3] for p in photos(CLOTHING, "test", tag, 5)]
    served = {
        p.name: {t.tag_name: t.probability for t in r.predictions}
        for p, r in zip(
            unseen,
            svc.prediction.predict("shoes", [(p.name, p.read_bytes) for p in unseen], iteration_ref=iteration.id),
            strict=True,
        )
    }
    svc.close()

    tagvision("export", "shoes", "--iteration", iteration.name, "--out", str(tmp_path / "shoes.zip"), data_dir=data_dir)
    with zipfile.ZipFile(tmp_path / "shoes.zip") as bundle:
        bundle.extractall(tmp_path / "bundle")
    meta = (
        ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    assert (meta["backbone"], meta["image_size"], meta["resize"]) == ("efficientnet-lite0", "224", "256")
    ran = subprocess.run(
        [sys.executable, str(tmp_path / "bundle" / "predict.py"), *map(str, unseen)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    rows = [json.loads(line) for line in ran.stdout.splitlines()]
    assert len(rows) == len(unseen)
    for row in rows:
        got = {p["tagName"]: p["probability"] for p in row["predictions"]}
        want = served[Path(row["image"]).name]
        assert max(abs(got[t] - want[t]) for t in TAGS[:3]) < 1e-4

    tagvision(
        "export",
        "shoes",
        "--iteration",
        iteration.name,
        "--format",
        "onnx-int8",
        "--out",
        str(tmp_path / "shoes-int8.onnx"),
        data_dir=data_dir,
    )
    fp32 = ort.InferenceSession(str(tmp_path / "bundle" / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "shoes-int8.onnx"), providers=["CPUExecutionProvider"])
    x = np.stack([backbone.preprocess_bytes(p.read_bytes(), backbone.BACKBONES["general-compact"]) for p in unseen])
    (p32,) = fp32.run(["probabilities"], {"data": x})
    (p8,) = int8.run(["probabilities"], {"data": x})
    assert float((p32.argmax(1) == p8.argmax(1)).mean()) >= 0.8
