"""The scoring engine: an exported classifier and a stream of images in, result rows out.

:class:`ScoringModel` is one ONNX file made by :mod:`tagvision.export` (float32 or int8), which holds the
backbone, the test-time mirror, the head and the link, and says in its metadata how to preprocess; it is
all a worker needs, with no database or service (a Ray actor loads it once). :func:`score` runs the tuned
local pipeline: a decode pool sized to the cores reads and decodes ahead (Pillow's draft mode: a JPEG is
decoded at the smallest DCT scale that keeps the shorter side at the model's resize), while the main
thread runs ONNX Runtime on whole batches and ranks each batch's probabilities in one numpy call.
:func:`score_to_file` adds the results file: already-scored images are skipped, batches are appended as
they finish, progress is reported per batch.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagvision import backbone
from tagvision.errors import TagvisionError
from tagvision.export import INPUT, OUTPUT
from tagvision.scoring.results import Prediction, Row, open_results
from tagvision.scoring.sources import Item, SourceSpec, open_source, reader

log = logging.getLogger("tagvision.scoring")
DEFAULT_BATCH = 32
DEVICES = ("cpu", "gpu", "auto")


def providers_for(device: str) -> list[str]:
    """ONNX Runtime providers for ``device``: ``gpu``/``auto`` use CUDA where this onnxruntime build and node
    have it, else the CPU (``gpu`` says so in the log); ``cpu`` always the CPU."""
    import onnxruntime as ort

    if device not in DEVICES:
        raise ValueError(f"device is one of {DEVICES}, not {device!r}")
    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "gpu":
        log.warning("no CUDA provider in this onnxruntime build or node: scoring on the CPU")
    return ["CPUExecutionProvider"]


class ScoringModel:
    """An exported tagvision classifier in ONNX Runtime: ``labels`` in column order, the ``spec`` its input is
    preprocessed for, and ``information`` per label (the tag information predictions carry, when the tags
    have it; None where a tag has none)."""

    def __init__(
        self,
        model: bytes | Path,
        *,
        threads: int | None = None,
        device: str = "cpu",
        information: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the decoders the cores
        source = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(source, options, providers=providers_for(device))
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels: list[str] = json.loads(meta["labels"])
        self.precision = "Int8" if "quantization" in meta else "Float32"
        size, resize = int(meta["image_size"]), int(meta["resize"])
        self.spec = backbone.BACKBONES.get(meta.get("domain", "")) or backbone.BackboneSpec(
            meta.get("domain", ""), meta.get("backbone", ""), size, resize, ""
        )
        if (self.spec.image_size, self.spec.resize) != (size, resize):
            self.spec = backbone.BackboneSpec(self.spec.domain, self.spec.model_name, size, resize, "")
        self.information = [(information or {}).get(label) for label in self.labels]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) preprocessed float32 -> (n, tags) probabilities."""
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(batch, np.float32)})[0]

    def rows(self, keys: list[str], probabilities: np.ndarray, top: int) -> list[Row]:
        """Result rows for a batch: the ``top`` tags of each image, highest first (ties in column order)."""
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :top]
        chosen = np.take_along_axis(probabilities, order, axis=1).tolist()
        return [
            Row(key, tuple(Prediction(self.labels[j], p, self.information[j]) for j, p in zip(cols, ps, strict=True)))
            for key, cols, ps in zip(keys, order.tolist(), chosen, strict=True)
        ]


def _decode(spec: backbone.BackboneSpec) -> Callable[[Item], tuple[str, np.ndarray | Row]]:
    def decode(item: Item) -> tuple[str, np.ndarray | Row]:
        try:
            return item.key, backbone.preprocess_bytes(item.read(), spec)
        except TagvisionError as exc:
            return item.key, Row(item.key, error_code=exc.code, error=exc.message)
        except OSError as exc:
            return item.key, Row(item.key, error_code="ErrorSource", error=f"Could not read the image: {exc}.")

    return decode


def score(
    model: ScoringModel,
    items: Iterable[Item],
    *,
    top: int = 5,
    batch_size: int = DEFAULT_BATCH,
    decode_threads: int | None = None,
) -> Iterator[list[Row]]:
    """Score ``items``; yields the rows of each batch in source order (refused images with their error code
    among them). Decoding runs ``decode_threads`` (default: one per core, at least 2) ahead of the network."""
    threads = decode_threads or max(2, os.cpu_count() or 1)
    keys: list[str] = []
    arrays: list[np.ndarray] = []
    out: list[Row | int] = []  # a Row, or the index of the image's probabilities in this batch

    def flush() -> list[Row]:
        scored = model.rows(keys, model.probabilities(np.stack(arrays)), top) if arrays else []
        return [scored[entry] if isinstance(entry, int) else entry for entry in out]

    for key, value in backbone.ordered_map(_decode(model.spec), items, threads, batch_size * 2):
        if isinstance(value, Row):
            out.append(value)
        else:
            out.append(len(keys))
            keys.append(key)
            arrays.append(value)
        if len(out) == batch_size:
            yield flush()
            keys, arrays, out = [], [], []
    if out:
        yield flush()


@dataclass
class Summary:
    """What a scoring run did: images ``scored``, refused (``errors``, by code), ``skipped`` as already in the
    output, and ``seconds`` spent."""

    scored: int = 0
    skipped: int = 0
    total: int = 0
    seconds: float = 0.0
    errors: Counter = field(default_factory=Counter)
    stopped: bool = False

    @property
    def rate(self) -> float:
        return (self.scored + sum(self.errors.values())) / self.seconds if self.seconds else 0.0

    def count(self, rows: list[Row]) -> None:
        for row in rows:
            if row.error_code:
                self.errors[row.error_code] += 1
            else:
                self.scored += 1


Runner = Callable[[list[Item]], Iterator[list[Row]]]
ProgressFn = Callable[[int, int], None]  # (images done, of total)


def score_to_file(
    source: SourceSpec,
    out: Path,
    runner: Runner,
    *,
    top: int = 5,
    with_information: bool = False,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Summary:
    """List ``source``, skip what ``out`` already holds, score the rest with ``runner`` (a local :func:`score`
    or a Ray job) and append each batch to ``out``. ``with_information``: rows carry tag information (the
    model's tags have some). ``should_stop`` is asked between batches (a cancelled job)."""
    started = time.perf_counter()
    writer = open_results(out, top, with_information)
    try:
        keys = [item.key for item in open_source(source)]
        todo = [Item(key, reader(key, source)) for key in keys if key not in writer.done]
        summary = Summary(skipped=len(keys) - len(todo), total=len(keys))
        if progress:
            progress(summary.skipped, summary.total)
        done = summary.skipped
        for rows in runner(todo):
            writer.write(rows)
            summary.count(rows)
            done += len(rows)
            if progress:
                progress(done, summary.total)
            if should_stop and should_stop():
                summary.stopped = True
                break
    finally:
        writer.close()
    summary.seconds = time.perf_counter() - started
    return summary


def local_runner(
    model: ScoringModel, *, top: int = 5, batch_size: int = DEFAULT_BATCH, decode_threads: int | None = None
) -> Runner:
    """The in-process pipeline as a :data:`Runner` for :func:`score_to_file`."""
    return lambda items: score(model, items, top=top, batch_size=batch_size, decode_threads=decode_threads)
