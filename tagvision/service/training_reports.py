"""How good a completed iteration is, from the evaluation it kept: precision, recall and AP at any threshold, each
training image with its out-of-fold probabilities, and the images the iteration gets wrong."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from tagvision import metrics
from tagvision.errors import TrainingError
from tagvision.service import images as images_service
from tagvision.service.context import Context, get_iteration, get_project, get_tag
from tagvision.service.details import IterationDetails
from tagvision.service.training_set import Evaluation
from tagvision.service.views import ImagePerformanceView, PerformanceView, TagProbability
from tagvision.store.models import Image


class TrainingReports:
    """The part of :class:`tagvision.service.training.Training` that reports an iteration's performance."""

    ctx: Context

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
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            multilabel = iteration.classification_type == "Multilabel"
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
        """The out-of-fold probabilities an iteration kept (refused before it completed)."""
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            key = iteration.evaluation_blob
        if key is None:
            raise TrainingError("This iteration has no evaluation.", code="BadRequestIterationIsNotTrained")
        return Evaluation.from_bytes(self.ctx.blobs.get(key))
