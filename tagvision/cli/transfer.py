"""The commands that move projects in and out: ``migrate`` (from Azure Custom Vision or another tagvision
server), ``project export`` / ``project import`` (``.tvproj`` archives) and ``dataset export`` /
``dataset import`` (folders, CSV, COCO).

They call the service only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tagvision.cli.common import DataDir, JsonFlag, ProjectArg, err, out, print_json, progress_bar, service
from tagvision.errors import TagvisionError

if TYPE_CHECKING:
    from tagvision.service.migrations import Comparison, MigrationReport
    from tagvision.sources.customvision import SourcePerformance, SourceTagPerformance

FormatOpt = Annotated[str, typer.Option("--format", help="folders (one folder per tag), csv or coco.")]
SHOWN_REFUSALS = 20


# ---------------------------------------------------------------------- migrate


def migrate(
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint",
            help="The source's Training endpoint: https://<resource>.cognitiveservices.azure.com, or another "
            "tagvision server.",
        ),
    ],
    training_key: Annotated[
        str, typer.Option("--training-key", prompt=True, hide_input=True, help="The source's Training-Key.")
    ],
    project: Annotated[
        list[str] | None,
        typer.Option("--project", help="A source project (name or id); repeatable.", show_default=False),
    ] = None,
    every: Annotated[bool, typer.Option("--all", help="Every project of the source.")] = False,
    train: Annotated[
        bool, typer.Option("--train", help="Train each migrated project and compare it with the source's, per tag.")
    ] = False,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability threshold of --train.")] = 0.5,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Originals downloaded at once.")] = 8,
    calls_per_second: Annotated[
        float, typer.Option("--calls-per-second", min=0.1, help="Pace of Training API calls (Azure S0: 10).")
    ] = 10.0,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Bring projects over from Azure Custom Vision (or another tagvision server): tags, images, metadata,
    regions. Run it again to finish an interrupted migration: what came before is skipped."""
    from tagvision.service.migrations import MigrationRequest

    request = MigrationRequest(
        endpoint, training_key, tuple(project or ()), every, concurrency=concurrency, calls_per_second=calls_per_second
    )
    with service(data_dir, create=True) as svc, svc.migrations.source(request) as api:
        try:
            with progress_bar() as update:
                report = svc.migrations.run(request, progress=update, api=api)
        except KeyboardInterrupt:
            err.print("Stopped; what came stays. Run the same command again to bring the rest.")
            raise typer.Exit(130) from None
        comparisons = []
        if train:
            with progress_bar() as update:
                comparisons = [svc.migrations.compare(api, p, threshold, update) for p in report.projects]
    if as_json:
        print_json({**report.to_json(), "comparisons": [_comparison_json(c) for c in comparisons]})
    else:
        _print_report(report)
        for comparison in comparisons:
            _print_comparison(comparison)
    if any(p.error for p in report.projects):
        raise typer.Exit(1)


def _print_report(report: MigrationReport) -> None:
    table = Table("source project", "here", "images", "came", "already there", "did not come", "tags made")
    for p in report.projects:
        name = p.project_name + (" (object detection: not trainable yet)" if p.detection else "")
        table.add_row(
            p.source_name,
            name or "-",
            str(p.source_images),
            str(p.added),
            str(p.already_there),
            str(len(p.refused)),
            str(p.tags_created),
        )
    out.print(table)
    for p in report.projects:
        if p.error:
            out.print(f"{p.source_name}: stopped: {p.error}", highlight=False)
        for r in p.refused[:SHOWN_REFUSALS]:
            out.print(f"  {p.source_name}: image {r.image_id}: {r.status}: {r.message}", highlight=False)
        if len(p.refused) > SHOWN_REFUSALS:
            out.print(f"  {p.source_name}: ... and {len(p.refused) - SHOWN_REFUSALS} more (--json lists them)")
        for note in p.notes:
            out.print(f"  {p.source_name}: {note}", highlight=False)
        if p.detection:
            out.print(
                f"  {p.source_name}: an object-detection project: its images, tags and regions came over; "
                "tagvision does not train object detection yet.",
                highlight=False,
            )
    if report.throttled:
        out.print(
            f"The source throttled {report.throttled} requests (HTTP 429); waited {report.waited_seconds:.1f} s.",
            highlight=False,
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1%}"


def _print_comparison(c: Comparison) -> None:
    if c.note and c.here is None:
        out.print(f"{c.project_name}: nothing to compare: {c.note}.", highlight=False)
        return
    source = c.source_iteration or "no trained iteration"
    out.print(
        f"{c.project_name}: the source's {source} beside tagvision's {c.iteration.name}, threshold {c.threshold:.0%}",
        highlight=False,
    )
    measured = c.here.measured_on.sentence() if c.here.measured_on else "cross-validation"
    table = Table(
        "tag",
        "source P",
        "source R",
        "source AP",
        "tagvision P",
        "tagvision R",
        "tagvision AP",
        caption=f"tagvision measured on {measured}; the source on its own evaluation.",
    )
    for row in c.rows:
        s = row.source
        table.add_row(
            row.tag,
            _pct(s.precision if s else None),
            _pct(s.recall if s else None),
            _pct(s.average_precision if s else None),
            _pct(row.here_precision),
            _pct(row.here_recall),
            _pct(row.here_average_precision),
        )
    p = c.here.performance
    table.add_section()
    table.add_row(
        "overall",
        _pct(c.source.precision if c.source else None),
        _pct(c.source.recall if c.source else None),
        _pct(c.source.average_precision if c.source else None),
        _pct(p.precision),
        _pct(p.recall),
        _pct(p.average_precision),
        style="bold",
    )
    out.print(table)


def _comparison_json(c: Comparison) -> dict[str, Any]:
    return {
        "project": c.project_name,
        "threshold": c.threshold,
        "sourceIteration": c.source_iteration,
        "iteration": c.iteration.name if c.iteration else None,
        "note": c.note,
        "source": _figures(c.source),
        "tagvision": c.here.to_json() if c.here else None,
        "perTag": [
            {
                "tag": r.tag,
                "source": _figures(r.source),
                "tagvision": {
                    "precision": r.here_precision,
                    "recall": r.here_recall,
                    "averagePrecision": r.here_average_precision,
                },
            }
            for r in c.rows
        ],
    }


def _figures(source: SourcePerformance | SourceTagPerformance | None) -> dict[str, Any] | None:
    if source is None:
        return None
    return {"precision": source.precision, "recall": source.recall, "averagePrecision": source.average_precision}


# ---------------------------------------------------------------------- project archives


def project_export(
    project: ProjectArg,
    out_path: Annotated[Path, typer.Option("-o", "--out", help="The archive to write (e.g. shoes.tvproj).")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Write a whole project (tags, images with tags/metadata/sources/regions, iterations with their models and
    performance) to one archive that `project import` restores elsewhere."""
    with service(data_dir) as svc, progress_bar() as update:
        summary = svc.transfer.export_project(project, out_path, update)
    if as_json:
        print_json({k: v for k, v in summary.__dict__.items()})
        return
    out.print(
        f"Wrote {out_path} ({summary.size_bytes / 1e6:.1f} MB): {summary.tags} tags, {summary.images} images, "
        f"{summary.iterations} iterations",
        highlight=False,
    )
    if summary.skipped_iterations:
        out.print(f"Left out (still training): {', '.join(summary.skipped_iterations)}", highlight=False)


def project_import(
    archive_path: Annotated[Path, typer.Argument(help="A .tvproj archive from `project export`.")],
    name: Annotated[str | None, typer.Option(help="Name the project [default: as exported].")] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore a project from an archive, with new ids; its iterations predict as before, untrained again."""
    if not archive_path.is_file():
        raise TagvisionError(f"No such file: {archive_path}", code="BadRequestPathNotFound")
    with service(data_dir, create=True) as svc, progress_bar() as update:
        view = svc.transfer.import_project(archive_path, name, update)
        iterations = svc.training.iterations(view.id)
    if as_json:
        print_json(view.to_json())
        return
    out.print(
        f"Imported project [bold]{view.name}[/] ({view.classification_type}): {view.tag_count} tags, "
        f"{view.image_count} images, {len(iterations)} iterations; id {view.id}",
        highlight=False,
    )


# ---------------------------------------------------------------------- datasets


def dataset_export(
    project: ProjectArg,
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="The folder to write the dataset into.")],
    format_: FormatOpt = "folders",
    data_dir: DataDir = None,
) -> None:
    """Write a project's images and tags as a dataset other tools read."""
    with service(data_dir) as svc, progress_bar() as update:
        result = svc.datasets.export(project, out_dir, format_, update)
    out.print(f"Wrote {result.images} images ({result.tags} tags) to {out_dir} as {format_}", highlight=False)
    for what in result.left_out:
        out.print(f"Not written: {what}", highlight=False)


def dataset_import(
    project: ProjectArg,
    path: Annotated[Path, typer.Argument(help="The dataset: a folder, or the CSV or COCO JSON file.")],
    format_: FormatOpt = "folders",
    type_: Annotated[
        str | None,
        typer.Option("--type", help="For a new project: multiclass or multilabel [default: from the dataset]."),
    ] = None,
    domain: Annotated[str, typer.Option(help="For a new project: its domain.")] = "general-compact",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a dataset's images and tags to a project (created when missing)."""
    with service(data_dir, create=True) as svc, progress_bar() as update:
        result = svc.datasets.import_(project, path, format_, classification=type_, domain=domain, progress=update)
    if as_json:
        print(
            json.dumps(
                {
                    "projectId": result.project_id,
                    "added": result.added,
                    "alreadyThere": result.already_there,
                    "tagsCreated": result.tags_created,
                    "refused": [r.to_json() for r in result.refused],
                }
            )
        )
    else:
        out.print(
            f"{result.project_name}: added {result.added} images, {result.already_there} already there, "
            f"{len(result.refused)} refused; new tags: {', '.join(result.tags_created) or 'none'}",
            highlight=False,
        )
        for r in result.refused[:SHOWN_REFUSALS]:
            out.print(f"  {r.source_url}: {r.status}: {r.message}", highlight=False)
    if result.refused and not result.added and not result.already_there:
        raise typer.Exit(1)
