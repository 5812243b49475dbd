"""A throw-away PostgreSQL cluster for tests and benchmarks: ``initdb`` + ``pg_ctl`` in a temporary folder, on a
free loopback port, stopped and deleted afterwards.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user (Debian's package makes
it) or a ``tagvision-pg`` system user made with ``useradd`` for the purpose. Binaries are looked for on PATH,
then in /usr/local/bin and /usr/lib/postgresql/<version>/bin (Debian's place). :func:`start` raises
:class:`Unavailable`, saying why, where a cluster cannot be started, so tests can skip with that message.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

SUPERUSER = "tagvision"


class Unavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why."""


def binaries() -> Path:
    """The folder holding initdb, pg_ctl and postgres."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = [Path("/usr/local/bin")] + sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version(p.parent.name), reverse=True
    )
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return (folder / "initdb").resolve().parent
    raise Unavailable("PostgreSQL's initdb was not found (apt-get install postgresql)")


def _version(name: str) -> float:
    try:
        return float(name)
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_as() -> str | None:
    """The user to run PostgreSQL as (None: this one); as root, ``postgres`` or a system user made now."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "tagvision-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    try:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "tagvision-pg"],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        raise Unavailable(f"running as root and could not make a user for PostgreSQL: {exc}") from None
    return "tagvision-pg"


class Cluster:
    """A running cluster; :meth:`url` names a database in it, :meth:`create_database` makes a fresh one."""

    def __init__(self, root: Path, port: int, user: str | None, bin_dir: Path) -> None:
        self.root, self.port, self.user, self.bin_dir = root, port, user, bin_dir
        self.template: str | None = None  # a migrated database to copy (tests/conftest.py)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t", template: str | None = None) -> str:
        """A new database, empty or a copy of the one at URL ``template`` (fast); returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
        self._admin(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True) as c:
            c.execute(sql)

    def stop(self) -> None:
        _pg(
            self.bin_dir,
            self.user,
            "pg_ctl",
            "-D",
            str(self.root / "data"),
            "-m",
            "immediate",
            "-w",
            "stop",
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def _pg(bin_dir: Path, user: str | None, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [str(bin_dir / tool), *args]
    if user is not None:
        command = ["runuser", "-u", user, "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if check and result.returncode != 0:
        raise Unavailable(f"{tool} failed ({result.returncode}): {(result.stderr or result.stdout)[-1500:]}")
    return result


def start() -> Cluster:
    """Start a cluster (fsync off: a test's data need not survive a power cut); :class:`Unavailable` if it cannot."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise Unavailable("psycopg is not installed (pip install 'tagvision[postgres]')") from None
    bin_dir = binaries()
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="tagvision-pg-"))
    try:
        if user is not None:
            shutil.chown(root, user)
        _pg(bin_dir, user, "initdb", "-D", str(root / "data"), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync")  # fmt: skip
        for tries in range(1, 4):  # noqa: B007 (the port may be taken between choosing and binding it)
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB"
            )
            result = _pg(bin_dir, user, "pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "120",
                         "-o", options, "start", check=False)  # fmt: skip
            if result.returncode == 0:
                return Cluster(root, port, user, bin_dir)
        log = (root / "log").read_text(errors="replace")[-1500:] if (root / "log").exists() else result.stderr
        raise Unavailable(f"pg_ctl start failed after {tries} tries: {log}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
