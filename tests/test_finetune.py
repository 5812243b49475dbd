"""Advanced training engine (tagvision.finetune) on real photos: the branches it takes, progress, the exported
network, honesty. Each test forces its branch (an ample or a spent budget, recipe limits), so no outcome depends
on the machine's speed; the decisions taken from time are tested with a fake clock in test_finetune_plan.py."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tagvision import backbone, finetune, learn, metrics
from tests.conftest import CLOTHING, MODELS, photos

pytestmark = pytest.mark.slow
TAGS = ("dress", "hat", "shoes")
SPEC = backbone.BACKBONES["general-compact"]


@pytest.fixture(scope="module")
def photo_set() -> tuple[list[Path], np.ndarray]:
    """10 clothing photos of each of three tags, and their one-hot labels (30, 3)."""
    paths = [p for tag in TAGS for p in photos(CLOTHING, "train", tag, 10)]
    labels = np.repeat(np.eye(len(TAGS), dtype=bool), 10, axis=0)
    return paths, labels


AMPLE = 1e6  # seconds: a budget that never binds, so the schedules end by their epochs on any machine


def run(paths: list[Path], labels: np.ndarray, budget: float = AMPLE, **recipe) -> tuple[finetune.FineTuneResult, list]:
    """Returns the result and its progress events (stage, done, total, eta)."""
    events: list[tuple[str, int, int, float]] = []
    result = finetune.fine_tune(
        SPEC,
        MODELS,
        [p.read_bytes for p in paths],
        labels,
        multilabel=False,
        budget_seconds=budget,
        progress=lambda *event: events.append(event),
        recipe=finetune.Recipe(**recipe),
    )
    return result, events


def embed_through(result: finetune.FineTuneResult, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The server's path: decode, preprocess, run the (fine-tuned) ONNX on image + mirror."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = None
        if result.backbone_onnx is not None:
            onnx_file = Path(tmp) / "tuned.onnx"
            onnx_file.write_bytes(result.backbone_onnx)
        embedder = backbone.Embedder(result.spec, MODELS, onnx_file=onnx_file, threads=2)
        results = list(embedder.embed([p.read_bytes for p in paths]))
    assert all(r.error is None for r in results)
    return np.stack([r.plain for r in results]), np.stack([r.flipped for r in results])


def test_fine_tunes_and_serves_through_the_exported_network(photo_set) -> None:
    paths, labels = photo_set
    # One schedule of 6 epochs on the training part (no refit), so the served network is the scored one.
    result, events = run(paths, labels, force_fine_tuned=True, refit_min_epochs=math.inf, max_epochs=6.0)

    report = result.report
    details = json.loads(json.dumps(report.to_json()))  # JSON-able
    assert details["chosen"] == "fine-tuned" and report.tuning is not None and report.tuning.refit is None
    tuning = details["fineTuning"]
    assert tuning["steps"] > 0 and tuning["epochs"] > 0 and tuning["secondsPerStep"] > 0
    assert [c["name"] for c in details["candidates"]] == ["quick", "fine-tuned"]
    assert result.measured_on == metrics.MeasuredOn(metrics.Method.VALIDATION_SPLIT, 6, 30, 1, False)
    assert details["metricsFrom"] == result.measured_on.sentence() and not result.measured_on.has_spread
    # The schedule ends after its epochs (the budget never binds) or when two scores in a row fall below the
    # best one; the state kept is the best scored.
    history = tuning["validationHistory"]
    best = max(reversed(history), key=lambda h: h["primary"])  # the later of equal scores
    assert tuning["bestStep"] == best["step"] and history[-1]["step"] == tuning["steps"]
    if tuning["stopped"] == "early stopping":
        assert [h["primary"] < best["primary"] for h in history[-2:]] == [True, True], history
    else:
        assert tuning["stopped"] == "epochs" and tuning["epochs"] == 6.0, tuning

    # Progress: every stage reported, the estimated time left only goes down and ends at zero.
    stages = [e[0] for e in events]
    for stage in ("decoding", "embedding", "fitting head", "fine-tuning", "validating", "exporting"):
        assert stage in stages
    etas = [e[3] for e in events]
    assert all(b <= a for a, b in zip(etas, etas[1:], strict=False)) and etas[0] > etas[-1] == 0.0
    assert all(0 <= done <= total for _, done, total, _ in events)

    # The exported network keeps the stock contract...
    import onnxruntime as ort

    session = ort.InferenceSession(result.backbone_onnx, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and inp.shape[1:] == [3, SPEC.image_size, SPEC.image_size]
    assert out.shape[1] == backbone.EMBEDDING_DIM
    assert session.run(None, {"image": np.zeros((2, 3, 224, 224), np.float32)})[0].shape == (2, 1280)

    # ... and the server's path through it reproduces the probabilities computed in torch during training.
    evaluation = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in evaluation.rows])
    served = result.head.predict_proba(plain, flipped)
    np.testing.assert_allclose(served, evaluation.probabilities, atol=1e-4)
    assert np.array_equal(evaluation.labels, labels[evaluation.rows]) and not evaluation.folds.any()

    # Held-out rows only: a stratified fifth, every tag present, the rest is what was trained on.
    assert details["split"] == {"train": 24, "validation": 6, "folds": 5}
    rows = evaluation.rows
    assert len(set(rows.tolist())) == len(rows) == 6 and evaluation.labels.sum(axis=0).min() >= 1


def test_no_time_to_fine_tune_keeps_the_quick_head_cross_validated(photo_set) -> None:
    paths, labels = photo_set
    result, events = run(paths, labels, budget=0.001)  # spent before it starts: the quick path alone

    assert result.backbone_onnx is None and result.report.chosen == "quick"
    assert result.report.skipped is not None and result.report.skipped.endswith("needed to fine-tune")
    assert result.report.to_json()["fineTuning"] == {"skipped": result.report.skipped}

    # Exactly a quick training: the quick head on every image, cross-validated out-of-fold probabilities and the
    # folds they came from (so the figures have their spread across folds).
    evaluation = result.evaluation
    assert np.array_equal(evaluation.rows, np.arange(len(paths))) and np.array_equal(evaluation.labels, labels)
    plain, flipped = embed_through(result, paths)
    expected = learn.QuickClassifier().fit(plain, flipped, labels)
    np.testing.assert_allclose(result.head.weights, expected.head_.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(evaluation.probabilities, expected.oof_proba_, atol=1e-5)
    assert np.array_equal(evaluation.folds, expected.folds_)
    folds = int(expected.folds_.max()) + 1
    assert result.measured_on == metrics.MeasuredOn(metrics.Method.CROSS_VALIDATION, 30, 30, folds)
    assert folds > 1 and result.measured_on.has_spread
    assert events[-1][3] == 0.0


def test_torch_reference_matches_the_stock_onnx() -> None:
    """``torch_embed`` (the training path's forward) is the network the ONNX export runs."""
    import torch

    model = backbone.build_torch_model(SPEC)
    batch = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        reference = finetune.torch_embed(model, torch.from_numpy(batch)).numpy()
    embedder = backbone.Embedder(SPEC, MODELS, threads=2)
    np.testing.assert_allclose(embedder.forward(batch), reference, atol=1e-4)


def test_multilabel_fine_tuning_gives_a_sigmoid_head(photo_set) -> None:
    paths, labels = photo_set
    # A fourth tag shared by two of the three: images carry one or two tags.
    multi = np.concatenate([labels, (labels[:, 0] | labels[:, 1])[:, None]], axis=1)
    result = finetune.fine_tune(
        SPEC,
        MODELS,
        [p.read_bytes for p in paths],
        multi,
        multilabel=True,
        budget_seconds=AMPLE,
        recipe=finetune.Recipe(force_fine_tuned=True, refit_min_epochs=math.inf, max_epochs=4.0),
    )
    assert result.head.multilabel and result.head.weights.shape == (1280, 4)
    evaluation = result.evaluation
    assert evaluation.probabilities.shape == evaluation.labels.shape == (len(evaluation.rows), 4)
    assert np.array_equal(evaluation.labels, multi[evaluation.rows])
    assert result.report.candidates[0][1]["metric"] == "mean average precision"
    assert result.backbone_onnx is not None
    plain, flipped = embed_through(result, [paths[i] for i in evaluation.rows])
    np.testing.assert_allclose(result.head.predict_proba(plain, flipped), evaluation.probabilities, atol=1e-4)


def test_refits_on_every_image_when_two_schedules_fit(photo_set) -> None:
    """A first schedule on the training part is scored on the validation part; when fine-tuning wins and the
    plan holds two schedules, the same schedule runs again from the start on every image, and both networks are
    served together."""
    paths, labels = photo_set
    result, _ = run(paths, labels, force_fine_tuned=True, max_epochs=6.0, refit_min_epochs=1.0)
    tuning = result.report.tuning
    assert tuning is not None and tuning.refit is not None
    first, refit = tuning.first, tuning.refit
    assert first.images == 24 and refit.images == 30 and refit.history == []
    assert refit.precision == first.precision in ("float32", "bfloat16")
    # The refit stops where the first run was best (24 images a step, so the first run's epochs are its steps).
    best_epoch = first.best_step * 24 / first.images
    assert refit.stopped.value == "epoch of the first run's best score" and refit.epochs >= best_epoch
    assert refit.epochs - best_epoch < 1, (first, refit)  # one step an epoch on 30 images too
    assert result.measured_on.retrained and "trained once more on all the images" in result.measured_on.sentence()
    assert result.report.to_json()["fineTuning"]["served"] == finetune.report.FIRST_RUN_AND_REFIT
    # Served: both networks' features side by side, one head averaging their logits. It differs from the scored
    # first run alone on the validation photos (the refit has seen them).
    evaluation = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in evaluation.rows])
    assert plain.shape == (6, 2 * backbone.EMBEDDING_DIM) and result.head.weights.shape[0] == plain.shape[1]
    assert np.abs(result.head.predict_proba(plain, flipped) - evaluation.probabilities).max() > 1e-3


def test_a_general_project_fine_tunes_lite0_when_lite2_would_not_fit(photo_set) -> None:
    """A General (Lite2) project may be served a fine-tuned Lite0: the larger backbone is tuned only when two
    schedules of ``larger_epochs`` fit (here never). The served network then takes Lite0's input and says so."""
    import onnx
    import onnxruntime as ort

    paths, labels = photo_set
    general = backbone.BACKBONES["general"]
    result = finetune.fine_tune(
        general,
        MODELS,
        [p.read_bytes for p in paths],
        labels,
        multilabel=False,
        budget_seconds=AMPLE,
        backbones=backbone.no_larger_than(general),
        recipe=finetune.Recipe(
            force_fine_tuned=True, refit_min_epochs=math.inf, larger_epochs=math.inf, max_epochs=4.0
        ),
    )
    details = result.report.to_json()
    assert details["backbone"] == "efficientnet-lite2" and details["fineTunedBackbone"] == "efficientnet-lite0"
    assert details["backboneChoice"][0].startswith("efficientnet-lite2 not fine-tuned: about ")
    assert details["backboneChoice"][1] == "efficientnet-lite0 fine-tuned"
    assert set(details["stockImagesPerSecond"]) == {"efficientnet-lite2", "efficientnet-lite0"}
    assert result.spec == SPEC and result.backbone_onnx is not None

    session = ort.InferenceSession(result.backbone_onnx, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 224, 224]
    props = {p.key: p.value for p in onnx.load_from_string(result.backbone_onnx).metadata_props}
    assert props == {"domain": "general-compact", "backbone": "efficientnet-lite0"}
    # The server's path with Lite0's preprocessing reproduces the validation probabilities of training.
    evaluation = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in evaluation.rows])
    np.testing.assert_allclose(result.head.predict_proba(plain, flipped), evaluation.probabilities, atol=1e-4)
    # The quick candidate it was compared with is the project's own Lite2 head.
    assert [c["name"] for c in details["candidates"]] == ["quick", "fine-tuned"]


def test_a_general_project_fine_tunes_lite2_when_it_fits(photo_set) -> None:
    paths, labels = photo_set
    general = backbone.BACKBONES["general"]
    result = finetune.fine_tune(
        general,
        MODELS,
        [p.read_bytes for p in paths],
        labels,
        multilabel=False,
        budget_seconds=AMPLE,
        backbones=backbone.no_larger_than(general),
        recipe=finetune.Recipe(force_fine_tuned=True, refit_min_epochs=math.inf, larger_epochs=0.5, max_epochs=4.0),
    )
    assert result.report.backbone_choice == ["efficientnet-lite2 fine-tuned"]
    assert result.spec == general and result.report.fine_tuned_backbone == "efficientnet-lite2"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "tuned.onnx"
        onnx_file.write_bytes(result.backbone_onnx)
        assert backbone.spec_of(onnx_file) == general  # how the service knows what to feed it
    evaluation = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in evaluation.rows])
    np.testing.assert_allclose(result.head.predict_proba(plain, flipped), evaluation.probabilities, atol=1e-4)
