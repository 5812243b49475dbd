"""The look of a project's tags, for ranking and filtering what an acquisition finds.

Fitted (:func:`tagvision.sources.look.fit`) on the embeddings of every tagged image of the project
and of the candidates its users rejected, computed with the project's backbone and cached by
content (:meth:`Training.cache_embeddings`), so a refit between review pages embeds only what is
new. A downloaded candidate is embedded the same way (its blob is stored first) before it is judged.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select

from tagvision.service.context import Context, Progress, get_project, no_progress
from tagvision.service.training import Training
from tagvision.sources import look as looks
from tagvision.store import queries
from tagvision.store.models import AcquisitionItem, Image, ImageTag, Tag

EMBEDDING_STAGE = "embedding the project's images"


class Looks:
    def __init__(self, ctx: Context, training: Training) -> None:
        self.ctx = ctx
        self.training = training

    def fit(self, project_id: str, progress: Progress = no_progress) -> looks.Look | None:
        """The look of the project's tags now, keyed by tag name; None while it has no tagged image."""
        with self.ctx.db.session() as session:
            project = get_project(session, project_id)
            domain, multilabel = project.domain, project.classification_type == "Multilabel"
            names = {
                t.id: t.name
                for t in session.scalars(select(Tag).where(Tag.project_id == project_id).order_by(Tag.created))
            }
            tagged = session.execute(
                select(Image.sha256, ImageTag.tag_id)
                .join(ImageTag, ImageTag.image_id == Image.id)
                .where(Image.project_id == project_id)
            ).all()
            rejected = [
                sha
                for sha in session.scalars(
                    select(AcquisitionItem.sha256)
                    .where(
                        AcquisitionItem.project_id == project_id,
                        AcquisitionItem.status == "Rejected",
                        AcquisitionItem.sha256.is_not(None),
                    )
                    .distinct()
                )
                if sha is not None  # as the query asks
            ]
        if not tagged:
            return None
        tags = tuple(names.values())
        column = {tag_id: i for i, tag_id in enumerate(names)}
        hashes = list(dict.fromkeys(sha for sha, _ in tagged))
        row = {sha: i for i, sha in enumerate(hashes)}
        rejected = [sha for sha in dict.fromkeys(rejected) if sha not in row and self.ctx.blobs.exists(sha)]
        labels = np.zeros((len(hashes) + len(rejected), len(tags)), bool)
        for sha, tag_id in tagged:
            labels[row[sha], column[tag_id]] = True
        plain, flipped = self.embeddings(domain, hashes + rejected, progress)
        return looks.fit(looks.Examples(tags, plain, flipped, labels), multilabel)

    def embeddings(
        self, domain: str, hashes: list[str], progress: Progress = no_progress
    ) -> tuple[np.ndarray, np.ndarray]:
        """(plain, flipped) embeddings of the blobs ``hashes`` by the project's backbone, computed once each."""
        self.training.cache_embeddings(
            domain, hashes, progress=lambda _stage, done, total, /, eta=None: progress(EMBEDDING_STAGE, done, total)
        )
        with self.ctx.db.session() as session:
            return queries.load_embeddings(session, self.ctx.backbone_key(domain), hashes)
