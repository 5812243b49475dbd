"""Use cases for training images: adding (validated, deduplicated), listing, deleting."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from tagvision import images
from tagvision.errors import ImageError, InvalidInput, NotFound
from tagvision.service.context import Context, Progress, get_project, get_tag, no_progress
from tagvision.service.views import ImageCreateResult, ImageCreateSummary, ImageView
from tagvision.store import queries
from tagvision.store.models import Image, ImageTag, utcnow

BATCH = 32  # images per transaction: a crash loses at most the batch in flight


@dataclass(frozen=True)
class NewImage:
    """An image to add: ``read`` returns its bytes (lazily, so large imports stream)."""

    name: str
    read: Callable[[], bytes]
    tags: tuple[str, ...] = ()  # tag ids or names
    source: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Checked:
    item: NewImage
    data: bytes
    facts: images.ImageFacts
    tag_ids: tuple[str, ...]


class Images:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def add(self, ref: str, items: Iterable[NewImage], progress: Progress = no_progress,
            max_bytes: int = images.MAX_TRAINING_BYTES) -> ImageCreateSummary:
        """Validate and store images with their tags; one result per image, in order.

        Bad images are refused with their code while the good ones in the same call land.
        An image already in the project (same bytes) is reported ``OKDuplicate`` and not
        stored twice. Blobs are written before the rows naming them, in batches of
        :data:`BATCH` per transaction, so an interrupted call can simply be run again.
        """
        todo = list(items)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            project_id, multiclass = project.id, project.classification_type == "Multiclass"
            tag_ids = {r: get_tag(session, project, r).id for r in {r for item in todo for r in item.tags}}
        for item in todo:
            if multiclass and len({tag_ids[r] for r in item.tags}) > 1:
                raise InvalidInput(f"{item.name}: a multiclass project allows one tag per image.",
                                   code="BadRequestImageTags")

        results: list[ImageCreateResult] = []
        seen: dict[str, str] = {}  # sha256 -> image id, across the whole call
        progress("adding images", 0, len(todo))
        for start in range(0, len(todo), BATCH):
            checked: list[_Checked | ImageCreateResult] = [
                self._check(item, max_bytes, tag_ids) for item in todo[start:start + BATCH]
            ]
            results.extend(self._store_batch(project_id, checked, seen))
            progress("adding images", min(start + BATCH, len(todo)), len(todo))
        return ImageCreateSummary(results)

    def _check(self, item: NewImage, max_bytes: int, tag_ids: dict[str, str]) -> _Checked | ImageCreateResult:
        try:
            data = item.read()
        except OSError as exc:
            return ImageCreateResult(item.name, "ErrorSource", message=f"Could not read the image: {exc}.")
        try:
            facts = images.validate(data, max_bytes=max_bytes)
        except ImageError as exc:
            return ImageCreateResult(item.name, exc.code, message=exc.message)
        return _Checked(item, data, facts, tuple(dict.fromkeys(tag_ids[r] for r in item.tags)))

    def _store_batch(self, project_id: str, checked: list[_Checked | ImageCreateResult],
                     seen: dict[str, str]) -> list[ImageCreateResult]:
        fresh = [c for c in checked if isinstance(c, _Checked)]
        for c in fresh:
            self.ctx.blobs.put(c.data)  # blob before row
        out: list[ImageCreateResult] = []
        with self.ctx.db.session() as session:
            seen.update(queries.existing_hashes(session, project_id, [c.facts.sha256 for c in fresh]))
            for c in checked:
                if isinstance(c, ImageCreateResult):
                    out.append(c)
                    continue
                if c.facts.sha256 in seen:
                    out.append(ImageCreateResult(c.item.name, "OKDuplicate", seen[c.facts.sha256],
                                                 "The same image is already in the project."))
                    continue
                row = Image(project_id=project_id, sha256=c.facts.sha256, format=c.facts.format,
                            content_type=c.facts.content_type, width=c.facts.width, height=c.facts.height,
                            size_bytes=c.facts.size_bytes, source={"name": c.item.name, **c.item.source},
                            tags=[ImageTag(tag_id=t) for t in c.tag_ids])
                session.add(row)
                session.flush()
                seen[c.facts.sha256] = row.id
                out.append(ImageCreateResult(c.item.name, "OK", row.id))
        return out

    def list(self, ref: str, *, tag: str | None = None, untagged: bool = False,
             skip: int = 0, take: int | None = None) -> list[ImageView]:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            names = {t.id: t.name for t in project.tags}
            query = select(Image).where(Image.project_id == project.id).order_by(Image.created.desc(), Image.id)
            if tag is not None:
                query = query.join(ImageTag).where(ImageTag.tag_id == get_tag(session, project, tag).id)
            if untagged:
                query = query.where(~Image.tags.any())
            query = query.offset(skip).limit(take)
            return [_image_view(img, names) for img in session.scalars(query)]

    def data(self, ref: str, image_id: str) -> bytes:
        """The original bytes of one image."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            sha = session.scalar(select(Image.sha256).where(Image.project_id == project.id, Image.id == image_id))
        if sha is None:
            raise NotFound(f"Project has no image {image_id!r}.", code="NotFoundImage")
        return self.ctx.blobs.get(sha)

    def delete(self, ref: str, image_ids: list[str]) -> int:
        """Delete images from a project; returns how many were deleted."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            rows = session.scalars(select(Image).where(Image.project_id == project.id, Image.id.in_(image_ids)))
            count = 0
            for row in rows:
                session.delete(row)
                count += 1
            project.last_modified = utcnow()
            return count


def _image_view(img: Image, tag_names: dict[str, str]) -> ImageView:
    return ImageView(img.id, img.created, img.width, img.height, img.content_type, img.sha256,
                     [(t.tag_id, tag_names[t.tag_id]) for t in img.tags], img.source)

