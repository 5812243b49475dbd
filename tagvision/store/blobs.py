"""Content-addressed blob store on a local (or shared) file system.

A blob's name is the SHA-256 of its bytes, kept as ``ab/cdef...``. Writes are atomic:
a temporary file in the same folder, ``fsync``, ``rename``, then ``fsync`` of the folder.
A blob is always written before the database row that names it, so a crash can leave an
unreferenced blob (harmless) but never a row without its blob.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from tagvision.errors import StorageError


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:]

    def derived_path(self, kind: str, key: str) -> Path:
        """Where a file made from blob ``key`` (a thumbnail, ``kind`` naming how it was made) is kept."""
        if not kind.isidentifier():
            raise ValueError(f"not a derived kind: {kind!r}")
        source = self.path(key)
        return self.root / "derived" / kind / source.parent.name / source.name

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its key (hex SHA-256). Idempotent."""
        key = hashlib.sha256(data).hexdigest()
        target = self.path(key)
        if not (target.exists() and target.stat().st_size == len(data)):
            _write_atomic(target, data)
        return key

    def put_derived(self, kind: str, key: str, data: bytes) -> None:
        """Keep ``data``, made from blob ``key`` in the way ``kind`` names, so it is made once."""
        _write_atomic(self.derived_path(kind, key), data)

    def get_derived(self, kind: str, key: str) -> bytes | None:
        """What :meth:`put_derived` kept for ``key``, or None."""
        try:
            return self.derived_path(kind, key).read_bytes()
        except FileNotFoundError:
            return None

    def put_file(self, source: Path) -> str:
        """Store a file's contents without holding them in memory (a project archive); returns its key.
        The file is copied to a temporary file beside its target (hashing as it goes), then renamed."""
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


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` so that a reader sees all of it or nothing: temp file, fsync, rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
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
    except OSError as exc:
        raise StorageError(f"Could not write to the blob store: {exc.strerror or exc}.") from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
