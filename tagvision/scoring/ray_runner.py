"""Scoring on a Ray cluster: Ray Data reads the keys, ``map_batches`` runs :class:`RayScorer` actors.

Each actor loads the exported classifier once (from the object store) and scores its batches with the same
code as a local run (:mod:`tagvision.scoring.engine`), so a row from Ray equals the local row for the same
image. The driver streams the rows back in order and writes them like a local run (resumable, batch by
batch). Workers read images themselves: paths must be visible to every node (a shared filesystem), URLs and
``s3://`` objects are fetched by the worker. A CPU actor takes ``cpus_per_actor`` CPUs; with ``gpus`` each
actor takes one GPU and runs ONNX Runtime's CUDA provider where its node has one (else the CPU, logged).

Needs ``ray[data]`` (the ``tagvision[ray]`` extra) on the driver and on every node, with tagvision.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

from tagvision.errors import InvalidInput
from tagvision.scoring.engine import DEFAULT_BATCH, Runner, ScoringModel, score
from tagvision.scoring.results import Row
from tagvision.scoring.sources import Item, SourceSpec, reader

log = logging.getLogger("tagvision.scoring.ray")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InvalidInput(
            "--ray needs Ray Data: pip install 'tagvision[ray]' (on the driver and every node).",
            code="BadRequestNotSupported",
        ) from None
    return ray


class RayScorer:
    """A Ray Data actor: loads the model once, then turns each batch of keys into result rows (as JSON text)."""

    def __init__(
        self, model: Any, source: SourceSpec, top: int, device: str, threads: int, information: dict | None
    ) -> None:
        ray = _ray()
        data = ray.get(model) if isinstance(model, ray.ObjectRef) else model
        self.model = ScoringModel(data, threads=threads, device=device, information=information)
        self.source, self.top, self.threads = source, top, threads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["image"]]
        items = [Item(k, reader(k, self.source)) for k in keys]
        batches = score(self.model, items, top=self.top, batch_size=len(items), decode_threads=max(2, self.threads))
        rows = [row for batch_rows in batches for row in batch_rows]
        return {"image": np.array(keys, dtype=object), "row": np.array([json.dumps(r.to_json()) for r in rows])}


def ray_runner(
    model: bytes,
    source: SourceSpec,
    *,
    address: str,
    top: int = 5,
    batch_size: int = DEFAULT_BATCH,
    cpus_per_actor: int = 1,
    actors: int | None = None,
    gpus: bool = False,
    information: dict[str, dict[str, Any]] | None = None,
) -> Runner:
    """A :data:`~tagvision.scoring.engine.Runner` that scores on the Ray cluster at ``address`` (``auto``: the one
    this machine belongs to). ``actors`` defaults to as many as the cluster's CPUs (or GPUs) hold."""
    ray = _ray()

    def run(items: list[Item]) -> Iterator[list[Row]]:
        if not items:
            return
        if not ray.is_initialized():
            ray.init(address=address, logging_level=logging.WARNING)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its INFO lines would break the progress bar
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in source order, as locally
        context.enable_progress_bars = False  # the CLI shows its own
        resources = ray.cluster_resources()
        count = actors or max(1, int(resources.get("GPU", 0) if gpus else resources.get("CPU", 1) // cpus_per_actor))
        dataset = ray.data.from_items(
            [{"image": item.key} for item in items],
            override_num_blocks=max(1, min(len(items) // batch_size, count * 8)),
        )
        scored = dataset.map_batches(
            RayScorer,
            fn_constructor_kwargs={
                "model": ray.put(model),
                "source": source,
                "top": top,
                "device": "gpu" if gpus else "cpu",
                "threads": cpus_per_actor,
                "information": information,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=count),
            num_cpus=0 if gpus else cpus_per_actor,
            num_gpus=1 if gpus else 0,
        )
        for batch in scored.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield [Row.from_json(json.loads(text)) for text in batch["row"]]

    return run
