"""The backbone: ONNX export agrees with torch, preprocessing as specified, bad images isolated."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tagvision import backbone
from tagvision.errors import InvalidInput
from tests.conftest import CLOTHING, MODELS, photos

SPEC = backbone.BACKBONES["general-compact"]


@pytest.fixture(scope="module")
def embedder() -> backbone.Embedder:
    return backbone.Embedder(SPEC, MODELS, batch_size=4)


def jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def test_preprocessing_resizes_crops_and_scales_like_the_tf_release() -> None:
    img = Image.new("RGB", (400, 300), (255, 127, 0))
    arr = backbone.preprocess(img, SPEC)
    assert arr.shape == (3, 224, 224) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[:, 100, 100], [(255 - 127) / 128, 0.0, -127 / 128], atol=1e-6)


def test_preprocessing_keeps_the_centre_of_a_wide_image() -> None:
    img = Image.new("RGB", (600, 200), (0, 0, 0))
    img.paste((255, 255, 255), (250, 0, 350, 200))  # a white band in the middle third
    arr = backbone.preprocess(img, SPEC)
    # Shorter side 200 -> 256: the band becomes 128 px wide, centred in the 224 crop.
    assert arr[0, 112, 112] > 0.9 and arr[0, 112, 5] < -0.9


def test_lite2_uses_its_own_resolution() -> None:
    spec = backbone.spec_for("general")
    assert (spec.image_size, spec.resize, spec.model_name) == (260, 292, "efficientnet-lite2")
    with pytest.raises(InvalidInput) as info:
        backbone.spec_for("food")
    assert info.value.code == "BadRequestProjectUnknownDomain"


@pytest.mark.slow
def test_onnx_export_matches_the_torch_model_on_a_real_photo(embedder: backbone.Embedder) -> None:
    import torch

    data = photos(CLOTHING, "train", "shoes", 1)[0].read_bytes()
    batch = backbone.preprocess_bytes(data, SPEC)[None]
    onnx_out = embedder.forward(batch)
    with torch.no_grad():
        torch_out = backbone.pooled_features_module(backbone.build_torch_model(SPEC))(torch.from_numpy(batch)).numpy()
    assert onnx_out.shape == (1, 1280)
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-4)
    assert (onnx_out >= 0).all() and (onnx_out <= 6).all(), "pooled ReLU6 activations"


def test_export_happens_once_and_is_named_by_the_weights(embedder: backbone.Embedder) -> None:
    path = backbone.ensure_onnx(SPEC, MODELS)
    mtime = path.stat().st_mtime_ns
    assert backbone.ensure_onnx(SPEC, MODELS).stat().st_mtime_ns == mtime
    assert path.name.startswith("efficientnet-lite0-") and path.suffix == ".onnx"


@pytest.mark.slow
def test_embed_yields_plain_and_mirrored_embeddings_in_order(embedder: backbone.Embedder) -> None:
    files = photos(CLOTHING, "train", "hat", 3) + photos(CLOTHING, "train", "pants", 3)
    results = list(embedder.embed([f.read_bytes for f in files]))
    assert [r.index for r in results] == list(range(6))
    plain = np.stack([r.plain for r in results])
    flipped = np.stack([r.flipped for r in results])
    assert not np.allclose(plain, flipped)
    cosine = (plain * flipped).sum(1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(flipped, axis=1)
    assert (cosine > 0.8).all(), "a mirrored photo looks much the same"
    # Same-class photos are closer than cross-class ones on average.
    sim = plain @ plain.T / np.outer(np.linalg.norm(plain, axis=1), np.linalg.norm(plain, axis=1))
    within = (sim[:3, :3].sum() - 3) / 6 + (sim[3:, 3:].sum() - 3) / 6
    assert within / 2 > sim[:3, 3:].mean()


def test_a_bad_image_gets_its_error_and_the_rest_are_embedded(embedder: backbone.Embedder) -> None:
    def unreadable() -> bytes:
        raise OSError("gone")

    sources = [
        lambda: jpeg((300, 300), (200, 10, 10)),
        lambda: b"not an image",
        unreadable,
        lambda: jpeg((300, 300), (10, 200, 10)),
    ]
    results = list(embedder.embed(sources))
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert results[1].error is not None and results[1].error.code == "ErrorImageFormat"
    assert results[2].error is not None and results[2].error.code == "ErrorSource"
    assert results[0].plain is not None and results[3].plain is not None
    # The batch around the bad images must not mix rows up: each equals its own single run.
    single = embedder.forward_pairs(backbone.preprocess_bytes(jpeg((300, 300), (10, 200, 10)), SPEC)[None])[0][0]
    np.testing.assert_allclose(results[3].plain, single, atol=1e-4)
