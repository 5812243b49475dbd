"""Plain values the service hands to its interfaces, with their Custom Vision JSON shapes.

``to_json()`` gives the camelCase objects of the Custom Vision REST API (Project, Tag,
Image, Iteration, IterationPerformance, ImagePrediction), so the CLI's ``--json`` and the
HTTP API print the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tagvision import metrics

CLASSIFICATION_TYPES = ("Multiclass", "Multilabel")


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class ProjectView:
    id: str
    name: str
    description: str
    classification_type: str
    domain: str
    created: datetime
    last_modified: datetime
    image_count: int = 0
    tag_count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "settings": {"domainId": self.domain, "classificationType": self.classification_type,
                         "targetExportPlatforms": []},
            "created": _time(self.created),
            "lastModified": _time(self.last_modified),
            "thumbnailUri": None,
            "drModeEnabled": False,
            "status": "Succeeded",
        }


@dataclass(frozen=True)
class TagView:
    id: str
    name: str
    description: str
    type: str
    image_count: int

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description,
                "type": self.type, "imageCount": self.image_count}


@dataclass(frozen=True)
class ImageView:
    id: str
    created: datetime
    width: int
    height: int
    content_type: str
    sha256: str
    tags: list[tuple[str, str]]  # (tag id, tag name)
    source: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": _time(self.created),
            "width": self.width,
            "height": self.height,
            "contentType": self.content_type,
            "sha256": self.sha256,
            "tags": [{"tagId": tag_id, "tagName": name} for tag_id, name in self.tags],
            "source": self.source,
        }


@dataclass(frozen=True)
class ImageCreateResult:
    """Outcome of adding one image: Custom Vision's ImageCreateResult."""

    source_url: str
    status: str  # OK, OKDuplicate, ErrorImageFormat, ErrorImageSize, ErrorSource, ...
    image_id: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("OK", "OKDuplicate")

    def to_json(self) -> dict[str, Any]:
        return {"sourceUrl": self.source_url, "status": self.status,
                "image": {"id": self.image_id} if self.image_id else None, "message": self.message}


@dataclass(frozen=True)
class ImageCreateSummary:
    results: list[ImageCreateResult]

    @property
    def is_batch_successful(self) -> bool:
        return all(r.ok for r in self.results)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"isBatchSuccessful": self.is_batch_successful, "images": [r.to_json() for r in self.results]}


@dataclass(frozen=True)
class IterationView:
    id: str
    name: str
    status: str
    project_id: str
    domain: str
    classification_type: str
    training_type: str
    created: datetime
    last_modified: datetime
    trained_at: datetime | None
    error: str | None
    training_seconds: float | None
    image_count: int
    tag_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "created": _time(self.created),
            "lastModified": _time(self.last_modified),
            "trainedAt": _time(self.trained_at),
            "projectId": self.project_id,
            "exportable": self.status == "Completed",
            "exportableTo": ["ONNX"] if self.status == "Completed" else [],
            "domainId": self.domain,
            "classificationType": self.classification_type,
            "trainingType": self.training_type,
            "reservedBudgetInHours": 0,
            "trainingTimeInMinutes": round((self.training_seconds or 0.0) / 60, 4),
            "publishName": None,
            "originalPublishResourceId": None,
            "trainingErrorDetails": self.error,
        }


@dataclass(frozen=True)
class PerformanceView:
    """An iteration's cross-validated figures at one threshold, with the tag names."""

    iteration_id: str
    threshold: float
    performance: metrics.Performance
    tags: list[tuple[str, str]]  # (tag id, tag name), column order
    image_count: int

    def to_json(self) -> dict[str, Any]:
        p = self.performance
        return {
            "perTagPerformance": [
                {"id": self.tags[t.index][0], "name": self.tags[t.index][1],
                 "precision": t.precision, "precisionStdDeviation": t.precision_std,
                 "recall": t.recall, "recallStdDeviation": t.recall_std,
                 "averagePrecision": t.average_precision, "imageCount": t.support}
                for t in p.per_tag
            ],
            "precision": p.precision,
            "precisionStdDeviation": p.precision_std,
            "recall": p.recall,
            "recallStdDeviation": p.recall_std,
            "averagePrecision": p.average_precision,
        }


@dataclass(frozen=True)
class TagProbability:
    tag_id: str
    tag_name: str
    probability: float

    def to_json(self) -> dict[str, Any]:
        return {"tagId": self.tag_id, "tagName": self.tag_name, "probability": self.probability}


@dataclass(frozen=True)
class ImagePrediction:
    """Probabilities for one image, highest first; ``error`` when the image was refused."""

    source: str
    iteration_id: str
    predictions: list[TagProbability] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error:
            return {"image": self.source, "code": self.error_code, "message": self.error}
        return {"image": self.source, "predictions": [p.to_json() for p in self.predictions]}
