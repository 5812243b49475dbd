"""Engine, sessions and schema migrations.

SQLite is opened in WAL mode with foreign keys on and a busy timeout, so readers never
block the writer and a crash mid-write rolls back cleanly. The schema is brought to the
newest Alembic revision whenever a store is opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


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


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision (creates it on an empty database)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """A migrated engine and a session factory."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

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

    def close(self) -> None:
        self.engine.dispose()
