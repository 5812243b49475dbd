"""Engine, sessions and schema migrations.

SQLite is opened in WAL mode with foreign keys on and a busy timeout, so readers never
block the writer and a crash mid-write rolls back cleanly. PostgreSQL (``postgresql+psycopg://``,
the ``tagvision[postgres]`` extra) runs the same migrations. The schema is brought to the newest
Alembic revision when a store is opened (the embedded default), or only by ``tagvision db upgrade``
when replicas are told not to (``upgrade=False``: they check the schema is current and refuse
to start otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, Insert, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from tagvision.errors import StorageError

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x7461677669  # PostgreSQL advisory lock: one migrating process at a time ("tagvi")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def is_unique_violation(exc: IntegrityError) -> bool:
    """Whether a unique constraint (not a foreign key or a NOT NULL) refused the write, on SQLite or PostgreSQL."""
    if getattr(exc.orig, "sqlstate", None) == "23505":  # psycopg's unique_violation
        return True
    return str(exc.orig).startswith("UNIQUE constraint failed")


def insert_or_skip(
    dialect: str,
    table: type[DeclarativeBase],
    values: dict[str, Any] | list[dict[str, Any]],
    index_elements: list[str] | None = None,
) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` for SQLite or PostgreSQL: rows another writer stored first are kept.

    Each dialect has its own insert construct with ``on_conflict_do_nothing``; the generic one has none."""
    if dialect == "sqlite":
        return sqlite.insert(table).values(values).on_conflict_do_nothing(index_elements=index_elements)
    if dialect == "postgresql":
        return postgresql.insert(table).values(values).on_conflict_do_nothing(index_elements=index_elements)
    raise KeyError(dialect)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest revision this tagvision knows."""
    return ScriptDirectory.from_config(_config()).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (creates it on an empty database). On PostgreSQL an advisory lock lets
    one process migrate at a time, so replicas started together do not race to create the same tables."""
    config = _config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` ("base": nothing); the migrations' own tests use it."""
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def check_schema(engine: Engine) -> None:
    """Refuse to run on a schema other than the one this tagvision was written for, naming the fix."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise StorageError(
            f"The database schema is at revision {current or 'none (empty)'}, this tagvision needs {head}: "
            "run `tagvision db upgrade` once (docs/deploy.md), then start the servers and workers."
        )


class Database:
    """An engine (migrated at open unless ``upgrade`` is False) and a session factory."""

    def __init__(self, url: str, *, upgrade: bool = True) -> None:
        self.engine = make_engine(url)
        if upgrade:
            migrate(self.engine)
        else:
            check_schema(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextmanager
    def session(self, *, not_unique: Exception | None = None) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back if it raises. With ``not_unique``, a write
        that another transaction made impossible by taking a unique name or key first raises that instead."""
        try:
            with self._sessions.begin() as session:
                yield session
        except IntegrityError as exc:
            if not_unique is None or not is_unique_violation(exc):
                raise
            raise not_unique from exc

    @contextmanager
    def immediate(self) -> Iterator[Connection]:
        """A transaction that holds the write lock from its first statement on SQLite (``BEGIN IMMEDIATE``), so
        what it reads cannot change before it writes; on PostgreSQL a plain one (lock rows with ``FOR UPDATE``).
        Committed when the block ends, rolled back if it raises."""
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def close(self) -> None:
        self.engine.dispose()
