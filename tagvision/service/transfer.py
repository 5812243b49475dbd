"""Projects as files: export a whole project to a ``.tvproj`` archive, import one on another store.

Export writes the project, its tags, every image with its tags, metadata, source and regions, and
every finished iteration with its frozen artifacts (head, evaluation, fine-tuned backbone), details
and publish name (:mod:`tagvision.archive`). Import gives everything new ids, remaps every reference
(image tags, regions, an iteration's tags, images and evaluation rows) and writes the blobs first and
then all rows in one transaction: a project appears whole or not at all, and its iterations predict
exactly as before, without training again. Iterations still training are left out (and said so);
stored predictions and model exports are not part of a project archive.

Custom Vision's token-based ``export_project`` / ``import_project`` use the same archives: the token
names the archive's signed download link and hash, so an import on another server fetches it (through
the SSRF guard) and an import on the same server reads it from the blob store.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from tagvision import archive, fetch, images
from tagvision.errors import InvalidInput, TagvisionError
from tagvision.service.context import Context, Progress, get_project, no_progress
from tagvision.service.details import IterationDetails
from tagvision.service.projects import Projects, free_name
from tagvision.service.training_set import Evaluation, training_fingerprint
from tagvision.service.views import ProjectView
from tagvision.store.blobs import file_sha256
from tagvision.store.models import Image, ImageTag, Iteration, Project, Tag, new_id, utcnow

MAX_ARCHIVE_BYTES = 64 * 1024**3  # an import by token downloads at most this much
ARCHIVE_TIMEOUT = 6 * 3600.0
TOKEN_PREFIX = "tvproj1."


@dataclass(frozen=True)
class ArchiveSummary:
    """What an export wrote (Custom Vision's ProjectExport counts) and what it left out."""

    project_id: str
    project_name: str
    tags: int
    images: int
    iterations: int
    regions: int
    skipped_iterations: list[str]  # still training: not exported
    sha256: str = ""  # of the archive file
    size_bytes: int = 0


class Transfer:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ export

    def export_project(self, ref: str, path: Path, progress: Progress = no_progress) -> ArchiveSummary:
        """Write the project to ``path`` (atomically: a temporary file renamed at the end)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            record = archive.ProjectFile(
                project=archive.ProjectRecord(
                    id=project.id,
                    name=project.name,
                    description=project.description,
                    classificationType=project.classification_type,
                    domain=project.domain,
                    detectionDomain=project.detection_domain,
                    created=project.created,
                    lastModified=project.last_modified,
                ),
                tags=[
                    archive.TagRecord(id=t.id, name=t.name, description=t.description, type=t.type)
                    for t in project.tags
                ],
                iterations=[
                    _iteration_record(session, project, i) for i in project.iterations if i.status != "Training"
                ],
            )
            skipped = [i.name for i in project.iterations if i.status == "Training"]
            rows = session.scalars(
                select(Image).where(Image.project_id == project.id).order_by(Image.created, Image.id)
            )
            image_records = [_image_record(img) for img in rows]
        writer = archive.ArchiveWriter(path)
        try:
            for done, image in enumerate(image_records, 1):
                writer.add_image(image, functools.partial(self.ctx.blobs.get, image.sha256))
                if done % 32 == 0 or done == len(image_records):
                    progress("exporting images", done, len(image_records))
            for iteration in record.iterations:
                for key in iteration.blobs():
                    writer.add_file(key, functools.partial(self.ctx.blobs.get, key))
            manifest = writer.finish(record)
        except BaseException:
            writer.abort()
            raise
        return ArchiveSummary(
            record.project.id,
            record.project.name,
            manifest.counts["tags"],
            manifest.counts["images"],
            manifest.counts["iterations"],
            manifest.counts["regions"],
            skipped,
            file_sha256(path),
            path.stat().st_size,
        )

    def export_token(self, ref: str) -> ArchiveSummary:
        """Custom Vision's ``export_project``: the archive into the blob store (by its sha256), and the counts;
        :meth:`token` makes the token from them and the archive's signed download link."""
        with tempfile.TemporaryDirectory(dir=self.ctx.settings.data_dir, prefix=".export-") as folder:
            path = Path(folder) / "project.tvproj"
            summary = self.export_project(ref, path)
            key = self.ctx.blobs.put_file(path)
        return ArchiveSummary(**{**summary.__dict__, "sha256": key})

    @staticmethod
    def token(summary: ArchiveSummary, url: str) -> str:
        payload = {"url": url, "sha256": summary.sha256, "name": summary.project_name}
        return TOKEN_PREFIX + base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")

    # ------------------------------------------------------------------ import

    def import_token(self, token: str, name: str | None = None) -> ProjectView:
        """Custom Vision's ``import_project``: the archive a token names, from this store or from the server
        that made it."""
        url, sha = _read_token(token)
        if self.ctx.blobs.exists(sha):
            return self.import_project(self.ctx.blobs.local_path(sha), name)
        with tempfile.TemporaryDirectory(dir=self.ctx.settings.data_dir, prefix=".import-") as folder:
            path = Path(folder) / "project.tvproj"
            with open(path, "wb") as sink:
                try:
                    fetch.fetch(
                        url,
                        max_bytes=MAX_ARCHIVE_BYTES,
                        timeout=ARCHIVE_TIMEOUT,
                        allow_private=self.ctx.settings.allow_private_urls,
                        sink=sink,
                    )
                except TagvisionError as exc:
                    raise InvalidInput(
                        f"The archive the token names could not be fetched: {exc.message}",
                        code="ErrorProjectImportRequestFailed",
                    ) from None
            if file_sha256(path) != sha:
                raise InvalidInput(
                    "The archive fetched for the token is not the one it names.", code="BadRequestInvalidImportToken"
                )
            return self.import_project(path, name)

    def import_project(self, path: Path, name: str | None = None, progress: Progress = no_progress) -> ProjectView:
        """Create a new project from an archive (named ``name``, else the archive's; a taken name gets
        "(imported)"). Blobs first, then every row in one transaction."""
        with archive.ArchiveReader(path) as reader:
            record = reader.project
            image_records = list(reader.images())
            images_map = {r.id: new_id() for r in image_records}
            tags_map = {t.id: new_id() for t in record.tags}
            facts = self._store_images(reader, image_records, progress)
            iterations = [self._iteration_row(reader, i, tags_map, images_map) for i in record.iterations]
        with self.ctx.db.session() as session:
            taken = {n.casefold() for n in session.scalars(select(Project.name))}
            project = Project(
                id=new_id(),
                name=free_name((name or record.project.name).strip() or record.project.name, taken, "imported"),
                description=record.project.description,
                classification_type=record.project.classificationType,
                domain=record.project.domain,
                detection_domain=record.project.detectionDomain,
                **_times(record.project.created, record.project.lastModified),
            )
            session.add(project)
            session.add_all(
                Tag(id=tags_map[t.id], project_id=project.id, name=t.name, description=t.description, type=t.type)
                for t in record.tags
            )
            session.flush()
            for image in image_records:
                session.add(_image_row(image, project.id, images_map, tags_map, facts[image.sha256]))
            for row in iterations:
                row.project_id = project.id
                session.add(row)
            session.flush()
            session.expire(project)
            for row, kept in zip(iterations, record.iterations, strict=True):
                if kept.upToDate:  # ids changed: its fingerprint is the imported project's as it stands
                    details = IterationDetails.from_json(row.details)
                    details.fingerprint = training_fingerprint(session, project, details.selected_tags)
                    row.details = details.to_json()
            project_id = project.id
        return Projects(self.ctx).get(project_id)

    def _store_images(
        self, reader: archive.ArchiveReader, records: list[archive.ImageRecord], progress: Progress
    ) -> dict[str, images.ImageFacts]:
        """Validate every image as an upload is and put it in the blob store; -> facts by sha256."""
        facts: dict[str, images.ImageFacts] = {}
        for done, image in enumerate(records, 1):
            if image.sha256 not in facts:
                data = reader.read_file(image.sha256, images.MAX_TRAINING_BYTES)
                try:
                    facts[image.sha256] = images.validate(data)
                except TagvisionError as exc:
                    raise archive.invalid_archive(
                        f"Image {image.id} in the archive is refused: {exc.message}"
                    ) from None
                self.ctx.blobs.put(data)
            if done % 32 == 0 or done == len(records):
                progress("importing images", done, len(records))
        return facts

    def _iteration_row(
        self,
        reader: archive.ArchiveReader,
        record: archive.IterationRecord,
        tags_map: dict[str, str],
        images_map: dict[str, str],
    ) -> Iteration:
        """An iteration with its artifacts in the blob store and every id it holds remapped."""
        for key in (record.headBlob, record.backboneBlob):
            if key:
                self.ctx.blobs.put(reader.read_file(key))
        evaluation_key = None
        if record.evaluationBlob:
            evaluation = Evaluation.from_bytes(reader.read_file(record.evaluationBlob))
            remapped = np.array([images_map.get(str(i), str(i)) for i in evaluation.image_ids])
            kept = Evaluation(evaluation.probabilities, evaluation.labels, evaluation.folds, remapped)
            evaluation_key = self.ctx.blobs.put(kept.to_bytes())
        details = IterationDetails.from_json(record.details)
        details.tags = [(tags_map.get(t, t), n) for t, n in details.tags]
        details.image_ids = [images_map.get(i, i) for i in details.image_ids]
        if details.selected_tags is not None:
            details.selected_tags = [tags_map.get(t, t) for t in details.selected_tags]
        return Iteration(
            id=new_id(),
            name=record.name,
            status=record.status,
            training_type=record.trainingType,
            classification_type=record.classificationType,
            domain=record.domain,
            trained_at=record.trainedAt,
            error=record.error,
            head_blob=record.headBlob,
            evaluation_blob=evaluation_key,
            backbone_blob=record.backboneBlob,
            details=details.to_json(),
            training_seconds=record.trainingSeconds,
            reserved_budget_hours=record.reservedBudgetHours,
            publish_name=record.publishName,
            publish_resource_id=record.publishResourceId,
            **_times(record.created, record.lastModified),
        )


def _iteration_record(session, project: Project, iteration: Iteration) -> archive.IterationRecord:
    details = IterationDetails.from_json(iteration.details)
    current = training_fingerprint(session, project, details.selected_tags)
    return archive.IterationRecord(
        id=iteration.id,
        name=iteration.name,
        status=iteration.status,
        trainingType=iteration.training_type,
        classificationType=iteration.classification_type,
        domain=iteration.domain,
        created=iteration.created,
        lastModified=iteration.last_modified,
        trainedAt=iteration.trained_at,
        error=iteration.error,
        trainingSeconds=iteration.training_seconds,
        reservedBudgetHours=iteration.reserved_budget_hours,
        publishName=iteration.publish_name,
        publishResourceId=iteration.publish_resource_id,
        details=dict(iteration.details or {}),
        headBlob=iteration.head_blob,
        evaluationBlob=iteration.evaluation_blob,
        backboneBlob=iteration.backbone_blob,
        upToDate=iteration.status == "Completed" and details.fingerprint == current,
    )


def _image_record(img: Image) -> archive.ImageRecord:
    return archive.ImageRecord(
        id=img.id,
        sha256=img.sha256,
        created=img.created,
        source=dict(img.source or {}),
        metadata=dict(img.image_metadata or {}),
        tags=[archive.ImageTagRecord(tagId=t.tag_id, created=t.created) for t in img.tags],
        regions=list(img.regions) if img.regions else None,
    )


def _image_row(
    record: archive.ImageRecord,
    project_id: str,
    images_map: dict[str, str],
    tags_map: dict[str, str],
    facts: images.ImageFacts,
) -> Image:
    unknown = [t.tagId for t in record.tags if t.tagId not in tags_map]
    if unknown:
        raise archive.invalid_archive(f"Image {record.id} names tags the archive does not have: {', '.join(unknown)}.")
    regions = [{**r, "tagId": tags_map.get(r.get("tagId", ""), r.get("tagId"))} for r in record.regions or []]
    return Image(
        id=images_map[record.id],
        project_id=project_id,
        sha256=facts.sha256,
        format=facts.format,
        content_type=facts.content_type,
        width=facts.width,
        height=facts.height,
        size_bytes=facts.size_bytes,
        source=record.source,
        image_metadata=record.metadata,
        regions=regions or None,
        tags=[ImageTag(tag_id=tags_map[t.tagId], **({"created": t.created} if t.created else {})) for t in record.tags],
        **({"created": record.created} if record.created else {}),
    )


def _times(created, last_modified) -> dict:
    now = utcnow()
    return {"created": created or now, "last_modified": last_modified or created or now}


def _read_token(token: str) -> tuple[str, str]:
    bad = InvalidInput(
        "The import token is not one tagvision's export_project gave.", code="BadRequestInvalidImportToken"
    )
    if not token.startswith(TOKEN_PREFIX):
        raise bad
    body = token[len(TOKEN_PREFIX) :]
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        url, sha = str(payload["url"]), str(payload["sha256"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad from None
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise bad
    return url, sha
