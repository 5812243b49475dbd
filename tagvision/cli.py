"""The ``tagvision`` command line. Every command calls the service layer and nothing below it.

Human-readable tables go to stdout, progress bars to stderr; ``--json`` prints the Custom
Vision shapes instead. Errors print ``error: <code>: <message>`` and exit with status 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tagvision import cli_knowledge, cli_transfer, domains
from tagvision.config import Settings
from tagvision.errors import InvalidInput, NotFound, TagvisionError
from tagvision.service import Service

if TYPE_CHECKING:
    from tagvision.service.images import NewImage

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp"}


class _Usage(typer.core.TyperCommand):
    """Usage lines as people write them, ``tagvision train PROJECT``: typer's own wraps a required argument
    in braces (``{project}``), which reads as a placeholder left unfilled."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [re.sub(r"^\{(.*)\}", r"\1", p) for p in super().collect_usage_pieces(ctx)]


class _Typer(typer.Typer):
    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Usage)
        return super().command(*args, **kwargs)


app = _Typer(
    help="tagvision: train and run image classifiers on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
project_app = _Typer(help="Create, list, delete, export and import projects.", no_args_is_help=True)
tag_app = _Typer(help="Create, list and delete tags.", no_args_is_help=True)
image_app = _Typer(help="Add and list training images.", no_args_is_help=True)
iteration_app = _Typer(help="List and delete trained iterations.", no_args_is_help=True)
prediction_app = _Typer(help="Review stored predictions and turn them into training images.", no_args_is_help=True)
app.add_typer(project_app, name="project")
app.add_typer(tag_app, name="tag")
app.add_typer(image_app, name="image")
app.add_typer(iteration_app, name="iteration")
cli_transfer.register(app, project_app)  # migrate, project export/import, dataset export/import
app.add_typer(prediction_app, name="prediction")

out = Console(soft_wrap=True)
if not out.is_terminal:
    out = Console(soft_wrap=True, width=200)  # pipes and logs: no 80-column truncation
err = Console(stderr=True, soft_wrap=True)

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


# ---------------------------------------------------------------------- projects


@project_app.command("create")
def project_create(
    name: Annotated[str, typer.Argument(help="Project name (unique).", metavar="NAME")],
    type_: Annotated[str, typer.Option("--type", help="multiclass (one tag per image) or multilabel.")] = "multiclass",
    domain: Annotated[
        str,
        typer.Option(
            help="general-compact (EfficientNet-Lite0), general (Lite2), or a "
            "Custom Vision classification domain name or id."
        ),
    ] = "general-compact",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a project."""
    with service(data_dir, create=True) as svc:
        project = svc.projects.create(name, classification=type_, domain=domain, description=description)
    if as_json:
        print_json(project.to_json())
    else:
        out.print(
            f"Created project [bold]{project.name}[/] ({project.classification_type}, "
            f"{domains.resolve(project.domain).name}) "
            f"id {project.id}",
            highlight=False,
        )


@project_app.command("list")
def project_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List projects."""
    with service(data_dir) as svc:
        projects = svc.projects.list()
    if as_json:
        print_json([p.to_json() for p in projects])
        return
    table = Table("name", "type", "domain", "tags", "images", "id")
    for p in projects:
        table.add_row(
            p.name, p.classification_type, domains.resolve(p.domain).name, str(p.tag_count), str(p.image_count), p.id
        )
    out.print(table)


@project_app.command("delete")
def project_delete(
    project: ProjectArg,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Delete a project with its tags, images and iterations."""
    with service(data_dir) as svc:
        view = svc.projects.get(project)
        if not yes:
            typer.confirm(f"Delete project {view.name!r} and its {view.image_count} images?", abort=True)
        svc.projects.delete(view.id)
    out.print(f"Deleted project {view.name}", highlight=False)


# ---------------------------------------------------------------------- tags


@tag_app.command("create")
def tag_create(
    project: ProjectArg,
    names: Annotated[list[str], typer.Argument(help="Tag names.", metavar="NAME")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create tags in a project."""
    with service(data_dir) as svc:
        tags = svc.projects.create_tags(project, names)
    if as_json:
        print_json([t.to_json() for t in tags])
    else:
        out.print(f"Created {_count(len(tags), 'tag')}: {', '.join(t.name for t in tags)}", highlight=False)


@tag_app.command("list")
def tag_list(project: ProjectArg, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List a project's tags with their image counts."""
    with service(data_dir) as svc:
        tags = svc.projects.list_tags(project)
    if as_json:
        print_json([t.to_json() for t in tags])
        return
    table = Table("tag", "images", "id")
    for t in tags:
        table.add_row(t.name, str(t.image_count), t.id)
    out.print(table)


@tag_app.command("delete")
def tag_delete(
    project: ProjectArg,
    tag: Annotated[str, typer.Argument(help="Tag name or id.", metavar="TAG")],
    data_dir: DataDir = None,
) -> None:
    """Delete a tag (its images stay, untagged from it)."""
    with service(data_dir) as svc:
        svc.projects.delete_tag(project, tag)
    out.print(f"Deleted tag {tag}", highlight=False)


# ---------------------------------------------------------------------- images


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


def new_image(path: Path, tags: tuple[str, ...]) -> NewImage:
    from tagvision.service.images import NewImage

    return NewImage(name=str(path), read=path.read_bytes, tags=tags, source={"file": path.name})


@image_app.command("add")
def image_add(
    project: ProjectArg,
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Image files or folders.", show_default=False, metavar="PATH")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Tag (name or id) for every image; repeatable.", show_default=False),
    ] = None,
    from_folders: Annotated[
        Path | None,
        typer.Option(
            "--from-folders",
            help="A folder of class folders: each "
            "subfolder's name is the tag of the images in it (missing tags are created).",
            show_default=False,
        ),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Add training images from files and folders; bad and duplicate images are reported."""
    if not paths and from_folders is None:
        raise InvalidInput("Give image files or folders, or --from-folders DIR.", code="BadRequestNoImages")
    tags = tuple(tag or ())
    items = [new_image(f, tags) for p in paths or [] for f in image_files(p)]
    with service(data_dir) as svc:
        if from_folders is not None:
            folders = [d for d in sorted(from_folders.iterdir()) if d.is_dir() and not d.name.startswith(".")]
            if not folders:
                raise InvalidInput(f"{from_folders} has no subfolders to take tags from.", code="BadRequestNoImages")
            known = {t.name.casefold() for t in svc.projects.list_tags(project)}
            missing = [d.name for d in folders if d.name.casefold() not in known]
            if missing:
                svc.projects.create_tags(project, missing)
            items += [new_image(f, (*tags, d.name)) for d in folders for f in image_files(d)]
        if not items:
            raise InvalidInput("No image files found.", code="BadRequestNoImages")
        with progress_bar() as update:
            summary = svc.images.add(project, items, progress=update)
    if as_json:
        print_json(summary.to_json())
        return
    refused = [r for r in summary.results if not r.ok]
    out.print(
        f"Added {_count(summary.count('OK'), 'image')}, {summary.count('OKDuplicate')} already there, "
        f"{len(refused)} refused.",
        highlight=False,
    )
    for r in refused:
        out.print(f"  {r.source_url}: {r.status}: {r.message}", highlight=False)
    if refused:
        raise typer.Exit(1 if len(refused) == len(summary.results) else 0)


@image_app.command("list")
def image_list(
    project: ProjectArg,
    tag: Annotated[str | None, typer.Option(help="Only images with this tag.", show_default=False)] = None,
    untagged: Annotated[bool, typer.Option("--untagged", help="Only images without tags.")] = False,
    refused: Annotated[
        bool,
        typer.Option(
            "--refused",
            help="Instead: the candidates acquisitions did not add (refused, duplicate, rejected, "
            "doubtful), each with its reason.",
        ),
    ] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """List training images with their tags and source."""
    if refused:
        from tagvision import cli_acquire

        with service(data_dir) as svc:
            set_aside = svc.acquisitions.set_aside(project)
        if as_json:
            print_json([{**c.to_json(), "tag": c.tag, "acquisitionId": c.acquisition_id} for c in set_aside])
        else:
            cli_acquire.print_set_aside(out, set_aside)
        return
    with service(data_dir) as svc:
        images = svc.images.list(project, tag=tag, untagged=untagged)
    if as_json:
        print_json([i.to_json() for i in images])
        return
    table = Table("image id", "size", "tags", "source")
    for i in images:
        table.add_row(
            i.id, f"{i.width}x{i.height}", ", ".join(name for _, name in i.tags), str(i.source.get("name", ""))
        )
    out.print(table)


# ---------------------------------------------------------------------- training


@app.command("train")
def train(
    project: ProjectArg,
    force: Annotated[bool, typer.Option("--force", help="Train even if nothing changed.")] = False,
    advanced: Annotated[
        bool,
        typer.Option(
            "--advanced", help="Fine-tune the backbone within the budget (slower; for images unlike everyday photos)."
        ),
    ] = False,
    budget_minutes: Annotated[
        float,
        typer.Option(
            "--budget-minutes", min=0.5, help="Advanced training's time budget; never exceeded by more than 10%."
        ),
    ] = 5.0,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Train: quick (a classifier head on cached backbone embeddings, cross-validated) or --advanced."""
    options = {"training_type": "Advanced", "budget_minutes": budget_minutes} if advanced else {}
    with service(data_dir) as svc:
        with progress_bar() as update:
            iteration = svc.training.train(project, force=force, progress=update, **options)
        performance = svc.training.performance(project, iteration.id)
    if as_json:
        print_json(iteration.to_json())
        return
    p = performance.performance
    served = f" ({iteration.backbone} fine-tuned)" if iteration.fine_tuned else ""
    out.print(
        f"{iteration.name} completed in {iteration.training_seconds:.1f} s on {iteration.image_count} images"
        f"{served}: "
        f"precision {p.precision:.1%}, recall {p.recall:.1%}, AP {p.average_precision:.1%} "
        f"(threshold 50%; measured on {iteration.metrics_from})",
        highlight=False,
    )


@app.command("performance")
def performance(
    project: ProjectArg,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability threshold.")] = 0.5,
    iteration: IterationOpt = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Per-tag precision, recall and average precision, from cross-validation."""
    with service(data_dir) as svc:
        view = svc.training.performance(project, iteration, threshold)
        iteration_view = svc.training.iteration(project, view.iteration_id)
    if as_json:
        print_json(view.to_json())
        return
    p = view.performance
    table = Table(
        "tag",
        "images",
        "precision",
        "recall",
        "AP",
        title=f"{iteration_view.name}, threshold {threshold:.0%}",
        caption=f"Measured on {view.measured_on.sentence() if view.measured_on else 'cross-validation'}.",
    )
    spread = view.measured_on is None or view.measured_on.has_spread
    for t in p.per_tag:
        table.add_row(
            view.tags[t.index][1],
            str(t.support),
            _pct(t.precision, t.precision_std, spread),
            _pct(t.recall, t.recall_std, spread),
            _pct(t.average_precision, t.average_precision_std, spread),
        )
    table.add_section()
    table.add_row(
        "overall",
        str(view.image_count),
        _pct(p.precision, p.precision_std, spread),
        _pct(p.recall, p.recall_std, spread),
        _pct(p.average_precision, p.average_precision_std, spread),
        style="bold",
    )
    out.print(table)


def _count(n: int, singular: str) -> str:
    return f"{n} {singular if n == 1 else singular + 's'}"


def _pct(value: float, std: float, spread: bool = True) -> str:
    """A figure, with its standard deviation across folds where there are folds to differ."""
    return f"{value:6.1%} ± {std:.1%}" if spread else f"{value:6.1%}"


@app.command("predict")
def predict(
    project: ProjectArg,
    paths: Annotated[list[Path], typer.Argument(help="Image files or folders.", metavar="PATH")],
    iteration: IterationOpt = None,
    top: Annotated[int, typer.Option(min=1, help="Tags shown per image.")] = 3,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Probability per tag for each image (not stored)."""
    files = [f for p in paths for f in image_files(p)]
    with service(data_dir) as svc:
        results = svc.prediction.predict(project, [(str(f), f.read_bytes) for f in files], iteration)
    if as_json:
        for r in results:
            print(json.dumps(r.to_json()))
    else:
        table = Table("image", "predictions")
        for r in results:
            shown = (
                f"[red]{r.error_code}: {r.error}[/]"
                if r.error
                else ", ".join(f"{p.tag_name} {p.probability:.1%}" for p in r.predictions[:top])
            )
            table.add_row(r.source, shown)
        out.print(table)
    if any(r.error for r in results):
        raise typer.Exit(1)


@iteration_app.command("list")
def iteration_list(project: ProjectArg, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List a project's iterations, oldest first."""
    with service(data_dir) as svc:
        iterations = svc.training.iterations(project)
    if as_json:
        print_json([i.to_json() for i in iterations])
        return
    table = Table("iteration", "status", "domain", "images", "tags", "seconds", "trained at", "id")
    for i in iterations:
        table.add_row(
            i.name,
            i.status + (f" ({i.error})" if i.error else ""),
            domains.resolve(i.domain).name,
            str(i.image_count),
            str(i.tag_count),
            f"{i.training_seconds:.1f}" if i.training_seconds else "",
            i.trained_at.strftime("%Y-%m-%d %H:%M:%S") if i.trained_at else "",
            i.id,
        )
    out.print(table)


@iteration_app.command("delete")
def iteration_delete(
    project: ProjectArg,
    iteration: IterationArg,
    data_dir: DataDir = None,
) -> None:
    """Delete an iteration."""
    with service(data_dir) as svc:
        svc.training.delete_iteration(project, iteration)
    out.print(f"Deleted {iteration}", highlight=False)


@app.command("export")
def export_model(
    project: ProjectArg,
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Where to write: a .onnx file, or a .zip bundle with "
            "model.onnx, labels.txt and a standalone predict.py.",
        ),
    ],
    iteration: IterationOpt = None,
    format_: Annotated[str, typer.Option("--format", help="onnx (float32) or onnx-int8 (quantised).")] = "onnx",
    data_dir: DataDir = None,
) -> None:
    """Export an iteration as one ONNX classifier (backbone, head and softmax/sigmoid) that runs anywhere."""
    if format_ not in ("onnx", "onnx-int8"):
        raise InvalidInput(f"Unknown format {format_!r}; use onnx or onnx-int8.", code="BadRequestInvalid")
    with service(data_dir) as svc:
        model = svc.exports.model(project, iteration, int8=format_ == "onnx-int8")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    if out_path.suffix.lower() == ".zip":
        from tagvision import export

        export.write_bundle(model.onnx, model.labels, tmp)
    else:
        tmp.write_bytes(model.onnx)
    tmp.replace(out_path)
    out.print(
        f"Wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB, {format_}, labels: {', '.join(model.labels)})",
        highlight=False,
    )


# ---------------------------------------------------------------------- scoring


@app.command("score")
def score(
    project: ProjectArg,
    source: Annotated[
        str, typer.Argument(help="A folder (recursive), a .txt/.csv list of paths or URLs, or an s3://bucket/prefix.")
    ],
    out_path: Annotated[
        Path,
        typer.Option("--out", help="Results file: .jsonl, .csv or .parquet. Run again to resume (done images stay)."),
    ],
    iteration: Annotated[
        str | None,
        typer.Option("--iteration", help="Iteration name or id (default: the published one).", show_default=False),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision", help="fp32 or int8 (default: the iteration's setting, else fp32).", show_default=False
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, max=50, help="Tags written per image, most probable first.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Images per network run.")] = 32,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray", help="Run on a Ray cluster: its address, or auto (needs the ray extra).", show_default=False
        ),
    ] = None,
    ray_gpus: Annotated[bool, typer.Option("--ray-gpus", help="Ray actors take a GPU each (CUDA provider).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Score a whole catalogue: top tags per image into a results file, resumable, errors recorded per image."""
    from tagvision.scoring import engine, sources

    with service(data_dir) as svc:
        model_file = svc.scorings.model(project, iteration, precision)
        allow_private = svc.ctx.settings.allow_private_urls
    spec = sources.SourceSpec.parse(source, allow_private=allow_private)
    if ray_address:
        from tagvision.scoring.ray_runner import ray_runner

        runner = ray_runner(
            model_file.onnx,
            spec,
            address=ray_address,
            top=top,
            batch_size=batch_size,
            gpus=ray_gpus,
            information=model_file.information,
        )
    else:
        model = engine.ScoringModel(model_file.onnx, information=model_file.information)
        runner = engine.local_runner(model, top=top, batch_size=batch_size)
    err.print(
        f"Scoring with {model_file.iteration_name} ({model_file.precision}"
        f"{', on Ray at ' + ray_address if ray_address else ''}) into {out_path}",
        highlight=False,
    )
    with progress_bar() as update:
        summary = engine.score_to_file(
            spec,
            out_path,
            runner,
            top=top,
            with_information=bool(model_file.information),
            progress=lambda done, total: update("scoring", done, total),
        )
    errors = ", ".join(f"{code} {n}" for code, n in sorted(summary.errors.items())) or "none"
    out.print(
        f"Scored {summary.scored} images, {sum(summary.errors.values())} refused ({errors}), "
        f"{summary.skipped} already in {out_path}; {summary.rate:.1f} images/s.",
        highlight=False,
    )


# ---------------------------------------------------------------------- acquisition


@app.command()
def acquire(
    project: ProjectArg,
    tags: Annotated[str, typer.Option("--tags", help="Comma-separated tag names (created when missing).")],
    per_tag: Annotated[
        int,
        typer.Option(
            "--per-tag",
            help="Fill each tag until it has this many acquired images (a re-run adds only what is missing).",
        ),
    ] = 50,
    provider: Annotated[
        list[str] | None,
        typer.Option(
            "--provider",
            help="openverse (default), wikimedia, pexels, unsplash, pixabay, bing or library; repeat to combine.",
            show_default=False,
        ),
    ] = None,
    library: Annotated[Path | None, typer.Option(help="Folder for --provider library.", show_default=False)] = None,
    min_side: Annotated[
        int | None,
        typer.Option(
            "--min-side",
            help="Refuse images smaller than this on a side [default: none, as uploads; images smaller than the "
            "model's input are kept with a warning].",
            show_default=False,
        ),
    ] = None,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Review a page of candidates per tag before they are added; each next page "
            "is ranked again with your answers.",
        ),
    ] = False,
    page_size: Annotated[int, typer.Option("--page-size", min=1, help="Candidates per tag on a review page.")] = 20,
    retry_refused: Annotated[
        bool, typer.Option("--retry-refused", help="Look again at the candidates earlier acquisitions refused.")
    ] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Gather training images for tag names from an image-search provider or a local folder, ranked and
    filtered by how they look against every tag of the project."""
    from tagvision import cli_acquire

    providers = tuple(provider or (["library"] if library else ["openverse"]))
    names = [t for t in (part.strip() for part in tags.split(",")) if t]
    with service(data_dir) as svc:
        started = svc.acquisitions.start(
            project,
            names,
            per_tag=per_tag,
            providers=providers,
            library=str(library) if library else None,
            min_side=min_side,
            review=review,
            page_size=page_size if review else None,
            retry_refused=retry_refused,
            library_anywhere=True,
        )

        def run() -> Any:
            with progress_bar() as update:
                return svc.acquisitions.run(started.id, progress=update)

        try:
            view = cli_acquire.review(svc, project, started.id, run, out, err) if review else run()
        except KeyboardInterrupt:
            svc.acquisitions.cancel(project, started.id)
            err.print("Stopped; what was added stays. Run the same command again to add the rest.")
            raise typer.Exit(130) from None
    if as_json:
        print_json(view.to_json())
        return
    cli_acquire.print_summary(out, view, project)
    if view.status != "Completed":
        raise TagvisionError(f"The acquisition {view.status.lower()}: {view.error or 'see above'}", code="ErrorSource")


# ---------------------------------------------------------------------- server


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8000,
    data_dir: DataDir = None,
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request.")] = True,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Run trainings, exports and acquisitions in this process too (default; $TAGVISION_EMBEDDED_WORKER). "
            "--no-worker: an API replica only; `tagvision worker` processes run them.",
            show_default=False,
        ),
    ] = True,
) -> None:
    """Run the server: the Custom Vision Training and Prediction APIs (OpenAPI page at /docs)."""
    import dataclasses
    import logging
    import socket

    import uvicorn

    from tagvision.server import create_app, return_freed_memory

    return_freed_memory()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs, and some hold API keys
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it a small response's body waits ~40 ms for the
    # client's delayed ACK of the headers (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise InvalidInput(f"Cannot listen on {host}:{port}: {exc.strerror}.", code="BadRequest") from None
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    endpoint = f"http://[{shown}]:{bound}" if ":" in shown else f"http://{shown}:{bound}"
    settings = existing(data_dir, create=True)
    svc = Service.open(dataclasses.replace(settings, embedded_worker=settings.embedded_worker and worker))
    running, closed = settings.data_dir / SERVER_FILE, False
    try:
        current = svc.keys.current()  # made at first start
        running.write_text(json.dumps({"endpoint": endpoint, "pid": os.getpid()}))
        lines = [
            f"tagvision serving on {endpoint} (portal: {endpoint}/, API docs: {endpoint}/docs)",
            f"Data directory:  {settings.data_dir}",
            f"Endpoint:        {settings.public_url or endpoint}",
        ]
        if err.is_terminal:  # a person at a terminal; never into a log file
            lines += [f"Training-Key:    {current.training}", f"Prediction-Key:  {current.prediction}"]
        else:
            lines += [f"Keys:            tagvision keys --data-dir {settings.data_dir}"]
        err.print("\n".join(lines), highlight=False)
        config = uvicorn.Config(create_app(svc), log_level="info", access_log=access_log, timeout_keep_alive=30)
        server = uvicorn.Server(config)
        with server.capture_signals():  # uvicorn raises SIGTERM/SIGINT again once it leaves this: tidy up in it
            try:
                server.run(sockets=[sock])
            finally:
                if _server_of(settings) == (endpoint, os.getpid()):
                    running.unlink(missing_ok=True)
                svc.close()
                closed = True
    finally:
        if not closed:
            svc.close()


SERVER_FILE = "server.json"  # {"endpoint", "pid"} of the server running on a data directory


def _server_of(settings: Settings) -> tuple[str, int] | None:
    """(endpoint, pid) of the server running on this data directory, from its server.json, or None when no
    server wrote one or its process is gone (a killed server leaves the file behind)."""
    try:
        running = json.loads((settings.data_dir / SERVER_FILE).read_text())
        endpoint, pid = str(running["endpoint"]), int(running["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, another user's
    return endpoint, pid


@app.command()
def keys(
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
    regenerate: Annotated[
        str | None,
        typer.Option(
            help="Replace a key: training or prediction. The old key stops working at once.",
            show_default=False,
            metavar="KIND",
        ),
    ] = None,
) -> None:
    """Show the data directory, the running server's endpoint, the Training-Key and the Prediction-Key."""
    settings = existing(data_dir)
    from tagvision.service.keys import KeyStore
    from tagvision.store.database import Database  # the keys live in the database every replica shares

    database = Database(settings.database_url, upgrade=settings.migrate_at_open)
    try:
        store = KeyStore(database, settings.data_dir, settings.training_key, settings.prediction_key)
        current = store.regenerate(regenerate) if regenerate else store.current()
    finally:
        database.close()
    server = _server_of(settings)
    endpoint = settings.public_url or (server[0] if server else None)
    if as_json:
        print_json(
            {
                "dataDir": str(settings.data_dir),
                "endpoint": endpoint,
                "serverRunning": server is not None,
                "trainingKey": current.training,
                "predictionKey": current.prediction,
            }
        )
        return
    if server is None:
        where = f"{endpoint} (no server is running on this data directory)" if endpoint else "no server is running"
        endpoint_line = f"{where}; start one with: tagvision serve --data-dir {settings.data_dir}"
    else:
        endpoint_line = str(endpoint)
    out.print(
        f"Data directory:  {settings.data_dir}\nEndpoint:        {endpoint_line}\n"
        f"Training-Key:    {current.training}\nPrediction-Key:  {current.prediction}",
        highlight=False,
    )


# ---------------------------------------------------------------------- publish, stored predictions


@app.command("publish")
def publish(
    project: ProjectArg,
    iteration: IterationArg,
    name: Annotated[str, typer.Option("--name", help="The name apps call the Prediction URL with.", metavar="NAME")],
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Take the name over from the iteration that has it, in one step: apps get the new "
            "iteration's answers at once, with no downtime.",
        ),
    ] = False,
    yes: YesFlag = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Publish an iteration: the Prediction API answers under NAME with it."""
    from tagvision.errors import Conflict

    with service(data_dir) as svc:
        target = svc.training.iteration(project, iteration)
        wanted = name.strip()
        holder = next(
            (i for i in svc.training.iterations(project) if i.publish_name == wanted and i.id != target.id), None
        )
        if holder is not None and not replace:
            raise Conflict(
                f"{holder.name} is published as {wanted!r}. Add --replace to put {target.name} in its place in one "
                "step (apps see no downtime), or choose another name.",
                code="BadRequestInvalidPublishName",
            )
        if holder is not None and not yes and sys.stdin.isatty():
            typer.confirm(
                f"Replace {holder.name} as {wanted!r}? Apps using the Prediction URL get {target.name}'s answers "
                "at once, with no downtime.",
                abort=True,
            )
        view = svc.training.publish(project, target.id, wanted, overwrite=replace)
    if as_json:
        print_json(view.to_json())
        return
    replaced = f", in place of {holder.name}" if holder is not None else ""
    out.print(f"{view.name} is published as {view.publish_name!r}{replaced}.", highlight=False)


@app.command("unpublish")
def unpublish(project: ProjectArg, iteration: IterationArg, yes: YesFlag = False, data_dir: DataDir = None) -> None:
    """Stop an iteration answering the Prediction API (apps calling its name get errors)."""
    with service(data_dir) as svc:
        view = svc.training.iteration(project, iteration)
        if view.publish_name and not yes and sys.stdin.isatty():
            typer.confirm(
                f"Unpublish {view.name}? Apps calling {view.publish_name!r} get errors until an iteration is "
                "published under that name again.",
                abort=True,
            )
        svc.training.unpublish(project, view.id)
    out.print(f"{view.name} is no longer published as {view.publish_name!r}.", highlight=False)


def _tag_ids(svc: Service, project: str, refs: list[str]) -> list[tuple[str, str]]:
    """(id, name) of tags named by name or id; a clear error for one the project does not have."""
    tags = svc.projects.list_tags(project)
    found = []
    for ref in refs:
        tag = next((t for t in tags if ref in (t.name, t.id)), None)
        if tag is None:
            raise NotFound(
                f"The project has no tag {ref!r}; create it with: tagvision tag create {project} {ref}",
                code="NotFoundTag",
            )
        found.append((tag.id, tag.name))
    return found


@prediction_app.command("list")
def prediction_list(
    project: ProjectArg,
    tag: Annotated[
        str | None,
        typer.Option(help="Only predictions of this tag (name or id) within the probability range.", metavar="TAG"),
    ] = None,
    min_probability: Annotated[float, typer.Option(min=0.0, max=1.0, help="Lowest probability (with --tag).")] = 0.0,
    max_probability: Annotated[float, typer.Option(min=0.0, max=1.0, help="Highest probability (with --tag).")] = 1.0,
    order: Annotated[
        str, typer.Option(help="Suggested (most uncertain first), Newest or Oldest.", metavar="ORDER")
    ] = "Suggested",
    iteration: IterationOpt = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """List stored predictions (images sent to a published iteration, and quick tests)."""
    from tagvision.service.prediction import MAX_QUERY_RESULTS, PredictionQuery, QueryTag

    if tag is None and (min_probability, max_probability) != (0.0, 1.0):
        raise InvalidInput("--min-probability and --max-probability apply to a --tag.", code="BadRequestInvalid")
    with service(data_dir) as svc:
        chosen = _tag_ids(svc, project, [tag] if tag else [])
        tags = tuple(QueryTag(i, min_probability, max_probability) for i, _ in chosen)
        found, token = [], None
        while len(found) < limit:
            query = PredictionQuery(
                order_by=order.capitalize(),
                tags=tags,
                iteration_id=iteration,
                max_count=min(limit - len(found), MAX_QUERY_RESULTS),
                continuation=token,
            )
            page, token = svc.prediction.query(project, query)
            found += page
            if not token or not page:
                break
        names = {i.id: i.name for i in svc.training.iterations(project)}
    if as_json:
        print_json([p.to_stored_json() for p in found])
        return
    table = Table("prediction id", "created", "iteration", "predictions", "uncertainty")
    for p in found:
        table.add_row(
            p.id,
            p.created.strftime("%Y-%m-%d %H:%M:%S"),
            names.get(p.iteration_id or "", ""),
            ", ".join(f"{t.tag_name} {t.probability:.1%}" for t in p.predictions[:3]),
            "" if p.uncertainty is None else f"{p.uncertainty:.2f}",
        )
    out.print(table)


@prediction_app.command("tag")
def prediction_tag(
    project: ProjectArg,
    prediction_id: Annotated[str, typer.Argument(help="A stored prediction's id.", metavar="PREDICTION_ID")],
    tags: Annotated[list[str], typer.Argument(help="The image's tag(s), names or ids.", metavar="TAG")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Confirm or correct a stored prediction's tag: the image becomes a training image (train again to use it)."""
    with service(data_dir) as svc:
        chosen = _tag_ids(svc, project, tags)
        result = svc.prediction.to_training_image(project, prediction_id, tuple(i for i, _ in chosen))
    if not result.ok:
        raise TagvisionError(result.message or "The image could not be added.", code=result.status)
    if as_json:
        print_json(result.to_json())
        return
    already = " (it was already among them)" if result.status == "OKDuplicate" else ""
    out.print(
        f"Added to the training images as {', '.join(n for _, n in chosen)}{already}: image {result.image_id}. "
        "Train again to use it.",
        highlight=False,
    )


@app.command("worker")
def worker_command(data_dir: DataDir = None) -> None:
    """Run trainings, exports and acquisitions that any server sharing the database queued, until stopped.

    Each job is claimed by one worker and held by a lease it renews; a job whose worker was killed is taken
    over by another once its lease lapses. Ctrl-C or SIGTERM: stop claiming, hand back acquisitions, finish
    a training or export under way (a second one stops at once; the job is then taken over later).
    """
    import logging
    import signal
    import threading

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry URLs, and some hold API keys
    stop = threading.Event()

    def stop_at_signal(signum: int, _frame) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)
        stop.set()

    signal.signal(signal.SIGTERM, stop_at_signal)
    signal.signal(signal.SIGINT, stop_at_signal)
    svc = Service.open(Settings.load(data_dir))
    try:
        running = svc.jobs.start_worker()
        (svc.ctx.settings.data_dir / "worker.json").write_text(json.dumps({"name": running.name}))
        err.print(f"tagvision worker {running.name} running jobs; Ctrl-C stops it.", highlight=False)
        while not stop.wait(1.0):
            pass
        err.print("Stopping: handing back acquisitions, finishing the training or export under way.")
    finally:
        svc.close()


db_app = _Typer(help="The database schema: upgrade it once before starting the servers, or see where it is.")
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(data_dir: DataDir = None) -> None:
    """Bring the schema to this tagvision's newest revision (run once per upgrade; docs/deploy.md)."""
    from tagvision.store import database

    engine = database.make_engine(Settings.load(data_dir).database_url)
    try:
        before = database.current_revision(engine)
        database.migrate(engine)
        after = database.current_revision(engine)
    finally:
        engine.dispose()
    if before == after:
        out.print(f"The schema is at {after}, the newest revision; nothing to do.", highlight=False)
    else:
        out.print(f"Upgraded the schema from {before or 'nothing'} to {after}.", highlight=False)


@db_app.command("status")
def db_status(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Say which revision the schema is at and which this tagvision needs; exit 1 if they differ."""
    from tagvision.store import database

    engine = database.make_engine(Settings.load(data_dir).database_url)
    try:
        current, head = database.current_revision(engine), database.head_revision()
    finally:
        engine.dispose()
    if as_json:
        print_json({"current": current, "head": head, "upToDate": current == head})
    else:
        verdict = "up to date" if current == head else "run `tagvision db upgrade`"
        out.print(f"schema at {current or 'nothing'}; this tagvision needs {head}: {verdict}", highlight=False)
    if current != head:
        raise typer.Exit(1)


# tag info, catalogue, rules, records (tagvision/cli_knowledge.py): installed with this module's helpers.
cli_knowledge.install(app, tag_app, cli_knowledge.Helpers(service, progress_bar, print_json, out, _Typer))


def main() -> None:
    try:
        app(prog_name="tagvision")  # also under python -m tagvision.cli
    except TagvisionError as exc:
        err.print(f"[red]error:[/] {exc.code}: {exc.message}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
