"""The quick head on synthetic embeddings: accuracy, calibration, CV, multilabel, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from tagvision.learn import LinearHead, QuickClassifier, features


def blobs(n_per_tag: int, tags: int, dim: int = 64, spread: float = 1.0, seed: int = 0):
    """Non-negative embeddings around one centre per tag, and mirrored copies with a little noise."""
    centres = np.random.default_rng(100).uniform(0.5, 3.0, size=(tags, dim))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(tags), n_per_tag)
    plain = np.clip(centres[y] + rng.normal(0, spread, size=(len(y), dim)), 0, None).astype(np.float32)
    flipped = np.clip(plain + rng.normal(0, 0.1, size=plain.shape), 0, None).astype(np.float32)
    return plain, flipped, np.eye(tags, dtype=bool)[y]


def test_multiclass_head_separates_tags_and_reports_out_of_fold_probabilities() -> None:
    plain, flipped, labels = blobs(40, 4)
    test_plain, test_flipped, test_labels = blobs(40, 4, seed=1)
    model = QuickClassifier().fit(plain, flipped, labels)
    proba = model.predict_proba(test_plain, test_flipped)
    assert proba.shape == (160, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba.argmax(1) == test_labels.argmax(1)).mean() > 0.95
    assert model.oof_proba_.shape == (160, 4)
    assert model.folds_.max() == 4  # 5 folds: every tag has 40 images
    assert (model.oof_proba_.argmax(1) == labels.argmax(1)).mean() > 0.9
    assert model.shrinkage_ in model.cv_log_loss_


def test_out_of_fold_probabilities_are_honest_on_pure_noise() -> None:
    """With labels unrelated to the embeddings, cross-validated accuracy must be near chance."""
    rng = np.random.default_rng(3)
    plain = rng.uniform(0, 2, size=(200, 64)).astype(np.float32)
    labels = np.eye(2, dtype=bool)[rng.integers(0, 2, 200)]
    model = QuickClassifier().fit(plain, plain, labels)
    assert abs((model.oof_proba_.argmax(1) == labels.argmax(1)).mean() - 0.5) < 0.12
    assert model.oof_proba_.max() < 0.9, "no confident probabilities from noise"


def test_calibrated_probabilities_track_accuracy() -> None:
    plain, flipped, labels = blobs(60, 3, spread=2.5)
    model = QuickClassifier().fit(plain, flipped, labels)
    confidence = model.oof_proba_.max(axis=1).mean()
    accuracy = (model.oof_proba_.argmax(1) == labels.argmax(1)).mean()
    assert 0.5 < accuracy < 0.99
    assert abs(confidence - accuracy) < 0.08


def test_k_adapts_to_the_smallest_tag() -> None:
    plain, flipped, labels = blobs(30, 3)
    keep = np.r_[0:30, 30:60, 60:63]  # third tag: 3 images
    model = QuickClassifier().fit(plain[keep], flipped[keep], labels[keep])
    assert model.folds_.max() + 1 == 3


def test_multilabel_head_predicts_each_tag_independently() -> None:
    rng = np.random.default_rng(5)
    dim = 32
    labels = rng.random((300, 3)) < 0.4
    labels[labels.sum(1) == 0, 0] = True
    directions = rng.uniform(0, 2, size=(3, dim))
    plain = np.clip(1 + labels @ directions + rng.normal(0, 0.5, (300, dim)), 0, None).astype(np.float32)
    model = QuickClassifier(multilabel=True).fit(plain[:200], plain[:200], labels[:200])
    proba = model.predict_proba(plain[200:], plain[200:])
    assert proba.shape == (100, 3)
    assert not np.allclose(proba.sum(axis=1), 1.0), "sigmoids, not a softmax"
    assert ((proba >= 0.5) == labels[200:]).mean() > 0.9


def test_head_round_trips_through_bytes_and_matches_the_classifier() -> None:
    plain, flipped, labels = blobs(20, 3)
    model = QuickClassifier().fit(plain, flipped, labels)
    head = LinearHead.from_bytes(model.head_.to_bytes())
    np.testing.assert_array_equal(head.weights, model.head_.weights)
    np.testing.assert_allclose(head.predict_proba(plain, flipped), model.predict_proba(plain, flipped), atol=1e-6)
    assert head.weights.dtype == np.float32 and head.weights.shape == (64, 3)


def test_test_time_flip_averages_features_of_both_views() -> None:
    plain, flipped, labels = blobs(20, 3)
    head = QuickClassifier().fit(plain, flipped, labels).head_
    mean_features = (features(plain) + features(flipped)) / 2
    np.testing.assert_allclose(
        head.decision_function(plain, flipped), mean_features @ head.weights + head.bias, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("bad", ["one tag", "two tags on a multiclass image", "shape mismatch"])
def test_bad_inputs_are_refused(bad: str) -> None:
    plain, flipped, labels = blobs(10, 3)
    if bad == "one tag":
        labels = labels[:, :1]
    elif bad == "two tags on a multiclass image":
        labels = labels.copy()
        labels[0] = True
    else:
        flipped = flipped[:5]
    with pytest.raises(ValueError):
        QuickClassifier().fit(plain, flipped, labels)
