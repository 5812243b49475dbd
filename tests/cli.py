"""The ``tagvision`` command line run in this process, as its console script runs it.

``tagvision.cli:main`` (the entry point, whose handler turns a ``TagvisionError`` into
``error: <code>: <message>`` and exit status 1) runs inside typer's ``CliRunner.isolation``:
stdin, stdout, stderr and the environment are swapped for the call and captured apart. An
exception that escapes ``main`` (a crash, which a user would see as a traceback) is raised here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from tagvision.cli import main


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def tagvision(*args: str, data_dir: Path | None = None, check: bool = True, env: dict[str, str] | None = None) -> Ran:
    """``tagvision ARGS [--data-dir DATA_DIR]``; with ``check``, the exit status must be 0."""
    argv = ["tagvision", *args, *(["--data-dir", str(data_dir)] if data_dir is not None else [])]
    runner = CliRunner()
    saved = sys.argv
    with runner.isolation(env=env) as (stdout, stderr, _):
        sys.argv = argv
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        finally:
            sys.argv = saved
            sys.stdout.flush()
            sys.stderr.flush()
        ran = Ran(code, stdout.getvalue().decode(), stderr.getvalue().decode())
    if check:
        assert ran.returncode == 0, ran.stderr
    return ran
