"""Running a started iteration, as a background job does: quick training (cached embeddings, then a shrinkage-LDA
head) or advanced training (fine-tuning within the budget), then the frozen artifacts stored and the iteration
marked Completed, or Failed with the reason. Progress is written to the iteration as it goes."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from tagvision import backbone, learn, metrics
from tagvision.clock import SYSTEM, Clock
from tagvision.errors import StorageError, TrainingError
from tagvision.service.context import Context, Progress, get_iteration, get_project, no_progress
from tagvision.service.details import IterationDetails, iteration_view
from tagvision.service.training_checks import check_trainable
from tagvision.service.training_set import Evaluation, TrainingSet, read_training_set
from tagvision.service.views import IterationView
from tagvision.store import queries
from tagvision.store.models import Iteration, utcnow

EMBED_COMMIT = 64  # embeddings per transaction while caching


@dataclass(frozen=True)
class Trained:
    """What a training made, before it is stored: the head, its evaluation, the fine-tuned backbone (advanced
    training, when kept), how the evaluation was measured, and anything else to record in the details."""

    head: learn.LinearHead
    evaluation: Evaluation
    tuned_backbone: bytes | None
    measured_on: metrics.MeasuredOn
    extra: dict[str, Any]


class TrainingRun:
    """The part of :class:`tagvision.service.training.Training` that trains a started iteration."""

    ctx: Context

    def interrupted(self) -> list[tuple[str, str]]:
        """(project id, iteration id) of iterations left ``Training`` by a stopped process."""
        with self.ctx.db.session() as session:
            return [
                (i.project_id, i.id)
                for i in session.scalars(
                    select(Iteration).where(Iteration.status == "Training").order_by(Iteration.created)
                )
            ]

    def run(self, ref: str, iteration_id: str, progress: Progress = no_progress) -> IterationView:
        """Train a started iteration to Completed (or Failed, with the reason, and re-raise)."""
        try:
            return self._run(ref, iteration_id, progress)
        except Exception as exc:
            reason = exc.message if isinstance(exc, TrainingError | StorageError) else f"{type(exc).__name__}: {exc}"
            with self.ctx.db.session() as session:
                iteration = session.get(Iteration, iteration_id)
                if iteration is not None and iteration.status == "Training":  # not one another worker finished
                    iteration.status, iteration.error, iteration.last_modified = "Failed", reason, utcnow()
            raise

    def _run(self, ref: str, iteration_id: str, progress: Progress) -> IterationView:
        started = time.perf_counter()
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_id)
            if iteration.status != "Training":
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}, not waiting to train.",
                    code="BadRequestIterationValidationFailed",
                )
            details = IterationDetails.from_json(iteration.details)
            snapshot = read_training_set(session, project, details.selected_tags)
            domain, multilabel = iteration.domain, iteration.classification_type == "Multilabel"
            advanced = iteration.training_type == "Advanced"
            budget = details.budget_seconds or 0.0
        check_trainable(snapshot)
        if advanced:
            trained = self._fine_tune(domain, snapshot, multilabel, budget - (time.perf_counter() - started), progress)
        else:
            trained = self._quick(domain, snapshot, multilabel, started, progress)
        return self._finish(iteration_id, snapshot, started, trained)

    def _quick(
        self, domain: str, snapshot: TrainingSet, multilabel: bool, started: float, progress: Progress
    ) -> Trained:
        """Quick training: embed the images not cached yet, then fit the shrinkage-LDA head, cross-validated."""
        computed = self.cache_embeddings(domain, snapshot.hashes, progress)
        embedded = time.perf_counter()
        progress("fitting", 0, 1)
        with self.ctx.db.session() as session:
            plain, flipped = queries.load_embeddings(session, self.ctx.backbone_key(domain), snapshot.hashes)
        model = learn.QuickClassifier(multilabel=multilabel).fit(
            plain, flipped, snapshot.labels, progress=lambda done, total: progress("fitting", done, total)
        )
        evaluation = Evaluation(model.oof_proba_, snapshot.labels, model.folds_, np.array(snapshot.image_ids))
        folds = int(model.folds_.max()) + 1
        n = len(snapshot.image_ids)
        measured_on = metrics.MeasuredOn(metrics.Method.CROSS_VALIDATION, n, n, folds)
        extra = {
            "head": "shrinkage-lda",
            "shrinkage": model.shrinkage_,
            "folds": folds,
            "embeddingsComputed": computed,
            "seconds": {
                "embedding": round(embedded - started, 3),
                "fitting": round(time.perf_counter() - embedded, 3),
            },
        }
        return Trained(model.head_, evaluation, None, measured_on, extra)

    def _fine_tune(
        self, domain: str, snapshot: TrainingSet, multilabel: bool, budget: float, progress: Progress
    ) -> Trained:
        """Advanced training: fine-tune the backbone within ``budget`` seconds (tagvision.finetune)."""
        from tagvision import finetune

        spec = self.ctx.spec(domain)
        result = finetune.fine_tune(
            spec,
            self.ctx.settings.models_dir,
            [functools.partial(self.ctx.blobs.get, h) for h in snapshot.hashes],
            snapshot.labels,
            multilabel=multilabel,
            budget_seconds=max(budget, 1.0),
            progress=lambda stage, done, total, eta: progress(stage, done, total, eta=eta),
            backbones=backbone.no_larger_than(spec),
        )
        ev = result.evaluation
        evaluation = Evaluation(ev.probabilities, ev.labels, ev.folds, np.array(snapshot.image_ids)[ev.rows])
        extra = {"advanced": result.report.to_json()}
        return Trained(result.head, evaluation, result.backbone_onnx, result.measured_on, extra)

    def _finish(self, iteration_id: str, snapshot: TrainingSet, started: float, trained: Trained) -> IterationView:
        """Store the frozen artifacts (blobs before the row) and mark the iteration Completed."""
        head_key = self.ctx.blobs.put(trained.head.to_bytes())
        evaluation_key = self.ctx.blobs.put(trained.evaluation.to_bytes())
        backbone_key = self.ctx.blobs.put(trained.tuned_backbone) if trained.tuned_backbone else None
        with self.ctx.db.session() as session:
            iteration = session.get(Iteration, iteration_id)
            assert iteration is not None
            iteration.head_blob, iteration.evaluation_blob = head_key, evaluation_key
            iteration.backbone_blob = backbone_key
            details = IterationDetails.from_json(iteration.details)
            details.progress, details.tags, details.image_ids = None, list(snapshot.tags), list(snapshot.image_ids)
            details.tag_image_counts = [int(c) for c in snapshot.labels.sum(axis=0)]
            details.measured_on, details.extra = trained.measured_on, {**details.extra, **trained.extra}
            iteration.details = details.to_json()
            iteration.status, iteration.trained_at = "Completed", utcnow()
            iteration.last_modified = iteration.trained_at
            iteration.training_seconds = time.perf_counter() - started
            session.flush()
            return iteration_view(iteration)

    def recorder(self, iteration_id: str, every: float = 1.0, clock: Clock = SYSTEM) -> Progress:
        """A progress callback that keeps the iteration's ``progress`` (stage, done, total, and ``etaSeconds``
        when the training estimates its time left) up to date in the store, at most once per ``every``
        seconds, so the API and the portal can show it; a new stage, and each stage's last step, are always
        written."""
        last = [0.0]
        last_stage = [""]

        def record(stage: str, done: int, total: int, /, eta: float | None = None) -> None:
            now = clock.monotonic()
            if now - last[0] < every and done < total and stage == last_stage[0]:
                return
            last[0], last_stage[0] = now, stage
            with self.ctx.db.session() as session:
                iteration = session.get(Iteration, iteration_id)
                if iteration is not None and iteration.status == "Training":
                    step = {
                        "stage": stage,
                        "done": done,
                        "total": total,
                        "elapsedSeconds": round((utcnow() - _aware(iteration.created)).total_seconds(), 1),
                    }
                    if eta is not None:
                        step["etaSeconds"] = round(eta, 1)
                    details = IterationDetails.from_json(iteration.details)
                    details.progress = step
                    iteration.details = details.to_json()

        return record

    def cache_embeddings(
        self, domain: str, hashes: list[str], progress: Progress = no_progress, tuned: str | None = None
    ) -> int:
        """Compute and store the embeddings not cached yet (by the stock backbone, or the fine-tuned one
        in blob ``tuned``); returns how many were computed."""
        key = self.ctx.backbone_key(domain, tuned)
        with self.ctx.db.session() as session:
            cached = queries.cached_embedding_hashes(session, key, hashes)
        missing = [h for h in dict.fromkeys(hashes) if h not in cached]
        if not missing:
            return 0
        embedder = self.ctx.embedder(domain, tuned)
        done = 0
        pending: list[dict] = []
        progress("embedding images", 0, len(missing))
        for result in embedder.embed([functools.partial(self.ctx.blobs.get, h) for h in missing]):
            if result.error is not None:
                raise TrainingError(f"Image {missing[result.index]} can no longer be decoded: {result.error.message}")
            plain, flipped = result.embeddings()
            pending.append(
                {
                    "sha256": missing[result.index],
                    "backbone": key,
                    "plain": plain.astype("<f4").tobytes(),
                    "flipped": flipped.astype("<f4").tobytes(),
                }
            )
            done += 1
            if len(pending) == EMBED_COMMIT or done == len(missing):
                with self.ctx.db.session() as session:  # a concurrent job may have cached some: theirs stay
                    queries.add_embeddings(session, pending)
                pending = []
                progress("embedding images", done, len(missing))
        return done


def _aware(when: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)
