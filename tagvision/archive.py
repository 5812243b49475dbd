"""The ``.tvproj`` project archive: one zip file that holds a whole project.

Layout (format ``tagvision-project``, version :data:`VERSION`)::

    tagvision-project.json   the manifest: format, version, the writer's version, counts
    project.json             the project, its tags and its iterations (with their artifacts' sha256)
    images.jsonl             one image per line: id, sha256, created, source, metadata, tags, regions
    files/<sha256>           every image's bytes and every artifact (heads, evaluations, backbones), once

Ids in the archive are the exporting store's; an importer gives everything new ids and remaps the
references (the service does that: :mod:`tagvision.service.transfer`). Files are stored uncompressed
(images are compressed already), JSON deflated; the zip is written to a temporary name and renamed,
and its bytes depend only on its contents (fixed member times), so exporting an unchanged project
twice gives the same file.

Extensible: records are pydantic models that keep fields they do not know (``model_extra``) and write
them back, so a newer writer's additions (tag information, say) survive an older reader's round trip.
``version`` changes only when an older reader could no longer make sense of an archive; a reader
refuses a version newer than its own with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tagvision import __version__
from tagvision.errors import InvalidInput

FORMAT: Literal["tagvision-project"] = "tagvision-project"
VERSION = 1
MANIFEST, PROJECT, IMAGES = "tagvision-project.json", "project.json", "images.jsonl"
FILES = "files/"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same contents give the same bytes
MAX_FILE_BYTES = 2 * 1024**3  # an artifact (a fine-tuned backbone is tens of MB); images are capped lower
MAX_RECORDS_BYTES = 1024**3  # project.json and the manifest, read whole


class Record(BaseModel):
    """An archive record: unknown fields are kept and written back."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Manifest(Record):
    format: Literal["tagvision-project"] = FORMAT
    version: int = VERSION
    writtenBy: str = f"tagvision {__version__}"
    counts: dict[str, int] = {}


class TagRecord(Record):
    id: str
    name: str
    description: str = ""
    type: str = "Regular"


class ProjectRecord(Record):
    id: str
    name: str
    description: str = ""
    classificationType: str
    domain: str
    detectionDomain: str | None = None
    created: datetime | None = None
    lastModified: datetime | None = None


class IterationRecord(Record):
    id: str
    name: str
    status: str
    trainingType: str = "Regular"
    classificationType: str
    domain: str
    created: datetime | None = None
    lastModified: datetime | None = None
    trainedAt: datetime | None = None
    error: str | None = None
    trainingSeconds: float | None = None
    reservedBudgetHours: int = 0
    publishName: str | None = None
    publishResourceId: str | None = None
    details: dict[str, Any] = {}
    headBlob: str | None = None
    evaluationBlob: str | None = None
    backboneBlob: str | None = None
    upToDate: bool = False  # trained on the project's images and tags as exported (so no training is needed)

    def blobs(self) -> list[str]:
        return [b for b in (self.headBlob, self.evaluationBlob, self.backboneBlob) if b]


class ImageTagRecord(Record):
    tagId: str
    created: datetime | None = None


class ImageRecord(Record):
    id: str
    sha256: str
    created: datetime | None = None
    source: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    tags: list[ImageTagRecord] = []
    regions: list[dict[str, Any]] | None = None


class ProjectFile(Record):
    """``project.json``."""

    project: ProjectRecord
    tags: list[TagRecord] = []
    iterations: list[IterationRecord] = []


def invalid_archive(message: str) -> InvalidInput:
    """The error for an archive that cannot be read or trusted."""
    return InvalidInput(message, code="BadRequestInvalidProjectArchive")


class ArchiveWriter:
    """Writes an archive to ``path`` atomically: add files and images, then :meth:`finish` (or :meth:`abort`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        self._tmp = Path(tmp)
        self._zip = zipfile.ZipFile(self._tmp, "w", allowZip64=True)
        self._files: set[str] = set()
        self._images: list[str] = []

    def add_file(self, sha256: str, read: Callable[[], bytes]) -> None:
        """A file by its sha256 (once, however often it is named); ``read`` is called only the first time."""
        if sha256 in self._files:
            return
        data = read()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise invalid_archive(f"File {sha256} does not have the content its name promises.")
        self._write(FILES + sha256, data, zipfile.ZIP_STORED)
        self._files.add(sha256)

    def add_image(self, image: ImageRecord, read: Callable[[], bytes]) -> None:
        self.add_file(image.sha256, read)
        self._images.append(image.model_dump_json(exclude_none=True))

    def finish(self, project: ProjectFile) -> Manifest:
        for iteration in project.iterations:
            missing = [b for b in iteration.blobs() if b not in self._files]
            if missing:
                raise invalid_archive(f"{iteration.name}: its artifacts were not added to the archive.")
        manifest = Manifest(
            counts={
                "tags": len(project.tags),
                "images": len(self._images),
                "iterations": len(project.iterations),
                "regions": sum(len(json.loads(line).get("regions") or []) for line in self._images),
                "files": len(self._files),
            }
        )
        self._write(MANIFEST, manifest.model_dump_json(indent=1).encode(), zipfile.ZIP_DEFLATED)
        self._write(PROJECT, project.model_dump_json(indent=1, exclude_none=True).encode(), zipfile.ZIP_DEFLATED)
        self._write(IMAGES, "".join(line + "\n" for line in self._images).encode(), zipfile.ZIP_DEFLATED)
        self._zip.close()
        with open(self._tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self._tmp, self.path)
        return manifest

    def abort(self) -> None:
        self._zip.close()
        self._tmp.unlink(missing_ok=True)

    def _write(self, name: str, data: bytes, compression: int) -> None:
        info = zipfile.ZipInfo(name, date_time=_EPOCH)
        info.compress_type = compression
        info.external_attr = 0o644 << 16
        self._zip.writestr(info, data)


class ArchiveReader:
    """Reads and checks an archive: the manifest's format and version, the records, every file's hash."""

    def __init__(self, path: Path) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise invalid_archive(f"{path} is not a tagvision project archive ({exc}).") from None
        names = set(self._zip.namelist())
        if MANIFEST not in names or PROJECT not in names:
            self._zip.close()
            raise invalid_archive(f"{path} is not a tagvision project archive (no {MANIFEST}).")
        if any(self._zip.getinfo(n).file_size > MAX_RECORDS_BYTES for n in (MANIFEST, PROJECT)):
            self._zip.close()
            raise invalid_archive(f"{path}: its records are larger than {MAX_RECORDS_BYTES} bytes.")
        try:
            self.manifest = Manifest.model_validate_json(self._zip.read(MANIFEST))
            if self.manifest.version > VERSION:
                raise invalid_archive(
                    f"The archive is format version {self.manifest.version}, written by {self.manifest.writtenBy}; "
                    f"this tagvision reads up to version {VERSION}. Import it with a newer tagvision."
                )
            self.project = ProjectFile.model_validate_json(self._zip.read(PROJECT))
        except ValidationError as exc:
            self._zip.close()
            raise invalid_archive(f"The archive's records are not valid: {exc.errors()[0]['msg']}.") from None
        self._files = {n[len(FILES) :] for n in names if n.startswith(FILES)}

    def images(self) -> Iterator[ImageRecord]:
        with self._zip.open(IMAGES) as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield ImageRecord.model_validate_json(line)
                    except ValidationError as exc:
                        raise invalid_archive(f"images.jsonl line {number}: {exc.errors()[0]['msg']}.") from None

    def has_file(self, sha256: str) -> bool:
        return sha256 in self._files

    def read_file(self, sha256: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """A file's bytes, checked against its name; refused unread when it says it is over ``max_bytes``
        (the zip reader never returns more than a member declares)."""
        if sha256 not in self._files:
            raise invalid_archive(f"The archive lacks file {sha256}.")
        size = self._zip.getinfo(FILES + sha256).file_size
        if size > max_bytes:
            raise invalid_archive(f"File {sha256} in the archive is {size} bytes; at most {max_bytes} are allowed.")
        data = self._zip.read(FILES + sha256)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise invalid_archive(f"File {sha256} in the archive is damaged (its hash differs).")
        return data

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
