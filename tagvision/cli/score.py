"""``tagvision score``: a whole catalogue's top tags into a results file, here or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tagvision.cli.common import DataDir, ProjectArg, err, out, progress_bar, service

if TYPE_CHECKING:
    from tagvision.scoring.engine import Runner
    from tagvision.scoring.sources import SourceSpec
    from tagvision.service.scoring import ModelFile

SourceArg = Annotated[
    str, typer.Argument(help="A folder (recursive), a .txt/.csv list of paths or URLs, or an s3://bucket/prefix.")
]
OutOpt = Annotated[
    Path,
    typer.Option("--out", help="Results file: .jsonl, .csv or .parquet. Run again to resume (done images stay)."),
]
IterationOpt = Annotated[
    str | None,
    typer.Option("--iteration", help="Iteration name or id (default: the published one).", show_default=False),
]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", help="fp32 or int8 (default: the iteration's setting, else fp32).", show_default=False),
]
TopOpt = Annotated[int, typer.Option(min=1, max=50, help="Tags written per image, most probable first.")]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Images per network run.")]
RayOpt = Annotated[
    str | None,
    typer.Option("--ray", help="Run on a Ray cluster: its address, or auto (needs the ray extra).", show_default=False),
]
RayGpusFlag = Annotated[bool, typer.Option("--ray-gpus", help="Ray actors take a GPU each (CUDA provider).")]


def score(
    project: ProjectArg,
    source: SourceArg,
    out_path: OutOpt,
    iteration: IterationOpt = None,
    precision: PrecisionOpt = None,
    top: TopOpt = 5,
    batch_size: BatchSizeOpt = 32,
    ray_address: RayOpt = None,
    ray_gpus: RayGpusFlag = False,
    data_dir: DataDir = None,
) -> None:
    """Score a whole catalogue: top tags per image into a results file, resumable, errors recorded per image."""
    from tagvision.scoring import engine, sources

    with service(data_dir) as svc:
        model_file = svc.scorings.model(project, iteration, precision)
        allow_private = svc.ctx.settings.allow_private_urls
    spec = sources.SourceSpec.parse(source, allow_private=allow_private)
    runner = _runner(model_file, spec, top, batch_size, ray_address, ray_gpus)
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


def _runner(
    model_file: ModelFile, spec: SourceSpec, top: int, batch_size: int, ray_address: str | None, ray_gpus: bool
) -> Runner:
    """What runs the model over the images: ONNX Runtime in this process, or actors on the Ray cluster."""
    from tagvision.scoring import engine

    if ray_address:
        from tagvision.scoring.ray_runner import ray_runner

        return ray_runner(
            model_file.onnx,
            spec,
            address=ray_address,
            top=top,
            batch_size=batch_size,
            gpus=ray_gpus,
            information=model_file.information,
        )
    model = engine.ScoringModel(model_file.onnx, information=model_file.information)
    return engine.local_runner(model, top=top, batch_size=batch_size)
