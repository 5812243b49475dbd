"""What a training request must pass before an iteration is made: the request itself (type, budget), the project
(classification, not busy, room for one more iteration), the training set (enough tags and images), an advanced
budget large enough for the images, and something changed since the last iteration.

Each check raises :class:`TrainingError` (or :class:`InvalidInput`) with Custom Vision's code, so the API, the
portal and the CLI refuse alike.
"""

from __future__ import annotations

import math

from tagvision import backbone
from tagvision.errors import InvalidInput, TrainingError
from tagvision.service.details import IterationDetails
from tagvision.service.training_set import TrainingSet
from tagvision.store.models import Iteration, Project

MAX_ITERATIONS = 20  # as Custom Vision; delete old iterations to train more
DEFAULT_BUDGET_MINUTES = 5  # advanced training without a budget
MIN_BUDGET_SECONDS = 30
MIN_TAGS = 2
MIN_IMAGES_PER_TAG = 5
TRAINING_TYPES = ("Regular", "Advanced")


def budget_seconds(training_type: str, reserved_budget_hours: int, budget_minutes: float | None) -> float:
    """Check the training type and budget asked for; -> the budget in seconds (``budget_minutes`` first, else
    ``reserved_budget_hours``, else the default)."""
    if training_type not in TRAINING_TYPES:
        raise TrainingError(
            f"Unknown training type {training_type!r}; use Regular (quick) or Advanced.", code="BadRequestInvalid"
        )
    if reserved_budget_hours < 0 or (budget_minutes is not None and budget_minutes <= 0):
        raise InvalidInput("A training budget must be positive.", code="BadRequestInvalid")
    seconds = (
        budget_minutes * 60
        if budget_minutes is not None
        else reserved_budget_hours * 3600 or DEFAULT_BUDGET_MINUTES * 60
    )
    if training_type == "Advanced" and seconds < MIN_BUDGET_SECONDS:
        raise TrainingError(
            f"Advanced training needs a budget of at least {MIN_BUDGET_SECONDS} seconds.",
            code="BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
        )
    return seconds


def check_project(project: Project) -> None:
    """Refuse an object-detection project, one already training, and one with no room for another iteration."""
    if project.detection_domain is not None:
        raise TrainingError(
            f"Project {project.name!r} is an object-detection project (brought over with its images, tags "
            "and regions); tagvision does not train object detection yet.",
            code="BadRequestNotSupported",
        )
    if any(i.status == "Training" for i in project.iterations):
        raise TrainingError(
            f"Project {project.name!r} is already training; wait for that iteration.",
            code="BadRequestTrainingAlreadyInProgress",
        )
    if len(project.iterations) >= MAX_ITERATIONS:
        raise TrainingError(
            f"A project keeps at most {MAX_ITERATIONS} iterations; delete an old one first.",
            code="BadRequestExceedIterationPerProjectLimit",
        )


def check_trainable(snapshot: TrainingSet) -> None:
    """Refuse a training set with fewer than ``MIN_TAGS`` tags, or a tag with fewer than ``MIN_IMAGES_PER_TAG``
    images."""
    if len(snapshot.tags) < MIN_TAGS:
        raise TrainingError(
            f"Training needs at least {MIN_TAGS} tags with images; this project has {len(snapshot.tags)}.",
            code="BadRequestTrainingValidationFailed",
        )
    counts = snapshot.labels.sum(axis=0)
    short = [f"{name} ({int(c)})" for (_, name), c in zip(snapshot.tags, counts, strict=True) if c < MIN_IMAGES_PER_TAG]
    if short:
        raise TrainingError(
            f"Every tag needs at least {MIN_IMAGES_PER_TAG} images; too few: {', '.join(short)}.",
            code="BadRequestTrainingValidationFailed",
        )


def check_budget(spec: backbone.BackboneSpec, images: int, budget_seconds: float) -> None:
    """Refuse, before starting, an advanced budget too small to fine-tune anything on this many images."""
    from tagvision.finetune import Recipe, planner

    backbones = [b.model_name for b in backbone.no_larger_than(spec)]
    need = planner.minimum_seconds(images, backbones, Recipe())
    if budget_seconds < need:
        raise TrainingError(
            f"Advanced training of {images} images needs a budget of at least about {math.ceil(need / 60)} "
            f"minutes here (reading and embedding them, then one round of fine-tuning); this one is "
            f"{budget_seconds / 60:g}. Give it more time, or use quick training.",
            code="BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
        )


def check_changed(newest: Iteration | None, project: Project, training_type: str, fingerprint: str) -> None:
    """Refuse a training that would repeat ``newest`` (the newest completed iteration): same domain,
    classification type, training type and training set."""
    if (
        newest is not None
        and newest.domain == project.domain
        and newest.classification_type == project.classification_type
        and newest.training_type == training_type
        and IterationDetails.from_json(newest.details).fingerprint == fingerprint
    ):
        raise TrainingError(
            "Nothing changed since the last iteration; add or re-tag images first (or force the training).",
            code="BadRequestTrainingNotNeeded",
        )
