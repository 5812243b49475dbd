"""Cross-validated performance figures: precision, recall and average precision.

After training, tagvision reports what Azure Custom Vision reports, per tag and
overall, at an adjustable probability threshold. The figures are measured honestly,
on out-of-fold probabilities from k-fold cross-validation over the training images,
and they come with their standard deviations across the folds. Since only the stored
out-of-fold probabilities are needed, every figure can be recomputed at any threshold
without retraining.

Conventions, as in Custom Vision:

* a tag is predicted for an image when its probability is at or above the threshold,
  for multiclass and multilabel projects alike;
* overall precision and recall are micro-averaged over every (image, tag) pair;
  overall average precision (AP) is the mean of the per-tag APs over the tags that
  have at least one image;
* a figure with nothing to measure (precision with no predicted image, recall or AP of
  a tag with no image) is 0.0.

Standard deviations are population deviations (``ddof=0``) of the same figure computed
within each fold alone, over the folds where it is defined (precision: at least one
predicted image in the fold; recall and AP: at least one image truly having the tag in
the fold). Fewer than two such folds give 0.0.

Shapes: ``n`` images, ``T`` tags. ``labels`` is boolean (n, T), True where the image
has the tag; ``probabilities`` is float (n, T); ``folds`` is int (n,), each image's
fold id. This module does no I/O: numpy and scikit-learn only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "MeasuredOn",
    "Method",
    "Performance",
    "TagPerformance",
    "average_precision",
    "confusion_matrix",
    "evaluate",
    "precision_recall_curve",
    "stratified_folds",
]


class Method(StrEnum):
    """How an iteration's figures were measured."""

    CROSS_VALIDATION = "cross-validation"
    VALIDATION_SPLIT = "validation split"


@dataclass(frozen=True)
class MeasuredOn:
    """What an iteration's figures were computed on, said the same way on every surface (API, CLI, portal).

    ``images`` were scored out of ``training_images``: all of them, each by the fold model that did not
    see it (cross-validation, ``folds`` of them), or a held-out split the model was not trained on
    (advanced training). ``retrained`` says the served model was trained again on every image after
    the split was scored, so it is not the model the figures describe.
    """

    method: Method
    images: int
    training_images: int
    folds: int = 1
    retrained: bool = False

    @property
    def has_spread(self) -> bool:
        """Whether standard deviations across folds mean anything (one split has none)."""
        return self.method is Method.CROSS_VALIDATION and self.folds > 1

    def sentence(self) -> str:
        """The user's words, e.g. for a performance page's header."""
        if self.method is Method.CROSS_VALIDATION:
            return (
                f"{self.folds}-fold cross-validation on the {self.training_images} training images: "
                "each image was scored by a model trained without it"
            )
        told = (
            f"{self.images} of the {self.training_images} training images, set aside before training: "
            "the model never learned from them"
        )
        if self.retrained:
            told += "; the model in use was then trained once more on all the images, so it may do a little better"
        return told

    def short(self) -> str:
        """A table cell's words for the same thing: "5-fold cross-validation", "20 held-out images"."""
        if self.method is Method.CROSS_VALIDATION:
            return f"{self.folds}-fold cross-validation"
        return f"{self.images} held-out images"

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method.value,
            "images": self.images,
            "trainingImages": self.training_images,
            "folds": self.folds,
            "retrained": self.retrained,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeasuredOn:
        return cls(
            Method(data["method"]),
            int(data["images"]),
            int(data["trainingImages"]),
            int(data.get("folds", 1)),
            bool(data.get("retrained", False)),
        )


@dataclass(frozen=True)
class TagPerformance:
    """Cross-validated figures of one tag.

    Attributes
    ----------
    index : int
        Column index of the tag in ``labels`` and ``probabilities``.
    precision, recall, average_precision : float
        Pooled over the out-of-fold predictions of every image.
    precision_std, recall_std, average_precision_std : float
        Population standard deviation of the figure across folds.
    support : int
        Number of images truly having the tag.
    """

    index: int
    precision: float
    precision_std: float
    recall: float
    recall_std: float
    average_precision: float
    average_precision_std: float
    support: int


@dataclass(frozen=True)
class Performance:
    """Cross-validated figures of a whole project at one threshold.

    Attributes
    ----------
    threshold : float
        Probability at or above which a tag counts as predicted.
    precision, recall : float
        Micro-averaged over every (image, tag) pair of the pooled predictions.
    average_precision : float
        Mean of the per-tag APs over the tags with at least one image.
    precision_std, recall_std, average_precision_std : float
        Population standard deviation of the figure across folds.
    per_tag : list of TagPerformance
        One entry per tag, in column order.
    folds : int
        Number of folds the probabilities came from.
    """

    threshold: float
    precision: float
    precision_std: float
    recall: float
    recall_std: float
    average_precision: float
    average_precision_std: float
    per_tag: list[TagPerformance]
    folds: int


def stratified_folds(labels: np.ndarray, k_max: int = 5, seed: int = 0) -> np.ndarray:
    """Assign each image to a fold so that every tag is spread evenly across folds.

    The number of folds adapts to small tags: ``k = max(2, min(k_max, c))`` where ``c``
    is the image count of the smallest tag, so every tag can appear in every fold.
    Multiclass labels (one tag per image) are split by scikit-learn's
    ``StratifiedKFold``; multilabel ones by iterative stratification (Sechidis et al.,
    2011), which deals the images of the rarest remaining tag first, each to the fold
    that most lacks that tag, then the image's other tags, then images. Images without
    any tag only balance fold sizes. With multilabel images, tags that always come
    together can make a perfect spread impossible; the result is then as close as the
    greedy dealing gets.

    Parameters
    ----------
    labels : ndarray of shape (n, T), bool
        True where image i has tag j.
    k_max : int, default=5
        Largest number of folds; at least 2.
    seed : int, default=0
        Seed of the shuffling; the same seed gives the same folds.

    Returns
    -------
    folds : ndarray of shape (n,), int64
        Fold id of each image, in ``0 .. k-1``; every fold is non-empty.

    Raises
    ------
    ValueError
        If ``labels`` is not a 2-D boolean array, ``k_max`` is below 2, or a tag has
        fewer than 2 images.
    """
    labels = _check_labels(labels)
    if k_max < 2:
        raise ValueError(f"k_max must be at least 2, not {k_max}")
    counts = labels.sum(axis=0)
    smallest = int(np.argmin(counts))
    if counts[smallest] < 2:
        raise ValueError(f"tag {smallest} has {counts[smallest]} image(s); cross-validation needs at least 2 per tag")
    k = max(2, min(k_max, int(counts[smallest])))
    if (labels.sum(axis=1) == 1).all():
        folds = np.empty(len(labels), dtype=np.int64)
        from sklearn.model_selection import StratifiedKFold  # imported late: it costs 0.6 s at start-up

        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for fold, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels.argmax(axis=1))):
            folds[held] = fold
        return folds
    return _iterative_folds(labels, k, np.random.default_rng(seed))


def evaluate(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, threshold: float = 0.5) -> Performance:
    """Precision, recall and average precision, per tag and overall, with their spread.

    Parameters
    ----------
    probabilities : ndarray of shape (n, T), float
        Out-of-fold probabilities, in [0, 1].
    labels : ndarray of shape (n, T), bool
        True where image i has tag j.
    folds : ndarray of shape (n,), int
        Fold id of each image (non-negative).
    threshold : float, default=0.5
        A tag is predicted when its probability is at or above it; in [0, 1].

    Returns
    -------
    performance : Performance
        Pooled figures, their standard deviations across folds, and one
        :class:`TagPerformance` per tag.

    Raises
    ------
    ValueError
        If shapes disagree, a probability or the threshold is outside [0, 1], labels are
        not boolean, or fold ids are not non-negative integers.
    """
    probabilities, labels = _check_pair(probabilities, labels)
    folds = _check_folds(folds, len(labels))
    threshold = _check_threshold(threshold)

    pooled = _counts(probabilities, labels, threshold)
    fold_ids = np.unique(folds)
    per_fold = [_counts(probabilities[folds == f], labels[folds == f], threshold) for f in fold_ids]
    fold = _Counts(*(np.stack(field) for field in zip(*per_fold, strict=True)))
    fold_precision = _ratio(fold.true_pos.sum(axis=1), fold.predicted.sum(axis=1), undefined=np.nan)
    fold_recall = _ratio(fold.true_pos.sum(axis=1), fold.positives.sum(axis=1), undefined=np.nan)
    return Performance(
        threshold=threshold,
        precision=float(_ratio(pooled.true_pos.sum(), pooled.predicted.sum())),
        precision_std=float(_spread(fold_precision)),
        recall=float(_ratio(pooled.true_pos.sum(), pooled.positives.sum())),
        recall_std=float(_spread(fold_recall)),
        average_precision=float(np.nan_to_num(_defined_mean(pooled.average_precision))),
        average_precision_std=float(_spread(_defined_mean(fold.average_precision))),
        per_tag=_per_tag(pooled, fold),
        folds=len(fold_ids),
    )


def _per_tag(pooled: _Counts, fold: _Counts) -> list[TagPerformance]:
    """Each tag's figures: pooled over all images, their spread across the folds (``fold``, stacked (k, T))."""
    precision = _ratio(pooled.true_pos, pooled.predicted)
    recall = _ratio(pooled.true_pos, pooled.positives)
    precision_std = _spread(_ratio(fold.true_pos, fold.predicted, undefined=np.nan))
    recall_std = _spread(_ratio(fold.true_pos, fold.positives, undefined=np.nan))
    ap_std = _spread(fold.average_precision)
    return [
        TagPerformance(
            index=j,
            precision=float(precision[j]),
            precision_std=float(precision_std[j]),
            recall=float(recall[j]),
            recall_std=float(recall_std[j]),
            average_precision=float(np.nan_to_num(pooled.average_precision[j])),
            average_precision_std=float(ap_std[j]),
            support=int(pooled.positives[j]),
        )
        for j in range(len(pooled.positives))
    ]


def confusion_matrix(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Count true tags against the most probable tag.

    Parameters
    ----------
    probabilities : ndarray of shape (n, T), float
        Probabilities, in [0, 1].
    labels : ndarray of shape (n, T), bool
        True where image i has tag j. An image with several tags counts once for each
        of them; an image with none is not counted.

    Returns
    -------
    matrix : ndarray of shape (T, T), int64
        ``matrix[t, p]`` is the number of (image, true tag ``t``) pairs whose image's
        highest probability is tag ``p``.
    """
    probabilities, labels = _check_pair(probabilities, labels)
    n_tags = labels.shape[1]
    images, tags = np.nonzero(labels)
    predicted = probabilities.argmax(axis=1)[images]
    return np.bincount(tags * n_tags + predicted, minlength=n_tags * n_tags).reshape(n_tags, n_tags)


def precision_recall_curve(
    probabilities: np.ndarray, labels: np.ndarray, tag: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of one tag at every threshold, for plotting.

    A thin wrapper over :func:`sklearn.metrics.precision_recall_curve`.

    Parameters
    ----------
    probabilities : ndarray of shape (n, T), float
        Out-of-fold probabilities, in [0, 1].
    labels : ndarray of shape (n, T), bool
        True where image i has tag j.
    tag : int
        Column index of the tag.

    Returns
    -------
    precision : ndarray of shape (m + 1,)
        Precision at each threshold, then 1.0.
    recall : ndarray of shape (m + 1,)
        Recall at each threshold (decreasing), then 0.0.
    thresholds : ndarray of shape (m,)
        The distinct probabilities of the tag, increasing.

    Raises
    ------
    ValueError
        On invalid inputs, a tag index out of range, or a tag with no image (its
        recall is undefined).
    """
    probabilities, labels = _check_pair(probabilities, labels)
    if not 0 <= tag < labels.shape[1]:
        raise ValueError(f"tag {tag} is out of range for {labels.shape[1]} tags")
    if not labels[:, tag].any():
        raise ValueError(f"tag {tag} has no image; its precision-recall curve is undefined")
    from sklearn.metrics import precision_recall_curve as sk_curve

    return sk_curve(labels[:, tag], probabilities[:, tag])


class _Counts(NamedTuple):
    """Per-tag counts and AP of one set of images, each of shape (T,), or (k, T) stacked over folds."""

    true_pos: np.ndarray
    predicted: np.ndarray
    positives: np.ndarray
    average_precision: np.ndarray  # NaN where the tag has no image


def _counts(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> _Counts:
    predicted = probabilities >= threshold
    return _Counts(
        true_pos=(predicted & labels).sum(axis=0),
        predicted=predicted.sum(axis=0),
        positives=labels.sum(axis=0),
        average_precision=average_precision(probabilities, labels),
    )


def average_precision(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision of each column, (n, T) -> (T,); NaN for a column with no positive.

    Equal to ``sklearn.metrics.average_precision_score`` column by column, vectorised
    over columns: AP is the mean, over the positive images, of the precision at the
    lowest threshold that still includes that image, i.e. at the end of its run of tied
    scores in decreasing order.
    """
    n = len(probabilities)
    order = np.argsort(-probabilities, axis=0)  # order within ties does not matter
    scores = np.take_along_axis(probabilities, order, axis=0)
    hits = np.take_along_axis(labels, order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, n + 1)[:, None]
    run_ends = np.ones(scores.shape, dtype=bool)
    run_ends[:-1] = scores[:-1] != scores[1:]
    # Index of the end of each row's tie run: a reversed running minimum of end indices.
    end_at = np.where(run_ends, np.arange(n)[:, None], n)
    end_at = np.minimum.accumulate(end_at[::-1], axis=0)[::-1]
    gained = np.where(hits, np.take_along_axis(precision, end_at, axis=0), 0.0).sum(axis=0)
    return _ratio(gained, hits.sum(axis=0), undefined=np.nan)


def _ratio(numerator: np.ndarray, denominator: np.ndarray, undefined: float = 0.0) -> np.ndarray:
    """``numerator / denominator`` element-wise, ``undefined`` where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    out = np.full(np.broadcast(numerator, denominator).shape, undefined)
    return np.divide(numerator, denominator, out=out, where=denominator > 0)


def _defined_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where nothing is defined. (..., T) -> (...)."""
    defined = ~np.isnan(values)
    return _ratio(np.where(defined, values, 0.0).sum(axis=-1), defined.sum(axis=-1), undefined=np.nan)


def _spread(values: np.ndarray) -> np.ndarray:
    """Population std over axis 0 ignoring NaN, (k, ...) -> (...); 0.0 from fewer than two values."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=0)
    mean = _ratio(np.where(defined, values, 0.0).sum(axis=0), count)
    return np.sqrt(_ratio((np.where(defined, values - mean, 0.0) ** 2).sum(axis=0), count))


def _iterative_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification of multilabel rows into ``k`` folds, (n, T) -> (n,)."""
    n = len(labels)
    folds = np.full(n, -1, dtype=np.int64)
    # How many more images of each tag (T, k), and of any kind (k,), each fold wants,
    # scaled by k to stay integer: target count * k - placed count * k.
    wanted = np.repeat(labels.sum(axis=0)[:, None], k, axis=1)
    room = np.full(k, n)

    def place(image: int, keys: tuple[np.ndarray, ...]) -> None:
        # The fold with the largest keys wins, compared in order and then by room;
        # remaining ties go to a seeded random fold.
        fold = np.lexsort((rng.random(k), room, *reversed(keys)))[-1]
        folds[image] = fold
        wanted[labels[image], fold] -= k
        room[fold] -= k

    while True:
        remaining = labels[folds < 0].sum(axis=0)
        if not remaining.any():
            break
        tag = int(np.argmin(np.where(remaining > 0, remaining, n + 1)))
        for image in rng.permutation(np.flatnonzero(labels[:, tag] & (folds < 0))):
            place(image, (wanted[tag], wanted[labels[image]].sum(axis=0)))
    for image in rng.permutation(np.flatnonzero(folds < 0)):
        place(image, ())
    return folds


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] == 0:
        raise ValueError(f"labels must be a non-empty (n_images, n_tags) array, not of shape {labels.shape}")
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be boolean (or 0/1)")
    return labels.astype(bool)


def _check_pair(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = _check_labels(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    if probabilities.shape != labels.shape:
        raise ValueError(f"probabilities of shape {probabilities.shape} do not match labels of shape {labels.shape}")
    if not ((probabilities >= 0) & (probabilities <= 1)).all():
        raise ValueError("probabilities must lie in [0, 1]")
    return probabilities, labels


def _check_folds(folds: np.ndarray, n: int) -> np.ndarray:
    folds = np.asarray(folds)
    if folds.shape != (n,):
        raise ValueError(f"folds of shape {folds.shape} do not match {n} images")
    if not np.issubdtype(folds.dtype, np.integer) or (folds < 0).any():
        raise ValueError("folds must be non-negative integer fold ids")
    return folds


def _check_threshold(threshold: float) -> float:
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must lie in [0, 1], not {threshold}")
    return float(threshold)
