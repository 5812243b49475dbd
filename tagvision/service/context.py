"""What every use case shares: settings, the database, the blob store and the backbones.

Backbones are loaded once per process and kept in a bounded cache keyed by what they are made of (the
stock network's file, or a fine-tuned network's blob); fine-tuned ones of deleted iterations are dropped by
:meth:`Context.sweep`, with their local copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from tagvision import backbone, domains, images
from tagvision.config import Settings
from tagvision.errors import NotFound
from tagvision.service.caches import LRU
from tagvision.store import queries
from tagvision.store.blobs import Blobs, open_blobs
from tagvision.store.database import Database
from tagvision.store.models import Iteration, Project, Tag

EMBEDDER_CACHE = 6  # networks loaded at once (ONNX sessions, tens of MB each): the stock ones and recent fine-tuned


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
    blobs: Blobs
    # Keyed by the fine-tuned network's blob key, or "stock:" + the stock network's file name.
    _embedders: LRU[str, backbone.Embedder] = field(default_factory=lambda: LRU(EMBEDDER_CACHE))
    _tuned_specs: LRU[str, backbone.BackboneSpec | None] = field(default_factory=lambda: LRU(256))

    @classmethod
    def open(cls, settings: Settings) -> Context:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        images.DECODES.configure(settings.decode_memory_mb << 20)  # one budget per process
        return cls(settings, Database(settings.database_url, upgrade=settings.migrate_at_open), open_blobs(settings))

    def embedder(self, domain: str, tuned: str | None = None) -> backbone.Embedder:
        """The backbone serving ``domain`` (or the fine-tuned one in blob ``tuned``), loaded once per process."""
        spec = self.spec(domain, tuned)
        key = tuned or f"stock:{self.backbone_key(domain)}"
        return self._embedders.get_or_make(
            key,
            lambda: backbone.Embedder(
                spec, self.settings.models_dir, onnx_file=self.blobs.local_path(tuned) if tuned else None
            ),
        )

    def spec(self, domain: str, tuned: str | None = None) -> backbone.BackboneSpec:
        """How the network serving ``domain`` (or the fine-tuned one in blob ``tuned``) wants its input: a
        fine-tuned network names its backbone, which may be smaller than the domain's (advanced training of a
        General project may fine-tune Lite0)."""
        if tuned:
            found = self._tuned_specs.get_or_make(tuned, lambda: backbone.spec_of(self.blobs.local_path(tuned)))
            if found is not None:
                return found
        return backbone.spec_for(domains.backbone_for(domain))

    def sweep(self) -> list[str]:
        """Drop the fine-tuned networks (loaded, and copied from shared storage) no iteration uses any more;
        returns their blob keys."""
        cached = [key for key in self._embedders.cached() + self._tuned_specs.cached() if not key.startswith("stock:")]
        if not cached:
            return []
        with self.db.session() as session:
            used = set(session.scalars(select(Iteration.backbone_blob).where(Iteration.backbone_blob.in_(cached))))
        gone = [key for key in dict.fromkeys(cached) if key not in used]
        keep = set(self._embedders.cached()) - set(gone)
        self._embedders.keep_only(keep)
        self._tuned_specs.keep_only(set(self._tuned_specs.cached()) - set(gone))
        for key in gone:
            self.blobs.forget_local(key)
        return gone

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
