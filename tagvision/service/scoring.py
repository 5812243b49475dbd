"""Use cases for scoring a catalogue: which model scores (published by default, float32 or int8), and scoring
jobs over a server-side folder or a list of URLs that run in the background with progress.

The work itself is :mod:`tagvision.scoring` (no database there); this module picks the iteration, hands the
engine the exported classifier, records progress on the job's row and keeps its rows in a JSON Lines file
under ``<data dir>/scorings/`` (resumed, not restarted, after a stop), downloadable as JSON Lines or CSV.
"""

from __future__ import annotations

import builtins
import csv
import io
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

from sqlalchemy import select

from tagvision.errors import InvalidInput, NotFound, TagvisionError, TrainingError
from tagvision.scoring import engine, results
from tagvision.scoring.sources import SourceSpec
from tagvision.service.context import Context, get_iteration, get_project
from tagvision.service.details import IterationDetails
from tagvision.service.exports import Exports
from tagvision.service.knowledge import Knowledge
from tagvision.store.models import Iteration, Scoring, utcnow

log = logging.getLogger("tagvision.scoring")
PRECISIONS = ("Float32", "Int8")
MAX_URLS = 10_000  # what fits the API's 1 MB JSON bodies; larger lists: a folder, or the CLI with a list file
MAX_TOP = 50
INT8_CACHE = 8  # int8 sessions kept per process


@dataclass(frozen=True)
class ModelFile:
    """An iteration's exported classifier, ready for :class:`tagvision.scoring.engine.ScoringModel`."""

    onnx: bytes
    labels: list[str]
    iteration_id: str
    iteration_name: str
    precision: str  # Float32 | Int8
    information: dict[str, dict[str, Any]] = field(default_factory=dict)  # per tag name, when tags carry it


@dataclass(frozen=True)
class ScoringView:
    id: str
    project_id: str
    iteration_id: str | None
    precision: str
    status: str
    source: dict[str, Any]
    top: int
    progress: dict[str, Any]
    error: str | None
    error_code: str | None
    created: Any
    last_modified: Any

    def to_json(self) -> dict[str, Any]:
        from tagvision.service.views import iso_time

        return {
            "id": self.id,
            "projectId": self.project_id,
            "iterationId": self.iteration_id,
            "precision": self.precision,
            "status": self.status,
            "source": self.source,
            "top": self.top,
            "progress": self.progress,
            "error": self.error,
            "errorCode": self.error_code,
            "created": iso_time(self.created),
            "lastModified": iso_time(self.last_modified),
        }


@overload
def check_precision(value: str) -> str: ...
@overload
def check_precision(value: str | None) -> str | None: ...
def check_precision(value: str | None) -> str | None:
    """``Float32``/``Int8`` in any case (also ``fp32``/``int8``), or None."""
    if value is None:
        return None
    found = {"float32": "Float32", "fp32": "Float32", "int8": "Int8"}.get(value.strip().lower())
    if found is None:
        raise InvalidInput(f"Unknown precision {value!r}; use Float32 or Int8.", code="BadRequestInvalid")
    return found


class Scorings:
    def __init__(self, ctx: Context, exports: Exports, knowledge: Knowledge | None = None) -> None:
        self.ctx = ctx
        self.exports = exports
        self.knowledge = knowledge
        self._cancel: dict[str, threading.Event] = {}
        self._stopping: set[str] = set()
        self._int8: dict[str, engine.ScoringModel] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the model

    def model(self, ref: str, iteration_ref: str | None = None, precision: str | None = None) -> ModelFile:
        """The classifier that scores: ``iteration_ref``'s, else the project's published iteration (the one
        published last when there are several). ``precision`` None: the iteration's setting (Float32 unless set)."""
        iteration_id, chosen = self.model_choice(ref, iteration_ref, precision)
        with self.ctx.db.session() as session:
            iteration = session.get(Iteration, iteration_id)
            if iteration is None:  # deleted since it was chosen
                raise NotFound(f"No iteration {iteration_id!r}.", code="NotFoundIteration")
            labels = [name for _, name in IterationDetails.from_json(iteration.details).tags]
            project_id, name = iteration.project_id, iteration.name
        if chosen == "Int8":
            onnx = self.exports.int8_model(project_id, iteration_id)
        else:
            onnx = self.exports.model(project_id, iteration_id).onnx
        return ModelFile(onnx, labels, iteration_id, name, chosen, information=self.information(project_id))

    def set_precision(self, ref: str, iteration_ref: str, precision: str) -> str:
        """Set how a completed iteration is served and scored (Float32 or Int8); returns the value set. Int8
        needs its int8 model: :meth:`Exports.int8_model` makes it on first use, if no export made it before."""
        chosen = check_precision(precision)
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.status != "Completed":
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration has a precision.",
                    code="BadRequestIterationIsNotTrained",
                )
            iteration.precision = chosen
        return chosen

    def int8_model(self, project_id: str, iteration_id: str) -> engine.ScoringModel:
        """The iteration's int8 classifier, loaded once per process (the Prediction API serves Int8 iterations
        with it)."""
        with self._lock:
            cached = self._int8.get(iteration_id)
        if cached is None:
            cached = engine.ScoringModel(self.exports.int8_model(project_id, iteration_id))
            with self._lock:
                self._int8[iteration_id] = cached
                while len(self._int8) > INT8_CACHE:
                    self._int8.pop(next(iter(self._int8)))
        return cached

    def information(self, project_id: str) -> dict[str, dict[str, Any]]:
        """Tag information by tag name, which scored rows carry (``tagvision.service.knowledge``)."""
        return self.knowledge.information_by_name(project_id) if self.knowledge is not None else {}

    # ------------------------------------------------------------------ jobs

    def start(
        self,
        ref: str,
        *,
        folder: str | None = None,
        urls: list[str] | None = None,
        iteration_ref: str | None = None,
        precision: str | None = None,
        top: int = 5,
    ) -> ScoringView:
        """Record a scoring job (status Running) over a folder under the library roots or a list of URLs."""
        if (folder is None) == (urls is None):
            raise InvalidInput("Score either a folder or a list of URLs.", code="BadRequestInvalid")
        if not 1 <= top <= MAX_TOP:
            raise InvalidInput(f"top is 1 to {MAX_TOP}.", code="BadRequestInvalid")
        source: dict[str, Any]
        if folder is not None:
            source = {"folder": str(self._library_folder(folder))}
        else:
            cleaned = [u.strip() for u in urls or [] if u.strip()]
            if not cleaned or len(cleaned) > MAX_URLS:
                raise InvalidInput(f"Give 1 to {MAX_URLS:,} URLs.", code="BadRequestInvalid")
            bad = next((u for u in cleaned if not u.startswith(("http://", "https://"))), None)
            if bad is not None:
                raise InvalidInput(f"Not an http(s) URL: {bad[:200]!r}.", code="BadRequestImageUrl")
            source = {"urls": len(cleaned), "urlsBlob": self.ctx.blobs.put("\n".join(cleaned).encode())}
        chosen = self.model_choice(ref, iteration_ref, precision)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            row = Scoring(
                project_id=project.id,
                iteration_id=chosen[0],
                precision=chosen[1],
                request={"source": source, "top": top},
                progress={"done": 0, "total": None, "scored": 0, "errors": {}},
            )
            session.add(row)
            session.flush()
            return _view(row)

    def model_choice(self, ref: str, iteration_ref: str | None, precision: str | None) -> tuple[str, str]:
        """(iteration id, precision) that :meth:`model` would use, checked now without building anything."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            if iteration_ref is None:
                iteration = session.scalars(
                    select(Iteration)
                    .where(Iteration.project_id == project.id, Iteration.publish_name.is_not(None))
                    .order_by(Iteration.last_modified.desc())
                ).first()
                if iteration is None:
                    raise NotFound(
                        f"Project {project.name!r} has no published iteration; publish one or name one.",
                        code="NotFoundIteration",
                    )
            else:
                iteration = get_iteration(session, project, iteration_ref)
            if iteration.status != "Completed":
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration scores.",
                    code="BadRequestIterationIsNotTrained",
                )
            return iteration.id, check_precision(precision) or iteration.precision or "Float32"

    def _library_folder(self, folder: str) -> Path:
        path = Path(folder).expanduser().resolve()
        roots = [root.expanduser().resolve() for root in self.ctx.settings.library_roots]
        if not any(path == root or root in path.parents for root in roots):
            raise InvalidInput(
                f"The server scores folders only under its operator's TAGVISION_LIBRARY_ROOTS; {folder!r} is not "
                "under one.",
                code="BadRequestInvalid",
            )
        if not path.is_dir():
            raise InvalidInput(f"No such folder: {folder}", code="BadRequestPathNotFound")
        return path

    def results_path(self, scoring_id: str) -> Path:
        return self.ctx.settings.data_dir / "scorings" / f"{scoring_id}.jsonl"

    def run(self, scoring_id: str) -> ScoringView:
        """Do (or resume) a recorded job: Completed, Cancelled, or Failed with the reason."""
        with self.ctx.db.session() as session:
            row = _row(session, scoring_id)
            if row.status != "Running":  # cancelled before it started
                return _view(row)
            project_id, iteration_id, precision = row.project_id, row.iteration_id, row.precision
            request = dict(row.request)
        with self._lock:
            stop = self._cancel.setdefault(scoring_id, threading.Event())
        try:
            if iteration_id is None:
                raise NotFound("The iteration this job scored with was deleted.", code="NotFoundIteration")
            summary = self._score(scoring_id, self.model(project_id, iteration_id, precision), request, stop)
            status, error, code = ("Cancelled" if summary.stopped else "Completed"), None, None
            counts = self._counts(scoring_id)
        except TagvisionError as exc:
            status, error, code, counts = "Failed", exc.message, exc.code, None
        except Exception as exc:  # recorded on the job; the job runner logs it
            status, error, code, counts = "Failed", f"{type(exc).__name__}: {exc}", "Error", None
        with self._lock:
            self._cancel.pop(scoring_id, None)
            if scoring_id in self._stopping:  # the server is stopping: stays Running, resumed at the next start
                self._stopping.discard(scoring_id)
                return self._get(scoring_id)
        with self.ctx.db.session() as session:
            row = _row(session, scoring_id)
            if row.status == "Running":
                row.status = status
            row.error, row.error_code, row.last_modified = error, code, utcnow()
            if counts is not None:
                row.progress = {**row.progress, **counts, "etaSeconds": 0.0}
            return _view(row)

    def _score(
        self, scoring_id: str, model_file: ModelFile, request: dict[str, Any], stop: threading.Event
    ) -> engine.Summary:
        """The engine over the job's source into its results file, its progress (and ETA) on the row."""
        model = engine.ScoringModel(model_file.onnx, information=model_file.information)
        started, resumed_at = time.monotonic(), []

        def progress(done: int, total: int) -> None:
            resumed_at.append(done)  # the first call says what an earlier run had done
            elapsed = time.monotonic() - started
            rate = (done - resumed_at[0]) / elapsed if elapsed > 0 else 0.0
            eta = (total - done) / rate if rate > 0 else None
            self._progress(scoring_id, {"done": done, "total": total, "etaSeconds": eta})

        return engine.score_to_file(
            self._source(request["source"]),
            self.results_path(scoring_id),
            engine.local_runner(model, top=request["top"]),
            top=request["top"],
            with_information=bool(model_file.information),
            progress=progress,
            should_stop=stop.is_set,
        )

    def _source(self, source: dict[str, Any]) -> SourceSpec:
        allow = self.ctx.settings.allow_private_urls
        if "folder" in source:
            return SourceSpec("folder", source["folder"], allow_private=allow)
        urls = self.ctx.blobs.get(source["urlsBlob"]).decode().split("\n")
        return SourceSpec("urls", urls=tuple(urls), allow_private=allow)

    def _progress(self, scoring_id: str, values: dict[str, Any]) -> None:
        with self.ctx.db.session() as session:
            row = _row(session, scoring_id)
            row.progress = {**row.progress, **values}
            row.last_modified = utcnow()

    def _counts(self, scoring_id: str) -> dict[str, Any]:
        scored = 0
        errors: dict[str, int] = {}
        for row in results.read_rows(self.results_path(scoring_id)):
            if row.error_code:
                errors[row.error_code] = errors.get(row.error_code, 0) + 1
            else:
                scored += 1
        return {"scored": scored, "errors": errors}

    def _get(self, scoring_id: str) -> ScoringView:
        with self.ctx.db.session() as session:
            return _view(_row(session, scoring_id))

    def get(self, ref: str, scoring_id: str) -> ScoringView:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            row = session.get(Scoring, scoring_id)
            if row is None or row.project_id != project.id:
                raise NotFound(f"No scoring {scoring_id!r} in this project.", code="NotFound")
            return _view(row)

    def list(self, ref: str) -> list[ScoringView]:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            rows = session.scalars(
                select(Scoring).where(Scoring.project_id == project.id).order_by(Scoring.created.desc())
            )
            return [_view(r) for r in rows]

    def cancel(self, ref: str, scoring_id: str) -> ScoringView:
        self.get(ref, scoring_id)  # in this project
        with self._lock:
            event = self._cancel.get(scoring_id)
        if event is not None:
            event.set()
        with self.ctx.db.session() as session:
            row = _row(session, scoring_id)
            if row.status == "Running":
                row.status, row.last_modified = "Cancelled", utcnow()
            return _view(row)

    def stop(self, scoring_id: str) -> None:
        """Stop a running job after its batch and leave it Running (a shutting-down server): the next start
        resumes it."""
        with self._lock:
            event = self._cancel.get(scoring_id)
            self._stopping.add(scoring_id)
        if event is not None:
            event.set()

    def interrupted(self) -> builtins.list[str]:
        """Jobs a stopped process left Running."""
        with self.ctx.db.session() as session:
            return list(session.scalars(select(Scoring.id).where(Scoring.status == "Running")))

    def download(self, ref: str, scoring_id: str, fmt: str) -> tuple[str, str, Iterator[bytes]]:
        """(file name, media type, chunks) of the rows so far, as ``jsonl`` or ``csv``."""
        view = self.get(ref, scoring_id)
        path = self.results_path(scoring_id)
        if fmt not in ("jsonl", "csv"):
            raise InvalidInput(f"Unknown format {fmt!r}; use jsonl or csv.", code="BadRequestInvalid")
        name = f"scoring-{scoring_id}.{fmt}"
        if not path.exists():
            return name, _media(fmt), iter([b"" if fmt == "jsonl" else _csv_text([results.columns(view.top, False)])])
        if fmt == "jsonl":
            return name, _media(fmt), _file_chunks(path)
        return name, _media(fmt), _csv_chunks(path, view.top)


def _media(fmt: str) -> str:
    return "application/x-ndjson" if fmt == "jsonl" else "text/csv; charset=utf-8"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            yield chunk


def _csv_text(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode()


def _csv_chunks(path: Path, top: int) -> Iterator[bytes]:
    """The JSON Lines rows as CSV, streamed (a first pass learns whether any row carries tag information)."""
    with_information = any(p.information is not None for r in results.read_rows(path) for p in r.predictions)
    yield _csv_text([results.columns(top, with_information)])
    batch: list[list[Any]] = []
    for row in results.read_rows(path):
        batch.append(row.flat(top, with_information))
        if len(batch) == 500:
            yield _csv_text(batch)
            batch = []
    yield _csv_text(batch)


def _row(session, scoring_id: str) -> Scoring:
    row = session.get(Scoring, scoring_id)
    if row is None:
        raise NotFound(f"No scoring {scoring_id!r}.", code="NotFound")
    return row


def _view(row: Scoring) -> ScoringView:
    return ScoringView(
        row.id,
        row.project_id,
        row.iteration_id,
        row.precision,
        row.status,
        row.request.get("source", {}),
        row.request.get("top", 5),
        row.progress,
        row.error,
        row.error_code,
        row.created,
        row.last_modified,
    )
