"""``tagvision predict`` and ``tagvision prediction``: try a model on images, review the predictions the
Prediction API stored, and turn them into training images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tagvision.cli.common import (
    DataDir,
    IterationOpt,
    JsonFlag,
    ProjectArg,
    image_files,
    out,
    print_json,
    service,
)
from tagvision.errors import InvalidInput, NotFound, TagvisionError

if TYPE_CHECKING:
    from tagvision.service import Service
    from tagvision.service.prediction import QueryTag
    from tagvision.service.views import PredictionView


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
    from tagvision.service.prediction import QueryTag

    if tag is None and (min_probability, max_probability) != (0.0, 1.0):
        raise InvalidInput("--min-probability and --max-probability apply to a --tag.", code="BadRequestInvalid")
    with service(data_dir) as svc:
        chosen = _tag_ids(svc, project, [tag] if tag else [])
        tags = tuple(QueryTag(i, min_probability, max_probability) for i, _ in chosen)
        found = _stored(svc, project, tags, order, iteration, limit)
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


def _stored(
    svc: Service, project: str, tags: tuple[QueryTag, ...], order: str, iteration: str | None, limit: int
) -> list[PredictionView]:
    """Up to ``limit`` stored predictions, page after page of the service's query."""
    from tagvision.service.prediction import MAX_QUERY_RESULTS, PredictionQuery

    found: list[PredictionView] = []
    token = None
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
    return found


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
