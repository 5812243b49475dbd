"""Shared fixtures: real photos from ../shared/datasets, a shared ONNX cache, fresh data dirs, the API app
in this process (tests/api.py), a real server process (tests/server.py), and the stores a scaled-out
deployment uses: a throw-away PostgreSQL cluster (tests/pg.py) and an S3 server on loopback (tests/s3.py),
each started once per session, or a skip saying why it cannot start here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tagvision.config import Settings
from tagvision.service import Service

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("TAGVISION_DATASETS", REPO.parent / "shared" / "datasets"))
CLOTHING = DATASETS / "clothing-small"
CAR_DAMAGE = DATASETS / "car-damage"
MODELS = REPO / "tagvision-data" / "test-models"  # exported once, reused by every test run
# Parameters of the fixtures that run a test on each store; the PostgreSQL and S3 variants start a server
# process (once per session), so make test-fast leaves them out.
DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.process)]
BLOB_STORES = ["folder", pytest.param("s3", marks=pytest.mark.process)]


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real photos not found: {path} (see ../shared/datasets/README.md)")
    return path


def photos(dataset: Path, split: str, tag: str, count: int, skip: int = 0) -> list[Path]:
    """The first ``count`` photos of one class folder (sorted, so tests are repeatable)."""
    return sorted((need(dataset) / split / tag).iterdir())[skip : skip + count]


@pytest.fixture(scope="session", autouse=True)
def shared_models_dir() -> Path:
    MODELS.mkdir(parents=True, exist_ok=True)
    os.environ["TAGVISION_MODELS_DIR"] = str(MODELS)
    return MODELS


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster of this session's own (tests/pg.py), with a migrated template database; skips, saying
    why, where PostgreSQL cannot be started."""
    from tagvision.store.database import Database
    from tests import pg

    try:
        cluster = pg.start()
    except pg.Unavailable as exc:
        pytest.skip(f"PostgreSQL cannot be started here: {exc}")
    try:
        cluster.template = cluster.create_database("template")
        Database(cluster.template).close()  # migrated once; each test's database is a copy
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on loopback (tests/s3.py); skips, saying why, where it cannot run."""
    from tests import s3

    try:
        server = s3.start(tmp_path_factory.mktemp("s3") / "moto.log")
    except s3.Unavailable as exc:
        pytest.skip(f"No S3 server here: {exc}")
    yield server
    server.stop()


def each_database(request: pytest.FixtureRequest) -> str | None:
    """For a fixture parametrised ``["sqlite", "postgresql"]``: None (the data dir's SQLite file), or a fresh
    database on the session's PostgreSQL cluster, dropped after the test."""
    if request.param == "sqlite":
        return None
    cluster = request.getfixturevalue("postgres")
    url = cluster.create_database("test", template=cluster.template)
    request.addfinalizer(lambda: cluster.drop_database(url))
    return url


@pytest.fixture
def database_url() -> str | None:
    """The database :func:`svc` opens: None, the data dir's SQLite file. A module that runs on PostgreSQL too
    overrides it with a fixture parametrised ``["sqlite", "postgresql"]`` returning :func:`each_database`."""
    return None


@pytest.fixture
def svc(data_dir: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch):
    if database_url:
        monkeypatch.setenv("TAGVISION_DATABASE_URL", database_url)
    service = Service.open(Settings.load(data_dir))
    yield service
    service.close()


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """A folder of class folders: 8 clothing photos each of dress, hat and shoes."""
    root = tmp_path / "photos"
    for tag in ("dress", "hat", "shoes"):
        (root / tag).mkdir(parents=True)
        for path in photos(CLOTHING, "train", tag, 8):
            shutil.copy(path, root / tag / path.name)
    return root


@pytest.fixture
def server(tmp_path: Path):
    """A running ``tagvision serve`` on 127.0.0.1 with a fresh data dir (see tests/server.py)."""
    from tests.server import Server

    with Server(tmp_path / "server-data") as running:
        yield running


@pytest.fixture(scope="session")
def create_app():
    """The ASGI app factory, ``create_app(service)``: the one import of it for every in-process API test."""
    from tagvision.server import create_app

    return create_app


@pytest.fixture(scope="module")
def api(create_app, tmp_path_factory):
    """The API app in this process on a fresh data dir, shared by a module's tests (see tests/api.py).

    Private URLs are allowed, as on the test server process, so a module can fetch from a loopback site.
    """
    from tests.api import serving

    with pytest.MonkeyPatch.context() as env:
        env.setenv("TAGVISION_ALLOW_PRIVATE_URLS", "1")
        with serving(create_app, tmp_path_factory.mktemp("api") / "data") as running:
            yield running


@pytest.fixture(scope="module")
def trained(api):
    """A project of 2 tags x 5 real photos, trained and published in the module's app (tests/api.py)."""
    from tests.api import train_and_publish

    return train_and_publish(api, "trained")
