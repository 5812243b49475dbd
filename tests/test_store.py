"""The store: migrations agree with the models on SQLite and PostgreSQL, SQLite runs in WAL, blobs are atomic and
content-addressed in a folder (shared by several writing processes) and in an S3 bucket alike."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from tagvision.config import S3Settings, Settings
from tagvision.errors import StorageError
from tagvision.store.blobs import Blobs, BlobStore, open_blobs
from tagvision.store.database import Database
from tagvision.store.models import Base
from tests.conftest import BLOB_STORES, DATABASES, each_database


@pytest.fixture(params=DATABASES)
def empty_database(request, tmp_path: Path) -> str:
    """An empty database's URL: a new SQLite file, or a new database on the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'x.db'}"
    cluster = request.getfixturevalue("postgres")
    url = cluster.create_database("store")
    request.addfinalizer(lambda: cluster.drop_database(url))
    return url


@pytest.fixture(params=BLOB_STORES)
def blobs(request, tmp_path: Path) -> Blobs:
    """The blob store on a folder, or on a fresh bucket of the session's S3 server."""
    if request.param == "folder":
        return BlobStore(tmp_path / "blobs")
    server = request.getfixturevalue("s3_server")
    env = server.env(server.new_bucket(), "some/prefix")
    s3 = S3Settings(env["TAGVISION_S3_ENDPOINT_URL"], "us-east-1", "testing", "testing")
    settings = Settings.load(tmp_path / "data")
    from dataclasses import replace

    return open_blobs(replace(settings, blob_url=env["TAGVISION_BLOB_URL"], s3=s3))


def test_migrations_create_exactly_the_models_schema(empty_database: str) -> None:
    db = Database(empty_database)
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        version = connection.execute(text("select version_num from alembic_version")).scalar()
    db.close()
    assert diff == []
    assert version == "0011_tag_information"


def test_sqlite_is_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as connection:
        assert connection.execute(text("pragma journal_mode")).scalar() == "wal"
        assert connection.execute(text("pragma foreign_keys")).scalar() == 1


@pytest.fixture(params=DATABASES)
def database_url(request) -> str | None:
    return each_database(request)


def test_reopening_a_store_keeps_its_data_and_does_not_migrate_twice(tmp_path: Path, database_url) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'x.db'}"
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
    again = Database(url)
    with again.session() as session:
        assert session.execute(text("select name from projects")).scalar() == "n"
    again.close()


def test_blob_store_is_content_addressed_and_idempotent(blobs: Blobs) -> None:
    key = blobs.put(b"hello")
    assert key == hashlib.sha256(b"hello").hexdigest()
    assert blobs.put(b"hello") == key
    assert blobs.get(key) == b"hello" and blobs.exists(key)
    assert blobs.local_path(key).read_bytes() == b"hello"
    blobs.delete(key)
    blobs.forget_local(key)
    assert not blobs.exists(key)
    with pytest.raises(StorageError):
        blobs.get(key)


def test_derived_blobs_are_kept_beside_their_source(blobs: Blobs) -> None:
    key = blobs.put(b"a photo")
    assert blobs.get_derived("thumbnail", key) is None
    blobs.put_derived("thumbnail", key, b"small")
    assert blobs.get_derived("thumbnail", key) == b"small"
    assert blobs.get(key) == b"a photo"
    with pytest.raises(ValueError):
        blobs.put_derived("../up", key, b"x")
    blobs.delete_derived("thumbnail", key)
    blobs.delete_derived("thumbnail", key)  # nothing left: no error
    assert blobs.get_derived("thumbnail", key) is None and blobs.get(key) == b"a photo"


def test_files_go_in_and_come_out_as_files(blobs: Blobs, tmp_path: Path) -> None:
    """Project archives: stored from a file and served from one, never whole in memory (both stores)."""
    source = tmp_path / "archive.tvproj"
    source.write_bytes(bytes(range(256)) * 40_000)  # 10 MB: boto3 uploads it in parts
    key = blobs.put_file(source)
    assert key == hashlib.sha256(source.read_bytes()).hexdigest()
    assert blobs.put_file(source) == key and blobs.exists(key)
    assert blobs.local_path(key).read_bytes() == source.read_bytes()
    blobs.forget_local(key)
    blobs.delete(key)
    with pytest.raises(StorageError):
        blobs.local_path(key)


def test_blob_keys_cannot_escape_the_root(blobs: Blobs) -> None:
    for bad in ("../" * 21 + "etc/passwd", "A" * 64, "a" * 63):
        with pytest.raises(ValueError):
            blobs.get(bad)
        with pytest.raises(ValueError):
            blobs.get_derived("thumbnail", bad)


def test_folder_layout_leaves_no_temporary_files(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    key = blobs.put(b"hello")
    assert blobs.path(key) == tmp_path / "blobs" / key[:2] / key[2:]
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [blobs.path(key)]


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


def _write_many(root: str, seed: int) -> list[str]:
    """In another process: write 40 blobs, half of them the same as every other writer's."""
    store = BlobStore(Path(root))
    return [store.put(f"shared {k}".encode() * 500 if k % 2 else f"own {seed} {k}".encode()) for k in range(40)]


def test_writers_in_several_processes_share_one_folder(tmp_path: Path) -> None:
    """Four processes writing at once (the same blobs, and their own) leave every blob whole and no temporary file;
    a killed writer's temporary file, named for its host and process, is swept once it is old."""
    root = tmp_path / "shared"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        keys = pool.starmap(_write_many, [(str(root), seed) for seed in range(4)])
    store = BlobStore(root)
    for key in {k for written in keys for k in written}:
        assert hashlib.sha256(store.get(key)).hexdigest() == key
    assert len({k for written in keys for k in written}) == 20 + 4 * 20
    assert [p for p in (root / ".tmp").iterdir()] == []

    left = root / ".tmp" / f".tmp-{socket.gethostname()}-12345-abc"
    left.write_bytes(b"half a blob")
    assert store.sweep() == 0  # young: its writer may still be writing
    os.utime(left, (0, 0))
    assert store.sweep() == 1 and not left.exists()


def test_an_unreachable_bucket_is_refused_at_open(tmp_path: Path) -> None:
    pytest.importorskip("boto3", reason="S3 blobs need boto3 (tagvision[s3])")
    from dataclasses import replace

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here
    settings = replace(
        Settings.load(tmp_path),
        blob_url="s3://nowhere/blobs",
        s3=S3Settings(f"http://127.0.0.1:{port}", "us-east-1", "k", "s"),
    )
    with pytest.raises(StorageError, match="s3://nowhere/blobs"):
        open_blobs(settings)
    with pytest.raises(StorageError, match="TAGVISION_BLOB_URL"):
        open_blobs(replace(settings, blob_url="ftp://x/y"))
