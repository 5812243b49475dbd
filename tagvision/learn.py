"""Classifier heads on embeddings: quick training.

The quick head is shrinkage linear discriminant analysis (LDA) on power-normalised,
centred embeddings (``x ** 0.75``: the features are non-negative averages of ReLU6
activations, and damping the large ones helps most with few images per tag; measured on
k-shot draws of both datasets in ``bench/accuracy.py``), calibrated into probabilities:

* multiclass: pooled within-class covariance, softmax over the discriminant scores with
  one temperature fitted on out-of-fold scores;
* multilabel: one binary discriminant per tag on the shared covariance (for two classes
  the total covariance gives the same direction as the within-class one, so one
  eigendecomposition serves every tag), each tag calibrated with its own sigmoid (Platt).

Why LDA and not logistic regression: it is closed-form. One eigendecomposition per fold
prices every shrinkage value at once, so choosing the regularisation by k-fold
cross-validation costs about as much as a single logistic-regression fit, and on
EfficientNet-Lite features it is as accurate (see ``bench/accuracy.py``).

Every image contributes two rows, its embedding and its mirror's (flip augmentation);
scores are averaged over the two at prediction time (test-time flip).

Shapes: ``n`` images, ``d`` embedding dimensions, ``T`` tags.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit, log_softmax, softmax
from threadpoolctl import threadpool_limits

from tagvision import metrics

SHRINKAGES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 0.95, 0.98, 0.995)
POWER = 0.75
BLAS_THREADS = 1  # during a fit (see QuickClassifier.fit)


def features(embeddings: np.ndarray) -> np.ndarray:
    """Power-normalised embeddings, (n, d) -> (n, d) float32."""
    return np.power(np.maximum(embeddings, 0.0), POWER, dtype=np.float32)


def link(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Logits (n, T) -> probabilities: element-wise sigmoid (multilabel) or softmax over tags, in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    return expit(logits) if multilabel else softmax(logits, axis=1)


@dataclass
class LinearHead:
    """A frozen linear classifier on the test-time-flip features of an image.

    ``logits = mean(features(plain), features(flipped)) @ weights + bias``, then a softmax
    (multiclass) or element-wise sigmoid (multilabel). ``weights`` (d, T) float32 and
    ``bias`` (T,) already include the centring and the calibration, so the head is one
    power, one mean, one affine map and a link: easy to run anywhere and to export.
    """

    weights: np.ndarray
    bias: np.ndarray
    multilabel: bool

    def decision_function(self, plain: np.ndarray, flipped: np.ndarray) -> np.ndarray:
        """Embeddings (n, d) of the images and of their mirrors -> logits (n, T)."""
        return (features(plain) + features(flipped)) / 2 @ self.weights + self.bias

    def predict_proba(self, plain: np.ndarray, flipped: np.ndarray) -> np.ndarray:
        """Embeddings (n, d) of the images and of their mirrors -> probabilities (n, T)."""
        return link(self.decision_function(plain, flipped), self.multilabel)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, weights=self.weights, bias=self.bias, multilabel=np.array(self.multilabel))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearHead:
        with np.load(io.BytesIO(data)) as arrays:
            return cls(arrays["weights"], arrays["bias"], bool(arrays["multilabel"]))


@dataclass
class QuickClassifier:
    """Shrinkage-LDA head with its regularisation chosen by stratified k-fold CV.

    Parameters are all in the constructor (scikit-learn style); ``fit`` sets the
    attributes ending in ``_``:

    - ``head_``: the :class:`LinearHead` fitted on every image;
    - ``oof_proba_``: (n, T) out-of-fold probabilities, for honest metrics;
    - ``folds_``: (n,) fold id of each image;
    - ``shrinkage_``: the chosen shrinkage;
    - ``cv_log_loss_``: {shrinkage: mean out-of-fold log loss}.
    """

    multilabel: bool = False
    shrinkages: tuple[float, ...] = SHRINKAGES
    k_max: int = 5
    seed: int = 0
    head_: LinearHead = field(init=False)
    oof_proba_: np.ndarray = field(init=False)
    folds_: np.ndarray = field(init=False)
    shrinkage_: float = field(init=False)
    cv_log_loss_: dict[float, float] = field(init=False)

    def fit(
        self,
        plain: np.ndarray,
        flipped: np.ndarray,
        labels: np.ndarray,
        progress: Callable[[int, int], None] | None = None,
    ) -> QuickClassifier:
        """Fit on embeddings (n, d) of the images and of their mirrors, labels (n, T) bool.

        ``progress(done, total)``, when given, is called as the steps finish: per fold, its discriminants
        and each shrinkage's scores; then each shrinkage's calibration; then the final head.

        BLAS runs on one thread here: OpenBLAS's threads spin while they wait, and beside other work (a
        server embedding or predicting, another training) a fit took 23-38 s instead of 6.6 s on one
        thread (bench/NOTES.md); on an idle machine one thread costs little.
        """
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            return self._fit(plain, flipped, labels, progress)

    def _fit(
        self, plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray, progress: Callable[[int, int], None] | None
    ) -> QuickClassifier:
        labels = np.asarray(labels, dtype=bool)
        _check_inputs(plain, flipped, labels, self.multilabel)
        plain, flipped = features(plain), features(flipped)
        mean = np.concatenate([plain, flipped]).mean(axis=0, dtype=np.float64)  # label-free
        rows = np.concatenate([plain - mean, flipped - mean]).astype(np.float32)
        row_labels = np.concatenate([labels, labels]).astype(np.float64)

        self.folds_ = metrics.stratified_folds(labels, k_max=self.k_max, seed=self.seed)
        row_folds = np.concatenate([self.folds_, self.folds_])
        k = int(self.folds_.max()) + 1
        stats = [_Moments.of(rows[row_folds == f], row_labels[row_folds == f]) for f in range(k)]
        total = sum(stats[1:], stats[0])

        steps, done = k * (len(self.shrinkages) + 1) + len(self.shrinkages) + 1, 0

        def step() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, steps)

        if progress is not None:
            progress(0, steps)
        oof_scores = {s: np.zeros(labels.shape) for s in self.shrinkages}
        for f in range(k):
            held = row_folds == f
            discriminants = _Discriminants(total - stats[f], self.multilabel)
            step()
            for s in self.shrinkages:
                w, b = discriminants.at(s)
                scores = rows[held] @ w + b
                oof_scores[s][self.folds_ == f] = (scores[: held.sum() // 2] + scores[held.sum() // 2 :]) / 2
                step()

        fits = {}
        for s in self.shrinkages:
            fits[s] = _Calibration.fit(oof_scores[s], labels, self.multilabel)
            step()
        self.cv_log_loss_ = {s: fits[s].log_loss for s in self.shrinkages}
        self.shrinkage_ = min(self.shrinkages, key=lambda s: (self.cv_log_loss_[s], s))
        calibration = fits[self.shrinkage_]
        self.oof_proba_ = calibration.probabilities(oof_scores[self.shrinkage_])

        w, b = _Discriminants(total, self.multilabel).at(self.shrinkage_)
        # Fold the centring and the calibration into one affine map.
        weights = w * calibration.slope
        bias = (b - mean @ w) * calibration.slope + calibration.offset
        self.head_ = LinearHead(weights.astype(np.float32), bias.astype(np.float32), self.multilabel)
        step()
        return self

    def predict_proba(self, plain: np.ndarray, flipped: np.ndarray) -> np.ndarray:
        """Embeddings (n, d) of the images and of their mirrors -> probabilities (n, T)."""
        return self.head_.predict_proba(plain, flipped)


def _check_inputs(plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray, multilabel: bool) -> None:
    if plain.shape != flipped.shape or plain.ndim != 2 or len(plain) != len(labels):
        raise ValueError(f"embeddings {plain.shape} / {flipped.shape} do not match labels {labels.shape}")
    if labels.ndim != 2 or labels.shape[1] < 2:
        raise ValueError("labels must be (n, T) with at least two tags")
    if not multilabel and not (labels.sum(axis=1) == 1).all():
        raise ValueError("multiclass labels need exactly one tag per image")


@dataclass
class _Moments:
    """Sufficient statistics of a set of rows: count, per-tag counts and sums, Gram matrix."""

    count: float
    tag_counts: np.ndarray  # (T,)
    tag_sums: np.ndarray  # (T, d)
    sums: np.ndarray  # (d,)
    gram: np.ndarray  # (d, d)

    @classmethod
    def of(cls, rows: np.ndarray, labels: np.ndarray) -> _Moments:
        return cls(
            float(len(rows)),
            labels.sum(axis=0),
            labels.T @ rows.astype(np.float64),
            rows.sum(axis=0, dtype=np.float64),
            (rows.T @ rows).astype(np.float64),
        )

    def __add__(self, other: _Moments) -> _Moments:
        return _Moments(
            self.count + other.count,
            self.tag_counts + other.tag_counts,
            self.tag_sums + other.tag_sums,
            self.sums + other.sums,
            self.gram + other.gram,
        )

    def __sub__(self, other: _Moments) -> _Moments:
        return _Moments(
            self.count - other.count,
            self.tag_counts - other.tag_counts,
            self.tag_sums - other.tag_sums,
            self.sums - other.sums,
            self.gram - other.gram,
        )


class _Discriminants:
    """LDA directions for one training set, for any shrinkage, from one eigendecomposition.

    The covariance is shrunk towards a multiple of the identity:
    ``(1 - s) * cov + s * mean(eigenvalues) * I``.
    """

    def __init__(self, moments: _Moments, multilabel: bool) -> None:
        n, counts = moments.count, np.maximum(moments.tag_counts, 1.0)
        self.multilabel = multilabel
        if multilabel:
            # Binary discriminant per tag: positive mean against negative mean.
            grand = moments.sums / n
            cov = (moments.gram - n * np.outer(grand, grand)) / max(n - 1, 1)
            positive = moments.tag_sums / counts[:, None]
            negative = (moments.sums - moments.tag_sums) / np.maximum(n - moments.tag_counts, 1.0)[:, None]
            self.directions = (positive - negative).T  # (d, T)
            self.centres = (positive + negative) / 2  # (T, d)
            prior = np.clip(moments.tag_counts / n, 1e-3, 1 - 1e-3)
            self.prior_logit = np.log(prior / (1 - prior))
        else:
            means = moments.tag_sums / counts[:, None]  # (T, d)
            within = moments.gram - (means.T * counts) @ means
            cov = within / max(n - len(counts), 1)
            self.directions = means.T
            self.centres = means
            self.prior_logit = np.log(counts / counts.sum())
        self.eigenvalues, self.eigenvectors = np.linalg.eigh(cov)
        self.eigenvalues = np.maximum(self.eigenvalues, 0.0)
        self.projected = self.eigenvectors.T @ self.directions  # (d, T)

    def at(self, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights (d, T) and bias (T,) of the discriminant scores at ``shrinkage``."""
        spectrum = (1 - shrinkage) * self.eigenvalues + shrinkage * self.eigenvalues.mean()
        weights = self.eigenvectors @ (self.projected / spectrum[:, None])
        if self.multilabel:
            bias = -np.einsum("td,dt->t", self.centres, weights) + self.prior_logit
        else:
            bias = -0.5 * np.einsum("td,dt->t", self.centres, weights) + self.prior_logit
        return weights.astype(np.float32), bias


@dataclass(frozen=True)
class _Calibration:
    """``logits = slope * scores + offset``; fitted by minimising log loss."""

    slope: np.ndarray  # (T,) for multilabel, scalar-broadcast (1,) for multiclass
    offset: np.ndarray
    multilabel: bool
    log_loss: float

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, multilabel: bool) -> _Calibration:
        if multilabel:
            return cls._fit_sigmoids(scores, labels)
        target = labels.argmax(axis=1)

        def loss(log_temperature: float) -> float:
            logp = log_softmax(scores * np.exp(log_temperature), axis=1)
            return float(-logp[np.arange(len(target)), target].mean())

        best = minimize_scalar(loss, bounds=(-8.0, 4.0), method="bounded")
        return cls(np.array([np.exp(best.x)]), np.zeros(1), False, float(best.fun))

    @classmethod
    def _fit_sigmoids(cls, scores: np.ndarray, labels: np.ndarray) -> _Calibration:
        slopes, offsets, losses = [], [], []
        for t in range(labels.shape[1]):
            s, y = scores[:, t], labels[:, t].astype(np.float64)

            def loss(p: np.ndarray, s: np.ndarray = s, y: np.ndarray = y) -> tuple[float, np.ndarray]:
                z = p[0] * s + p[1]
                value = -(y * log_expit(z) + (1 - y) * log_expit(-z)).mean()
                g = expit(z) - y
                return float(value), np.array([(g * s).mean(), g.mean()])

            best = minimize(
                loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-4, None), (None, None)]
            )
            slopes.append(best.x[0])
            offsets.append(best.x[1])
            losses.append(best.fun)
        return cls(np.array(slopes), np.array(offsets), True, float(np.mean(losses)))

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return link(scores * self.slope + self.offset, self.multilabel)
