"""Scoring results on disk: JSON Lines, CSV or Parquet, written batch by batch and resumable.

Every row names its image (the source key) and holds either the top-k tags with their probabilities or the
error code and message that kept the image from being scored. A writer appends whole batches and syncs
them, so a run killed at any moment loses at most the batch it was scoring; opening the same file again
(:func:`open_results`) repairs a torn last line, reports the keys already there (``done``), and the run
skips those, so no image is scored twice and none is missed.

Parquet files cannot be appended to: batches go to numbered part files beside the output
(``results.parquet.parts/``), each written atomically, and :meth:`ResultsWriter.close` merges them into
the output (pyarrow, the ``tagvision[parquet]`` extra).

The JSON Lines row is ``{"image", "predictions": [{"tagName", "probability"}...]}`` or
``{"image", "errorCode", "error"}``; CSV and Parquet have the columns ``image, error_code, error, tag_1,
probability_1, ... tag_k, probability_k``. When the model's tags carry information (a JSON object per
tag), each prediction carries it too: ``information`` in JSON Lines, ``information_i`` (JSON text) columns
in CSV and Parquet.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagvision.errors import InvalidInput

FORMATS = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Prediction:
    tag_name: str
    probability: float
    information: dict[str, Any] | None = None


@dataclass(frozen=True)
class Row:
    """One scored image: ``predictions`` (highest first) or ``error_code`` and ``error``."""

    image: str
    predictions: tuple[Prediction, ...] = ()
    error_code: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error_code is not None:
            return {"image": self.image, "errorCode": self.error_code, "error": self.error}
        return {
            "image": self.image,
            "predictions": [
                {"tagName": p.tag_name, "probability": p.probability}
                | ({"information": p.information} if p.information is not None else {})
                for p in self.predictions
            ],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Row:
        if "errorCode" in value:
            return cls(value["image"], error_code=value["errorCode"], error=value.get("error"))
        return cls(
            value["image"],
            tuple(Prediction(p["tagName"], p["probability"], p.get("information")) for p in value["predictions"]),
        )

    def flat(self, top: int, with_information: bool) -> list[Any]:
        """The CSV / Parquet cells: image, error_code, error, then tag and probability (and information) per rank."""
        cells: list[Any] = [self.image, self.error_code or "", self.error or ""]
        for rank in range(top):
            p = self.predictions[rank] if rank < len(self.predictions) else None
            cells += [p.tag_name if p else "", p.probability if p else None]
            if with_information:
                cells.append(json.dumps(p.information, ensure_ascii=False) if p and p.information is not None else "")
        return cells


def columns(top: int, with_information: bool) -> list[str]:
    names = ["image", "error_code", "error"]
    for rank in range(1, top + 1):
        names += [f"tag_{rank}", f"probability_{rank}"] + ([f"information_{rank}"] if with_information else [])
    return names


@dataclass
class ResultsWriter:
    """Appends batches of rows to one results file; ``done`` holds the keys the file had when opened."""

    path: Path
    top: int
    with_information: bool = False
    done: set[str] = field(default_factory=set)
    written: int = 0

    def write(self, rows: Sequence[Row]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file (Parquet: merge the parts)."""


class _LineWriter(ResultsWriter):
    """JSON Lines or CSV: each batch one write of whole lines, then fsync."""

    def open(self) -> _LineWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(self.path)
        self.done = set(self._keys())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size == 0 and self.path.suffix == ".csv":
            self._append(self._csv_lines([columns(self.top, self.with_information)]))
        return self

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        if self.path.suffix == ".csv":
            data = self._csv_lines([r.flat(self.top, self.with_information) for r in rows])
        else:
            data = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows)
        self._append(data)
        self.written += len(rows)

    def close(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
            del self._fd

    def _append(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(self._fd, data) :]
        os.fsync(self._fd)

    @staticmethod
    def _csv_lines(rows: list[list[Any]]) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()

    def _keys(self) -> Iterator[str]:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8", newline="") as fh:
            if self.path.suffix == ".csv":
                rows = csv.reader(fh)
                header = next(rows, None)
                if header is not None and header != columns(self.top, self.with_information):
                    raise InvalidInput(
                        f"{self.path} holds other columns ({', '.join(header[:6])}...): a run with different "
                        "--top or tags wrote it. Write to a new file.",
                        code="BadRequestInvalid",
                    )
                yield from (row[0] for row in rows if row)
            else:
                for number, line in enumerate(fh, 1):
                    try:
                        yield json.loads(line)["image"]
                    except (ValueError, KeyError, TypeError):
                        raise InvalidInput(
                            f"{self.path} line {number} is not a result row; write to a new file.",
                            code="BadRequestInvalid",
                        ) from None


class _ParquetWriter(ResultsWriter):
    """Each batch an atomically written part file; :meth:`close` merges the output and the parts."""

    def open(self) -> _ParquetWriter:
        pq = _pyarrow()[1]
        self.parts = self.path.with_name(self.path.name + ".parts")
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob("*.tmp"):
            stale.unlink()
        existing = ([self.path] if self.path.exists() else []) + self._part_files()
        for file in existing:
            table = pq.read_table(file, columns=["image"])
            self.done.update(table.column("image").to_pylist())
        self._next = len(self._part_files())
        return self

    def _part_files(self) -> list[Path]:
        return sorted(self.parts.glob("part-*.parquet"))

    def _table(self, rows: Sequence[Row]):
        pa = _pyarrow()[0]
        names = columns(self.top, self.with_information)
        cells = list(zip(*(r.flat(self.top, self.with_information) for r in rows), strict=True))
        types = {name: pa.float64() if name.startswith("probability_") else pa.string() for name in names}
        return pa.table({n: pa.array(list(c), type=types[n]) for n, c in zip(names, cells, strict=True)})

    def write(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        pq = _pyarrow()[1]
        part = self.parts / f"part-{self._next:08d}.parquet"
        tmp = part.with_suffix(".tmp")
        pq.write_table(self._table(rows), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, part)
        self._next += 1
        self.written += len(rows)

    def close(self) -> None:
        pq = _pyarrow()[1]
        parts = self._part_files()
        if not parts:
            shutil.rmtree(self.parts, ignore_errors=True)
            if not self.path.exists():
                pq.write_table(_empty(self.top, self.with_information), self.path)
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        sources = ([self.path] if self.path.exists() else []) + parts
        schema = pq.read_schema(parts[0])
        with pq.ParquetWriter(tmp, schema) as out:
            for file in sources:
                out.write_table(pq.read_table(file).cast(schema))
        os.replace(tmp, self.path)
        shutil.rmtree(self.parts)


def _empty(top: int, with_information: bool):
    pa = _pyarrow()[0]
    names = columns(top, with_information)
    return pa.table({n: pa.array([], pa.float64() if n.startswith("probability_") else pa.string()) for n in names})


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInput(
            "Parquet output needs pyarrow: pip install 'tagvision[parquet]'; or write .jsonl or .csv.",
            code="BadRequestNotSupported",
        ) from None
    return pa, pq


def _repair_tail(path: Path) -> None:
    """Cut a torn last line (a write interrupted by a kill) so the file ends with a whole row."""
    if not path.exists():
        return
    with path.open("rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        keep, step = 0, 1 << 16
        for end in range(size, 0, -step):  # search backwards for the last newline
            fh.seek(max(0, end - step))
            chunk = fh.read(end - max(0, end - step))
            found = chunk.rfind(b"\n")
            if found >= 0:
                keep = max(0, end - step) + found + 1
                break
        fh.truncate(keep)


def open_results(path: Path, top: int, with_information: bool = False) -> ResultsWriter:
    """A writer for ``path`` (format from its suffix) that knows which images the file already holds."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInput(
            f"Unknown results format {path.name!r}; name the file .jsonl, .csv or .parquet.", code="BadRequestInvalid"
        )
    if suffix == ".parquet":
        return _ParquetWriter(path, top, with_information).open()
    return _LineWriter(path, top, with_information).open()


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of a JSON Lines results file (the service converts them to CSV for download)."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.endswith("\n"):
                yield Row.from_json(json.loads(line))
