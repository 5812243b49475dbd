"""Choosing between the quick head and the fine-tuned network, on the same held-out images.

Figures are top-1 accuracy (multiclass) or mean average precision (multilabel), ties broken by
the log loss. The fine-tuned network's logits are calibrated by one temperature fitted on the
validation split: its raw probabilities on unseen images are far too sure (0 or 1 to many
decimals), and a temperature changes neither the order nor, so, accuracy and AP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagvision import learn, metrics

BOOTSTRAP_DRAWS = 200


@dataclass(frozen=True)
class Candidate:
    """A model that could be served, with its probabilities on the validation split and their figures."""

    name: str
    head: learn.LinearHead
    val_proba: np.ndarray
    figures: dict[str, Any]

    @property
    def score(self) -> tuple[float, float]:
        """Primary figure first, then minus the log loss; higher is better."""
        return self.figures["primary"], -self.figures["logLoss"]


def figures(proba: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict[str, Any]:
    """The primary figure (accuracy or mean AP) and the log loss of ``proba`` (n, T) against ``labels``."""
    eps = 1e-7
    if multilabel:
        ap = metrics.average_precision(proba, labels)
        primary = float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0
        p = np.clip(proba, eps, 1 - eps)
        loss = float(-(labels * np.log(p) + (~labels) * np.log(1 - p)).mean())
        return {"primary": round(primary, 6), "metric": "mean average precision", "logLoss": round(loss, 6)}
    target = labels.argmax(axis=1)
    accuracy = float((proba.argmax(axis=1) == target).mean())
    loss = float(-np.log(np.clip(proba[np.arange(len(target)), target], eps, 1)).mean())
    return {"primary": round(accuracy, 6), "metric": "top-1 accuracy", "logLoss": round(loss, 6)}


def temperature(logits: np.ndarray, labels: np.ndarray, multilabel: bool) -> float:
    """The factor on the logits (at most ~1.6) that minimises the log loss of ``labels``."""
    from scipy.optimize import minimize_scalar

    def loss(log_slope: float) -> float:
        return figures(learn.link(logits * math.exp(log_slope), multilabel), labels, multilabel)["logLoss"]

    return float(math.exp(minimize_scalar(loss, bounds=(-6.0, 0.5), method="bounded").x))


def joint_head(heads: list[learn.LinearHead], slope: float) -> learn.LinearHead:
    """One head on the features of several networks side by side: the mean of their logits, times ``slope``."""
    k = len(heads)
    weights = np.concatenate([h.weights for h in heads]) * (slope / k)
    bias = np.sum([h.bias for h in heads], axis=0) * (slope / k)
    return learn.LinearHead(weights.astype(np.float32), bias.astype(np.float32), heads[0].multilabel)


@dataclass(frozen=True)
class Verdict:
    """Whether the fine-tuned network is served, and the paired comparison behind it (when one was needed)."""

    tuned_wins: bool
    quick_lead: float | None = None
    standard_error: float | None = None

    def to_json(self) -> dict[str, float] | None:
        if self.quick_lead is None:
            return None
        return {"quickLead": round(self.quick_lead, 6), "standardError": round(self.standard_error or 0.0, 6)}


def choose(
    quick: Candidate, tuned: Candidate, labels: np.ndarray, multilabel: bool, refit: bool, seed: int = 0
) -> Verdict:
    """The fine-tuned candidate wins when it scores higher on the validation split. When a refit on every
    image follows, it also wins unless the quick head leads by more than one standard error of the paired
    difference (bootstrap over the validation images): within that the two cannot be told apart on this
    split, and the refit gains more from the held-out fifth than the quick head does (``bench/advanced.py``)."""
    if tuned.score > quick.score:
        return Verdict(True)
    if not refit:
        return Verdict(False)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(BOOTSTRAP_DRAWS):
        rows = rng.integers(0, len(labels), len(labels))
        differences.append(
            figures(quick.val_proba[rows], labels[rows], multilabel)["primary"]
            - figures(tuned.val_proba[rows], labels[rows], multilabel)["primary"]
        )
    lead = quick.figures["primary"] - tuned.figures["primary"]
    error = float(np.std(differences))
    return Verdict(lead <= error, lead, error)
