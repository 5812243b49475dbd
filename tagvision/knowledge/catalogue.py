"""Catalogue files: one row per tag, a key column naming the tag and every other column an attribute.

Formats: ``csv`` (a header row; cell types inferred, see :func:`infer`), ``json`` (an array of objects) and
``jsonl`` (one object per line). :func:`read` never stops at a bad row: it returns the good rows and one
:class:`RowError` per bad one, with its line number and field, so the caller can apply the good rows in one
transaction. A file that cannot be read at all (not UTF-8, no key column, duplicate columns, broken JSON
array) raises :class:`~tagvision.knowledge.FieldError`. :func:`write` gives back the same formats, exactly
re-readable: text that would read as another type is written as a JSON string (``"42"``), which also keeps
spreadsheet programs from running a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tagvision.knowledge import FieldError
from tagvision.knowledge import information as info

FORMATS = ("csv", "json", "jsonl")
MAX_FILE = 16 * 1024 * 1024
MAX_ROWS = 10_000
CODE = "BadRequestCatalogue"
NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
FORMULA = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Row:
    """A good row: the tag it names, its information, and its reference images (paths or URLs)."""

    line: int
    tag: str
    information: dict[str, Any]
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class RowError:
    """Why a row was not applied: where (line), which field (column or attribute path), a code and a sentence."""

    line: int
    message: str
    field: str | None = None
    code: str = CODE
    tag: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "tag": self.tag, "field": self.field, "code": self.code, "message": self.message}

    def sentence(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"


@dataclass
class Parsed:
    rows: list[Row] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def format_of(name: str, given: str | None = None) -> str:
    """The format named by ``given``, else by the file name's suffix."""
    fmt = (given or (name.rsplit(".", 1)[-1] if "." in name else "")).lower().lstrip(".")
    if fmt == "ndjson":
        fmt = "jsonl"
    if fmt not in FORMATS:
        raise FieldError("format", f"{fmt or name!r} is not a catalogue format; use csv, json or jsonl.", code=CODE)
    return fmt


def read(data: bytes, fmt: str, key: str = "tag", images: str | None = None) -> Parsed:
    """The rows of a catalogue file; ``key`` names the tag column, ``images`` the reference-image column."""
    if len(data) > MAX_FILE:
        raise FieldError("file", f"is {len(data):,} bytes; at most {MAX_FILE:,} are allowed.", code=CODE)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FieldError("file", f"is not UTF-8 text (byte {exc.start}).", code=CODE) from None
    if not text.strip():
        raise FieldError("file", "is empty.", code=CODE)
    items = {"csv": _csv_items, "json": _json_items, "jsonl": _jsonl_items}[fmt](text, key)
    parsed = Parsed()
    seen: dict[str, int] = {}
    for line, item in items:
        if isinstance(item, RowError):
            parsed.errors.append(item)
        else:
            _take(parsed, seen, line, item, key, images)
        if len(parsed.rows) + len(parsed.errors) > MAX_ROWS:
            raise FieldError("file", f"has more than {MAX_ROWS:,} rows; split it.", code=CODE)
    return parsed


def _take(parsed: Parsed, seen: dict[str, int], line: int, item: Any, key: str, images: str | None) -> None:
    """Check one row object and add it to ``parsed`` as a row or an error."""
    if not isinstance(item, dict):
        parsed.errors.append(RowError(line, f"a row must be an object, not {info.kind(item)}."))
        return
    name = item.get(key)
    if not isinstance(name, str) or not name.strip():
        parsed.errors.append(RowError(line, f"no tag name in {key!r}.", key))
        return
    tag = name.strip()
    folded = tag.casefold()
    if folded in seen:
        parsed.errors.append(
            RowError(line, f"the tag {tag!r} is already on line {seen[folded]}; one row per tag.", key, tag=tag)
        )
        return
    seen[folded] = line
    attributes = {k: v for k, v in item.items() if k != key and k != images}
    try:
        info.validate(attributes, "information")
        refs = _image_refs(item.get(images) if images else None, images or "")
    except FieldError as exc:
        parsed.errors.append(RowError(line, exc.reason, exc.field.removeprefix("information."), exc.code, tag))
        return
    parsed.rows.append(Row(line, tag, attributes, refs))


def _image_refs(value: Any, column: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split("|") if part.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise FieldError(column, "give image paths or URLs: text (several separated by '|') or a list of text.", code=CODE)


# ---------------------------------------------------------------------- reading each format


def _csv_items(text: str, key: str) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except csv.Error as exc:
        raise FieldError("header", f"line 1 cannot be read as CSV ({exc}).", code=CODE) from None
    dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
    if dup is not None:
        raise FieldError("header", f"the column {dup!r} appears twice.", code=CODE)
    if key not in header:
        raise FieldError("header", f"has no {key!r} column naming the tag (columns: {', '.join(header)}).", code=CODE)
    if "" in header:
        raise FieldError("header", f"column {header.index('') + 1} has no name.", code=CODE)
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            end = reader.line_num
            spans = f"; the record runs to line {end}: look for an unclosed quote" if end > start else ""
            yield start, RowError(start, f"cannot be read as CSV ({exc}){spans}.")
            start = end + 1
            continue
        line, start = start, reader.line_num + 1
        if not cells or all(not c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            yield line, RowError(line, f"has {len(cells)} cells; the header has {len(header)} columns.")
            continue
        yield line, _csv_row(line, header, cells, key)


def _csv_row(line: int, header: list[str], cells: list[str], key: str) -> dict[str, Any] | RowError:
    row: dict[str, Any] = {}
    for column, cell in zip(header, cells, strict=True):
        if column == key:
            row[column] = cell
            continue
        try:
            value = infer(cell, column)
        except FieldError as exc:
            return RowError(line, exc.reason, column, exc.code, cells[header.index(key)].strip() or None)
        if value is not ABSENT:
            row[column] = value
    return row


ABSENT = object()


def infer(cell: str, column: str = "") -> Any:
    """A CSV cell's value: empty -> absent; ``true``/``false``; ``null``; a JSON number -> int or float
    (``007`` and ``1,000`` stay text); ``[...]``, ``{...}`` and ``"..."`` -> that JSON; anything else -> text."""
    text = cell.strip()
    if not text:
        return ABSENT
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "null":
        return None
    if NUMBER.fullmatch(text):
        value = json.loads(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise FieldError(column, f"{text} is not a finite number.", code=CODE)
        return value
    if text[0] in "[{" or (len(text) >= 2 and text[0] == text[-1] == '"'):
        return info.loads(text, column)
    return text


def _json_items(text: str, key: str) -> Iterator[tuple[int, Any]]:
    """The objects of a JSON array, each with the line it starts on; duplicate keys make that row an error."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                duplicates.append(k)
            out[k] = v
        return out

    decoder = json.JSONDecoder(object_pairs_hook=pairs, parse_constant=_constant)
    counted, line = 0, 1

    def line_at(pos: int) -> int:  # positions only move forward: the newlines are counted once
        nonlocal counted, line
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    at = _skip(text, 0)
    if at >= len(text) or text[at] != "[":
        raise FieldError("file", "a JSON catalogue is an array of objects: [{...}, {...}].", code=CODE)
    at = _skip(text, at + 1)
    if at < len(text) and text[at] == "]":
        return
    while True:
        duplicates.clear()
        start = line_at(at)
        try:
            item, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError) as exc:
            where = exc.lineno if isinstance(exc, json.JSONDecodeError) else start
            raise FieldError("file", f"line {where}: not valid JSON ({str(exc)[:120]}).", code=CODE) from None
        if duplicates:
            yield start, RowError(start, f"the key {duplicates[0]!r} appears twice in one object.", duplicates[0])
        else:
            yield start, item
        at = _skip(text, end)
        if at < len(text) and text[at] == ",":
            at = _skip(text, at + 1)
            continue
        if at < len(text) and text[at] == "]" and not text[at + 1 :].strip():
            return
        raise FieldError("file", f"line {line_at(min(at, len(text)))}: expected ',' or ']'.", code=CODE)


def _skip(text: str, at: int) -> int:
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _jsonl_items(text: str, key: str) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield number, info.loads(raw, "")
        except FieldError as exc:
            yield number, RowError(number, exc.reason)


# ---------------------------------------------------------------------- writing


def write(rows: list[tuple[str, dict[str, Any]]], fmt: str, key: str = "tag") -> bytes:
    """(tag name, information) rows as a catalogue file that :func:`read` reads back to the same values."""
    clash = next((name for name, data in rows if key in data), None)
    if clash is not None:
        raise FieldError(
            "key", f"the tag {clash!r} has an attribute named {key!r}; export with another key column.", code=CODE
        )
    if fmt == "json":
        body = [{key: name, **data} for name, data in rows]
        return (json.dumps(body, ensure_ascii=False, indent=2) + "\n").encode()
    if fmt == "jsonl":
        return "".join(json.dumps({key: name, **data}, ensure_ascii=False) + "\n" for name, data in rows).encode()
    columns = list(dict.fromkeys(k for _, data in rows for k in data))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([key, *columns])
    for name, data in rows:
        writer.writerow([name, *(cell(data[c]) if c in data else "" for c in columns)])
    return out.getvalue().encode()


def cell(value: Any) -> str:
    """One value as a CSV cell that :func:`infer` reads back as the same value."""
    if isinstance(value, str):
        plain = value and value == value.strip() and value[0] not in FORMULA
        try:
            same = plain and infer(value) == value and type(infer(value)) is str
        except FieldError:
            same = False
        return value if same else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
