"""What every use case shares: settings, the database, the blob store and the backbones."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from tagvision import backbone, domains, images
from tagvision.config import Settings
from tagvision.errors import NotFound
from tagvision.store import queries
from tagvision.store.blobs import BlobStore
from tagvision.store.database import Database
from tagvision.store.models import Iteration, Project, Tag


class Progress(Protocol):
    """How long work reports where it is: its stage, done of total, and (where the work can tell, as advanced
    training does) ``eta``, the estimated seconds left for the whole job."""

    def __call__(self, stage: str, done: int, total: int, /, eta: float | None = None) -> None: ...


def no_progress(_stage: str, _done: int, _total: int, /, eta: float | None = None) -> None:
    return None


@dataclass
class Context:
    settings: Settings
    db: Database
    blobs: BlobStore
    _embedders: dict[str, backbone.Embedder] = field(default_factory=dict)
    _tuned_specs: dict[str, backbone.BackboneSpec | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, settings: Settings) -> Context:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        images.DECODES.configure(settings.decode_memory_mb << 20)  # one budget per process
        return cls(settings, Database(settings.database_url), BlobStore(settings.blob_root))

    def embedder(self, domain: str, tuned: str | None = None) -> backbone.Embedder:
        """The backbone serving ``domain`` (or the fine-tuned one in blob ``tuned``), loaded once per process."""
        key = self.backbone_key(domain, tuned)
        spec = self.spec(domain, tuned)
        with self._lock:
            if key not in self._embedders:
                self._embedders[key] = backbone.Embedder(
                    spec, self.settings.models_dir, onnx_file=self.blobs.path(tuned) if tuned else None
                )
            return self._embedders[key]

    def spec(self, domain: str, tuned: str | None = None) -> backbone.BackboneSpec:
        """How the network serving ``domain`` (or the fine-tuned one in blob ``tuned``) wants its input: a
        fine-tuned network names its backbone, which may be smaller than the domain's (advanced training of a
        General project may fine-tune Lite0)."""
        if tuned:
            with self._lock:
                if tuned not in self._tuned_specs:
                    self._tuned_specs[tuned] = backbone.spec_of(self.blobs.path(tuned))
                found = self._tuned_specs[tuned]
            if found is not None:
                return found
        return backbone.spec_for(domains.backbone_for(domain))

    def backbone_key(self, domain: str, tuned: str | None = None) -> str:
        """Names cached embeddings: the exported model file's stem (model name + weights digest), or
        ``tuned-<digest>`` for a fine-tuned backbone."""
        if tuned:
            return f"tuned-{tuned[:24]}"
        return backbone.onnx_path(self.spec(domain), self.settings.models_dir).stem

    def close(self) -> None:
        self.db.close()


def get_project(session: Session, ref: str) -> Project:
    project = queries.project_by_ref(session, ref)
    if project is None:
        raise NotFound(f"No project named or with id {ref!r}.", code="NotFoundProject")
    return project


def get_tag(session: Session, project: Project, ref: str) -> Tag:
    tag = queries.tag_by_ref(session, project.id, ref)
    if tag is None:
        known = ", ".join(t.name for t in project.tags) or "none yet"
        raise NotFound(f"Project {project.name!r} has no tag {ref!r} (tags: {known}).", code="NotFoundTag")
    return tag


def get_iteration(session: Session, project: Project, ref: str | None) -> Iteration:
    """The named iteration, or the newest completed one when ``ref`` is None."""
    if ref is None:
        iteration = queries.newest_completed_iteration(session, project.id)
        if iteration is None:
            raise NotFound(
                f"Project {project.name!r} has no trained iteration yet; train it first.", code="NotFoundIteration"
            )
        return iteration
    iteration = queries.iteration_by_ref(session, project.id, ref)
    if iteration is None:
        raise NotFound(f"Project {project.name!r} has no iteration {ref!r}.", code="NotFoundIteration")
    return iteration
