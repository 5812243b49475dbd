"""Use cases for training images: adding (uploads and URLs; validated, deduplicated), listing, tagging, deleting."""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import delete, func, select

from tagvision import fetch, images
from tagvision.errors import ImageError, InvalidInput, NotFound, StorageError, TagvisionError
from tagvision.service.context import Context, Progress, get_iteration, get_project, get_tag, no_progress
from tagvision.service.details import IterationDetails
from tagvision.service.views import ImageCreateResult, ImageCreateSummary, ImageTagCreateSummary, ImageView
from tagvision.store import queries
from tagvision.store.models import Image, ImageTag, utcnow

BATCH = 32  # images per transaction: a crash loses at most the batch in flight
RACE_RETRIES = 3  # a batch is stored again when concurrent uploads of the same images got there first


class Retry(Exception):
    """A batch lost a race for a unique row: run it again."""


MAX_TAGS_PER_IMAGE = 100
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 10, 128, 256


@dataclass(frozen=True)
class NewImage:
    """An image to add: ``read`` returns its bytes (lazily, so large imports stream)."""

    name: str
    read: Callable[[], bytes]
    tags: tuple[str, ...] = ()  # tag ids or names
    source: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    # Object-detection regions ({regionId, tagId, left, top, width, height}; tag ids, not names), kept as given.
    regions: tuple[dict[str, Any], ...] = ()
    created: datetime | None = None  # when the image was first added (a migration keeps the source's)


@dataclass(frozen=True)
class _Checked:
    item: NewImage
    data: bytes
    facts: images.ImageFacts
    tag_ids: tuple[str, ...]


class Images:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        # Every request's image URLs share these threads (the process fetches at most this many at once) and one
        # HTTP client: building one per download cost ~45 ms each (bench/NOTES.md, migration).
        self.fetchers = ThreadPoolExecutor(max_workers=ctx.settings.url_fetchers, thread_name_prefix="fetch")
        self.http = httpx.Client(follow_redirects=False, timeout=15.0, trust_env=False)

    def add(
        self,
        ref: str,
        items: Iterable[NewImage],
        progress: Progress = no_progress,
        max_bytes: int = images.MAX_TRAINING_BYTES,
    ) -> ImageCreateSummary:
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
                raise InvalidInput(
                    f"{item.name}: a multiclass project allows one tag per image.", code="BadRequestImageTags"
                )

        results: list[ImageCreateResult] = []
        seen: dict[str, str] = {}  # sha256 -> image id, across the whole call
        progress("adding images", 0, len(todo))
        for start in range(0, len(todo), BATCH):
            checked: list[_Checked | ImageCreateResult] = [
                self._check(item, max_bytes, tag_ids) for item in todo[start : start + BATCH]
            ]
            results.extend(self._store_batch(project_id, checked, seen))
            progress("adding images", min(start + BATCH, len(todo)), len(todo))
        views = {v.id: v for v in self.by_ids(project_id, [r.image_id for r in results if r.image_id])}
        return ImageCreateSummary([replace(r, image=views.get(r.image_id)) if r.image_id else r for r in results])

    def _check(self, item: NewImage, max_bytes: int, tag_ids: dict[str, str]) -> _Checked | ImageCreateResult:
        try:
            data = item.read()
        except OSError as exc:
            return ImageCreateResult(item.name, "ErrorSource", message=f"Could not read the image: {exc}.")
        except TagvisionError as exc:  # a URL that could not be fetched
            status = exc.code if exc.code.startswith("Error") else "ErrorSource"
            return ImageCreateResult(item.name, status, message=exc.message)
        try:
            facts = images.validate(data, max_bytes=max_bytes)
        except ImageError as exc:
            return ImageCreateResult(item.name, exc.code, message=exc.message)
        return _Checked(item, data, facts, tuple(dict.fromkeys(tag_ids[r] for r in item.tags)))

    def _store_batch(
        self, project_id: str, checked: list[_Checked | ImageCreateResult], seen: dict[str, str]
    ) -> list[ImageCreateResult]:
        """Rows for a batch of checked images. When a concurrent request stores one of the same images first, the
        transaction is refused on the unique (project, sha256) and run again: that image is then a duplicate."""
        fresh = [c for c in checked if isinstance(c, _Checked)]
        for c in fresh:
            self.ctx.blobs.put(c.data)  # blob before row
        for _ in range(RACE_RETRIES):
            known = dict(seen)
            try:
                out = self._insert_batch(project_id, checked, fresh, known)
            except Retry:
                continue
            seen.update(known)
            return out
        raise StorageError("The images could not be stored while other uploads kept changing the project.")

    def _insert_batch(
        self, project_id: str, checked: list[_Checked | ImageCreateResult], fresh: list[_Checked], seen: dict[str, str]
    ) -> list[ImageCreateResult]:
        out: list[ImageCreateResult] = []
        with self.ctx.db.session(not_unique=Retry()) as session:
            seen.update(queries.existing_hashes(session, project_id, [c.facts.sha256 for c in fresh]))
            for c in checked:
                if isinstance(c, ImageCreateResult):
                    out.append(c)
                    continue
                if c.facts.sha256 in seen:
                    out.append(
                        ImageCreateResult(
                            c.item.name,
                            "OKDuplicate",
                            seen[c.facts.sha256],
                            "The same image is already in the project.",
                        )
                    )
                    continue
                row = Image(
                    project_id=project_id,
                    sha256=c.facts.sha256,
                    format=c.facts.format,
                    content_type=c.facts.content_type,
                    width=c.facts.width,
                    height=c.facts.height,
                    size_bytes=c.facts.size_bytes,
                    source={"name": c.item.name, **c.item.source},
                    image_metadata=dict(c.item.metadata),
                    regions=[dict(r) for r in c.item.regions] or None,
                    tags=[ImageTag(tag_id=t) for t in c.tag_ids],
                    **({"created": c.item.created} if c.item.created else {}),
                )
                session.add(row)
                session.flush()
                seen[c.facts.sha256] = row.id
                out.append(ImageCreateResult(c.item.name, "OK", row.id))
        return out

    def add_urls(
        self, ref: str, entries: list[tuple[str, tuple[str, ...]]], metadata: dict[str, str] | None = None
    ) -> ImageCreateSummary:
        """Download (url, tags) entries concurrently through the SSRF guard, then add them like uploads.

        An unknown project is refused before anything is downloaded.
        """
        with self.ctx.db.session() as session:
            get_project(session, ref)

        def download(url: str) -> bytes | TagvisionError:
            try:
                return fetch.fetch(
                    url,
                    max_bytes=images.MAX_TRAINING_BYTES,
                    allow_private=self.ctx.settings.allow_private_urls,
                    client=self.http,
                ).data
            except TagvisionError as exc:
                return exc

        fetched = list(self.fetchers.map(download, [url for url, _ in entries]))
        items = [
            NewImage(url, _reader(result), tags, {"url": url}, metadata or {})
            for (url, tags), result in zip(entries, fetched, strict=True)
        ]
        return self.add(ref, items)

    def list(
        self,
        ref: str,
        *,
        tag: str | None = None,
        tag_ids: list[str] | None = None,
        untagged: bool = False,
        tagged: bool = False,
        iteration: str | None = None,
        metadata: list[MetadataCondition] | None = None,
        newest_first: bool = True,
        skip: int = 0,
        take: int | None = None,
    ) -> list[ImageView]:
        """Images of a project, newest first; filtered by tag(s), tagging status, iteration or metadata."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            names = {t.id: t.name for t in project.tags}
            query = self._filtered(session, project, tag, tag_ids, untagged, tagged, iteration)
            order = (Image.created.desc(), Image.id.desc()) if newest_first else (Image.created, Image.id)
            query = query.order_by(*order)
            if not metadata:  # page in SQL; a metadata filter reads the JSON of every candidate
                return [image_view(img, names) for img in session.scalars(query.offset(skip).limit(take))]
            rows = [r for r in session.scalars(query) if _metadata_matches(r.image_metadata, metadata)]
            end = None if take is None else skip + take
            return [image_view(img, names) for img in rows[skip:end]]

    def count(
        self,
        ref: str,
        *,
        tag_ids: builtins.list[str] | None = None,
        untagged: bool = False,
        tagged: bool = False,
        iteration: str | None = None,
        metadata: builtins.list[MetadataCondition] | None = None,
    ) -> int:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            query = self._filtered(session, project, None, tag_ids, untagged, tagged, iteration)
            if metadata:
                return sum(_metadata_matches(r.image_metadata, metadata) for r in session.scalars(query))
            return session.scalar(select(func.count()).select_from(query.with_only_columns(Image.id).subquery())) or 0

    def _filtered(self, session, project, tag, tag_ids, untagged, tagged, iteration):
        query = select(Image).where(Image.project_id == project.id)
        wanted = [get_tag(session, project, t).id for t in ([tag] if tag else []) + list(tag_ids or [])]
        if wanted:
            query = query.where(Image.tags.any(ImageTag.tag_id.in_(wanted)))
        if untagged:
            query = query.where(~Image.tags.any())
        if tagged:
            query = query.where(Image.tags.any())
        if iteration is not None:
            trained = get_iteration(session, project, iteration)
            query = query.where(Image.id.in_(IterationDetails.from_json(trained.details).image_ids))
        return query

    def by_ids(self, ref: str, image_ids: builtins.list[str], iteration: str | None = None) -> builtins.list[ImageView]:
        """The named images, in the order asked; unknown ids (and, given an ``iteration``, images it was not
        trained on) are left out, as Custom Vision does."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            names = {t.id: t.name for t in project.tags}
            query = self._filtered(session, project, None, None, False, False, iteration)
            found = {img.id: img for img in session.scalars(query.where(Image.id.in_(image_ids)))}
            return [image_view(found[i], names) for i in dict.fromkeys(image_ids) if i in found]

    def data(self, ref: str, image_id: str) -> bytes:
        """The original bytes of one image."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            sha = session.scalar(select(Image.sha256).where(Image.project_id == project.id, Image.id == image_id))
        if sha is None:
            raise NotFound(f"Project has no image {image_id!r}.", code="NotFoundImage")
        return self.ctx.blobs.get(sha)

    def tag(self, ref: str, pairs: builtins.list[tuple[str, str]]) -> ImageTagCreateSummary:
        """Add (image id, tag id) taggings; a multiclass image keeps one tag (extra ones are ``exceeded``)."""
        created: list[tuple[str, str]] = []
        duplicated: list[tuple[str, str]] = []
        exceeded: list[tuple[str, str]] = []
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            tags = {t.id: t for t in project.tags}
            rows = {
                img.id: img
                for img in session.scalars(
                    select(Image).where(Image.project_id == project.id, Image.id.in_({i for i, _ in pairs}))
                )
            }
            for image_id, tag_id in dict.fromkeys(pairs):
                if image_id not in rows:
                    raise NotFound(f"Project has no image {image_id!r}.", code="NotFoundImage")
                if tag_id not in tags:
                    raise NotFound(f"Project has no tag {tag_id!r}.", code="NotFoundTag")
                current = {t.tag_id for t in rows[image_id].tags}
                if tag_id in current:
                    duplicated.append((image_id, tag_id))
                elif len(current) >= (1 if project.classification_type == "Multiclass" else MAX_TAGS_PER_IMAGE):
                    exceeded.append((image_id, tag_id))
                else:
                    kinds = {tags[t].type == "Negative" for t in current} | {tags[tag_id].type == "Negative"}
                    if len(kinds) > 1:
                        raise InvalidInput(
                            f"Image {image_id} cannot carry the Negative tag and a regular tag.",
                            code="BadRequestNegativeAndRegularTagOnSameImage",
                        )
                    rows[image_id].tags.append(ImageTag(tag_id=tag_id))
                    created.append((image_id, tag_id))
            if created:
                project.last_modified = utcnow()
        return ImageTagCreateSummary(created, duplicated, exceeded)

    def set_tags(self, ref: str, image_ids: builtins.list[str], tag_ids: builtins.list[str]) -> int:
        """Give each image exactly ``tag_ids`` (a multiclass image exactly one), in one transaction: re-tagging
        in one step, where ``untag`` then ``tag`` would leave the image untagged between the two. Returns how
        many images changed."""
        wanted = list(dict.fromkeys(tag_ids))
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            tags = [get_tag(session, project, t) for t in wanted]
            if project.classification_type == "Multiclass" and len(tags) != 1:
                raise InvalidInput("A multiclass image has exactly one tag: choose one.", code="BadRequestTagName")
            if not tags or len(tags) > MAX_TAGS_PER_IMAGE:
                raise InvalidInput(f"Choose from 1 to {MAX_TAGS_PER_IMAGE} tags.", code="BadRequestTagName")
            if len(tags) > 1 and any(t.type == "Negative" for t in tags):
                raise InvalidInput(
                    "An image cannot carry the Negative tag and a regular tag.",
                    code="BadRequestNegativeAndRegularTagOnSameImage",
                )
            rows = {
                img.id: img
                for img in session.scalars(select(Image).where(Image.project_id == project.id, Image.id.in_(image_ids)))
            }
            changed = 0
            for image_id in dict.fromkeys(image_ids):
                if image_id not in rows:
                    raise NotFound(f"Project has no image {image_id!r}.", code="NotFoundImage")
                image = rows[image_id]
                if {t.tag_id for t in image.tags} == {t.id for t in tags}:
                    continue
                kept = [t for t in image.tags if t.tag_id in {tag.id for tag in tags}]
                image.tags = kept + [ImageTag(tag_id=t.id) for t in tags if t.id not in {k.tag_id for k in kept}]
                changed += 1
            if changed:
                project.last_modified = utcnow()
        return changed

    def untag(self, ref: str, image_ids: builtins.list[str], tag_ids: builtins.list[str]) -> None:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            for tag_id in tag_ids:
                get_tag(session, project, tag_id)
            session.execute(
                delete(ImageTag).where(
                    ImageTag.tag_id.in_(tag_ids),
                    ImageTag.image_id.in_(
                        select(Image.id).where(Image.project_id == project.id, Image.id.in_(image_ids))
                    ),
                )
            )
            project.last_modified = utcnow()

    def set_metadata(
        self, ref: str, image_ids: builtins.list[str], metadata: dict[str, str]
    ) -> builtins.list[tuple[str, str, dict]]:
        """Merge ``metadata`` into each image's; -> (image id, status, metadata) per id."""
        for key, value in metadata.items():
            if not key or len(key) > MAX_METADATA_KEY:
                raise InvalidInput(
                    f"Metadata keys are 1 to {MAX_METADATA_KEY} characters.", code="BadRequestImageMetadataKey"
                )
            if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
                raise InvalidInput(
                    f"Metadata values are strings of at most {MAX_METADATA_VALUE} characters.",
                    code="BadRequestImageMetadataValue",
                )
        out: list[tuple[str, str, dict]] = []
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            rows = {
                img.id: img
                for img in session.scalars(select(Image).where(Image.project_id == project.id, Image.id.in_(image_ids)))
            }
            for image_id in image_ids:
                row = rows.get(image_id)
                if row is None:
                    out.append((image_id, "ErrorImageNotFound", {}))
                    continue
                merged = {**(row.image_metadata or {}), **metadata}
                if len(merged) > MAX_METADATA_PAIRS:
                    out.append((image_id, "ErrorLimitExceed", row.image_metadata or {}))
                    continue
                row.image_metadata = merged
                out.append((image_id, "OK", merged))
        return out

    def delete(self, ref: str, image_ids: builtins.list[str] | None = None, *, every: bool = False) -> int:
        """Delete the named images (or ``every`` image) from a project; returns how many were deleted.

        Iterations keep working: they hold their own frozen heads, and blobs are content-addressed.
        """
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            query = select(Image.id).where(Image.project_id == project.id)
            if not every:
                query = query.where(Image.id.in_(image_ids or []))
            ids = list(session.scalars(query))
            for start in range(0, len(ids), 500):
                session.execute(delete(Image).where(Image.id.in_(ids[start : start + 500])))
            project.last_modified = utcnow()
            return len(ids)


@dataclass(frozen=True)
class MetadataCondition:
    key: str
    equal: bool
    value: str


def parse_metadata_filter(text: str) -> list[MetadataCondition]:
    """Custom Vision's ``$filter``: ``metadata=k1 eq 'v1' and k2 ne 'v2'`` (the ``metadata=`` is optional)."""
    body = text.strip()
    if body.lower().startswith("metadata="):
        body = body[len("metadata=") :]
    conditions = []
    for part in re.split(r"\s+and\s+", body.strip(), flags=re.IGNORECASE):
        match = re.fullmatch(r"\s*([^\s']+)\s+(eq|ne)\s+'((?:[^']|'')*)'\s*", part, flags=re.IGNORECASE)
        if match is None:
            raise InvalidInput(
                f"Cannot read the filter {text!r}; write it as metadata=key eq 'value' and key2 ne 'value2'.",
                code="BadRequestInvalid",
            )
        key, op, value = match.groups()
        conditions.append(MetadataCondition(key, op.lower() == "eq", value.replace("''", "'")))
    return conditions


def _metadata_matches(metadata: dict | None, conditions: list[MetadataCondition] | None) -> bool:
    metadata = metadata or {}
    return all((metadata.get(c.key) == c.value) == c.equal for c in conditions or [])


def _reader(result: bytes | TagvisionError) -> Callable[[], bytes]:
    def read() -> bytes:
        if isinstance(result, TagvisionError):
            raise result
        return result

    return read


def image_view(img: Image, tag_names: dict[str, str]) -> ImageView:
    return ImageView(
        img.id,
        img.created,
        img.width,
        img.height,
        img.content_type,
        img.sha256,
        [(t.tag_id, tag_names[t.tag_id], t.created) for t in img.tags],
        img.source,
        dict(img.image_metadata or {}),
        [{**r, "tagName": tag_names.get(r.get("tagId", ""), "")} for r in img.regions or []],
    )
