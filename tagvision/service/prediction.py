"""Use case: probabilities per tag for new images, from a completed iteration."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tagvision.errors import TrainingError
from tagvision.learn import LinearHead
from tagvision.service.context import Context, get_iteration, get_project
from tagvision.service.views import ImagePrediction, TagProbability

HEAD_CACHE = 16


@dataclass(frozen=True)
class Model:
    """A completed iteration, ready to predict: its head and tags in column order."""

    iteration_id: str
    domain: str
    head: LinearHead
    tags: list[tuple[str, str]]


class Prediction:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._models: OrderedDict[str, Model] = OrderedDict()

    def model(self, ref: str, iteration_ref: str | None = None) -> Model:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.status != "Completed" or iteration.head_blob is None:
                raise TrainingError(f"{iteration.name} is {iteration.status}; only a completed iteration predicts.",
                                    code="BadRequestIterationIsNotTrained")
            iteration_id, domain = iteration.id, iteration.domain
            head_key, tags = iteration.head_blob, [tuple(t) for t in iteration.details["tags"]]
        cached = self._models.get(iteration_id)
        if cached is None:
            cached = Model(iteration_id, domain, LinearHead.from_bytes(self.ctx.blobs.get(head_key)), tags)
            self._models[iteration_id] = cached
            while len(self._models) > HEAD_CACHE:
                self._models.popitem(last=False)
        self._models.move_to_end(iteration_id)
        return cached

    def predict(self, ref: str, items: list[tuple[str, Callable[[], bytes]]],
                iteration_ref: str | None = None) -> list[ImagePrediction]:
        """Probabilities for each (name, read) image, highest first; refused images carry their error."""
        model = self.model(ref, iteration_ref)
        results = list(self.ctx.embedder(model.domain).embed([read for _, read in items]))
        good = [r for r in results if r.error is None]
        probabilities = (
            model.head.predict_proba(np.stack([r.plain for r in good]), np.stack([r.flipped for r in good]))
            if good else np.zeros((0, len(model.tags))))
        by_index = {r.index: p for r, p in zip(good, probabilities, strict=True)}
        out = []
        for result in results:
            name = items[result.index][0]
            if result.error is not None:
                out.append(ImagePrediction(name, model.iteration_id, error=result.error.message,
                                           error_code=result.error.code))
                continue
            row = by_index[result.index]
            ranked = sorted(range(len(model.tags)), key=lambda j: -row[j])
            out.append(ImagePrediction(name, model.iteration_id, [
                TagProbability(model.tags[j][0], model.tags[j][1], float(row[j])) for j in ranked]))
        return out
