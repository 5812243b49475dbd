"""Use cases for training: iterations, quick training, cross-validated performance."""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass

import numpy as np

from tagvision import learn, metrics
from tagvision.errors import StorageError, TrainingError
from tagvision.service.context import Context, Progress, get_iteration, get_project, no_progress
from tagvision.service.views import IterationView, PerformanceView
from tagvision.store import queries
from tagvision.store.models import Embedding, Iteration, Project, utcnow

MIN_TAGS = 2
MIN_IMAGES_PER_TAG = 5
EMBED_COMMIT = 64  # embeddings per transaction while caching


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
        np.savez_compressed(buffer, probabilities=self.probabilities.astype(np.float32), labels=self.labels,
                            folds=self.folds, image_ids=self.image_ids.astype(str))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Evaluation:
        with np.load(io.BytesIO(data)) as a:
            return cls(a["probabilities"].astype(np.float64), a["labels"], a["folds"], a["image_ids"])


class Training:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ training

    def start(self, ref: str, *, force: bool = False) -> IterationView:
        """Check the project can be trained and create its next iteration (status Training)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            snapshot = _training_set(session, project)
            _check_trainable(snapshot)
            newest = queries.newest_completed_iteration(session, project.id)
            if (not force and newest is not None and newest.domain == project.domain
                    and newest.details.get("fingerprint") == snapshot.fingerprint):
                raise TrainingError("Nothing changed since the last iteration; add or re-tag images first "
                                    "(or force the training).", code="BadRequestTrainingNotNeeded")
            iteration = Iteration(project_id=project.id, name=_next_name(project),
                                  classification_type=project.classification_type, domain=project.domain,
                                  details={"fingerprint": snapshot.fingerprint})
            session.add(iteration)
            session.flush()
            return iteration_view(iteration)

    def run(self, ref: str, iteration_id: str, progress: Progress = no_progress) -> IterationView:
        """Train a started iteration to Completed (or Failed, with the reason, and re-raise)."""
        try:
            return self._run(ref, iteration_id, progress)
        except Exception as exc:
            reason = exc.message if isinstance(exc, TrainingError | StorageError) else f"{type(exc).__name__}: {exc}"
            with self.ctx.db.session() as session:
                iteration = session.get(Iteration, iteration_id)
                if iteration is not None:
                    iteration.status, iteration.error, iteration.last_modified = "Failed", reason, utcnow()
            raise

    def train(self, ref: str, *, force: bool = False, progress: Progress = no_progress) -> IterationView:
        """Quick training, start to finish: a new Completed iteration."""
        return self.run(ref, self.start(ref, force=force).id, progress)

    def _run(self, ref: str, iteration_id: str, progress: Progress) -> IterationView:
        started = time.perf_counter()
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_id)
            snapshot = _training_set(session, project)
            domain, multilabel = iteration.domain, iteration.classification_type == "Multilabel"
        _check_trainable(snapshot)
        computed = self.cache_embeddings(domain, snapshot.hashes, progress)
        embedded = time.perf_counter()

        progress("fitting", 0, 1)
        with self.ctx.db.session() as session:
            plain, flipped = queries.load_embeddings(session, self.ctx.backbone_key(domain), snapshot.hashes)
        model = learn.QuickClassifier(multilabel=multilabel).fit(plain, flipped, snapshot.labels)
        evaluation = Evaluation(model.oof_proba_, snapshot.labels, model.folds_, np.array(snapshot.image_ids))
        progress("fitting", 1, 1)
        fitted = time.perf_counter()

        head_key = self.ctx.blobs.put(model.head_.to_bytes())
        evaluation_key = self.ctx.blobs.put(evaluation.to_bytes())
        with self.ctx.db.session() as session:
            iteration = session.get(Iteration, iteration_id)
            assert iteration is not None
            iteration.head_blob, iteration.evaluation_blob = head_key, evaluation_key
            iteration.details = {
                **iteration.details,
                "tags": [list(t) for t in snapshot.tags],
                "imageCount": len(snapshot.image_ids),
                "head": "shrinkage-lda",
                "shrinkage": model.shrinkage_,
                "folds": int(model.folds_.max()) + 1,
                "metricsFrom": f"{int(model.folds_.max()) + 1}-fold cross-validation on the training images",
                "embeddingsComputed": computed,
                "seconds": {"embedding": round(embedded - started, 3), "fitting": round(fitted - embedded, 3)},
            }
            iteration.status, iteration.trained_at = "Completed", utcnow()
            iteration.last_modified = iteration.trained_at
            iteration.training_seconds = time.perf_counter() - started
            session.flush()
            return iteration_view(iteration)

    def cache_embeddings(self, domain: str, hashes: list[str], progress: Progress = no_progress) -> int:
        """Compute and store the embeddings not cached yet; returns how many were computed."""
        key = self.ctx.backbone_key(domain)
        with self.ctx.db.session() as session:
            cached = queries.cached_embedding_hashes(session, key, hashes)
        missing = [h for h in dict.fromkeys(hashes) if h not in cached]
        if not missing:
            return 0
        embedder = self.ctx.embedder(domain)
        done = 0
        pending: list[Embedding] = []
        progress("embedding images", 0, len(missing))
        for result in embedder.embed([lambda h=h: self.ctx.blobs.get(h) for h in missing]):
            if result.error is not None:
                raise TrainingError(f"Image {missing[result.index]} can no longer be decoded: {result.error.message}")
            pending.append(Embedding(sha256=missing[result.index], backbone=key,
                                     plain=result.plain.astype("<f4").tobytes(),
                                     flipped=result.flipped.astype("<f4").tobytes()))
            done += 1
            if len(pending) == EMBED_COMMIT or done == len(missing):
                with self.ctx.db.session() as session:
                    session.add_all(pending)
                pending = []
                progress("embedding images", done, len(missing))
        return done

    # ------------------------------------------------------------------ iterations

    def iterations(self, ref: str) -> list[IterationView]:
        with self.ctx.db.session() as session:
            return [iteration_view(i) for i in get_project(session, ref).iterations]

    def iteration(self, ref: str, iteration_ref: str | None = None) -> IterationView:
        with self.ctx.db.session() as session:
            return iteration_view(get_iteration(session, get_project(session, ref), iteration_ref))

    def delete_iteration(self, ref: str, iteration_ref: str) -> None:
        with self.ctx.db.session() as session:
            session.delete(get_iteration(session, get_project(session, ref), iteration_ref))

    def performance(self, ref: str, iteration_ref: str | None = None, threshold: float = 0.5) -> PerformanceView:
        """Cross-validated precision, recall and AP of an iteration at ``threshold``."""
        if not 0.0 <= threshold <= 1.0:
            raise TrainingError(f"The threshold must be between 0 and 1, not {threshold}.", code="BadRequest")
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.status != "Completed" or iteration.evaluation_blob is None:
                raise TrainingError(f"{iteration.name} is {iteration.status}; it has no performance figures.",
                                    code="BadRequestIterationIsNotTrained")
            key, tags, iteration_id = iteration.evaluation_blob, iteration.details["tags"], iteration.id
        evaluation = Evaluation.from_bytes(self.ctx.blobs.get(key))
        result = metrics.evaluate(evaluation.probabilities, evaluation.labels, evaluation.folds, threshold)
        return PerformanceView(iteration_id, threshold, result, [tuple(t) for t in tags], len(evaluation.labels))

    def evaluation(self, ref: str, iteration_ref: str | None = None) -> Evaluation:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            key = iteration.evaluation_blob
        if key is None:
            raise TrainingError("This iteration has no evaluation.", code="BadRequestIterationIsNotTrained")
        return Evaluation.from_bytes(self.ctx.blobs.get(key))


def iteration_view(iteration: Iteration) -> IterationView:
    details = iteration.details or {}
    return IterationView(iteration.id, iteration.name, iteration.status, iteration.project_id, iteration.domain,
                         iteration.classification_type, iteration.training_type, iteration.created,
                         iteration.last_modified, iteration.trained_at, iteration.error, iteration.training_seconds,
                         details.get("imageCount", 0), len(details.get("tags", [])))


def _next_name(project: Project) -> str:
    taken = {i.name for i in project.iterations}
    number = len(project.iterations) + 1
    while f"Iteration {number}" in taken:
        number += 1
    return f"Iteration {number}"


def _training_set(session, project: Project) -> TrainingSet:
    rows = queries.tagged_images(session, project.id)
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


def _check_trainable(snapshot: TrainingSet) -> None:
    if len(snapshot.tags) < MIN_TAGS:
        raise TrainingError(f"Training needs at least {MIN_TAGS} tags with images; "
                            f"this project has {len(snapshot.tags)}.", code="BadRequestTrainingValidationFailed")
    counts = snapshot.labels.sum(axis=0)
    short = [f"{name} ({int(c)})" for (_, name), c in zip(snapshot.tags, counts, strict=True)
             if c < MIN_IMAGES_PER_TAG]
    if short:
        raise TrainingError(f"Every tag needs at least {MIN_IMAGES_PER_TAG} images; too few: {', '.join(short)}.",
                            code="BadRequestTrainingValidationFailed")

