"""``tagvision train``, ``performance``, ``iteration``, ``export``, ``publish`` and ``unpublish``: making
iterations, reading their figures, and putting them to use."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tagvision import domains
from tagvision.cli.common import (
    DataDir,
    IterationArg,
    IterationOpt,
    JsonFlag,
    ProjectArg,
    YesFlag,
    out,
    print_json,
    progress_bar,
    service,
)
from tagvision.errors import InvalidInput

# ---------------------------------------------------------------------- training


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


def _pct(value: float, std: float, spread: bool = True) -> str:
    """A figure, with its standard deviation across folds where there are folds to differ."""
    return f"{value:6.1%} ± {std:.1%}" if spread else f"{value:6.1%}"


# ---------------------------------------------------------------------- iterations


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


def iteration_delete(
    project: ProjectArg,
    iteration: IterationArg,
    data_dir: DataDir = None,
) -> None:
    """Delete an iteration."""
    with service(data_dir) as svc:
        svc.training.delete_iteration(project, iteration)
    out.print(f"Deleted {iteration}", highlight=False)


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


# ---------------------------------------------------------------------- publishing


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
