"""Use cases for predicting: probabilities per tag from a completed iteration, stored predictions
(the review queue that feeds re-training), and suggestions for untagged images."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select

from tagvision import backbone, fetch, images
from tagvision.errors import ImageError, InvalidInput, NotFound, TrainingError
from tagvision.learn import LinearHead
from tagvision.service.caches import LRU
from tagvision.service.context import Context, get_iteration, get_project
from tagvision.service.details import IterationDetails
from tagvision.service.images import Images, NewImage, image_view
from tagvision.service.knowledge import NO_EXTRAS, Extras, Knowledge, ProjectKnowledge
from tagvision.service.prediction_query import (  # the query values are re-exported: interfaces import them here
    MAX_QUERY_RESULTS,
    ORDERS,
    PredictionQuery,
    QueryTag,
    SuggestionQuery,
    check_threshold,
    matching,
    page_bounds,
    suggestion_page,
)
from tagvision.service.training import Training
from tagvision.service.views import (
    ImageCreateResult,
    ImageCreateSummary,
    ImagePrediction,
    PredictionView,
    SuggestionView,
    TagProbability,
)
from tagvision.store import queries
from tagvision.store.models import Image, Iteration, PredictionMetadata, PredictionTag, new_id, utcnow
from tagvision.store.models import Prediction as StoredPrediction

HEAD_CACHE = 16

__all__ = [
    "MAX_QUERY_RESULTS",
    "Model",
    "Prediction",
    "PredictionQuery",
    "QueryTag",
    "SuggestionQuery",
    "stored_view",
    "uncertainty",
]


@dataclass(frozen=True)
class Model:
    """A completed iteration, ready to predict: its head and tags in column order."""

    project_id: str
    iteration_id: str
    domain: str
    head: LinearHead
    tags: list[tuple[str, str]]
    tuned: str | None = None  # blob of the fine-tuned backbone (advanced training), else the stock one
    precision: str = "Float32"  # Int8: served by the iteration's int8 classifier (a setting of the iteration)


def uncertainty(probabilities: np.ndarray, multilabel: bool) -> float:
    """0 when the model is sure, 1 for a coin toss: normalised entropy (multiclass) or the
    largest binary entropy over the tags (multilabel)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0)
    if multilabel:
        q = np.clip(1.0 - p, 1e-12, 1.0)
        return float(np.max(-(p * np.log2(p) + q * np.log2(q)), initial=0.0))
    if len(p) < 2:
        return 0.0
    return float(-(p * np.log(p)).sum() / math.log(len(p)))


class Prediction:
    def __init__(
        self,
        ctx: Context,
        training: Training,
        int8: Callable[[str, str], Any] | None = None,
        knowledge: Knowledge | None = None,
    ) -> None:
        """``int8``: (project id, iteration id) -> the iteration's int8 classifier, for Int8 iterations;
        ``knowledge``: the tags' information and the project's decision rules that predictions carry."""
        self.ctx = ctx
        self.training = training
        self.int8 = int8
        self.knowledge = knowledge or Knowledge(ctx)
        self.on_store: Callable[[], None] = lambda: None  # after a prediction is stored (retention purges)
        # Keyed by (iteration id, head blob, precision): the first two are fixed once the iteration completed, and a
        # change of precision (on any replica) reads as a new key, so an entry is never stale.
        self._models: LRU[tuple[str, str, str], Model] = LRU(HEAD_CACHE)

    # ------------------------------------------------------------------ models

    def model(self, ref: str, iteration_ref: str | None = None, *, published: str | None = None) -> Model:
        """A completed iteration's head: by iteration (default: newest completed) or by publish name."""
        return self._resolve(ref, iteration_ref, published)[0]

    def _resolve(
        self, ref: str, iteration_ref: str | None, published: str | None
    ) -> tuple[Model, dict[str, str], ProjectKnowledge]:
        """The model, the project's current tag types (tag id -> type) and its knowledge, read in one transaction."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            if published is not None:
                iteration = queries.published_iteration(session, project.id, published)
                if iteration is None:
                    raise NotFound(
                        f"Project {project.name!r} has no iteration published as {published!r}.",
                        code="NotFoundIteration",
                    )
            else:
                iteration = get_iteration(session, project, iteration_ref)
            if iteration.status != "Completed" or iteration.head_blob is None:
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration predicts.",
                    code="BadRequestIterationIsNotTrained",
                )
            iteration_id, domain, tuned = iteration.id, iteration.domain, iteration.backbone_blob
            precision = iteration.precision or "Float32"
            head_key, tags = iteration.head_blob, IterationDetails.from_json(iteration.details).tags
            project_id, types = project.id, {t.id: t.type for t in project.tags}
            knowledge = self.knowledge.of(session, project)
        cached = self._models.get_or_make(  # the server predicts from many threads: loaded once
            (iteration_id, head_key, precision),
            lambda: Model(
                project_id,
                iteration_id,
                domain,
                LinearHead.from_bytes(self.ctx.blobs.get(head_key)),
                tags,
                tuned,
                precision,
            ),
        )
        return cached, types, knowledge

    def sweep(self) -> list[str]:
        """Drop the heads of iterations that were deleted (here or on another replica); returns their ids."""
        cached = {key[0] for key in self._models.cached()}
        if not cached:
            return []
        with self.ctx.db.session() as session:
            live = set(session.scalars(select(Iteration.id).where(Iteration.id.in_(cached))))
        self._models.keep_only(key for key in self._models.cached() if key[0] in live)
        return sorted(cached - live)

    def predict(
        self,
        ref: str,
        items: list[tuple[str, Callable[[], bytes]]],
        iteration_ref: str | None = None,
        extras: Extras = NO_EXTRAS,
    ) -> list[ImagePrediction]:
        """Probabilities for each (name, read) image, highest first, with the tags' information and the decision;
        refused images carry their error."""
        model, types, knowledge = self._resolve(ref, iteration_ref, None)
        results = list(self.ctx.embedder(model.domain, model.tuned).embed([read for _, read in items]))
        good = [r for r in results if r.error is None]
        pairs = [r.embeddings() for r in good]
        probabilities = (
            model.head.predict_proba(np.stack([p for p, _ in pairs]), np.stack([f for _, f in pairs]))
            if good
            else np.zeros((0, len(model.tags)))
        )
        by_index = {r.index: p for r, p in zip(good, probabilities, strict=True)}
        out = []
        for result in results:
            name = items[result.index][0]
            if result.error is not None:
                out.append(
                    ImagePrediction(name, model.iteration_id, error=result.error.message, error_code=result.error.code)
                )
                continue
            ranked, decision = knowledge.annotate(_ranked(model.tags, by_index[result.index], types), extras)
            out.append(ImagePrediction(name, model.iteration_id, ranked, decision=decision))
        return out

    # ------------------------------------------------------------------ one image, as the API classifies

    def classify(
        self,
        ref: str,
        data: bytes,
        *,
        iteration_ref: str | None = None,
        published: str | None = None,
        store: bool = True,
        application: str | None = None,
        source: str | None = None,
        max_bytes: int = images.MAX_PREDICTION_BYTES,
        extras: Extras = NO_EXTRAS,
    ) -> PredictionView:
        """Classify one encoded image; stored (for review and re-training) unless ``store`` is False or the
        project's retention says never. The predicted tags carry their information and the project's rules give
        the decision (``extras`` says which information, and the caller's metadata kept with the record).

        Bad images raise :class:`InvalidInput` with Custom Vision's ``BadRequestImage*`` codes.
        """
        model, types, knowledge = self._resolve(ref, iteration_ref, published)
        facts, row = self._score(model, data, max_bytes)
        ranked, decision = knowledge.annotate(_ranked(model.tags, row, types), extras)
        store = store and knowledge.stores
        view = PredictionView(
            new_id(),
            model.project_id,
            model.iteration_id,
            utcnow(),
            ranked,
            domain=model.domain,
            width=facts.width,
            height=facts.height,
            sha256=facts.sha256,
            decision=decision,
            metadata=dict(extras.metadata) if store else {},
            stored=store,
        )
        if store:
            record = _record(view, model, row, knowledge.shas, facts.content_type, application, source)
            self._store(record, data)
        return view

    def _score(self, model: Model, data: bytes, max_bytes: int) -> tuple[images.ImageFacts, np.ndarray]:
        """Decode ``data`` once (no larger than the network needs) and score it: -> (its facts, the probability
        of each of the model's tags). A bad image is a request error (``BadRequestImage*``)."""
        embedder = self.ctx.embedder(model.domain, model.tuned)
        try:
            facts, img = images.inspect(data, max_bytes=max_bytes, min_side=embedder.spec.resize)
        except ImageError as exc:
            raise InvalidInput(exc.message, code=_bad_request_code(exc.code)) from None
        batch = backbone.preprocess(img, embedder.spec)[None]
        if model.precision == "Int8" and self.int8 is not None:
            return facts, self.int8(model.project_id, model.iteration_id).probabilities(batch)[0]
        plain, flipped = embedder.forward_pairs(batch)
        return facts, model.head.predict_proba(plain, flipped)[0]

    def _store(self, stored: StoredPrediction, data: bytes) -> None:
        """Keep a prediction for review and re-training: the image blob before the row that names it."""
        sha256 = stored.sha256
        self.ctx.blobs.put(data)
        with self.ctx.db.session() as session:
            session.add(stored)
        if not self.ctx.blobs.exists(sha256):  # a retention purge took it meanwhile: it is ours again
            self.ctx.blobs.put(data)
        self.on_store()

    def classify_url(
        self, ref: str, url: str, *, max_bytes: int = images.MAX_PREDICTION_BYTES, **options
    ) -> PredictionView:
        """Download an image through the SSRF guard and classify it (see :meth:`classify`)."""
        self.model(ref, options.get("iteration_ref"), published=options.get("published"))  # 404 before fetching
        try:
            data = fetch.fetch(url, max_bytes=max_bytes, allow_private=self.ctx.settings.allow_private_urls).data
        except (ImageError, InvalidInput) as exc:
            raise InvalidInput(exc.message, code=_bad_request_code(exc.code)) from None
        return self.classify(ref, data, max_bytes=max_bytes, source=url, **options)

    # ------------------------------------------------------------------ stored predictions

    def query(self, ref: str, query: PredictionQuery) -> tuple[list[PredictionView], str | None]:
        """Stored predictions matching ``query``; -> (page, continuation token or None at the end)."""
        offset, count = page_bounds(query)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            iteration_id = get_iteration(session, project, query.iteration_id).id if query.iteration_id else None
            sql = matching(project.id, iteration_id, query)
            rows = list(session.scalars(sql.order_by(*ORDERS[query.order_by]).offset(offset).limit(count + 1)))
            names = {t.id: (t.name, t.type) for t in project.tags}
            versions = _versions(session, rows[:count])
            page = [stored_view(row, names, versions) for row in rows[:count]]
        return page, (str(offset + count) if len(rows) > count else None)

    def stored(self, ref: str, prediction_id: str) -> PredictionView:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            row = session.get(StoredPrediction, prediction_id)
            if row is None or row.project_id != project.id:
                raise NotFound(f"No stored prediction {prediction_id!r}.", code="NotFound")
            return stored_view(row, {t.id: (t.name, t.type) for t in project.tags}, _versions(session, [row]))

    def image_data(self, ref: str, prediction_id: str) -> bytes:
        return self.ctx.blobs.get(self.stored(ref, prediction_id).sha256)

    def delete(self, ref: str, prediction_ids: list[str]) -> int:
        if not prediction_ids:
            raise InvalidInput("Name the predictions to delete.", code="BadRequestPredictionIdsMissing")
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            rows = list(
                session.scalars(
                    select(StoredPrediction).where(
                        StoredPrediction.project_id == project.id, StoredPrediction.id.in_(prediction_ids)
                    )
                )
            )
            for row in rows:
                session.delete(row)
            return len(rows)

    def to_training_images(
        self, ref: str, entries: list[tuple[str, tuple[str, ...]]], metadata: dict[str, str] | None = None
    ) -> ImageCreateSummary:
        """Turn stored predictions (prediction id, tag ids) into tagged training images."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            rows = {
                r.id: r
                for r in session.scalars(
                    select(StoredPrediction).where(
                        StoredPrediction.project_id == project.id, StoredPrediction.id.in_([pid for pid, _ in entries])
                    )
                )
            }
        items = []
        for prediction_id, tags in entries:
            row = rows.get(prediction_id)
            read = (lambda sha=row.sha256: self.ctx.blobs.get(sha)) if row else _missing(prediction_id)
            source = {"prediction": prediction_id, **(row.source if row else {})}
            items.append(NewImage(prediction_id, read, tags, source, metadata or {}))
        return Images(self.ctx).add(ref, items)

    def to_training_image(self, ref: str, prediction_id: str, tag_ids: tuple[str, ...]) -> ImageCreateResult:
        """Confirm or correct a stored prediction's tags: it becomes a training image and leaves the review
        list (it stays there when it could not be added)."""
        result = self.to_training_images(ref, [(prediction_id, tag_ids)]).results[0]
        if result.ok:
            self.delete(ref, [prediction_id])
        return result

    # ------------------------------------------------------------------ suggestions for untagged images

    def suggest(
        self,
        ref: str,
        iteration_ref: str,
        image_ids: list[str] | None = None,
        *,
        tag_ids: list[str] | None = None,
        threshold: float = 0.0,
    ) -> list[SuggestionView]:
        """Predictions for the project's images (the named ones, else the untagged ones), not stored.

        With ``tag_ids``, only images where one of those tags reaches ``threshold`` are kept.
        """
        model = self.model(ref, iteration_ref)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            sql = select(Image).where(Image.project_id == project.id)
            sql = sql.where(Image.id.in_(image_ids)) if image_ids is not None else sql.where(~Image.tags.any())
            rows = list(session.scalars(sql.order_by(Image.created.desc(), Image.id)))
            names = {t.id: t.name for t in project.tags}
            types = {t.id: t.type for t in project.tags}
            views = [image_view(r, names) for r in rows]
        if not views:
            return []
        hashes = [v.sha256 for v in views]
        self.training.cache_embeddings(model.domain, hashes, tuned=model.tuned)
        with self.ctx.db.session() as session:
            plain, flipped = queries.load_embeddings(session, self.ctx.backbone_key(model.domain, model.tuned), hashes)
        probabilities = model.head.predict_proba(plain, flipped)
        columns = [j for j, (tag_id, _) in enumerate(model.tags) if not tag_ids or tag_id in tag_ids]
        out = []
        for view, row in zip(views, probabilities, strict=True):
            if tag_ids and not any(row[j] >= threshold for j in columns):
                continue
            out.append(
                SuggestionView(
                    view,
                    model.project_id,
                    model.iteration_id,
                    _ranked(model.tags, row, types),
                    uncertainty(row, model.head.multilabel),
                )
            )
        return out

    def suggested(
        self, ref: str, iteration_ref: str, query: SuggestionQuery
    ) -> tuple[list[SuggestionView], str | None]:
        """A page of the untagged images with suggested tags, most uncertain first unless asked otherwise;
        -> (page, continuation token or None at the end)."""
        views = self.suggest(ref, iteration_ref, tag_ids=list(query.tag_ids) or None, threshold=query.threshold)
        return suggestion_page(views, query)

    def suggested_counts(
        self, ref: str, iteration_ref: str, tag_ids: list[str] | None = None, threshold: float = 0.0
    ) -> dict[str, int]:
        """Per tag (the given ones, else every suggested tag), how many untagged images it reaches
        ``threshold`` on."""
        check_threshold(threshold)
        views = self.suggest(ref, iteration_ref)
        wanted = tag_ids or sorted({p.tag_id for v in views for p in v.predictions})
        return {
            tag_id: sum(any(p.tag_id == tag_id and p.probability >= threshold for p in v.predictions) for v in views)
            for tag_id in wanted
        }


def _ranked(tags: list[tuple[str, str]], row: np.ndarray, types: dict[str, str] | None = None) -> list[TagProbability]:
    types = types or {}
    return [
        TagProbability(tags[j][0], tags[j][1], float(row[j]), types.get(tags[j][0], "Regular"))
        for j in np.argsort(-row, kind="stable")
    ]


def stored_view(
    row: StoredPrediction, names: dict[str, tuple[str, str]], versions: dict[str, dict] | None = None
) -> PredictionView:
    """``names``: tag id -> (name, type); ``versions``: the tag information kept with it (sha256 -> object)."""
    versions = versions or {}
    ranked = []
    for t in sorted(row.tags, key=lambda t: -t.probability):
        name, kind = names.get(t.tag_id, ("", "Regular"))
        kept = versions.get(t.information_sha) if t.information_sha else None
        ranked.append(TagProbability(t.tag_id, name, t.probability, kind, kept))
    return PredictionView(
        row.id,
        row.project_id,
        row.iteration_id,
        row.created,
        ranked,
        domain=row.domain,
        width=row.width,
        height=row.height,
        sha256=row.sha256,
        uncertainty=row.uncertainty,
        source=row.source.get("url"),
        application=row.application,
        decision=row.decision,
        metadata={m.key: m.value for m in row.caller_metadata},
    )


def _record(
    view: PredictionView,
    model: Model,
    row: np.ndarray,
    shas: Mapping[str, str],
    content_type: str,
    application: str | None,
    source: str | None,
) -> StoredPrediction:
    """The stored form of a classified image: every tag's probability (``row``, in the model's column order) with
    the version of the tag's information (``shas``) the prediction carried, and the caller's metadata."""
    return StoredPrediction(
        id=view.id,
        project_id=view.project_id,
        iteration_id=view.iteration_id,
        sha256=view.sha256,
        content_type=content_type,
        width=view.width,
        height=view.height,
        domain=view.domain,
        application=application,
        source={"url": source} if source else {},
        uncertainty=uncertainty(row, model.head.multilabel),
        created=view.created,
        decision=view.decision,
        tags=[
            PredictionTag(tag_id=t, probability=float(p), information_sha=shas.get(t))
            for (t, _), p in zip(model.tags, row, strict=True)
        ],
        caller_metadata=[PredictionMetadata(key=k, value=v) for k, v in view.metadata.items()],
    )


def _versions(session, rows: list[StoredPrediction]) -> dict[str, dict]:
    """The tag information versions stored predictions point at."""
    return queries.information_versions(session, {t.information_sha for r in rows for t in r.tags if t.information_sha})


def _bad_request_code(code: str) -> str:
    """ImageCreateStatus codes (``ErrorImageSize``) -> the request-level codes (``BadRequestImageSizeBytes``)."""
    return {
        "ErrorImageSize": "BadRequestImageSizeBytes",
        "ErrorImageFormat": "BadRequestImageFormat",
        "ErrorImageDimensions": "BadRequestImageDimensions",
        "ErrorSource": "BadRequestImageUrl",
    }.get(code, code)


def _missing(prediction_id: str) -> Callable[[], bytes]:
    def read() -> bytes:
        raise NotFound(f"No stored prediction {prediction_id!r}.", code="ErrorSource")

    return read
