"""Content-addressed blob stores: a folder (local, or shared by several machines) or an S3-compatible bucket.

A blob's name is the SHA-256 of its bytes, kept as ``ab/cdef...``. Writes are atomic: a reader sees all of
a blob or none of it. A blob is always written before the database row that names it, so a crash can leave
an unreferenced blob (harmless) but never a row without its blob. Files made from a blob (thumbnails) are
kept beside it as *derived* blobs, so each is made once for every process that shares the store.

:func:`open_blobs` picks the store the settings name: ``TAGVISION_BLOB_URL=s3://bucket/prefix`` (see
``tagvision.store.s3``), else the folder ``TAGVISION_BLOB_ROOT`` (default ``<data dir>/blobs``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import time
from abc import ABC, abstractmethod
from pathlib import Path

from tagvision.config import Settings
from tagvision.errors import StorageError

TEMP_DIR = ".tmp"  # unfinished writes, on the same file system as the blobs so that rename is atomic
STALE_TEMP_SECONDS = 3600.0  # a temporary file this old was left by a killed writer


def check_key(key: str) -> str:
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        raise ValueError(f"not a blob key: {key!r}")
    return key


def check_kind(kind: str) -> str:
    if not kind.isidentifier():
        raise ValueError(f"not a derived kind: {kind!r}")
    return kind


class Blobs(ABC):
    """What every blob store does; the service sees only this."""

    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data``; returns its key (hex SHA-256). Idempotent, and safe beside writers on other machines."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The blob's bytes; :class:`StorageError` if it is missing."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def put_derived(self, kind: str, key: str, data: bytes) -> None:
        """Keep ``data``, made from blob ``key`` in the way ``kind`` names, so it is made once."""

    @abstractmethod
    def get_derived(self, kind: str, key: str) -> bytes | None:
        """What :meth:`put_derived` kept for ``key``, or None."""

    @abstractmethod
    def delete_derived(self, kind: str, key: str) -> None:
        """Drop what :meth:`put_derived` kept for ``key``, if anything."""

    @abstractmethod
    def put_file(self, source: Path) -> str:
        """Store a file's contents without holding them in memory (a project archive); returns its key."""

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A file on this machine holding the blob, for libraries that open files (ONNX Runtime) and for
        large blobs served as files (project archives)."""

    def forget_local(self, key: str) -> None:
        """Drop this machine's copy made by :meth:`local_path`, if the store keeps one apart from the blob."""
        return None

    def sweep(self) -> int:
        """Remove what killed writers left behind; returns how many things went."""
        return 0


class BlobStore(Blobs):
    """Blobs in a folder. Several processes, on several machines sharing the folder (NFS, CephFS, ...), may
    write at once: each write goes to a temporary file named for its host, process and a random part, is
    flushed to disk, renamed into place (atomic, and the same bytes whoever wins) and the folder entry is
    flushed too, so a blob another machine was told about is there after a power cut."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key[2:]

    def derived_path(self, kind: str, key: str) -> Path:
        """Where a file made from blob ``key`` (a thumbnail, ``kind`` naming how it was made) is kept."""
        source = self.path(key)
        return self.root / "derived" / check_kind(kind) / source.parent.name / source.name

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        target = self.path(key)
        if not (target.exists() and target.stat().st_size == len(data)):
            self._write_atomic(target, data)
        return key

    def put_derived(self, kind: str, key: str, data: bytes) -> None:
        self._write_atomic(self.derived_path(kind, key), data)

    def get_derived(self, kind: str, key: str) -> bytes | None:
        try:
            return self.derived_path(kind, key).read_bytes()
        except FileNotFoundError:
            return None

    def delete_derived(self, kind: str, key: str) -> None:
        self.derived_path(kind, key).unlink(missing_ok=True)

    def put_file(self, source: Path) -> str:
        """The file is copied to a temporary file beside its target (hashing as it goes), then renamed."""
        digest = hashlib.sha256()
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp = tempfile.mkstemp(dir=staging, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                    for chunk in iter(lambda: src.read(1024 * 1024), b""):
                        digest.update(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                key = digest.hexdigest()
                target = self.path(key)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise StorageError(f"Could not write to the blob store: {exc.strerror or exc}.") from exc
        return key

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"Blob {key} is missing from the blob store.") from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise StorageError(f"Blob {key} is missing from the blob store.")
        return path

    def sweep(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove temporary files of writes that never finished (their writer was killed) once they are old."""
        removed = 0
        deadline = time.time() - older_than
        for leftover in (self.root / TEMP_DIR).glob("*"):
            try:
                if leftover.stat().st_mtime < deadline:
                    leftover.unlink()
                    removed += 1
            except FileNotFoundError:  # another machine swept it first
                continue
        return removed

    def _write_atomic(self, target: Path, data: bytes) -> None:
        write_atomic(target, data, self.root / TEMP_DIR)


def file_sha256(path: Path) -> str:
    """A file's blob key (hex SHA-256), read in 1 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(target: Path, data: bytes, temp_dir: Path | None = None) -> None:
    """Write ``data`` to ``target`` so that a reader sees all of it or nothing: temp file, fsync, rename, fsync of
    the folder (and of its parent when the folder is new). ``temp_dir`` must be on the same file system."""
    temp_dir = temp_dir or target.parent
    try:
        created = not target.parent.is_dir()
        target.parent.mkdir(parents=True, exist_ok=True)
        temp_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=temp_dir, prefix=f".tmp-{_writer()}-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _fsync_dir(target.parent)
        if created:
            _fsync_dir(target.parent.parent)
    except OSError as exc:
        raise StorageError(f"Could not write to the blob store: {exc.strerror or exc}.") from exc


def open_blobs(settings: Settings) -> Blobs:
    """The blob store the settings name: an S3 bucket for ``s3://`` URLs, else the blob folder."""
    if settings.blob_url:
        if settings.blob_url.startswith("s3://"):
            from tagvision.store.s3 import S3BlobStore

            return S3BlobStore(settings.blob_url, settings.s3, settings.data_dir / "blob-cache")
        if settings.blob_url.startswith("file://"):
            return BlobStore(Path(settings.blob_url.removeprefix("file://")).expanduser().resolve())
        raise StorageError(
            f"TAGVISION_BLOB_URL={settings.blob_url!r}: use s3://bucket/prefix, or a folder in TAGVISION_BLOB_ROOT."
        )
    return BlobStore(settings.blob_root)


def _writer() -> str:
    """Names a temporary file's writer, so writers on different machines never pick the same name."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    return f"{host}-{os.getpid()}"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
