"""Use cases for training: iterations, quick training, cross-validated performance."""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass
from datetime import UTC

import numpy as np
from sqlalchemy import select

from tagvision import backbone, domains, learn, metrics
from tagvision.clock import SYSTEM, Clock
from tagvision.errors import Conflict, InvalidInput, StorageError, TrainingError
from tagvision.service import images as images_service
from tagvision.service.context import Context, Progress, get_iteration, get_project, get_tag, no_progress
from tagvision.service.details import IterationDetails
from tagvision.service.projects import clean_name
from tagvision.service.views import ImagePerformanceView, IterationView, PerformanceView, TagProbability
from tagvision.store import queries
from tagvision.store.models import Image, Iteration, Project, utcnow

MAX_ITERATIONS = 20  # as Custom Vision; delete old iterations to train more
DEFAULT_BUDGET_MINUTES = 5  # advanced training without a budget
MIN_BUDGET_SECONDS = 30
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


class Training:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ training

    def start(
        self,
        ref: str,
        *,
        force: bool = False,
        training_type: str = "Regular",
        selected_tags: list[str] | None = None,
        reserved_budget_hours: int = 0,
        budget_minutes: float | None = None,
    ) -> IterationView:
        """Check the project can be trained and create its next iteration (status Training).

        ``selected_tags`` (ids or names) trains on those tags only. Refused while another
        iteration of the project is training, and when nothing changed since the newest
        completed iteration (unless ``force``).
        """
        if training_type not in ("Regular", "Advanced"):
            raise TrainingError(
                f"Unknown training type {training_type!r}; use Regular (quick) or Advanced.", code="BadRequestInvalid"
            )
        if reserved_budget_hours < 0 or (budget_minutes is not None and budget_minutes <= 0):
            raise InvalidInput("A training budget must be positive.", code="BadRequestInvalid")
        budget_seconds = (
            budget_minutes * 60
            if budget_minutes is not None
            else reserved_budget_hours * 3600 or DEFAULT_BUDGET_MINUTES * 60
        )
        if training_type == "Advanced" and budget_seconds < MIN_BUDGET_SECONDS:
            raise TrainingError(
                f"Advanced training needs a budget of at least {MIN_BUDGET_SECONDS} seconds.",
                code="BadRequestReservedBudgetInHoursNotEnoughForAdvancedTraining",
            )
        busy = TrainingError(
            "Another training of this project started first.", code="BadRequestTrainingAlreadyInProgress"
        )
        with self.ctx.db.session(not_unique=busy) as session:
            project = get_project(session, ref)
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
            selected = sorted({get_tag(session, project, t).id for t in selected_tags}) if selected_tags else None
            snapshot = _training_set(session, project, selected)
            _check_trainable(snapshot)
            if training_type == "Advanced":
                _check_budget(self.ctx.spec(project.domain), len(snapshot.image_ids), budget_seconds)
            newest = queries.newest_completed_iteration(session, project.id)
            if (
                not force
                and newest is not None
                and newest.domain == project.domain
                and newest.classification_type == project.classification_type
                and newest.training_type == training_type
                and IterationDetails.from_json(newest.details).fingerprint == snapshot.fingerprint
            ):
                raise TrainingError(
                    "Nothing changed since the last iteration; add or re-tag images first (or force the training).",
                    code="BadRequestTrainingNotNeeded",
                )
            iteration = Iteration(
                project_id=project.id,
                name=_next_name(project),
                classification_type=project.classification_type,
                domain=project.domain,
                reserved_budget_hours=reserved_budget_hours,
                training_type=training_type,
                details=IterationDetails(  # tags and images now, so a training iteration shows its counts
                    snapshot.fingerprint,
                    selected,
                    budget_seconds if training_type == "Advanced" else None,
                    tags=list(snapshot.tags),
                    image_ids=list(snapshot.image_ids),
                ).to_json(),
            )
            session.add(iteration)
            session.flush()
            return iteration_view(iteration)

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

    def train(self, ref: str, *, force: bool = False, progress: Progress = no_progress, **options) -> IterationView:
        """Training start to finish (quick, or ``training_type="Advanced"`` within ``budget_minutes``)."""
        return self.run(ref, self.start(ref, force=force, **options).id, progress)

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
            snapshot = _training_set(session, project, details.selected_tags)
            domain, multilabel = iteration.domain, iteration.classification_type == "Multilabel"
            advanced = iteration.training_type == "Advanced"
            budget = details.budget_seconds or 0.0
        _check_trainable(snapshot)
        if advanced:
            return self._finish(
                iteration_id,
                snapshot,
                started,
                *self._fine_tune(domain, snapshot, multilabel, budget - (time.perf_counter() - started), progress),
            )
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
        return self._finish(iteration_id, snapshot, started, model.head_, evaluation, None, measured_on, extra)

    def _fine_tune(
        self, domain: str, snapshot: TrainingSet, multilabel: bool, budget: float, progress: Progress
    ) -> tuple[learn.LinearHead, Evaluation, bytes | None, metrics.MeasuredOn, dict]:
        """Advanced training: fine-tune the backbone within ``budget`` seconds (tagvision.finetune)."""
        from tagvision import finetune

        spec = self.ctx.spec(domain)
        result = finetune.fine_tune(
            spec,
            self.ctx.settings.models_dir,
            [lambda h=h: self.ctx.blobs.get(h) for h in snapshot.hashes],
            snapshot.labels,
            multilabel=multilabel,
            budget_seconds=max(budget, 1.0),
            progress=lambda stage, done, total, eta: progress(stage, done, total, eta=eta),
            backbones=backbone.no_larger_than(spec),
        )
        ev = result.evaluation
        evaluation = Evaluation(ev.probabilities, ev.labels, ev.folds, np.array(snapshot.image_ids)[ev.rows])
        return result.head, evaluation, result.backbone_onnx, result.measured_on, {"advanced": result.report.to_json()}

    def _finish(
        self,
        iteration_id: str,
        snapshot: TrainingSet,
        started: float,
        head: learn.LinearHead,
        evaluation: Evaluation,
        tuned_backbone: bytes | None,
        measured_on: metrics.MeasuredOn,
        extra: dict,
    ) -> IterationView:
        """Store the frozen artifacts (blobs before the row) and mark the iteration Completed."""
        head_key = self.ctx.blobs.put(head.to_bytes())
        evaluation_key = self.ctx.blobs.put(evaluation.to_bytes())
        backbone_key = self.ctx.blobs.put(tuned_backbone) if tuned_backbone else None
        with self.ctx.db.session() as session:
            iteration = session.get(Iteration, iteration_id)
            assert iteration is not None
            iteration.head_blob, iteration.evaluation_blob = head_key, evaluation_key
            iteration.backbone_blob = backbone_key
            details = IterationDetails.from_json(iteration.details)
            details.progress, details.tags, details.image_ids = None, list(snapshot.tags), list(snapshot.image_ids)
            details.tag_image_counts = [int(c) for c in snapshot.labels.sum(axis=0)]
            details.measured_on, details.extra = measured_on, {**details.extra, **extra}
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
        for result in embedder.embed([lambda h=h: self.ctx.blobs.get(h) for h in missing]):
            if result.error is not None:
                raise TrainingError(f"Image {missing[result.index]} can no longer be decoded: {result.error.message}")
            pending.append(
                {
                    "sha256": missing[result.index],
                    "backbone": key,
                    "plain": result.plain.astype("<f4").tobytes(),
                    "flipped": result.flipped.astype("<f4").tobytes(),
                }
            )
            done += 1
            if len(pending) == EMBED_COMMIT or done == len(missing):
                with self.ctx.db.session() as session:  # a concurrent job may have cached some: theirs stay
                    queries.add_embeddings(session, pending)
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
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.publish_name:
                raise InvalidInput(
                    f"{iteration.name} is published as {iteration.publish_name!r}; unpublish it first.",
                    code="BadRequestIterationIsPublished",
                )
            if iteration.status == "Training":
                raise TrainingError(
                    f"{iteration.name} is training; delete it when it has finished.",
                    code="BadRequestTrainingAlreadyInProgress",
                )
            session.delete(iteration)

    def rename_iteration(self, ref: str, iteration_ref: str, name: str) -> IterationView:
        name = clean_name(name, "iteration")
        taken = Conflict(f"Another iteration is named {name!r}.", code="BadRequestIterationNameNotUnique")
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_ref)
            if any(i.name == name and i.id != iteration.id for i in project.iterations):
                raise Conflict(f"Another iteration is named {name!r}.", code="BadRequestIterationNameNotUnique")
            iteration.name, iteration.last_modified = name, utcnow()
            session.flush()
            return iteration_view(iteration)

    def publish(
        self, ref: str, iteration_ref: str, publish_name: str, resource_id: str = "", overwrite: bool = False
    ) -> IterationView:
        """Make a completed iteration answer the Prediction API as ``publish_name``."""
        try:
            publish_name = clean_name(publish_name, "publish")
        except InvalidInput as exc:
            raise InvalidInput(exc.message, code="BadRequestInvalidPublishName") from None
        if "/" in publish_name:
            raise InvalidInput("A publish name may not contain '/'.", code="BadRequestInvalidPublishName")
        taken = Conflict(
            f"Another iteration was published as {publish_name!r} at the same moment.",
            code="BadRequestInvalidPublishName",
        )
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_ref)
            if iteration.status != "Completed":
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration can be published.",
                    code="BadRequestIterationIsNotTrained",
                )
            holder = queries.published_iteration(session, project.id, publish_name)
            if holder is not None and holder.id != iteration.id:
                if not overwrite:
                    raise Conflict(
                        f"{holder.name} is already published as {publish_name!r}; unpublish it or "
                        "publish with overwrite.",
                        code="BadRequestInvalidPublishName",
                    )
                holder.publish_name = holder.publish_resource_id = None
                session.flush()
            iteration.publish_name, iteration.publish_resource_id = publish_name, resource_id
            iteration.last_modified = utcnow()
            session.flush()
            return iteration_view(iteration)

    def unpublish(self, ref: str, iteration_ref: str) -> None:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if not iteration.publish_name:
                raise InvalidInput(f"{iteration.name} is not published.", code="BadRequestIterationNotPublished")
            iteration.publish_name = iteration.publish_resource_id = None
            iteration.last_modified = utcnow()

    def performance(self, ref: str, iteration_ref: str | None = None, threshold: float = 0.5) -> PerformanceView:
        """Precision, recall and AP of an iteration at ``threshold``, on images its models did not learn from."""
        if not 0.0 <= threshold <= 1.0:
            raise TrainingError(f"The threshold must be between 0 and 1, not {threshold}.", code="BadRequest")
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.status != "Completed" or iteration.evaluation_blob is None:
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; it has no performance figures.",
                    code="BadRequestIterationIsNotTrained",
                )
            key, details, iteration_id = (
                iteration.evaluation_blob,
                IterationDetails.from_json(iteration.details),
                iteration.id,
            )
        evaluation = Evaluation.from_bytes(self.ctx.blobs.get(key))
        result = metrics.evaluate(evaluation.probabilities, evaluation.labels, evaluation.folds, threshold)
        return PerformanceView(
            iteration_id, threshold, result, details.tags, len(evaluation.labels), details.measured_on
        )

    def image_performances(
        self,
        ref: str,
        iteration_ref: str,
        *,
        tag_ids: list[str] | None = None,
        newest_first: bool = True,
        skip: int = 0,
        take: int | None = None,
    ) -> list[ImagePerformanceView]:
        """The iteration's training images with their out-of-fold (cross-validated) probabilities."""
        evaluation = self.evaluation(ref, iteration_ref)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_ref)
            tags = IterationDetails.from_json(iteration.details).tags
            wanted = {get_tag(session, project, t).id for t in tag_ids or []}
            row_of = {str(image_id): k for k, image_id in enumerate(evaluation.image_ids)}
            names = {t.id: t.name for t in project.tags}
            order = (Image.created.desc(), Image.id.desc()) if newest_first else (Image.created, Image.id)
            images = session.scalars(
                select(Image).where(Image.project_id == project.id, Image.id.in_(list(row_of))).order_by(*order)
            )
            out = []
            for image in images:
                k = row_of[image.id]
                if wanted and not wanted & {tags[j][0] for j in np.flatnonzero(evaluation.labels[k])}:
                    continue
                row = evaluation.probabilities[k]
                ranked = [TagProbability(tags[j][0], tags[j][1], float(row[j])) for j in np.argsort(-row)]
                out.append(ImagePerformanceView(images_service.image_view(image, names), ranked))
        end = None if take is None else skip + take
        return out[skip:end]

    def image_performance_count(self, ref: str, iteration_ref: str, *, tag_ids: list[str] | None = None) -> int:
        return len(self.image_performances(ref, iteration_ref, tag_ids=tag_ids))

    def misclassified(self, ref: str, iteration_ref: str, threshold: float = 0.5) -> list[ImagePerformanceView]:
        """Cross-validation mistakes, most confident first: the top tag is not the image's (multiclass), or
        the tags at or above ``threshold`` differ from the image's (multilabel)."""
        multilabel = self.iteration(ref, iteration_ref).classification_type == "Multilabel"
        wrong = []
        for item in self.image_performances(ref, iteration_ref):
            truth = {tag_id for tag_id, _, _ in item.image.tags}
            if multilabel:
                predicted = {p.tag_id for p in item.predictions if p.probability >= threshold}
            else:
                predicted = {item.predictions[0].tag_id} if item.predictions else set()
            if predicted != truth:
                wrong.append(item)
        return sorted(wrong, key=lambda w: -(w.predictions[0].probability if w.predictions else 0))

    def evaluation(self, ref: str, iteration_ref: str | None = None) -> Evaluation:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            key = iteration.evaluation_blob
        if key is None:
            raise TrainingError("This iteration has no evaluation.", code="BadRequestIterationIsNotTrained")
        return Evaluation.from_bytes(self.ctx.blobs.get(key))


def iteration_view(iteration: Iteration) -> IterationView:
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


def _aware(when):
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _next_name(project: Project) -> str:
    taken = {i.name for i in project.iterations}
    number = len(project.iterations) + 1
    while f"Iteration {number}" in taken:
        number += 1
    return f"Iteration {number}"


def _training_set(session, project: Project, selected: list[str] | None = None) -> TrainingSet:
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


def _check_budget(spec: backbone.BackboneSpec, images: int, budget_seconds: float) -> None:
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


def training_fingerprint(session, project: Project, selected: list[str] | None = None) -> str:
    """The fingerprint a training of the project as it stands would record (selected tag ids, or all)."""
    return _training_set(session, project, selected).fingerprint


def _check_trainable(snapshot: TrainingSet) -> None:
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
