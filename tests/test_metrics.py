"""Tests for tagvision.metrics: hand-computed figures, thresholds, folds, validation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tagvision import metrics
from tagvision.metrics import (
    Performance,
    TagPerformance,
    confusion_matrix,
    evaluate,
    precision_recall_curve,
    stratified_folds,
)

A, B, C = 0, 1, 2


def one_hot(tags: list[int], n_tags: int) -> np.ndarray:
    labels = np.zeros((len(tags), n_tags), dtype=bool)
    labels[np.arange(len(tags)), tags] = True
    return labels


def fold_counts(labels: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(k, T): images of each tag in each fold."""
    return np.stack([labels[folds == f].sum(axis=0) for f in range(folds.max() + 1)])


# Multiclass, two tags, two folds. Worked by hand at threshold 0.5:
#   tag A: predicted {0, 1, 5}, true {0, 1, 3}: TP 2, precision 2/3, recall 2/3;
#          ranking 0+ 1+ 5- 4- 3+ 2-: AP = (1 + 1 + 3/5) / 3 = 13/15
#   tag B: predicted {2, 3, 4, 5}, true {2, 4, 5}: TP 3, precision 3/4, recall 1;
#          ranking 2+ 3- 4+ 5+ 1- 0-: AP = (1 + 2/3 + 3/4) / 3 = 29/36
#   overall: TP 5 of 7 predicted, 6 true: precision 5/7, recall 5/6, AP 301/360
# Fold 0 (images 0-2) is perfect. Fold 1 (images 3-5):
#   A: precision 0/1, recall 0/1, AP 1/3; B: precision 2/3, recall 2/2, AP 7/12;
#   overall precision 2/4, recall 2/3, AP (1/3 + 7/12) / 2 = 11/24.
MC_PROBABILITIES = np.array(
    [
        [0.9, 0.1],
        [0.6, 0.4],
        [0.3, 0.7],
        [0.4, 0.6],
        [0.45, 0.55],
        [0.5, 0.5],
    ]
)
MC_LABELS = one_hot([A, A, B, A, B, B], 2)
MC_FOLDS = np.array([0, 0, 0, 1, 1, 1])


def test_multiclass_figures_by_hand() -> None:
    performance = evaluate(MC_PROBABILITIES, MC_LABELS, MC_FOLDS, threshold=0.5)

    assert performance.threshold == 0.5
    assert performance.folds == 2
    assert performance.precision == pytest.approx(5 / 7)
    assert performance.recall == pytest.approx(5 / 6)
    assert performance.average_precision == pytest.approx(301 / 360)
    assert performance.precision_std == pytest.approx(1 / 4)  # folds: 1, 1/2
    assert performance.recall_std == pytest.approx(1 / 6)  # folds: 1, 2/3
    assert performance.average_precision_std == pytest.approx(13 / 48)  # folds: 1, 11/24

    tag_a, tag_b = performance.per_tag
    assert tag_a == TagPerformance(
        index=0,
        precision=pytest.approx(2 / 3),
        precision_std=pytest.approx(1 / 2),
        recall=pytest.approx(2 / 3),
        recall_std=pytest.approx(1 / 2),
        average_precision=pytest.approx(13 / 15),
        average_precision_std=pytest.approx(1 / 3),
        support=3,
    )
    assert tag_b == TagPerformance(
        index=1,
        precision=pytest.approx(3 / 4),
        precision_std=pytest.approx(1 / 6),
        recall=pytest.approx(1.0),
        recall_std=pytest.approx(0.0),
        average_precision=pytest.approx(29 / 36),
        average_precision_std=pytest.approx(5 / 24),
        support=3,
    )


def test_figures_are_plain_python_numbers() -> None:
    performance = evaluate(MC_PROBABILITIES, MC_LABELS, MC_FOLDS)
    assert isinstance(performance, Performance)
    assert type(performance.precision) is float
    assert type(performance.average_precision_std) is float
    assert type(performance.per_tag[0].support) is int
    assert type(performance.per_tag[0].recall) is float


def test_probability_equal_to_threshold_counts_as_predicted() -> None:
    labels = one_hot([A, B], 2)
    probabilities = np.array([[0.75, 0.25], [0.75, 0.25]])
    folds = np.array([0, 1])

    at = evaluate(probabilities, labels, folds, threshold=0.75)
    assert at.per_tag[A].recall == 1.0
    assert at.per_tag[A].precision == 0.5
    assert at.recall == 0.5

    above = evaluate(probabilities, labels, folds, threshold=np.nextafter(0.75, 1.0))
    assert above.per_tag[A].recall == 0.0
    assert above.per_tag[A].precision == 0.0
    assert above.recall == 0.0

    low = evaluate(probabilities, labels, folds, threshold=0.25)
    assert low.precision == 0.5  # every (image, tag) pair predicted: 2 of 4 right
    assert low.recall == 1.0


def test_threshold_moves_precision_and_recall() -> None:
    thresholds = [0.0, 0.3, 0.5, 0.65, 0.95, 1.0]
    results = [evaluate(MC_PROBABILITIES, MC_LABELS, MC_FOLDS, threshold=t) for t in thresholds]
    recalls = [r.recall for r in results]
    assert recalls == sorted(recalls, reverse=True)
    for tag in (A, B):
        per_tag = [r.per_tag[tag].recall for r in results]
        assert per_tag == sorted(per_tag, reverse=True)

    everything, _, half, strict, nothing, _ = results
    assert (everything.precision, everything.recall) == (0.5, 1.0)  # 6 of 12 pairs
    assert (half.precision, half.recall) == (pytest.approx(5 / 7), pytest.approx(5 / 6))
    # At 0.65 only 0.9 (A, right) and 0.7 (B, right) remain: precision rises.
    assert (strict.precision, strict.recall) == (1.0, pytest.approx(1 / 3))
    assert strict.per_tag[A].precision == 1.0 and strict.per_tag[B].precision == 1.0
    # Nothing predicted: precision is shown as 0, with no spread.
    assert (nothing.precision, nothing.recall) == (0.0, 0.0)
    assert nothing.precision_std == 0.0
    assert [t.precision for t in nothing.per_tag] == [0.0, 0.0]
    # AP does not depend on the threshold.
    assert [r.average_precision for r in results] == pytest.approx([301 / 360] * len(results))


# Multilabel, three tags, two folds, threshold 0.5:
#   A: predicted {0, 2, 3}, true {0, 2}: precision 2/3, recall 1, AP 1
#   B: predicted {0, 1}, true {0, 1, 3}: precision 1, recall 2/3, AP (1 + 1 + 3/4)/3 = 11/12
#   C: predicted {2, 3}, true {2, 3}: precision 1, recall 1, AP 1
#   overall: 6 right of 7 predicted and 7 true; AP 35/36
# Fold 0 (images 0, 1): perfect; C neither present nor predicted (undefined there).
# Fold 1 (images 2, 3): A precision 1/2; B not predicted (precision undefined),
#   recall 0, AP 1/2; overall precision 3/4, recall 3/4, AP (1 + 1/2 + 1)/3 = 5/6.
ML_LABELS = np.array(
    [
        [True, True, False],
        [False, True, False],
        [True, False, True],
        [False, True, True],
    ]
)
ML_PROBABILITIES = np.array(
    [
        [0.8, 0.6, 0.2],
        [0.1, 0.9, 0.4],
        [0.7, 0.3, 0.5],
        [0.6, 0.2, 0.9],
    ]
)
ML_FOLDS = np.array([0, 0, 1, 1])


def test_multilabel_figures_by_hand() -> None:
    performance = evaluate(ML_PROBABILITIES, ML_LABELS, ML_FOLDS, threshold=0.5)

    assert performance.precision == pytest.approx(6 / 7)
    assert performance.recall == pytest.approx(6 / 7)
    assert performance.average_precision == pytest.approx(35 / 36)
    assert performance.precision_std == pytest.approx(1 / 8)
    assert performance.recall_std == pytest.approx(1 / 8)
    assert performance.average_precision_std == pytest.approx(1 / 12)

    tag_a, tag_b, tag_c = performance.per_tag
    assert (tag_a.precision, tag_a.recall, tag_a.average_precision) == (pytest.approx(2 / 3), 1.0, 1.0)
    assert (tag_a.precision_std, tag_a.recall_std, tag_a.average_precision_std) == (0.25, 0.0, 0.0)
    assert (tag_b.precision, tag_b.recall, tag_b.average_precision) == (
        1.0,
        pytest.approx(2 / 3),
        pytest.approx(11 / 12),
    )
    # B's precision is defined in fold 0 only, so it has no spread.
    assert (tag_b.precision_std, tag_b.recall_std, tag_b.average_precision_std) == (0.0, 0.5, 0.25)
    assert (tag_c.precision, tag_c.recall, tag_c.average_precision) == (1.0, 1.0, 1.0)
    # C exists in fold 1 only.
    assert (tag_c.precision_std, tag_c.recall_std, tag_c.average_precision_std) == (0.0, 0.0, 0.0)
    assert [t.support for t in performance.per_tag] == [2, 3, 2]


def test_tag_without_images_scores_zero_and_is_left_out_of_overall_ap() -> None:
    labels = np.array([[True, False, False], [False, True, False], [True, False, False], [False, True, False]])
    probabilities = np.array([[0.9, 0.0, 0.6], [0.2, 0.8, 0.1], [0.7, 0.3, 0.0], [0.1, 0.9, 0.0]])
    performance = evaluate(probabilities, labels, np.array([0, 0, 1, 1]))

    empty = performance.per_tag[2]
    assert empty.support == 0
    assert (empty.precision, empty.recall, empty.average_precision) == (0.0, 0.0, 0.0)
    assert (empty.precision_std, empty.recall_std, empty.average_precision_std) == (0.0, 0.0, 0.0)
    assert performance.average_precision == 1.0  # A and B are ranked perfectly
    assert performance.precision == pytest.approx(4 / 5)


def test_average_precision_with_tied_scores() -> None:
    # Threshold 0.8 takes both tied images: precision 1/2 at recall 1/2; then 2/3 at 1.
    labels = np.array([[True, False], [False, True], [True, False]])
    probabilities = np.array([[0.8, 0.2], [0.8, 0.2], [0.3, 0.7]])
    performance = evaluate(probabilities, labels, np.array([0, 1, 0]))
    assert performance.per_tag[A].average_precision == pytest.approx(7 / 12)


def test_average_precision_matches_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    labels = rng.random((200, 6)) < [0.05, 0.2, 0.5, 0.8, 0.3, 0.1]
    labels[:2] = True
    probabilities = np.round(rng.random((200, 6)) * 0.6 + labels * 0.3, 1)  # many ties
    performance = evaluate(probabilities, labels, np.zeros(200, dtype=int))
    expected = [average_precision_score(labels[:, j], probabilities[:, j]) for j in range(6)]
    assert [t.average_precision for t in performance.per_tag] == pytest.approx(expected, abs=1e-12)
    assert performance.average_precision == pytest.approx(np.mean(expected), abs=1e-12)


@pytest.mark.parametrize("multilabel", [False, True])
def test_perfect_predictions_score_one_with_no_spread(multilabel: bool) -> None:
    rng = np.random.default_rng(3)
    if multilabel:
        labels = rng.random((60, 4)) < 0.4
        labels[~labels.any(axis=1), 0] = True
    else:
        labels = one_hot(list(rng.integers(0, 4, 60)), 4)
    folds = stratified_folds(labels)
    performance = evaluate(labels.astype(float), labels, folds, threshold=0.5)

    assert performance.folds == 5
    overall = (performance.precision, performance.recall, performance.average_precision)
    spread = (performance.precision_std, performance.recall_std, performance.average_precision_std)
    assert overall == (1.0, 1.0, 1.0)
    assert spread == (0.0, 0.0, 0.0)
    for tag in performance.per_tag:
        assert (tag.precision, tag.recall, tag.average_precision) == (1.0, 1.0, 1.0)
        assert (tag.precision_std, tag.recall_std, tag.average_precision_std) == (0.0, 0.0, 0.0)
        assert tag.support == labels[:, tag.index].sum()


def test_confusion_matrix_counts_true_against_argmax() -> None:
    labels = one_hot([A, A, A, B, B, C], 3)
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],  # A -> A
            [0.6, 0.3, 0.1],  # A -> A
            [0.2, 0.5, 0.3],  # A -> B
            [0.1, 0.8, 0.1],  # B -> B
            [0.1, 0.2, 0.7],  # B -> C
            [0.3, 0.3, 0.4],  # C -> C
        ]
    )
    matrix = confusion_matrix(probabilities, labels)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    assert matrix.shape == (3, 3)
    assert np.issubdtype(matrix.dtype, np.integer)


def test_confusion_matrix_counts_each_tag_of_a_multilabel_image() -> None:
    labels = np.array([[True, True, False], [False, False, True], [False, False, False]])
    probabilities = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.4], [0.1, 0.1, 0.9]])
    matrix = confusion_matrix(probabilities, labels)
    np.testing.assert_array_equal(matrix, [[1, 0, 0], [1, 0, 0], [0, 1, 0]])


def test_precision_recall_curve_of_one_tag() -> None:
    labels = np.array([[True, False], [False, True], [True, False]])
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    precision, recall, thresholds = precision_recall_curve(probabilities, labels, tag=0)
    np.testing.assert_allclose(precision, [2 / 3, 1 / 2, 1.0, 1.0])
    np.testing.assert_allclose(recall, [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(thresholds, [0.3, 0.6, 0.9])


def test_stratified_folds_adapt_k_to_the_smallest_tag() -> None:
    labels = one_hot([A] * 10 + [B] * 7 + [C] * 3, 3)
    folds = stratified_folds(labels, k_max=5, seed=0)
    assert folds.shape == (20,)
    assert np.issubdtype(folds.dtype, np.integer)
    assert sorted(np.unique(folds)) == [0, 1, 2]
    counts = fold_counts(labels, folds)
    np.testing.assert_array_equal(np.sort(counts, axis=0), [[3, 2, 1], [3, 2, 1], [4, 3, 1]])


def test_stratified_folds_cap_k_and_balance_counts() -> None:
    labels = one_hot([A] * 20 + [B] * 23, 2)
    folds = stratified_folds(labels, k_max=5)
    counts = fold_counts(labels, folds)
    assert counts.shape == (5, 2)
    assert counts[:, A].tolist() == [4] * 5
    assert sorted(counts[:, B]) == [4, 4, 5, 5, 5]
    assert len(np.unique(stratified_folds(one_hot([A, A, B, B, B], 2)))) == 2


@pytest.mark.parametrize("seed", range(5))
def test_stratified_folds_spread_every_multilabel_tag(seed: int) -> None:
    labels = np.zeros((30, 4), dtype=bool)
    labels[0:12, 0] = labels[8:20, 1] = labels[16:30, 2] = labels[::3, 3] = True
    folds = stratified_folds(labels, seed=seed)

    assert sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    counts = fold_counts(labels, folds)
    assert (counts > 0).all()
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 2


def test_stratified_folds_place_untagged_multilabel_images() -> None:
    labels = np.zeros((12, 2), dtype=bool)
    labels[0:4, 0] = labels[2:6, 1] = True  # images 6-11 have no tag
    folds = stratified_folds(labels, k_max=3)
    assert sorted(np.unique(folds)) == [0, 1, 2]
    assert (fold_counts(labels, folds) > 0).all()
    assert np.bincount(folds).tolist() == [4, 4, 4]


@pytest.mark.parametrize("multilabel", [False, True])
def test_stratified_folds_are_deterministic_for_a_seed(multilabel: bool) -> None:
    rng = np.random.default_rng(11)
    if multilabel:
        labels = rng.random((80, 5)) < 0.3
        labels[~labels.any(axis=1), 0] = True
    else:
        labels = one_hot(list(rng.integers(0, 5, 80)), 5)
    first = stratified_folds(labels, seed=4)
    np.testing.assert_array_equal(first, stratified_folds(labels, seed=4))
    assert not np.array_equal(first, stratified_folds(labels, seed=5))


def test_stratified_folds_refuse_tags_with_fewer_than_two_images() -> None:
    with pytest.raises(ValueError, match="tag 2 has 1 image"):
        stratified_folds(one_hot([A, A, A, B, B, C], 3))
    empty_tag = np.array([[True, False], [True, False]])
    with pytest.raises(ValueError, match="tag 1 has 0 image"):
        stratified_folds(empty_tag)
    with pytest.raises(ValueError, match="k_max"):
        stratified_folds(one_hot([A, A, B, B], 2), k_max=1)
    with pytest.raises(ValueError, match="labels"):
        stratified_folds(np.array([True, False, True]))


@pytest.mark.parametrize(
    ("probabilities", "labels", "folds", "threshold", "message"),
    [
        (MC_PROBABILITIES[:5], MC_LABELS, MC_FOLDS, 0.5, "do not match labels"),
        (MC_PROBABILITIES[:, :1], MC_LABELS, MC_FOLDS, 0.5, "do not match labels"),
        (MC_PROBABILITIES + 0.2, MC_LABELS, MC_FOLDS, 0.5, r"probabilities must lie in \[0, 1\]"),
        (MC_PROBABILITIES - 0.2, MC_LABELS, MC_FOLDS, 0.5, r"probabilities must lie in \[0, 1\]"),
        (np.full((6, 2), np.nan), MC_LABELS, MC_FOLDS, 0.5, r"probabilities must lie in \[0, 1\]"),
        (MC_PROBABILITIES, MC_LABELS * 2, MC_FOLDS, 0.5, "labels must be boolean"),
        (MC_PROBABILITIES, MC_LABELS, MC_FOLDS[:5], 0.5, "folds of shape"),
        (MC_PROBABILITIES, MC_LABELS, MC_FOLDS - 1, 0.5, "non-negative integer"),
        (MC_PROBABILITIES, MC_LABELS, MC_FOLDS.astype(float), 0.5, "non-negative integer"),
        (MC_PROBABILITIES, MC_LABELS, MC_FOLDS, -0.1, r"threshold must lie in \[0, 1\]"),
        (MC_PROBABILITIES, MC_LABELS, MC_FOLDS, 1.5, r"threshold must lie in \[0, 1\]"),
        (MC_PROBABILITIES, MC_LABELS, MC_FOLDS, float("nan"), r"threshold must lie in \[0, 1\]"),
    ],
)
def test_evaluate_rejects_bad_input(
    probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, threshold: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(probabilities, labels, folds, threshold)


def test_evaluate_accepts_zero_one_labels_and_the_threshold_bounds() -> None:
    as_ints = evaluate(MC_PROBABILITIES, MC_LABELS.astype(int), MC_FOLDS)
    assert as_ints == evaluate(MC_PROBABILITIES, MC_LABELS, MC_FOLDS)
    assert evaluate(MC_PROBABILITIES, MC_LABELS, MC_FOLDS, threshold=0).recall == 1.0
    assert evaluate(MC_PROBABILITIES, MC_LABELS, MC_FOLDS, threshold=1).recall == 0.0


def test_plotting_helpers_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="do not match labels"):
        confusion_matrix(MC_PROBABILITIES[:4], MC_LABELS)
    with pytest.raises(ValueError, match=r"probabilities must lie in \[0, 1\]"):
        confusion_matrix(MC_PROBABILITIES * 2, MC_LABELS)
    with pytest.raises(ValueError, match="out of range"):
        precision_recall_curve(MC_PROBABILITIES, MC_LABELS, tag=2)
    with pytest.raises(ValueError, match="out of range"):
        precision_recall_curve(MC_PROBABILITIES, MC_LABELS, tag=-1)
    no_b = np.array([[True, False], [True, False]])
    with pytest.raises(ValueError, match="tag 1 has no image"):
        precision_recall_curve(np.array([[0.9, 0.1], [0.8, 0.2]]), no_b, tag=1)


def test_module_exports_its_public_api() -> None:
    assert set(metrics.__all__) == {
        "MeasuredOn",
        "Method",
        "Performance",
        "TagPerformance",
        "average_precision",
        "confusion_matrix",
        "evaluate",
        "precision_recall_curve",
        "stratified_folds",
    }


def test_what_figures_were_measured_on_is_said_the_same_way_everywhere() -> None:
    folds = metrics.MeasuredOn(metrics.Method.CROSS_VALIDATION, 240, 240, 5)
    assert folds.has_spread and folds.sentence() == (
        "5-fold cross-validation on the 240 training images: each image was scored by a model trained without it"
    )
    split = metrics.MeasuredOn(metrics.Method.VALIDATION_SPLIT, 48, 240, 1, retrained=True)
    assert not split.has_spread and split.sentence().startswith("48 of the 240 training images, set aside")
    assert "trained once more on all the images" in split.sentence()
    for measured in (folds, split):
        assert metrics.MeasuredOn.from_json(measured.to_json()) == measured
