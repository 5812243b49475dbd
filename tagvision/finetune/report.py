"""What advanced training returns: the served model, its held-out evaluation, and an account of the run.

The account (:class:`Report`) is typed here; ``to_json()`` gives the form stored on the iteration
(``details.advanced``) and read by ``bench/advanced.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tagvision import backbone, learn, metrics
from tagvision.finetune import loop
from tagvision.finetune.choice import Verdict
from tagvision.finetune.recipe import Recipe

FIRST_RUN = "the first run"
FIRST_RUN_AND_REFIT = "the first run and its refit on every image, logits averaged"


@dataclass(frozen=True)
class Evaluated:
    """Probabilities of images the scoring model did not learn from: (m, T), their labels (m, T) bool, their
    rows in the input, and each one's fold (all 0 for a held-out split)."""

    probabilities: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    folds: np.ndarray


@dataclass
class Tuning:
    """One backbone's fine-tuning: the first schedule on the training part, and the refit when there was one."""

    backbone: str
    recipe: Recipe
    frozen: str  # which blocks kept their pretrained weights
    first: loop.Log
    temperature: float = 1.0
    refit: loop.Log | None = None

    @property
    def served(self) -> str:
        return FIRST_RUN_AND_REFIT if self.refit is not None else FIRST_RUN

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.to_json(),
            "frozenBlocks": self.frozen,
            "augmentation": "random resized crop + flip + colour jitter, fresh every step",
            **self.first.to_json(),
            "temperatureSlope": round(self.temperature, 4),
            "refit": self.refit.to_json() if self.refit is not None else None,
            "served": self.served,
        }


@dataclass
class Report:
    """What was tried, measured and chosen."""

    backbone: str  # the project's backbone (its stock features give the quick candidate)
    budget_seconds: float
    threads: int
    stock_images_per_second: dict[str, float] = field(default_factory=dict)
    split: dict[str, int] = field(default_factory=dict)
    backbone_choice: list[str] = field(default_factory=list)
    tuning: Tuning | None = None
    skipped: str | None = None  # why fine-tuning did not run
    candidates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # name, validation figures
    chosen: str = "quick"
    verdict: Verdict | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    measured_on: metrics.MeasuredOn | None = None

    @property
    def fine_tuned_backbone(self) -> str | None:
        return self.tuning.backbone if self.tuning is not None else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "backbone": self.backbone,
            "budgetSeconds": round(self.budget_seconds, 3),
            "threads": self.threads,
            "stockImagesPerSecond": self.stock_images_per_second,
            "split": self.split,
            "candidates": [{"name": name, "validation": found} for name, found in self.candidates],
            "chosen": self.chosen,
            "seconds": self.seconds,
        }
        if self.backbone_choice:
            out["backboneChoice"] = self.backbone_choice
        if self.tuning is not None:
            out["fineTunedBackbone"] = self.tuning.backbone
            out["fineTuning"] = self.tuning.to_json()
        if self.skipped is not None:
            out["fineTuning"] = {**out.get("fineTuning", {}), "skipped": self.skipped}
        if self.verdict is not None and self.verdict.to_json() is not None:
            out["choice"] = self.verdict.to_json()
        if self.measured_on is not None:
            out["measuredOn"] = self.measured_on.to_json()
            out["metricsFrom"] = self.measured_on.sentence()
        return out


@dataclass(frozen=True)
class FineTuneResult:
    """What advanced training produces.

    - ``backbone_onnx``: the fine-tuned pooled-feature network with the stock backbone ONNX's input and an
      output of (n, 1280), or (n, 2560) for the first run and its refit side by side; ``None`` when
      fine-tuning did not beat the quick head (or did not fit the budget);
    - ``head``: a :class:`~tagvision.learn.LinearHead` on those embeddings (the stock network's when
      ``backbone_onnx`` is None), with test-time flip;
    - ``evaluation``: the held-out validation images for a fine-tuned result, the cross-validated
      out-of-fold probabilities of every image for a quick one;
    - ``spec``: the backbone the served network comes from, whose preprocessing it takes (it may be smaller
      than the project's; the ONNX file names it too).
    """

    backbone_onnx: bytes | None
    head: learn.LinearHead
    evaluation: Evaluated
    report: Report
    spec: backbone.BackboneSpec

    @property
    def measured_on(self) -> metrics.MeasuredOn:
        assert self.report.measured_on is not None
        return self.report.measured_on
