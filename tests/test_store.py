"""The store: migrations agree with the models, SQLite runs in WAL, blobs are atomic."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from tagvision.errors import StorageError
from tagvision.store.blobs import BlobStore
from tagvision.store.database import Database
from tagvision.store.models import Base


def test_migrations_create_exactly_the_models_schema(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        version = connection.execute(text("select version_num from alembic_version")).scalar()
    assert diff == []
    assert version == "0010_tag_information"


def test_sqlite_is_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as connection:
        assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
        assert connection.execute(text("pragma foreign_keys")).scalar() == 1


def test_reopening_a_store_keeps_its_data_and_does_not_migrate_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    db = Database(url)
    with db.session() as session:
        session.execute(
            text(
                "insert into projects (id, name, description, classification_type, domain, created, "
                "last_modified) values ('p', 'n', '', 'Multiclass', 'general', '2026-01-01', "
                "'2026-01-01')"
            )
        )
    db.close()
    with Database(url).session() as session:
        assert session.execute(text("select name from projects")).scalar() == "n"


def test_blob_store_is_content_addressed_and_idempotent(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    key = blobs.put(b"hello")
    assert key == hashlib.sha256(b"hello").hexdigest()
    assert blobs.put(b"hello") == key
    assert blobs.get(key) == b"hello"
    assert blobs.path(key) == tmp_path / "blobs" / key[:2] / key[2:]
    assert not list((tmp_path / "blobs").rglob(".tmp-*")), "temporary files must not be left behind"
    blobs.delete(key)
    assert not blobs.exists(key)
    with pytest.raises(StorageError):
        blobs.get(key)


def test_blob_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    with pytest.raises(ValueError):
        blobs.path("../" * 21 + "etc/passwd")
    with pytest.raises(ValueError):
        blobs.path("A" * 64)


def test_failed_blob_write_raises_storage_error_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    blobs = BlobStore(tmp_path / "blobs")

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tagvision.store.blobs.os.replace", disk_full)
    with pytest.raises(StorageError, match="No space left"):
        blobs.put(b"data")
    key = hashlib.sha256(b"data").hexdigest()
    assert not blobs.exists(key)
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
