"""What an iteration keeps beside its artifacts (the ``Iteration.details`` JSON column), typed, and the
:class:`IterationView` the interfaces get from an iteration's columns and details.

Known fields are attributes; anything else an iteration recorded (the quick head's shrinkage and
folds, seconds per stage, the advanced-training report) is kept in ``extra`` and written back as is,
so the stored JSON keeps its shape and older iterations still read.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tagvision import backbone, domains, metrics
from tagvision.service.views import IterationView
from tagvision.store.models import Iteration

_KEYS = {
    "fingerprint": "fingerprint",
    "selected_tags": "selectedTags",
    "budget_seconds": "budgetSeconds",
    "progress": "progress",
    "tags": "tags",
    "tag_image_counts": "tagImageCounts",
    "image_ids": "imageIds",
    "metrics_from": "metricsFrom",
}


@dataclass
class IterationDetails:
    fingerprint: str = ""  # of the training set: changes whenever an image, a tag or a tagging changes
    selected_tags: list[str] | None = None  # tag ids trained on (None: every tag with images)
    budget_seconds: float | None = None  # advanced training's budget
    progress: dict[str, Any] | None = None  # while training: stage, done, total, elapsedSeconds (, etaSeconds)
    tags: list[tuple[str, str]] = field(default_factory=list)  # (id, name) in the head's column order
    tag_image_counts: list[int] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)  # the images trained on
    measured_on: metrics.MeasuredOn | None = None  # None for iterations trained before it was recorded
    metrics_from: str | None = None  # the sentence older iterations recorded instead
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def image_count(self) -> int:
        return len(self.image_ids)

    @property
    def fine_tuned_backbone(self) -> str | None:
        """The backbone advanced training fine-tuned, if it did."""
        return (self.extra.get("advanced") or {}).get("fineTunedBackbone")

    def describe_measurement(self) -> str | None:
        return self.measured_on.sentence() if self.measured_on else self.metrics_from

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> IterationDetails:
        data = dict(data or {})
        known = {name: data.pop(key) for name, key in _KEYS.items() if key in data}
        known["tags"] = [(str(i), str(n)) for i, n in known.get("tags", [])]
        if "measuredOn" in data:
            known["measured_on"] = metrics.MeasuredOn.from_json(data.pop("measuredOn"))
        data.pop("imageCount", None)  # derived from imageIds
        return cls(**known, extra=data)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _KEYS and value not in (None, [], ""):
                out[_KEYS[f.name]] = [list(t) for t in value] if f.name == "tags" else value
        if self.image_ids:
            out["imageCount"] = self.image_count
        if self.measured_on is not None:
            out["measuredOn"] = self.measured_on.to_json()
            out["metricsFrom"] = self.measured_on.sentence()
        return {**self.extra, **out}


def iteration_view(iteration: Iteration) -> IterationView:
    """An iteration as the interfaces see it: its columns, with its counts, progress and measurement from its
    details."""
    details = IterationDetails.from_json(iteration.details)
    return IterationView(
        iteration.id,
        iteration.name,
        iteration.status,
        iteration.project_id,
        iteration.domain,
        iteration.classification_type,
        iteration.training_type,
        iteration.created,
        iteration.last_modified,
        iteration.trained_at,
        iteration.error,
        iteration.training_seconds,
        details.image_count,
        len(details.tags),
        iteration.reserved_budget_hours,
        iteration.publish_name,
        iteration.publish_resource_id,
        details.progress if iteration.status == "Training" else None,
        details.describe_measurement(),
        details.budget_seconds,
        iteration.backbone_blob is not None,
        _served_backbone(iteration, details),
        details.measured_on,
        iteration.precision or "Float32",
    )


def _served_backbone(iteration: Iteration, details: IterationDetails) -> str:
    """The network serving an iteration: the one fine-tuned (which may be smaller than the domain's), else the
    domain's."""
    if iteration.backbone_blob is not None and details.fine_tuned_backbone:
        return details.fine_tuned_backbone
    return backbone.spec_for(domains.backbone_for(iteration.domain)).model_name
