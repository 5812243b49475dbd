"""SQLAlchemy 2 models: the schema of a tagvision store.

Ids are UUID strings, as Custom Vision's are. Times are timezone-aware UTC. The schema is
created and upgraded only by the Alembic migrations in ``migrations/``; keep the two in
step (``tests/test_store.py`` checks that they agree).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    classification_type: Mapped[str] = mapped_column(String(16))  # Multiclass | Multilabel
    domain: Mapped[str] = mapped_column(String(64))
    # An object-detection project brought over from Custom Vision keeps its domain here (``domain`` then
    # holds the classification domain of the same family); it is not trainable until detection is.
    detection_domain: Mapped[str | None] = mapped_column(String(64), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow)
    # Decision rules over the predicted tags' information (tagvision.knowledge.rules), as saved (validated).
    rules: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # How long stored predictions are kept: None follows the server's setting, -1 forever, 0 never stored, N days.
    retention_days: Mapped[int | None] = mapped_column(Integer, default=None)

    tags: Mapped[list[Tag]] = relationship(
        back_populates="project", cascade="all, delete-orphan", passive_deletes=True, order_by="Tag.created"
    )
    iterations: Mapped[list[Iteration]] = relationship(
        back_populates="project", cascade="all, delete-orphan", passive_deletes=True, order_by="Iteration.created"
    )


class Tag(Base):
    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(16), default="Regular")
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # Free-form knowledge about the tag (product, crop, damage...): a JSON object, validated by
    # tagvision.knowledge.information. Deferred: predictions read it through a per-project cache, not per request.
    information: Mapped[dict[str, Any]] = mapped_column(default=dict, deferred=True)
    # The SHA-256 of its canonical JSON (a TagInformation row), None when empty: what stored predictions point at.
    information_sha: Mapped[str | None] = mapped_column(String(64), default=None)

    project: Mapped[Project] = relationship(back_populates="tags")


class TagInformation(Base):
    """Every version a tag's information has had, by content: stored predictions keep pointing at the version
    they were made with, so a later catalogue edit does not rewrite the record of what was predicted."""

    __tablename__ = "tag_information"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    information: Mapped[dict[str, Any]] = mapped_column()
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("project_id", "sha256"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # also the blob key
    format: Mapped[str] = mapped_column(String(8))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    # Where the image came from: original file name, URL, landing page, licence, creator...
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Custom Vision image metadata: string keys to string values, set by clients.
    image_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    # Object-detection regions (Custom Vision's ImageRegion: regionId, tagId, left, top, width, height as
    # fractions of the image), kept for when detection is trained; None: no regions.
    regions: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)

    tags: Mapped[list[ImageTag]] = relationship(cascade="all, delete-orphan", passive_deletes=True, lazy="selectin")


class ImageTag(Base):
    __tablename__ = "image_tags"

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    tag_id: Mapped[str] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class Embedding(Base):
    """Cached backbone output for one image content; shared across projects."""

    __tablename__ = "embeddings"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    backbone: Mapped[str] = mapped_column(String(64), primary_key=True)  # model name + weights digest
    plain: Mapped[bytes] = mapped_column(LargeBinary)  # float32 little-endian, (dim,)
    flipped: Mapped[bytes] = mapped_column(LargeBinary)


class Iteration(Base):
    """One training run. Frozen once ``status`` is Completed: its artifacts never change."""

    __tablename__ = "iterations"
    __table_args__ = (
        UniqueConstraint("project_id", "name"),
        Index("ix_iterations_publish_name", "project_id", "publish_name", unique=True),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="Training")  # Training | Completed | Failed
    training_type: Mapped[str] = mapped_column(String(16), default="Regular")  # Regular | Advanced
    classification_type: Mapped[str] = mapped_column(String(16))
    domain: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow)
    trained_at: Mapped[datetime | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Blob keys of the frozen artifacts: the head and the cross-validation evaluation.
    head_blob: Mapped[str | None] = mapped_column(String(64), default=None)
    evaluation_blob: Mapped[str | None] = mapped_column(String(64), default=None)
    # Advanced training: the fine-tuned backbone (ONNX, pooled features); None: the stock one.
    backbone_blob: Mapped[str | None] = mapped_column(String(64), default=None)
    # The tags (id, name) in head column order, counts, chosen settings and timings.
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    training_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    reserved_budget_hours: Mapped[int] = mapped_column(Integer, default=0)
    # Published iterations answer the Prediction API under this name (unique per project).
    publish_name: Mapped[str | None] = mapped_column(String(255), default=None)
    publish_resource_id: Mapped[str | None] = mapped_column(Text, default=None)
    # How predictions and scorings run it: None or "Float32", or "Int8" (the int8 export). A setting, not an artifact.
    precision: Mapped[str | None] = mapped_column(String(16), default=None)

    project: Mapped[Project] = relationship(back_populates="iterations")


class Prediction(Base):
    """A stored prediction: the image (a blob), when, by which iteration, and its probabilities.

    ``uncertainty`` (0 = sure, 1 = a coin toss) orders the review queue, most uncertain first.
    """

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_project_created", "project_id", "created"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    iteration_id: Mapped[str | None] = mapped_column(ForeignKey("iterations.id", ondelete="SET NULL"), index=True)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    domain: Mapped[str] = mapped_column(String(64))
    application: Mapped[str | None] = mapped_column(String(255), default=None)
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the URL or file name, when known
    uncertainty: Mapped[float] = mapped_column(Float)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    # The project's decision rules evaluated on this prediction, with their inputs, as they were then.
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    tags: Mapped[list[PredictionTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    caller_metadata: Mapped[list[PredictionMetadata]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin", order_by="PredictionMetadata.key"
    )


class PredictionTag(Base):
    __tablename__ = "prediction_tags"

    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True)
    tag_id: Mapped[str] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"), primary_key=True, index=True)
    probability: Mapped[float] = mapped_column(Float)
    # The tag's information when the prediction was made (a TagInformation row), None when it had none.
    information_sha: Mapped[str | None] = mapped_column(String(64), default=None)


class PredictionMetadata(Base):
    """A caller's key/value (claim number, field id, store id...) sent with a stored prediction; searchable."""

    __tablename__ = "prediction_metadata"
    __table_args__ = (Index("ix_prediction_metadata_key_value", "key", "value"),)

    prediction_id: Mapped[str] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Export(Base):
    """A model file made from a completed iteration (e.g. ONNX), built in the background."""

    __tablename__ = "exports"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    iteration_id: Mapped[str] = mapped_column(ForeignKey("iterations.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    flavor: Mapped[str | None] = mapped_column(String(32), default=None)
    status: Mapped[str] = mapped_column(String(16), default="Exporting")  # Exporting | Done | Failed
    blob: Mapped[str | None] = mapped_column(String(64), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow)


class Acquisition(Base):
    """Gathering images for tags from image-search providers or a local library, run in the background.

    ``request``: tags, images wanted per tag, providers, options. ``progress``: per tag counts.
    """

    __tablename__ = "acquisitions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="Running")  # Running | Completed | Failed | Cancelled
    review: Mapped[bool] = mapped_column(default=False)  # True: candidates wait for the user to pick them
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)  # the failure's stable code
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow)


class AcquisitionItem(Base):
    """One candidate an acquisition looked at: what became of it, and where it came from."""

    __tablename__ = "acquisition_items"
    __table_args__ = (Index("ix_acquisition_items_key", "project_id", "key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    acquisition_id: Mapped[str] = mapped_column(ForeignKey("acquisitions.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    tag_id: Mapped[str] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(512))  # provider:provider_id
    # Pending (downloaded, waiting for review) | Added | Duplicate | Refused | Rejected (by the user) |
    # Doubtful (set aside: it did not look like its tag) | Spare | Used | Retried (looked at again by a later run)
    status: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    source: Mapped[dict[str, Any]] = mapped_column(default=dict)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str | None] = mapped_column(String(32), default=None)  # a stable code (sources.refusals)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)  # the reason's facts, a warning
    score: Mapped[float | None] = mapped_column(Float, default=None)  # how much it looks like its tag (0..1)
    image_id: Mapped[str | None] = mapped_column(String(36), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)


class RevokedSession(Base):
    """A portal session ended by logging out: its cookie stays refused until it would have expired anyway."""

    __tablename__ = "revoked_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the session's own token
    expires: Mapped[datetime] = mapped_column(index=True)


class ProjectMigration(Base):
    """A project brought over from a Custom Vision Training API (Azure's or another tagvision's).

    One row per source project and endpoint, written with the project it created, so a re-run finds its
    project again and only adds what is missing. ``tag_map``: source tag id -> tag id here. ``report``: the
    last run's summary.
    """

    __tablename__ = "project_migrations"
    __table_args__ = (UniqueConstraint("endpoint", "source_project_id"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    endpoint: Mapped[str] = mapped_column(String(512))
    source_project_id: Mapped[str] = mapped_column(String(64))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    tag_map: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="Running")  # Running | Completed | Failed
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow)


class Scoring(Base):
    """A batch scoring job (a server-side folder or a list of URLs) run in the background.

    ``request``: the source (``folder`` or ``urls``), ``top``. ``progress``: done, total, scored, errors per code.
    The rows accumulate in a JSON Lines file under the data directory, which a resumed job appends to.
    """

    __tablename__ = "scorings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    iteration_id: Mapped[str | None] = mapped_column(ForeignKey("iterations.id", ondelete="SET NULL"))
    precision: Mapped[str] = mapped_column(String(16), default="Float32")
    status: Mapped[str] = mapped_column(String(16), default="Running")  # Running | Completed | Failed | Cancelled
    request: Mapped[dict[str, Any]] = mapped_column(default=dict)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    last_modified: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """Background work (a training, an export, an acquisition) for any worker to claim.

    ``target_id`` names the row the work is for (the iteration, export or acquisition), which keeps its own
    status for clients. A worker claims a Queued job, or a Running one whose lease has lapsed (its worker was
    killed), by writing its name, a new ``attempt`` and ``lease_expires`` (UNIX seconds by the worker's clock),
    and renews the lease while it works; a renewal that finds another worker's name has lost the job.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("kind", "target_id"),
        Index("ix_jobs_status_created", "status", "created"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(16))  # train | export | acquire
    target_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16), default="Queued")  # Queued | Running | Done | Failed
    worker: Mapped[str | None] = mapped_column(String(128), default=None)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    started: Mapped[float | None] = mapped_column(Float, default=None)  # when the current attempt was claimed
    finished: Mapped[float | None] = mapped_column(Float, default=None)


class ApiKey(Base):
    """The Training-Key and the Prediction-Key, shared by every replica (``tagvision.service.keys``)."""

    __tablename__ = "api_keys"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # training | prediction
    value: Mapped[str] = mapped_column(String(64))
    updated: Mapped[datetime] = mapped_column(default=utcnow)
