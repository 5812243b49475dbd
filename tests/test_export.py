"""The ONNX export: one file that reproduces the server's probabilities from preprocessed pixels."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tagvision import backbone, export
from tagvision.learn import LinearHead, features
from tests.conftest import CLOTHING, MODELS, photos

SPEC = backbone.BACKBONES["general-compact"]
MULTICLASS = ["dress", "café ☕", "hat, wool"]
MULTILABEL = ["dress", "hat", "shoes", "long sleeve"]


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    paths = [path for tag in ("dress", "hat", "shoes", "outwear") for path in photos(CLOTHING, "train", tag, 1)]
    return np.stack([backbone.preprocess_bytes(path.read_bytes(), SPEC) for path in paths])


@pytest.fixture(scope="module")
def pairs(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The server's embeddings of the photos and of their mirrors."""
    return backbone.Embedder(SPEC, MODELS, batch_size=4).forward_pairs(batch)


def random_head(pairs: tuple[np.ndarray, np.ndarray], tags: int, multilabel: bool) -> LinearHead:
    """Seeded random weights, scaled so the logits spread over a few units around zero."""
    rng = np.random.default_rng(tags)
    mean = (features(pairs[0]) + features(pairs[1])) / 2
    weights = rng.normal(size=(SPEC.dim, tags))
    weights *= 3 / (mean @ weights).std()
    bias = -(mean @ weights).mean(axis=0) + rng.normal(scale=0.5, size=tags)
    return LinearHead(weights.astype(np.float32), bias.astype(np.float32), multilabel)


def run(model: bytes, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"data": batch})[0]


@pytest.mark.slow
@pytest.mark.parametrize(("labels", "multilabel"), [(MULTICLASS, False), (MULTILABEL, True)])
def test_export_reproduces_the_server_probabilities(
    pairs, batch: np.ndarray, labels: list[str], multilabel: bool
) -> None:
    head = random_head(pairs, len(labels), multilabel)
    model = export.build_classifier_onnx(SPEC, MODELS, head, labels, iteration_id="it-1", project_name="Shop")
    expected = head.predict_proba(*pairs)
    got = run(model, batch)
    assert got.shape == (4, len(labels)) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4
    assert expected.max() - expected.min() > 0.3  # not a near-uniform head
    if not multilabel:
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)

    # Dynamic batch: one image at a time gives the same rows.
    singles = np.concatenate([run(model, batch[i : i + 1]) for i in range(len(batch))])
    np.testing.assert_allclose(singles, got, atol=1e-5)

    # The backbone's weights appear once.
    backbone_size = backbone.onnx_path(SPEC, MODELS).stat().st_size
    assert len(model) < backbone_size * 1.2 + head.weights.nbytes + head.bias.nbytes

    meta = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta["labels"]) == labels
    assert meta["classification"] == ("Multilabel" if multilabel else "Multiclass")
    assert (meta["image_size"], meta["backbone"], meta["domain"]) == ("224", "efficientnet-lite0", "general-compact")
    assert (meta["iteration_id"], meta["project"], meta["producer"]) == ("it-1", "Shop", "tagvision")
    assert "256" in meta["preprocessing"] and "(pixel - 127) / 128" in meta["preprocessing"]
    assert onnx.load_from_string(model).producer_name == "tagvision"


@pytest.mark.slow
def test_export_refuses_a_head_that_does_not_fit_the_labels(pairs) -> None:
    with pytest.raises(ValueError):
        export.build_classifier_onnx(SPEC, MODELS, random_head(pairs, 3, False), ["a", "b"])


@pytest.mark.parametrize("target", ["file", "path"])
def test_bundle_holds_the_model_and_one_label_per_line(tmp_path: Path, target: str) -> None:
    model = b"\x08\x08not really onnx"
    out: io.BytesIO | Path = io.BytesIO() if target == "file" else tmp_path / "bundle.zip"
    export.write_bundle(model, MULTICLASS, out)
    with zipfile.ZipFile(out) as bundle:
        assert sorted(bundle.namelist()) == ["labels.txt", "model.onnx", "predict.py"]
        assert bundle.read("model.onnx") == model
        assert bundle.read("labels.txt").decode().splitlines() == MULTICLASS
    with pytest.raises(ValueError):
        export.write_bundle(model, ["two\nlines"], io.BytesIO())
