"""Forced points for the kill tests: a real process stops where the test says, not where a sleep hopes.

- :func:`write_lock` holds the SQLite database's write lock from the test: another process goes on
  reading and writing blobs, but cannot commit a row (it waits, up to its 30 s busy timeout) until
  the lock is let go.
- :func:`swap_for_fifo` replaces a file by a named pipe of the same name: a process that opens it
  waits there. :func:`reader_arrived` says when it has (and keeps it waiting on an empty pipe);
  :func:`feed` hands it the file's bytes so it can go on.
- :func:`wait_until` polls for a condition and fails at once if the process waited on has exited.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def blob_path(data_dir: Path, data: bytes) -> Path:
    """Where the content-addressed blob store keeps these bytes."""
    sha = hashlib.sha256(data).hexdigest()
    return data_dir / "blobs" / sha[:2] / sha[2:]


@contextmanager
def write_lock(database: Path) -> Iterator[None]:
    connection = sqlite3.connect(database, isolation_level=None, timeout=60)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def swap_for_fifo(path: Path) -> None:
    """Replace ``path`` by a named pipe, atomically (a reader sees the file or the pipe, never neither)."""
    fifo = path.with_name(f".{path.name}.fifo")
    os.mkfifo(fifo)
    os.replace(fifo, path)


def reader_arrived(fifo: Path) -> int | None:
    """The pipe's write end (blocking) once a process has opened ``fifo`` to read, else None.

    Holding the write end open without writing keeps that reader waiting in ``read``.
    """
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nobody has it open for reading yet
            return None
        raise
    os.set_blocking(fd, True)
    return fd


def feed(writer: int, data: bytes) -> None:
    """Write ``data`` to the waiting reader and close the pipe (its end of file)."""
    with os.fdopen(writer, "wb") as pipe:
        pipe.write(data)


def put_back(path: Path, data: bytes) -> None:
    """Replace the pipe at ``path`` by a file holding ``data`` again, atomically."""
    spare = path.with_name(f".{path.name}.back")
    spare.write_bytes(data)
    os.replace(spare, path)


def wait_for(condition: Callable[[], T], what: str, timeout: float = 600, pause: float = 0.05) -> T:
    """``condition()`` once it is truthy. The deadline only gives up: pytest-timeout guards first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"still waiting for {what} after {timeout} s")


def wait_until(
    condition: Callable[[], T | None],
    process: subprocess.Popen,
    what: str,
    log: Callable[[], str] = str,
    timeout: float = 600,
) -> T:
    """``condition()`` once it is neither None nor False; ``log()`` tells why if the process exits first.

    The deadline only gives up: pytest-timeout guards first.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value is not None and value is not False:
            return value
        if process.poll() is not None:
            raise AssertionError(f"the process exited with {process.returncode} before {what}: {log()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError(f"still waiting for {what} after {timeout} s: {log()[-2000:]}")
