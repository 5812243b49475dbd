"""What every command module of the ``tagvision`` command line shares: the consoles, the Typer that writes usage
lines as people do, the common options, the service on a data directory, the progress bar, JSON output and the
error handler of :func:`run`.

Light on purpose: ``tagvision --help`` imports this, so nothing here may pull in numpy, SQLAlchemy or the models.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from tagvision.config import Settings
from tagvision.errors import InvalidInput, NotFound, TagvisionError
from tagvision.service import Service

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp"}
SERVER_FILE = "server.json"  # {"endpoint", "pid"} of the server running on a data directory

out = Console(soft_wrap=True)
if not out.is_terminal:
    out = Console(soft_wrap=True, width=200)  # pipes and logs: no 80-column truncation
err = Console(stderr=True, soft_wrap=True)


class Usage(typer.core.TyperCommand):
    """Usage lines as people write them, ``tagvision train PROJECT``: typer's own wraps a required argument
    in braces (``{project}``), which reads as a placeholder left unfilled."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [re.sub(r"^\{(.*)\}", r"\1", p) for p in super().collect_usage_pieces(ctx)]


class Typer(typer.Typer):
    """The CLI's Typer: its commands write :class:`Usage` lines."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Usage)
        return super().command(*args, **kwargs)


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory (default: $TAGVISION_DATA_DIR, else ./tagvision-data).",
        show_default=False,
        metavar="DIR",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (Custom Vision shapes).")]
ProjectArg = Annotated[str, typer.Argument(help="Project name or id.", metavar="PROJECT", show_default=False)]
IterationArg = Annotated[str, typer.Argument(help="Iteration name or id.", metavar="ITERATION", show_default=False)]
YesFlag = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]
IterationOpt = Annotated[
    str | None,
    typer.Option("--iteration", help="Iteration name or id (default: the newest completed).", show_default=False),
]


@contextmanager
def service(data_dir: Path | None, *, create: bool = False) -> Iterator[Service]:
    """The service on the data directory, which must exist unless ``create`` (a command that makes things in a
    new one); which directory it is goes to stderr, so a wrong one is noticed at once."""
    settings = existing(data_dir, create=create)
    err.print(f"Data directory: {settings.data_dir}", style="dim", highlight=False)
    svc = Service.open(settings)
    try:
        yield svc
    finally:
        svc.close()


def existing(data_dir: Path | None, *, create: bool = False) -> Settings:
    """The settings, refusing a data directory that does not exist: a command that only asks a question must
    not make a fresh one (with new keys) in whatever folder it was run from. With a shared database
    (TAGVISION_DATABASE_URL) the keys and projects live there, and the folder only holds this machine's copies."""
    settings = Settings.load(data_dir)
    embedded = settings.database_url.startswith("sqlite:///" + str(settings.data_dir))
    if not create and embedded and not settings.data_dir.is_dir():
        raise NotFound(
            f"No tagvision data directory at {settings.data_dir}"
            + (f" (from {settings.data_dir_from})" if settings.data_dir_from else " (the default, in this folder)")
            + ". Point at the server's with --data-dir DIR or TAGVISION_DATA_DIR=DIR; "
            "tagvision serve prints the one it uses.",
            code="NotFoundDataDirectory",
        )
    return settings


@contextmanager
def progress_bar() -> Iterator[Any]:
    """A rich progress bar on stderr; yields a ``Progress`` callback (stage, done, total, eta). Where the work
    estimates its time left (``eta``, advanced training), the stage's line says it."""
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    ) as bar:

        def update(stage: str, done: int, total: int, /, eta: float | None = None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            description = stage if eta is None else f"{stage} (about {eta:.0f} s left in all)"
            bar.update(tasks[stage], completed=done, total=total, description=description)

        yield update


def print_json(value: Any) -> None:
    out.print_json(json.dumps(value), highlight=False) if out.is_terminal else print(json.dumps(value))


def count(n: int, singular: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {singular if n == 1 else singular + 's'}"


def image_files(path: Path) -> Iterator[Path]:
    """A file as given, or the image files under a folder (by suffix; hidden ones skipped)."""
    if path.is_file():
        yield path
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if (
                child.is_file()
                and child.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in child.relative_to(path).parts)
            ):
                yield child
    else:
        raise InvalidInput(f"No such file or folder: {path}", code="BadRequestPathNotFound")


def run(app: typer.Typer) -> None:
    """Run the command line; a ``TagvisionError`` prints ``error: <code>: <message>`` and exits with status 1."""
    try:
        app(prog_name="tagvision")  # also under python -m tagvision.cli
    except TagvisionError as exc:
        err.print(f"[red]error:[/] {exc.code}: {exc.message}", highlight=False)
        sys.exit(1)
