"""Bring projects over from a Custom Vision Training API: Azure's, or another tagvision server's.

For each source project: the project (name, description, classification type, domain), its tags
(with descriptions and types, Negative included) and every image, tagged or not, with its tags,
metadata and regions; each original downloaded from its ``originalImageUri``
(:mod:`tagvision.sources.customvision` reads the source: paging, throttling, SSRF guard).

* **Resumable.** The project, its tags and a :class:`~tagvision.store.models.ProjectMigration` row
  are written in one transaction, so a re-run finds its project again. Images land in batches of
  :data:`BATCH` per transaction; a re-run skips images brought over before (by their source id, or by
  content hash where the source says it, as tagvision does) and the store refuses a second copy of
  the same bytes, so a run killed at any point and run again ends with exactly one copy of each.
* **Honest summary.** What came, what was already there, and each image that did not come with its
  code and reason; notes for renamed projects or tags and dropped tag links.
* **Object detection** projects come over with their images, tags and regions, marked not trainable
  (``Project.detection_domain``); the summary says so.
* ``compare`` trains a migrated project and sets its figures per tag beside the source's published
  (else newest) iteration at the same threshold.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Result, select

from tagvision import domains
from tagvision.clock import SYSTEM, Clock
from tagvision.errors import TagvisionError, TrainingError
from tagvision.service.context import Context, Progress, no_progress
from tagvision.service.images import Images, NewImage
from tagvision.service.projects import classification_type, clean_name, free_name, tag_type
from tagvision.service.training import Training
from tagvision.service.views import CLASSIFICATION_TYPES, IterationView, PerformanceView
from tagvision.sources.customvision import (
    SourceImage,
    SourcePerformance,
    SourceProject,
    SourceTag,
    SourceTagPerformance,
    TrainingAPI,
    normalise_endpoint,
)
from tagvision.store.models import Image, Project, ProjectMigration, Tag, utcnow

BATCH = 32  # images per transaction, as uploads
MAX_NOTES = 50


@dataclass(frozen=True)
class MigrationRequest:
    """Where to read from and what: named projects (ids or names), or ``every`` project."""

    endpoint: str
    training_key: str = field(repr=False)
    projects: tuple[str, ...] = ()
    every: bool = False
    concurrency: int = 8  # originals downloaded at once
    calls_per_second: float = 10.0  # Training API calls (Azure's S0 tier allows about 10)


@dataclass(frozen=True)
class Refused:
    image_id: str
    status: str  # an ImageCreateStatus (ErrorImageFormat, ErrorSource, ...)
    message: str


@dataclass
class ProjectReport:
    """What one project's migration did."""

    source_id: str
    source_name: str
    project_id: str = ""
    project_name: str = ""
    classification_type: str = ""
    detection: bool = False  # object detection: images, tags and regions came; not trainable yet
    source_images: int = 0  # images the source listed
    added: int = 0
    already_there: int = 0  # brought over by an earlier run (same source image or same bytes)
    tags_created: int = 0
    refused: list[Refused] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the project stopped early: why

    @property
    def complete(self) -> bool:
        return self.error is None and not self.refused

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def to_json(self) -> dict[str, Any]:
        return {
            "sourceId": self.source_id,
            "sourceName": self.source_name,
            "projectId": self.project_id,
            "projectName": self.project_name,
            "classificationType": self.classification_type,
            "objectDetection": self.detection,
            "trainable": not self.detection,
            "sourceImages": self.source_images,
            "added": self.added,
            "alreadyThere": self.already_there,
            "tagsCreated": self.tags_created,
            "refused": [{"imageId": r.image_id, "status": r.status, "message": r.message} for r in self.refused],
            "notes": self.notes,
            "error": self.error,
        }


@dataclass
class MigrationReport:
    endpoint: str
    version: str
    projects: list[ProjectReport]
    throttled: int = 0  # 429 answers the source gave
    waited_seconds: float = 0.0  # spent waiting on them and on retries

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "apiVersion": self.version,
            "projects": [p.to_json() for p in self.projects],
            "throttled": self.throttled,
            "waitedSeconds": round(self.waited_seconds, 3),
        }


@dataclass(frozen=True)
class TagComparison:
    tag: str
    source: SourceTagPerformance | None
    here_precision: float | None
    here_recall: float | None
    here_average_precision: float | None


@dataclass(frozen=True)
class Comparison:
    """A migrated project's figures beside the source's, per tag, at one threshold."""

    project_name: str
    threshold: float
    source_iteration: str | None  # its name, and "(published as X)" when it is
    source: SourcePerformance | None
    iteration: IterationView | None
    here: PerformanceView | None
    rows: list[TagComparison]
    note: str | None = None  # why there is nothing to compare


class Migrations:
    def __init__(self, ctx: Context, images: Images, training: Training) -> None:
        self.ctx = ctx
        self.images = images
        self.training = training

    def source(self, request: MigrationRequest, clock: Clock = SYSTEM) -> TrainingAPI:
        """The source's Training API, under the operator's SSRF rule."""
        return TrainingAPI(
            request.endpoint,
            request.training_key,
            allow_private=self.ctx.settings.allow_private_urls,
            clock=clock,
            calls_per_second=request.calls_per_second,
        )

    def run(
        self,
        request: MigrationRequest,
        progress: Progress = no_progress,
        clock: Clock = SYSTEM,
        api: TrainingAPI | None = None,
    ) -> MigrationReport:
        """Bring the requested projects over, one after the other; a project that fails is reported and the
        others still come. ``progress`` is called with each project's name as its stage."""
        owned = api is None
        api = api or self.source(request, clock)
        try:
            chosen = self._choose(api, request)
            reports = [self.migrate_project(api, project, request.concurrency, progress) for project in chosen]
            return MigrationReport(api.endpoint, api.version, reports, api.throttled, api.waited)
        finally:
            if owned:
                api.close()

    def _choose(self, api: TrainingAPI, request: MigrationRequest) -> list[SourceProject]:
        if request.every:
            return api.projects()
        if not request.projects:
            names = ", ".join(p.name for p in api.projects()) or "none"
            raise TagvisionError(
                f"Name the projects to bring over, or all of them (the source has: {names}).",
                code="BadRequestProjectName",
            )
        return [api.project(ref) for ref in dict.fromkeys(request.projects)]

    def migrate_project(
        self, api: TrainingAPI, source: SourceProject, concurrency: int = 8, progress: Progress = no_progress
    ) -> ProjectReport:
        report = ProjectReport(source.id, source.name)
        record_id = None
        try:
            tags = api.tags(source.id)
            record_id, tag_map = self._target(api.endpoint, source, tags, report)
            report.source_images = api.image_count(source.id)
            self._bring_images(api, source, tag_map, concurrency, report, progress)
        except TagvisionError as exc:
            report.error = f"{exc.code}: {exc.message}"
        if record_id is not None:
            with self.ctx.db.session() as session:
                record = session.get(ProjectMigration, record_id)
                if record is not None:
                    record.status = "Failed" if report.error else "Completed"
                    record.report, record.last_modified = report.to_json(), utcnow()
        return report

    # ------------------------------------------------------------------ project and tags

    def _target(
        self, endpoint: str, source: SourceProject, tags: list[SourceTag], report: ProjectReport
    ) -> tuple[str, dict[str, str]]:
        """The project brought over from ``source`` (made now, with its tags and its migration record, in one
        transaction; or found again) and the source tag id -> tag id map, new source tags added."""
        endpoint = normalise_endpoint(endpoint)
        with self.ctx.db.session() as session:
            record = session.scalars(
                select(ProjectMigration).where(
                    ProjectMigration.endpoint == endpoint, ProjectMigration.source_project_id == source.id
                )
            ).first()
            project: Project | None
            if record is None:
                project = self._new_project(session, source, report)
                record = ProjectMigration(endpoint=endpoint, source_project_id=source.id, project_id=project.id)
                session.add(record)
            else:
                project = session.get(Project, record.project_id)
                assert project is not None  # the record is deleted with its project
            tag_map = dict(record.tag_map or {})
            taken = {t.name.casefold() for t in project.tags}
            known = {t.id for t in project.tags}
            negative = any(t.type == "Negative" for t in project.tags)
            for tag in tags:
                if tag_map.get(tag.id) in known:
                    continue
                kind = tag_type(tag.type) if tag.type in ("Regular", "Negative", "GeneralProduct") else "Regular"
                if kind == "Negative" and negative:
                    report.note(f"Tag {tag.name!r}: a second Negative tag came over as a Regular tag.")
                    kind = "Regular"
                negative = negative or kind == "Negative"
                name = free_name(clean_name(tag.name, "tag"), taken)
                if name != tag.name:
                    report.note(f"Tag {tag.name!r} is named {name!r} here (another tag had that name).")
                row = Tag(project_id=project.id, name=name, description=tag.description[:4000], type=kind)
                session.add(row)
                session.flush()
                taken.add(name.casefold())
                tag_map[tag.id] = row.id
                report.tags_created += 1
            record.tag_map, record.status, record.last_modified = tag_map, "Running", utcnow()
            project.last_modified = utcnow()
            report.project_id, report.project_name = project.id, project.name
            report.classification_type = project.classification_type
            report.detection = project.detection_domain is not None
            return record.id, tag_map

    def _new_project(self, session, source: SourceProject, report: ProjectReport) -> Project:
        known = next((d for d in domains.DOMAINS if d.id == source.domain_id.lower()), None)
        detection = known is not None and known.type == domains.OBJECT_DETECTION
        if known is None:
            report.note(f"The source's domain {source.domain_id!r} is unknown here; the project uses General.")
            domain = domains.GENERAL
        elif detection:
            domain = domains.GENERAL_COMPACT if "compact" in known.name.lower() else domains.GENERAL
        else:
            domain = known.id
        kind = source.classification_type if source.classification_type in CLASSIFICATION_TYPES else "Multilabel"
        taken = {n.casefold() for n in session.scalars(select(Project.name))}
        wanted = clean_name(source.name, "project")
        name = free_name(wanted, taken, "migrated")
        if name != wanted:
            report.note(f"A project named {wanted!r} already exists here; this one is named {name!r}.")
        project = Project(
            name=name,
            description=source.description[:4000],
            classification_type=classification_type(kind),
            domain=domain,
            detection_domain=known.id if detection and known else None,
        )
        session.add(project)
        session.flush()
        return project

    # ------------------------------------------------------------------ images

    def _bring_images(
        self,
        api: TrainingAPI,
        source: SourceProject,
        tag_map: dict[str, str],
        concurrency: int,
        report: ProjectReport,
        progress: Progress,
    ) -> None:
        known_ids, known_hashes = self._already_here(api.endpoint, source.id, report.project_id)
        multiclass = report.classification_type == "Multiclass" and not report.detection
        done = 0
        stage = source.name
        progress(stage, 0, report.source_images)

        def wanted() -> Iterator[SourceImage]:
            nonlocal done
            for image in api.images(source.id):
                if image.id in known_ids or (image.sha256 and image.sha256 in known_hashes):
                    report.already_there += 1
                    done += 1
                    continue
                problem = self._check_tags(image, tag_map, multiclass, report)
                if problem is not None:
                    report.refused.append(problem)
                    done += 1
                    continue
                yield image

        batch: list[NewImage] = []
        # Each original goes to the blob store on its downloading thread (a blob before its row; a blob
        # orphaned by a kill or a refusal is harmless): the writes and their fsyncs overlap.
        for image, result in api.download_all(wanted(), concurrency, then=self.ctx.blobs.put):
            if isinstance(result, TagvisionError):
                status = result.code if result.code.startswith("Error") else "ErrorSource"
                report.refused.append(Refused(image.id, status, result.message))
                done += 1
            else:
                batch.append(self._new_image(api.endpoint, source.id, image, result, tag_map))
            if len(batch) >= BATCH:
                done += self._store(report, batch)
                batch = []
            progress(stage, done, max(done, report.source_images))
        if batch:
            done += self._store(report, batch)
        progress(stage, done, max(done, report.source_images))

    def _already_here(self, endpoint: str, source_id: str, project_id: str) -> tuple[set[str], set[str]]:
        """Source image ids brought over into the project before, and the content hashes it holds."""
        ids: set[str] = set()
        hashes: set[str] = set()
        endpoint = normalise_endpoint(endpoint)
        with self.ctx.db.session() as session:
            rows: Result[str, dict[str, Any]] = session.execute(
                select(Image.sha256, Image.source).where(Image.project_id == project_id)
            )
            for sha, src in rows:
                hashes.add(sha)
                origin = (src or {}).get("migratedFrom") or {}
                same_project = origin.get("endpoint") == endpoint and origin.get("projectId") == source_id
                if same_project and origin.get("imageId") is not None:
                    ids.add(origin["imageId"])
        return ids, hashes

    def _check_tags(
        self, image: SourceImage, tag_map: dict[str, str], multiclass: bool, report: ProjectReport
    ) -> Refused | None:
        unknown = [t for t in image.tags if t not in tag_map]
        if unknown:
            report.note(f"Image {image.id}: {len(unknown)} tag(s) the source no longer lists were left off.")
        if multiclass and len([t for t in image.tags if t in tag_map]) > 1:
            return Refused(
                image.id,
                "ErrorTagLimitExceed",
                f"The image has {len(image.tags)} tags in a multiclass project, which allows one.",
            )
        return None

    def _new_image(
        self, endpoint: str, source_id: str, image: SourceImage, data: bytes, tag_map: dict[str, str]
    ) -> NewImage:
        regions = tuple(
            {
                "regionId": r.region_id,
                "tagId": tag_map.get(r.tag_id, r.tag_id),
                "left": r.left,
                "top": r.top,
                "width": r.width,
                "height": r.height,
            }
            for r in image.regions
        )
        origin = {"endpoint": normalise_endpoint(endpoint), "projectId": source_id, "imageId": image.id}
        return NewImage(
            name=image.id,
            read=lambda: data,
            tags=tuple(tag_map[t] for t in image.tags if t in tag_map),
            source={"migratedFrom": origin},
            metadata=dict(image.metadata),
            regions=regions,
            created=parse_time(image.created),
        )

    def _store(self, report: ProjectReport, batch: list[NewImage]) -> int:
        summary = self.images.add(report.project_id, batch)
        for result in summary.results:
            if result.status == "OK":
                report.added += 1
            elif result.status == "OKDuplicate":
                report.already_there += 1
            else:
                report.refused.append(Refused(result.source_url, result.status, result.message))
        return len(summary.results)

    # ------------------------------------------------------------------ comparing after the move

    def compare(
        self, api: TrainingAPI, report: ProjectReport, threshold: float = 0.5, progress: Progress = no_progress
    ) -> Comparison:
        """Train the migrated project (unless its newest iteration already covers every image) and set its
        figures per tag beside the source's published, else newest, iteration at ``threshold``."""
        name = report.project_name or report.source_name
        if report.detection:
            return Comparison(name, threshold, None, None, None, None, [], "object detection is not trained yet")
        if not report.project_id:
            return Comparison(name, threshold, None, None, None, None, [], "the project did not come over")
        try:
            iteration = self.training.train(report.project_id, progress=progress)
        except TrainingError as exc:
            if exc.code != "BadRequestTrainingNotNeeded":
                return Comparison(name, threshold, None, None, None, None, [], exc.message)
            iteration = self.training.iteration(report.project_id)
        here = self.training.performance(report.project_id, iteration.id, threshold)
        reference = api.reference_iteration(report.source_id)
        theirs = api.performance(report.source_id, reference.id, threshold) if reference else None
        label = None
        if reference is not None:
            label = reference.name + (f" (published as {reference.publish_name})" if reference.publish_name else "")
        tag_map = self._tag_map(report.project_id, api.endpoint, report.source_id)
        by_here = {tag_id: t for tag_id, t in ((t.id, t) for t in here.per_tag)}
        rows = []
        for tag in theirs.per_tag if theirs else ():
            mine = by_here.pop(tag_map.get(tag.tag_id, ""), None)
            rows.append(_row(tag.name, tag, mine))
        rows += [_row(t.name, None, t) for t in by_here.values()]
        note = None if theirs else "the source has no trained iteration"
        return Comparison(name, threshold, label, theirs, iteration, here, rows, note)

    def _tag_map(self, project_id: str, endpoint: str, source_id: str) -> dict[str, str]:
        with self.ctx.db.session() as session:
            record = session.scalars(
                select(ProjectMigration).where(
                    ProjectMigration.project_id == project_id,
                    ProjectMigration.endpoint == normalise_endpoint(endpoint),
                    ProjectMigration.source_project_id == source_id,
                )
            ).first()
            return dict(record.tag_map) if record else {}


def _row(name: str, source: SourceTagPerformance | None, mine) -> TagComparison:
    if mine is None:
        return TagComparison(name, source, None, None, None)
    f = mine.figures
    return TagComparison(name, source, f.precision, f.recall, f.average_precision)


def parse_time(value: str | None) -> datetime | None:
    """An ISO-8601 time as Custom Vision writes it (``Z``, up to 7 fractional digits), in UTC; None if unreadable."""
    if not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
