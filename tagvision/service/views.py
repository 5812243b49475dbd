"""Plain values the service hands to its interfaces, with their Custom Vision JSON shapes.

``to_json()`` gives the camelCase objects of the Custom Vision REST API (Project, Tag,
Image, Iteration, IterationPerformance, ImagePrediction) and of tagvision's extensions in
their style (Acquisition), so the CLI's ``--json`` and the HTTP API print the same thing.
Interfaces read the typed attributes; only the wire takes the JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tagvision import metrics
from tagvision.sources.base import ProviderUnavailable

CLASSIFICATION_TYPES = ("Multiclass", "Multilabel")
TAG_TYPES = ("Regular", "Negative", "GeneralProduct")


def iso_time(value: datetime | None) -> str | None:
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
    # An object-detection project brought over from Custom Vision: its domain. Not trainable here yet.
    detection_domain: str | None = None

    @property
    def trainable(self) -> bool:
        return self.detection_domain is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "settings": {
                "domainId": self.detection_domain or self.domain,
                "classificationType": self.classification_type,
                "targetExportPlatforms": [],
                "useNegativeSet": False,
                "detectionParameters": None,
                "imageProcessingSettings": None,
                "exportModelContainerUri": None,
                "notificationQueueUri": None,
            },
            "created": iso_time(self.created),
            "lastModified": iso_time(self.last_modified),
            "thumbnailUri": "",
            "drModeEnabled": False,
            "status": "Succeeded",
            "trainable": self.trainable,
        }


@dataclass(frozen=True)
class TagView:
    id: str
    name: str
    description: str
    type: str
    image_count: int
    information: dict[str, Any] = field(default_factory=dict)  # tagvision: what the tag knows (a JSON object)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "type": self.type,
            "imageCount": self.image_count,
            "information": self.information,
        }


@dataclass(frozen=True)
class ImageView:
    id: str
    created: datetime
    width: int
    height: int
    content_type: str
    sha256: str
    tags: list[tuple[str, str, datetime]]  # (tag id, tag name, when tagged)
    source: dict[str, Any]
    metadata: dict[str, str] = field(default_factory=dict)
    regions: list[dict[str, Any]] = field(default_factory=list)  # ImageRegion shapes, with tagName

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": iso_time(self.created),
            "width": self.width,
            "height": self.height,
            "resizedImageUri": None,
            "thumbnailUri": None,
            "originalImageUri": None,
            "tags": [{"tagId": tag_id, "tagName": name, "created": iso_time(when)} for tag_id, name, when in self.tags],
            "regions": self.regions or None,
            "metadata": self.metadata or None,
            "contentType": self.content_type,
            "sha256": self.sha256,
            "source": self.source,
        }


@dataclass(frozen=True)
class ImageCreateResult:
    """Outcome of adding one image: Custom Vision's ImageCreateResult."""

    source_url: str
    status: str  # OK, OKDuplicate, ErrorImageFormat, ErrorImageSize, ErrorSource, ...
    image_id: str | None = None
    message: str = ""
    image: ImageView | None = None

    @property
    def ok(self) -> bool:
        """The image is in the project (newly or already)."""
        return self.status in ("OK", "OKDuplicate")

    def to_json(self) -> dict[str, Any]:
        image = self.image.to_json() if self.image else ({"id": self.image_id} if self.image_id else None)
        return {"sourceUrl": self.source_url, "status": self.status, "image": image, "message": self.message}


@dataclass(frozen=True)
class ImageTagCreateSummary:
    """Outcome of tagging images: Custom Vision's ImageTagCreateSummary ((image id, tag id) pairs)."""

    created: list[tuple[str, str]]
    duplicated: list[tuple[str, str]]
    exceeded: list[tuple[str, str]]

    def to_json(self) -> dict[str, Any]:
        def entries(pairs: list[tuple[str, str]]) -> list[dict[str, str]] | None:
            return [{"imageId": i, "tagId": t} for i, t in pairs] or None

        return {
            "created": entries(self.created),
            "duplicated": entries(self.duplicated),
            "exceeded": entries(self.exceeded),
        }


@dataclass(frozen=True)
class ImageCreateSummary:
    results: list[ImageCreateResult]

    @property
    def is_batch_successful(self) -> bool:
        """Custom Vision's rule: every image newly created (a duplicate makes the batch unsuccessful)."""
        return all(r.status == "OK" for r in self.results)

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
    reserved_budget_hours: int = 0
    publish_name: str | None = None
    publish_resource_id: str | None = None
    progress: dict[str, Any] | None = None  # while training: stage, done, total, elapsedSeconds (, etaSeconds)
    metrics_from: str | None = None  # what the performance figures were computed on
    budget_seconds: float | None = None  # advanced training's time budget
    fine_tuned: bool = False  # served by its own fine-tuned backbone (advanced training that beat the quick head)
    backbone: str = ""  # the network serving it (e.g. efficientnet-lite0): the domain's, or the one fine-tuned
    measured_on: metrics.MeasuredOn | None = None  # None for iterations trained before it was recorded
    precision: str = "Float32"  # how predictions and scorings run it: Float32, or Int8 (the int8 export)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "status": self.status,
            "created": iso_time(self.created),
            "lastModified": iso_time(self.last_modified),
            "trainedAt": iso_time(self.trained_at),
            "projectId": self.project_id,
            "exportable": self.status == "Completed",
            "exportableTo": ["ONNX"] if self.status == "Completed" else [],
            "domainId": self.domain,
            "classificationType": self.classification_type,
            "trainingType": self.training_type,
            "reservedBudgetInHours": self.reserved_budget_hours,
            # Custom Vision's field is an integer; seconds are far more telling for quick training.
            "trainingTimeInMinutes": round((self.training_seconds or 0.0) / 60),
            "trainingTimeInSeconds": round(self.training_seconds or 0.0, 3),
            "publishName": self.publish_name or "",
            "originalPublishResourceId": self.publish_resource_id or "",
            "customBaseModelInfo": None,
            "trainingErrorDetails": self.error,
            "imageCount": self.image_count,
            "progress": self.progress,
            "metricsFrom": self.metrics_from,
            "measuredOn": self.measured_on.to_json() if self.measured_on else None,
            "budgetSeconds": self.budget_seconds,
            "fineTuned": self.fine_tuned,
            "backbone": self.backbone,
            "precision": self.precision,
        }


@dataclass(frozen=True)
class TagPerformanceView:
    """One tag's cross-validated figures at the threshold (Custom Vision's TagPerformance)."""

    id: str
    name: str
    figures: metrics.TagPerformance

    def to_json(self) -> dict[str, Any]:
        f = self.figures
        return {
            "id": self.id,
            "name": self.name,
            "precision": f.precision,
            "precisionStdDeviation": f.precision_std,
            "recall": f.recall,
            "recallStdDeviation": f.recall_std,
            "averagePrecision": f.average_precision,
            "imageCount": f.support,
        }


@dataclass(frozen=True)
class PerformanceView:
    """An iteration's cross-validated figures at one threshold, with the tag names."""

    iteration_id: str
    threshold: float
    performance: metrics.Performance
    tags: list[tuple[str, str]]  # (tag id, tag name), column order
    image_count: int
    measured_on: metrics.MeasuredOn | None = None

    @property
    def per_tag(self) -> list[TagPerformanceView]:
        """Each tag's figures with its id and name, in column order."""
        return [TagPerformanceView(*self.tags[t.index], t) for t in self.performance.per_tag]

    def to_json(self) -> dict[str, Any]:
        p = self.performance
        return {
            "perTagPerformance": [t.to_json() for t in self.per_tag],
            "precision": p.precision,
            "precisionStdDeviation": p.precision_std,
            "recall": p.recall,
            "recallStdDeviation": p.recall_std,
            "averagePrecision": p.average_precision,
            "measuredOn": self.measured_on.to_json() if self.measured_on else None,
        }


@dataclass(frozen=True)
class TagProbability:
    tag_id: str
    tag_name: str
    probability: float

    tag_type: str = "Regular"
    information: dict[str, Any] | None = None  # tagvision: the tag's information, when it is returned

    def to_json(self) -> dict[str, Any]:
        body = {
            "probability": self.probability,
            "tagId": self.tag_id,
            "tagName": self.tag_name,
            "boundingBox": None,
            "tagType": self.tag_type,
        }
        if self.information is not None:
            body["information"] = self.information
        return body


@dataclass(frozen=True)
class ImagePrediction:
    """Probabilities for one image, highest first; ``error`` when the image was refused."""

    source: str
    iteration_id: str
    predictions: list[TagProbability] = field(default_factory=list)
    error: str | None = None
    error_code: str | None = None
    decision: dict[str, Any] | None = None  # tagvision: the project's decision rules evaluated on it

    def to_json(self) -> dict[str, Any]:
        if self.error:
            return {"image": self.source, "code": self.error_code, "message": self.error}
        body: dict[str, Any] = {"image": self.source, "predictions": [p.to_json() for p in self.predictions]}
        if self.decision is not None:
            body["decision"] = self.decision
        return body


@dataclass(frozen=True)
class ImagePerformanceView:
    """A training image with its cross-validated probabilities (Custom Vision's ImagePerformance)."""

    image: ImageView
    predictions: list[TagProbability]

    def to_json(self) -> dict[str, Any]:
        image = self.image.to_json()
        return {
            "id": image["id"],
            "created": image["created"],
            "width": image["width"],
            "height": image["height"],
            "imageUri": None,
            "thumbnailUri": None,
            "tags": image["tags"],
            "regions": [],
            "predictions": [p.to_json() for p in self.predictions],
        }


@dataclass(frozen=True)
class PredictionView:
    """One classified image (Custom Vision's ImagePrediction; StoredImagePrediction when ``id`` is set)."""

    id: str  # a stored prediction's id; a fresh id that names nothing when not stored
    project_id: str
    iteration_id: str | None
    created: datetime
    predictions: list[TagProbability]
    domain: str = ""
    width: int = 0
    height: int = 0
    sha256: str = ""
    uncertainty: float | None = None
    source: str | None = None
    application: str | None = None
    # tagvision extensions: the decision rules' result, the caller's metadata, and whether it was stored
    decision: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    stored: bool = True

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "project": self.project_id,
            "iteration": self.iteration_id,
            "created": iso_time(self.created),
            "predictions": [p.to_json() for p in self.predictions],
        }
        if self.decision is not None:
            body["decision"] = self.decision
        if self.metadata:
            body["metadata"] = self.metadata
        return body

    def to_stored_json(self) -> dict[str, Any]:
        return {
            "resizedImageUri": None,
            "thumbnailUri": None,
            "originalImageUri": None,
            "domain": self.domain,
            **self.to_json(),
            "predictionUncertainty": self.uncertainty,
            "width": self.width,
            "height": self.height,
            "sourceUrl": self.source,
            "application": self.application,
        }


@dataclass(frozen=True)
class SuggestionView:
    """Suggested tags for a project image, not stored (Custom Vision's StoredSuggestedTagAndRegion)."""

    image: ImageView
    project_id: str
    iteration_id: str
    predictions: list[TagProbability]
    uncertainty: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.image.id,
            "project": self.project_id,
            "iteration": self.iteration_id,
            "created": iso_time(self.image.created),
            "predictions": [p.to_json() for p in self.predictions],
            "predictionUncertainty": self.uncertainty,
            "width": self.image.width,
            "height": self.image.height,
            "resizedImageUri": None,
            "thumbnailUri": None,
            "originalImageUri": None,
            "domain": None,
        }


@dataclass(frozen=True)
class ExportView:
    """An export of an iteration (Custom Vision's Export)."""

    id: str
    iteration_id: str
    platform: str
    flavor: str | None
    status: str  # Exporting | Done | Failed
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "status": self.status,
            "downloadUri": None,
            "flavor": self.flavor,
            "newerVersionAvailable": False,
            "error": self.error,
        }


@dataclass(frozen=True)
class TagProgress:
    """How far an acquisition got with one tag (the ``tags`` entries of its JSON)."""

    tag_id: str
    tag: str  # the tag's name
    wanted: int = 0  # images to add: the images asked per tag, less those acquired before (had_before)
    had_before: int = 0
    found: int = 0  # candidates the providers offered
    skipped: int = 0  # of those, seen by an earlier run
    downloaded: int = 0
    added: int = 0  # in review mode: waiting for the user
    duplicates: int = 0  # the same picture (or nearly) was already in the project
    refused: int = 0  # broken links, too small, not an image
    done: bool = False
    doubtful: int = 0  # set aside for review: they did not look like the tag
    small: int = 0  # added (or pending) although smaller than the backbone's input: scaled up
    reasons: dict[str, int] = field(default_factory=dict)  # refused candidates by reason code
    goal: int = 0  # what this run (in review: this page) fills the tag up to; ``wanted`` otherwise

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> TagProgress:
        return cls(
            state["tagId"],
            state["tag"],
            int(state.get("wanted", 0)),
            int(state.get("hadBefore", 0)),
            int(state.get("found", 0)),
            int(state.get("skipped", 0)),
            int(state.get("downloaded", 0)),
            int(state.get("added", 0)),
            int(state.get("duplicates", 0)),
            int(state.get("refused", 0)),
            bool(state.get("done", False)),
            int(state.get("doubtful", 0)),
            int(state.get("small", 0)),
            {str(k): int(v) for k, v in (state.get("reasons") or {}).items()},
            int(state.get("goal", state.get("wanted", 0))),
        )

    @property
    def page_limited(self) -> bool:
        """Review pages: this page stopped short of what the tag wants, and the next page can find more."""
        return self.goal < self.wanted


@dataclass(frozen=True)
class CandidateView:
    """One candidate an acquisition looked at, and what became of it (an item of an acquisition)."""

    id: str
    acquisition_id: str
    tag_id: str
    status: str  # Pending | Added | Duplicate | Refused | Rejected | Doubtful | Spare | Used | Retried
    source: dict[str, Any]
    message: str | None = None
    reason: str | None = None  # a code of tagvision.sources.reasons, where it was not added
    detail: dict[str, Any] = field(default_factory=dict)  # the reason's facts; "warning": {"code","message"}
    score: float | None = None  # how much it looked like its tag (0..1), where the tag could be scored
    image_id: str | None = None
    sha256: str | None = None
    created: datetime | None = None
    tag: str = ""  # the tag's name, where the reader joined it

    @property
    def warning(self) -> dict[str, str] | None:
        return self.detail.get("warning")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tagId": self.tag_id,
            "status": self.status,
            "source": self.source,
            "message": self.message,
            "reason": self.reason,
            "detail": self.detail,
            "score": self.score,
            "imageId": self.image_id,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class AcquisitionView:
    """Gathering images for tags from providers or a library: its request, progress per tag and candidates."""

    id: str
    project_id: str
    status: str  # Running | Completed | Failed | Cancelled
    review: bool
    request: dict[str, Any]
    progress: dict[str, Any]  # tag id -> its progress, as stored (TagProgress's JSON)
    error: str | None
    created: datetime
    last_modified: datetime
    items: list[dict[str, Any]] = field(default_factory=list)
    error_code: str | None = None  # the failure's stable code (not in the JSON, which has the message)

    @property
    def tags(self) -> list[TagProgress]:
        """Progress per tag, in the order asked."""
        return [TagProgress.from_json(state) for state in self._tag_states()]

    @property
    def provider_unreachable(self) -> bool:
        """It failed because a provider could not be reached at all: gathering from a library may work."""
        return self.error_code == ProviderUnavailable.code

    @property
    def item_counts(self) -> dict[str, int]:
        """How many of ``items`` are in each status (Pending, Added, Rejected, ...)."""
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item["status"]] = counts.get(item["status"], 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "projectId": self.project_id,
            "status": self.status,
            "review": self.review,
            "providers": self.request.get("providers", []),
            "perTag": self.request.get("perTag"),
            "tags": self._tag_states(),
            "error": self.error,
            "created": iso_time(self.created),
            "lastModified": iso_time(self.last_modified),
            "items": self.items,
        }

    def _tag_states(self) -> list[dict[str, Any]]:
        return [self.progress.get(t["id"], {"tagId": t["id"], "tag": t["name"]}) for t in self.request.get("tags", [])]
