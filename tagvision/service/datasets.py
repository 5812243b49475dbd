"""Use cases for datasets out and in (folders, CSV, COCO; formats in :mod:`tagvision.datasets`).

Export writes a project's images with their tag names (and, where the format has room, metadata and
regions). Import adds a dataset's images to a project (made when missing: multilabel when an image
carries several tags), creating the tags it names; an image that is already in the project gets the
tags it is listed with (the same photo in two tag folders is one image with two tags).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from tagvision import datasets, fetch, images
from tagvision.errors import NotFound
from tagvision.service.context import Context, Progress, get_project, no_progress
from tagvision.service.images import Images, NewImage
from tagvision.service.projects import Projects
from tagvision.service.views import ImageCreateResult
from tagvision.store.models import Image


@dataclass(frozen=True)
class DatasetExport:
    folder: Path
    format: str
    images: int
    tags: int
    left_out: list[str]  # what the format could not hold


@dataclass
class DatasetImport:
    project_id: str
    project_name: str
    added: int = 0
    already_there: int = 0  # the same bytes were in the project (their listed tags were added to it)
    tags_created: list[str] = field(default_factory=list)
    refused: list[ImageCreateResult] = field(default_factory=list)


class Datasets:
    def __init__(self, ctx: Context, projects: Projects, images: Images) -> None:
        self.ctx = ctx
        self.projects = projects
        self.images = images

    def export(self, ref: str, folder: Path, fmt: str, progress: Progress = no_progress) -> DatasetExport:
        datasets.check_format(fmt)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            tags = {t.name: t.type for t in project.tags}
            names = {t.id: t.name for t in project.tags}
            rows = session.scalars(
                select(Image).where(Image.project_id == project.id).order_by(Image.created, Image.id)
            )
            items = [_item(img, names, self.ctx.blobs.get) for img in rows]
        left_out = []
        if fmt == "folders" and any(i.metadata for i in items):
            left_out.append("metadata (the folders format has no place for it; use csv or coco)")
        if fmt == "folders" and any(i.regions for i in items):
            left_out.append("regions (use csv or coco)")
        count = datasets.write(items, folder, fmt, tags, lambda done: progress("exporting", done, len(items)))
        return DatasetExport(folder, fmt, count, len(tags), left_out)

    def import_(
        self,
        ref: str,
        path: Path,
        fmt: str,
        *,
        classification: str | None = None,
        domain: str = "general-compact",
        progress: Progress = no_progress,
    ) -> DatasetImport:
        """Add a dataset's images to project ``ref`` (created when missing)."""
        dataset = datasets.read(path, fmt)
        try:
            project = self.projects.get(ref)
        except NotFound:
            several = any(len(i.tags) > 1 for i in dataset.items) or _in_two_folders(dataset.items)
            project = self.projects.create(
                ref, classification=classification or ("Multilabel" if several else "Multiclass"), domain=domain
            )
        report = DatasetImport(project.id, project.name)
        tag_ids = self._ensure_tags(project.id, dataset, report)
        multiclass = project.classification_type == "Multiclass"
        items: list[NewImage] = []
        for item in dataset.items:
            if multiclass and len(item.tags) > 1:
                report.refused.append(
                    ImageCreateResult(
                        item.name, "ErrorTagLimitExceed", message="A multiclass project allows one tag per image."
                    )
                )
                continue
            items.append(self._new_image(item, tag_ids))
        summary = self.images.add(project.id, items, progress=progress)
        extra: list[tuple[str, str]] = []
        for new, result in zip(items, summary.results, strict=True):
            if result.status == "OK":
                report.added += 1
            elif result.status == "OKDuplicate" and result.image_id:
                report.already_there += 1
                extra += [(result.image_id, t) for t in new.tags]
            else:
                report.refused.append(result)
        if extra:
            tagged = self.images.tag(project.id, extra)
            for image_id, tag_id in tagged.exceeded:
                report.refused.append(
                    ImageCreateResult(image_id, "ErrorTagLimitExceed", image_id, f"Not tagged {tag_id}: one tag only.")
                )
        return report

    def _ensure_tags(self, project_id: str, dataset: datasets.Dataset, report: DatasetImport) -> dict[str, str]:
        known = {t.name.casefold(): t.id for t in self.projects.list_tags(project_id)}
        for name, kind in dataset.tags.items():
            if name.casefold() not in known:
                (tag,) = self.projects.create_tags(project_id, [name], type_=kind)
                known[tag.name.casefold()] = tag.id
                report.tags_created.append(tag.name)
        return {name: known[name.casefold()] for name in dataset.tags}

    def _new_image(self, item: datasets.Item, tag_ids: dict[str, str]) -> NewImage:
        regions = tuple(
            {"tagId": tag_ids[r.tag], "left": r.left, "top": r.top, "width": r.width, "height": r.height}
            for r in item.regions
        )
        if item.url is not None:
            url, allow = item.url, self.ctx.settings.allow_private_urls
            read = lambda: fetch.fetch(url, max_bytes=images.MAX_TRAINING_BYTES, allow_private=allow).data  # noqa: E731
            source = {"url": item.url}
        else:
            assert item.path is not None
            read, source = item.path.read_bytes, {"file": item.path.name}
        name = str(item.path or item.url)
        tags = tuple(tag_ids[t] for t in item.tags)
        return NewImage(name, read, tags, source, dict(item.metadata), regions)


def _in_two_folders(items: list[datasets.Item]) -> bool:
    """Whether the same bytes are listed with different tags (the same photo in two tag folders)."""
    by_size: dict[int, list[datasets.Item]] = {}
    for item in items:
        if item.path is not None and item.path.is_file():
            by_size.setdefault(item.path.stat().st_size, []).append(item)
    tags_of: dict[str, set[tuple[str, ...]]] = {}
    for same_size in (group for group in by_size.values() if len(group) > 1):
        for item in same_size:
            assert item.path is not None
            tags_of.setdefault(hashlib.sha256(item.path.read_bytes()).hexdigest(), set()).add(item.tags)
    return any(len(tags) > 1 for tags in tags_of.values())


def _item(img: Image, tag_names: dict[str, str], get) -> datasets.Item:
    source = img.source or {}
    stem = str(source.get("file") or source.get("name") or source.get("url") or "image").rsplit("/", 1)[-1]
    regions = tuple(
        datasets.Region(tag_names.get(r.get("tagId", ""), ""), r["left"], r["top"], r["width"], r["height"])
        for r in img.regions or []
    )
    return datasets.Item(
        datasets.file_name(stem, img.sha256, img.format),
        tuple(tag_names[t.tag_id] for t in img.tags),
        dict(img.image_metadata or {}),
        regions,
        read=functools.partial(get, img.sha256),
        width=img.width,
        height=img.height,
    )
