"""Advanced training engine (tagvision.finetune) on real photos: budget, progress, the exported network, honesty."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tagvision import backbone, finetune, learn
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


def run(paths: list[Path], labels: np.ndarray, budget: float, **recipe) -> tuple[finetune.FineTuneResult, float, list]:
    """Returns the result, the seconds it took, and its progress events (stage, done, total, eta, when)."""
    events: list[tuple[str, int, int, float, float]] = []
    started = time.perf_counter()
    result = finetune.fine_tune(
        SPEC,
        MODELS,
        [p.read_bytes for p in paths],
        labels,
        multilabel=False,
        budget_seconds=budget,
        progress=lambda *event: events.append((*event, time.perf_counter())),
        recipe=finetune.Recipe(**recipe),
    )
    return result, time.perf_counter() - started, events


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


def test_fine_tunes_within_budget_and_serves_through_the_exported_network(photo_set) -> None:
    paths, labels = photo_set
    budget = 45.0
    # One schedule on the training part (no refit on every image), so the served network is the scored one.
    result, elapsed, events = run(paths, labels, budget, force_fine_tuned=True, refit_min_epochs=math.inf)

    assert elapsed <= 1.1 * budget, f"{elapsed:.1f} s for a {budget} s budget"
    details = json.loads(json.dumps(result.details))  # JSON-able
    assert details["chosen"] != "quick" and "fine-tuned" in details["chosen"]
    tuning = details["fineTuning"]
    assert tuning["steps"] > 0 and tuning["epochs"] > 0 and tuning["secondsPerStep"] > 0
    assert [c["name"] for c in details["candidates"]] == ["quick", "fine-tuned"]
    assert "validation" in details["metricsFrom"] and "not cross-validation" in details["metricsFrom"]
    # The schedule uses the budget: it ends on time, after the most epochs, or when two scores in a row
    # fall below the best one; the state kept is the best scored.
    history = tuning["validationHistory"]
    best = max(reversed(history), key=lambda h: h["primary"])  # the later of equal scores
    assert tuning["bestStep"] == best["step"] and history[-1]["step"] <= tuning["steps"]
    if tuning["stopped"] == "early stopping":
        assert [h["primary"] < best["primary"] for h in history[-2:]] == [True, True], history
    else:
        assert (tuning["stopped"] == "epochs" and tuning["epochs"] >= finetune.Recipe().max_epochs - 1) or (
            tuning["stopped"] == "time" and elapsed >= 0.75 * budget
        ), (tuning, elapsed)

    # Progress: every stage reported, the estimated time left only goes down and ends at zero.
    stages = [e[0] for e in events]
    for stage in ("decoding", "embedding", "fitting head", "fine-tuning", "validating", "exporting"):
        assert stage in stages
    etas = [e[3] for e in events]
    assert all(b <= a for a, b in zip(etas, etas[1:], strict=False)) and etas[0] > etas[-1] == 0.0
    assert all(0 <= done <= total for _, done, total, *_ in events)
    # Once the steps are timed, the estimate is the time that was actually left, give or take.
    end = max(when for *_, when in events)
    tuning_events = [e for e in events if e[0] == "fine-tuning"]
    for _, _, _, eta, when in tuning_events[len(tuning_events) // 2 :]:
        assert abs(eta - (end - when)) <= 0.2 * budget, (eta, end - when)

    # The exported network keeps the stock contract...
    import onnxruntime as ort

    session = ort.InferenceSession(result.backbone_onnx, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "image" and inp.shape[1:] == [3, SPEC.image_size, SPEC.image_size]
    assert out.shape[1] == backbone.EMBEDDING_DIM
    assert session.run(None, {"image": np.zeros((2, 3, 224, 224), np.float32)})[0].shape == (2, 1280)

    # ... and the server's path through it reproduces the probabilities computed in torch during training.
    probabilities, eval_labels, rows = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in rows])
    served = result.head.predict_proba(plain, flipped)
    np.testing.assert_allclose(served, probabilities, atol=1e-4)
    assert np.array_equal(eval_labels, labels[rows])

    # Held-out rows only: a stratified fifth, every tag present, the rest is what was trained on.
    assert details["split"] == {"train": 30 - len(rows), "validation": len(rows), "folds": 5}
    assert len(set(rows.tolist())) == len(rows) == 6 and eval_labels.sum(axis=0).min() >= 1


def test_too_small_a_budget_keeps_the_quick_head(photo_set) -> None:
    paths, labels = photo_set
    budget = 4.0  # the quick path alone: decoding, stock embeddings, an LDA fit (~2-3 s on 2 cores)
    backbone.ensure_onnx(SPEC, MODELS)  # the stock export is a one-off per data directory, not part of training
    result, elapsed, events = run(paths, labels, budget)

    assert elapsed <= 1.1 * budget, f"{elapsed:.1f} s for a {budget} s budget"
    assert result.backbone_onnx is None and result.details["chosen"] == "quick"
    assert "skipped" in result.details["fineTuning"]

    # Exactly a quick training: the quick head on every image, cross-validated out-of-fold probabilities.
    probabilities, eval_labels, rows = result.evaluation
    assert np.array_equal(rows, np.arange(len(paths))) and np.array_equal(eval_labels, labels)
    plain, flipped = embed_through(result, paths)
    expected = learn.QuickClassifier().fit(plain, flipped, labels)
    np.testing.assert_allclose(result.head.weights, expected.head_.weights, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(probabilities, expected.oof_proba_, atol=1e-5)
    assert "cross-validation" in result.details["metricsFrom"]
    assert [e[3] for e in events][-1] == 0.0


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
    budget = 20.0
    started = time.perf_counter()
    result = finetune.fine_tune(
        SPEC,
        MODELS,
        [p.read_bytes for p in paths],
        multi,
        multilabel=True,
        budget_seconds=budget,
        recipe=finetune.Recipe(force_fine_tuned=True, refit_min_epochs=math.inf),
    )
    assert time.perf_counter() - started <= 1.1 * budget
    assert result.head.multilabel and result.head.weights.shape == (1280, 4)
    probabilities, eval_labels, rows = result.evaluation
    assert probabilities.shape == eval_labels.shape == (len(rows), 4)
    assert np.array_equal(eval_labels, multi[rows])
    assert result.details["candidates"][0]["validation"]["metric"] == "mean average precision"
    if result.backbone_onnx is not None:
        plain, flipped = embed_through(result, [paths[i] for i in rows])
        np.testing.assert_allclose(result.head.predict_proba(plain, flipped), probabilities, atol=1e-4)


def test_refits_on_every_image_when_two_schedules_fit(photo_set) -> None:
    """A first schedule on the training part is scored on the validation part; when fine-tuning wins and time
    allows, the same schedule runs again from the start on every image, and that network is served."""
    paths, labels = photo_set
    budget = 40.0
    result, elapsed, _ = run(paths, labels, budget, force_fine_tuned=True, max_epochs=8.0)
    assert elapsed <= 1.1 * budget, f"{elapsed:.1f} s for a {budget} s budget"
    tuning = result.details["fineTuning"]
    first, refit = tuning, tuning["refit"]
    assert refit is not None, tuning
    assert first["images"] == 24 and refit["images"] == 30 and refit["validationHistory"] == []
    assert refit["precision"] == first["precision"] in ("float32", "bfloat16")
    # The refit stops where the first run was best (here: its last score, the end of an 8-epoch schedule).
    best_epoch = first["bestStep"] * 24 / first["images"]
    assert best_epoch - 1 <= refit["epochs"] <= best_epoch + 1, (first, refit)
    assert "trained again the same way on every image" in result.details["metricsFrom"]
    assert tuning["served"] == "the first run and its refit on every image, logits averaged"
    # Served: both networks' features side by side, one head averaging their logits. It differs from the scored
    # first run alone on the validation photos (the refit has seen them).
    probabilities, _, rows = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in rows])
    assert plain.shape == (len(rows), 2 * backbone.EMBEDDING_DIM) and result.head.weights.shape[0] == plain.shape[1]
    assert np.abs(result.head.predict_proba(plain, flipped) - probabilities).max() > 1e-3


def test_a_general_project_fine_tunes_lite0_when_lite2_would_not_fit(photo_set) -> None:
    """A General (Lite2) project may be served a fine-tuned Lite0: the larger backbone is tuned only when two
    schedules of ``larger_epochs`` fit. The served network then takes Lite0's input and says so."""
    import onnx
    import onnxruntime as ort

    paths, labels = photo_set
    general = backbone.BACKBONES["general"]
    budget = 30.0
    started = time.perf_counter()
    result = finetune.fine_tune(
        general,
        MODELS,
        [p.read_bytes for p in paths],
        labels,
        multilabel=False,
        budget_seconds=budget,
        backbones=backbone.no_larger_than(general),
        recipe=finetune.Recipe(force_fine_tuned=True, refit_min_epochs=math.inf, larger_epochs=1000.0),
    )
    assert time.perf_counter() - started <= 1.1 * budget
    details = result.details
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
    probabilities, _, rows = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in rows])
    np.testing.assert_allclose(result.head.predict_proba(plain, flipped), probabilities, atol=1e-4)
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
        budget_seconds=30.0,
        backbones=backbone.no_larger_than(general),
        recipe=finetune.Recipe(force_fine_tuned=True, refit_min_epochs=math.inf, larger_epochs=0.5),
    )
    assert result.details["backboneChoice"] == ["efficientnet-lite2 fine-tuned"]
    assert result.spec == general and result.details["fineTunedBackbone"] == "efficientnet-lite2"
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = Path(tmp) / "tuned.onnx"
        onnx_file.write_bytes(result.backbone_onnx)
        assert backbone.spec_of(onnx_file) == general  # how the service knows what to feed it
    probabilities, _, rows = result.evaluation
    plain, flipped = embed_through(result, [paths[i] for i in rows])
    np.testing.assert_allclose(result.head.predict_proba(plain, flipped), probabilities, atol=1e-4)
