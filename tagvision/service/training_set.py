"""What an iteration is trained on (its training set, read in one transaction, and its fingerprint) and what it
is judged by (the out-of-fold probabilities kept as its evaluation)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from tagvision.store import queries
from tagvision.store.models import Project


@dataclass(frozen=True)
class TrainingSet:
    """What an iteration is trained on, read in one transaction."""

    image_ids: list[str]
    hashes: list[str]
    tags: list[tuple[str, str]]  # (id, name), the head's column order
    labels: np.ndarray  # (n, T) bool

    @property
    def fingerprint(self) -> str:
        """Changes whenever an image, a tag or a tagging changes."""
        digest = hashlib.sha256()
        for image_id, row in zip(self.image_ids, self.labels, strict=True):
            digest.update(image_id.encode())
            digest.update(np.packbits(row).tobytes())
        for tag_id, name in self.tags:
            digest.update(f"{tag_id}={name}".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Evaluation:
    """Out-of-fold probabilities of an iteration: enough to recompute any threshold."""

    probabilities: np.ndarray  # (n, T)
    labels: np.ndarray  # (n, T) bool
    folds: np.ndarray  # (n,)
    image_ids: np.ndarray  # (n,) str

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            probabilities=self.probabilities.astype(np.float32),
            labels=self.labels,
            folds=self.folds,
            image_ids=self.image_ids.astype(str),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Evaluation:
        with np.load(io.BytesIO(data)) as a:
            return cls(a["probabilities"].astype(np.float64), a["labels"], a["folds"], a["image_ids"])


def read_training_set(session: Session, project: Project, selected: list[str] | None = None) -> TrainingSet:
    """The tagged images and their labels; with ``selected`` tag ids, only those tags take part."""
    rows = queries.tagged_images(session, project.id)
    if selected is not None:
        rows = [r for r in rows if r[2] in selected]
    tags = [(t.id, t.name) for t in project.tags]
    used = {tag_id for _, _, tag_id in rows}
    tags = [t for t in tags if t[0] in used]  # tags without images take no part
    column = {tag_id: j for j, (tag_id, _) in enumerate(tags)}
    order: dict[str, int] = {}
    hashes: list[str] = []
    for image_id, sha, _ in rows:
        if image_id not in order:
            order[image_id] = len(order)
            hashes.append(sha)
    labels = np.zeros((len(order), len(tags)), dtype=bool)
    for image_id, _, tag_id in rows:
        labels[order[image_id], column[tag_id]] = True
    return TrainingSet(list(order), hashes, tags, labels)


def training_fingerprint(session: Session, project: Project, selected: list[str] | None = None) -> str:
    """The fingerprint a training of the project as it stands would record (selected tag ids, or all)."""
    return read_training_set(session, project, selected).fingerprint
