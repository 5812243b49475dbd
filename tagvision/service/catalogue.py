"""Use cases for catalogues: import a file of tag information (with reference images), export it back.

An import checks every row first (the file's format, each row's tag name and information, the project's
decision rules), fetches the reference images of the good rows (URLs through the SSRF-safe downloader, local
paths only when the caller is the CLI), then applies every good row in ONE transaction: the tags missing are
created, information replaced, images added and tagged. Bad rows are reported with their line and field and
leave nothing behind; a crash mid-import leaves the project as it was (image blobs written before the
transaction are unreferenced, which is harmless). A re-import updates in place.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tagvision import fetch, images
from tagvision.errors import ImageError, InvalidInput, TagvisionError
from tagvision.knowledge import FieldError
from tagvision.knowledge import catalogue as cat
from tagvision.knowledge import rules as decision_rules
from tagvision.service.context import Context, Progress, get_project, no_progress
from tagvision.service.knowledge import information_of, write_information
from tagvision.service.projects import clean_name
from tagvision.store import queries
from tagvision.store.models import Image, ImageTag, Project, Tag, utcnow

RACE_RETRIES = 3


@dataclass(frozen=True)
class RowPlan:
    """What an import does (or would do) with one good row."""

    line: int
    tag: str
    action: str  # create | update | unchanged
    added: list[str] = field(default_factory=list)  # attribute names
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    images: int = 0  # reference images given

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "tag": self.tag,
            "action": self.action,
            "added": self.added,
            "changed": self.changed,
            "removed": self.removed,
            "images": self.images,
        }


@dataclass(frozen=True)
class ImportReport:
    dry_run: bool
    rows: list[RowPlan]
    errors: list[cat.RowError]
    images_added: int = 0  # new training images (reference images already in the project are only tagged)

    def count(self, action: str) -> int:
        return sum(r.action == action for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "dryRun": self.dry_run,
            "created": self.count("create"),
            "updated": self.count("update"),
            "unchanged": self.count("unchanged"),
            "failed": len(self.errors),
            "imagesAdded": self.images_added,
            "rows": [r.to_json() for r in self.rows],
            "errors": [e.to_json() for e in sorted(self.errors, key=lambda e: e.line)],
        }


@dataclass(frozen=True)
class _Fetched:
    facts: images.ImageFacts
    name: str
    source: dict[str, Any]


class Catalogue:
    def __init__(self, ctx: Context, fetchers: ThreadPoolExecutor) -> None:
        self.ctx = ctx
        self.fetchers = fetchers

    def import_(
        self,
        ref: str,
        data: bytes,
        fmt: str,
        *,
        key: str = "tag",
        images_column: str | None = None,
        dry_run: bool = False,
        local_files: Path | None = None,
        progress: Progress = no_progress,
    ) -> ImportReport:
        """Apply a catalogue file (see the module). ``local_files``: the folder relative image paths start from
        (the CLI's working directory); None refuses paths (over HTTP only URLs are fetched)."""
        parsed = cat.read(data, cat.format_of("", fmt), key, images_column)
        errors = list(parsed.errors)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            good, plans = self._plan(session, project, parsed.rows, errors)
        if dry_run:
            return ImportReport(True, plans, errors)
        fetched = self._fetch_all(good, errors, local_files, progress)
        good = [r for r in good if r.line not in {e.line for e in errors}]
        for _ in range(RACE_RETRIES):
            try:
                applied, added = self._apply(ref, good, fetched, errors)
                break
            except _Raced:
                continue
        else:
            raise TagvisionError("The catalogue could not be applied while other requests kept changing the tags.")
        failed = {e.line for e in errors}
        return ImportReport(False, [p for p in plans if p.line in applied and p.line not in failed], errors, added)

    def _plan(
        self, session, project: Project, rows: list[cat.Row], errors: list[cat.RowError]
    ) -> tuple[list[cat.Row], list[RowPlan]]:
        """Rows that pass every check, and what each would change; the others become errors."""
        tags = {t.name.casefold(): t for t in project.tags}
        data = information_of(session, project.id)
        rules = decision_rules.from_stored(project.rules or [])
        good, plans = [], []
        for row in rows:
            try:
                name = clean_name(row.tag, "tag")
                tag = tags.get(name.casefold())
                decision_rules.check_information(rules, tag.id if tag else "", name, row.information)
            except FieldError as exc:
                errors.append(
                    cat.RowError(row.line, exc.reason, exc.field.removeprefix("information."), exc.code, row.tag)
                )
                continue
            except InvalidInput as exc:
                errors.append(cat.RowError(row.line, exc.message, None, exc.code, row.tag))
                continue
            good.append(cat.Row(row.line, name, row.information, row.images))
            plans.append(
                _plan_row(row.line, tag.name if tag else name, tag, data.get(tag.id, {}) if tag else None, row)
            )
        return good, plans

    # ------------------------------------------------------------------ reference images

    def _fetch_all(
        self, rows: list[cat.Row], errors: list[cat.RowError], local_files: Path | None, progress: Progress
    ) -> dict[int, list[_Fetched]]:
        """Each row's reference images, validated and written to the blob store; a row with a bad one is an error."""
        wanted = [(row, ref) for row in rows for ref in row.images]
        out: dict[int, list[_Fetched]] = {}
        if not wanted:
            return out
        progress("fetching images", 0, len(wanted))
        results = self.fetchers.map(lambda item: self._one_image(item[1], local_files), wanted)
        for done, ((row, ref), result) in enumerate(zip(wanted, results, strict=True), start=1):
            progress("fetching images", done, len(wanted))
            if isinstance(result, TagvisionError):
                if all(e.line != row.line for e in errors):
                    errors.append(cat.RowError(row.line, f"{ref}: {result.message}", "images", result.code, row.tag))
                continue
            out.setdefault(row.line, []).append(result)
        return out

    def _one_image(self, ref: str, local_files: Path | None) -> _Fetched | TagvisionError:
        try:
            if ref.lower().startswith(("http://", "https://")):
                data = fetch.fetch(
                    ref, max_bytes=images.MAX_TRAINING_BYTES, allow_private=self.ctx.settings.allow_private_urls
                ).data
                source = {"url": ref}
            elif local_files is None:
                raise InvalidInput(
                    "only image URLs are fetched here; local paths work from the CLI.", code="ErrorSource"
                )
            else:
                path = local_files / ref
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise InvalidInput(f"cannot read it ({exc.strerror or exc}).", code="ErrorSource") from None
                source = {"file": path.name}
            facts = images.validate(data, max_bytes=images.MAX_TRAINING_BYTES)
            self.ctx.blobs.put(data)  # blob before row
            return _Fetched(facts, ref, source)
        except (ImageError, TagvisionError) as exc:
            return exc

    # ------------------------------------------------------------------ the one transaction

    def _apply(
        self, ref: str, rows: list[cat.Row], fetched: dict[int, list[_Fetched]], errors: list[cat.RowError]
    ) -> tuple[set[int], int]:
        """Create tags, set information, add and tag reference images: all good rows, one transaction."""
        applied: set[int] = set()
        added = 0
        late: list[cat.RowError] = []
        with self.ctx.db.session(not_unique=_Raced()) as session:
            project = get_project(session, ref)
            tags = {t.name.casefold(): t for t in project.tags}
            rules = decision_rules.from_stored(project.rules or [])
            multiclass = project.classification_type == "Multiclass"
            for row in rows:
                tag = tags.get(row.tag.casefold())
                try:  # the rules may have changed since the rows were checked
                    decision_rules.check_information(rules, tag.id if tag else "", row.tag, row.information)
                except FieldError as exc:
                    late.append(
                        cat.RowError(row.line, exc.reason, exc.field.removeprefix("information."), exc.code, row.tag)
                    )
                    continue
                items = fetched.get(row.line, [])
                problem = _image_conflict(session, project.id, tag.id if tag else None, items, multiclass)
                if problem:
                    late.append(cat.RowError(row.line, problem, "images", "BadRequestImageTags", row.tag))
                    continue
                if tag is None:
                    tag = tags[row.tag.casefold()] = Tag(project_id=project.id, name=row.tag)
                    session.add(tag)
                    session.flush()
                added += _tag_images(session, project.id, tag.id, items)
                write_information(session, project, tag, row.information)
                applied.add(row.line)
            project.last_modified = utcnow()
        errors.extend(late)
        return applied, added

    # ------------------------------------------------------------------ export

    def export(self, ref: str, fmt: str, key: str = "tag") -> tuple[str, bytes]:
        """The catalogue of every tag (information may be empty) as ``fmt``; -> (file name, bytes)."""
        fmt = cat.format_of("", fmt)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            data = information_of(session, project.id)
            rows = [(t.name, data.get(t.id, {})) for t in project.tags]
            name = project.name
        return f"{_file_stem(name)}-catalogue.{fmt}", cat.write(rows, fmt, key)


class _Raced(Exception):
    """Another request created a tag or image of the same name or content first: run the transaction again."""


def _image_conflict(
    session, project_id: str, tag_id: str | None, items: list[_Fetched], multiclass: bool
) -> str | None:
    """Why a row's reference images cannot be tagged with its tag (checked before anything of it is written)."""
    if not multiclass or not items:
        return None
    existing = queries.existing_hashes(session, project_id, [f.facts.sha256 for f in items])
    for f in items:
        image_id = existing.get(f.facts.sha256)
        if image_id is None:
            continue
        other = session.scalars(select(ImageTag.tag_id).where(ImageTag.image_id == image_id)).all()
        if any(t != tag_id for t in other):
            return f"{f.name} is already a training image of another tag; a multiclass image has one tag."
    return None


def _tag_images(session, project_id: str, tag_id: str, items: list[_Fetched]) -> int:
    """Add a row's reference images (new ones as training images) tagged with its tag; -> how many were new."""
    existing = queries.existing_hashes(session, project_id, [f.facts.sha256 for f in items]) if items else {}
    new = 0
    for f in items:
        image_id = existing.get(f.facts.sha256)
        if image_id is None:
            image = Image(
                project_id=project_id,
                sha256=f.facts.sha256,
                format=f.facts.format,
                content_type=f.facts.content_type,
                width=f.facts.width,
                height=f.facts.height,
                size_bytes=f.facts.size_bytes,
                source={"name": f.name, "catalogue": True, **f.source},
                image_metadata={},
                tags=[ImageTag(tag_id=tag_id)],
            )
            session.add(image)
            session.flush()
            existing[f.facts.sha256] = image.id
            new += 1
        elif session.get(ImageTag, (image_id, tag_id)) is None:
            session.add(ImageTag(image_id=image_id, tag_id=tag_id))
            session.flush()
    return new


def _plan_row(line: int, name: str, tag: Tag | None, current: dict[str, Any] | None, row: cat.Row) -> RowPlan:
    if tag is None or current is None:
        return RowPlan(line, name, "create", added=list(row.information), images=len(row.images))
    new = row.information
    added = [k for k in new if k not in current]
    removed = [k for k in current if k not in new]
    changed = [k for k in new if k in current and current[k] != new[k]]
    action = "update" if added or removed or changed or row.images else "unchanged"
    return RowPlan(line, name, action, added, changed, removed, len(row.images))


def _file_stem(name: str) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name).strip("-")
    return safe[:60] or "project"
