"""Where the images of a scoring job come from: a folder, a list of paths or URLs, or an S3 prefix.

A source yields :class:`Item`\\ s: a stable ``key`` (the path, URL or ``s3://`` address as the user will read
it in the results, and what a resumed run skips) and a zero-argument ``read`` returning the encoded bytes.
Reading happens in the scorer's decode threads, so listing stays cheap and the network or disk is read
as far ahead as the decoders go. A ``read`` raises :class:`~tagvision.errors.TagvisionError` with a stable
code (``ErrorSource`` for a file that cannot be read, ``ErrorImageSize`` for one over the limit, the
downloader's ``BadRequestImageUrl``), which the scorer records on the row and moves on.

Sources are plain values (:class:`SourceSpec`) so a Ray driver can describe one and every worker can open
it again (`open_source`). Paths in a list file are relative to the list file's folder. S3 goes through
``boto3`` (the ``tagvision[s3]`` extra), configured as boto3 always is (``AWS_*`` variables, profiles,
``AWS_ENDPOINT_URL`` for an S3-compatible store).
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagvision import fetch
from tagvision.errors import ImageError, InvalidInput

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp"})
MAX_SCORING_BYTES = 20 * 1024 * 1024  # catalogue photos are often larger than Custom Vision's 4-6 MB upload limits
URL_SCHEMES = ("http://", "https://")
LIST_COLUMNS = ("image", "path", "url", "file", "key")  # a CSV list's column of images, first match wins


@dataclass(frozen=True)
class Item:
    key: str
    read: Callable[[], bytes]


@dataclass(frozen=True)
class SourceSpec:
    """What to score: ``kind`` is ``folder``, ``list`` (a file of paths/URLs), ``urls`` (given inline) or ``s3``;
    ``location`` the folder, list file or ``s3://bucket/prefix``; ``urls`` the inline keys."""

    kind: str
    location: str = ""
    urls: tuple[str, ...] = ()
    allow_private: bool = False  # the operator's TAGVISION_ALLOW_PRIVATE_URLS, for URLs
    max_bytes: int = MAX_SCORING_BYTES

    @classmethod
    def parse(cls, source: str, *, allow_private: bool = False, max_bytes: int = MAX_SCORING_BYTES) -> SourceSpec:
        """``source`` as the CLI takes it: ``s3://...``, a folder, or a ``.txt``/``.csv`` list file."""
        if source.startswith("s3://"):
            return cls("s3", source, allow_private=allow_private, max_bytes=max_bytes)
        path = Path(source).expanduser()
        if path.is_dir():
            return cls("folder", str(path.resolve()), allow_private=allow_private, max_bytes=max_bytes)
        if path.is_file():
            return cls("list", str(path.resolve()), allow_private=allow_private, max_bytes=max_bytes)
        raise InvalidInput(
            f"No such folder or list file: {source} (give a folder, a .txt/.csv list of paths or URLs, or s3://...).",
            code="BadRequestPathNotFound",
        )


def open_source(spec: SourceSpec) -> Iterator[Item]:
    """Every item of ``spec`` once, in a stable order (a key given twice is scored once)."""
    keys = {
        "folder": lambda: folder_keys(Path(spec.location)),
        "list": lambda: list_keys(Path(spec.location)),
        "urls": lambda: iter(spec.urls),
        "s3": lambda: s3_keys(spec.location),
    }
    if spec.kind not in keys:
        raise InvalidInput(f"Unknown source kind {spec.kind!r}.", code="BadRequestInvalid")
    seen: set[str] = set()
    for key in keys[spec.kind]():
        if key not in seen:
            seen.add(key)
            yield Item(key, reader(key, spec))


def reader(key: str, spec: SourceSpec) -> Callable[[], bytes]:
    """How to read one key: a local file, an http(s) URL through the SSRF-safe downloader, or an S3 object."""
    if key.startswith(URL_SCHEMES):
        return lambda: fetch.fetch(key, max_bytes=spec.max_bytes, allow_private=spec.allow_private, timeout=60).data
    if key.startswith("s3://"):
        return lambda: _read_s3(key, spec.max_bytes)
    return lambda: read_file(Path(key), spec.max_bytes)


def folder_keys(root: Path) -> Iterator[str]:
    """Image files under ``root`` (recursive, by suffix, hidden files and folders skipped), sorted."""
    if not root.is_dir():
        raise InvalidInput(f"No such folder: {root}", code="BadRequestPathNotFound")
    for path in sorted(root.rglob("*")):
        if (
            path.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
            and path.is_file()
        ):
            yield str(path)


def list_keys(path: Path) -> Iterator[str]:
    """Keys from a list file: one path or URL per line (blank lines and ``#`` comments skipped), or a CSV whose
    column ``image``/``path``/``url``/``file``/``key`` (else the first) names them. Relative paths are taken
    from the list file's folder."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        if path.suffix.lower() == ".csv":
            rows: Iterator[list[str]] = csv.reader(fh)
            header = next(rows, [])
            lowered = [h.strip().lower() for h in header]
            column = next((lowered.index(c) for c in LIST_COLUMNS if c in lowered), None)
            if column is None:  # no header we know: the first row is data, its first column the key
                column, rows = 0, _chain([header], rows)
            values = (row[column].strip() for row in rows if len(row) > column)
        else:
            values = (line.strip() for line in fh)
        for value in values:
            if value and not value.startswith("#"):
                yield value if value.startswith((*URL_SCHEMES, "s3://")) else str((path.parent / value).resolve())


def _chain(first: list, rest: Iterator) -> Iterator:
    yield from first
    yield from rest


def read_file(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ImageError(f"Could not read {path}: {exc.strerror or exc}.", code="ErrorSource") from None
    if len(data) > max_bytes:
        raise ImageError(f"The file is larger than {max_bytes:,} bytes.", code="ErrorImageSize")
    return data


# ---------------------------------------------------------------------------------------------- S3


def _s3():
    try:
        import boto3
    except ImportError:
        raise InvalidInput(
            "Scoring from s3:// needs boto3: pip install 'tagvision[s3]'.", code="BadRequestNotSupported"
        ) from None
    return boto3.client("s3")


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise InvalidInput(f"{url!r} names no bucket (s3://bucket/prefix).", code="BadRequestInvalid")
    return bucket, prefix


def s3_keys(url: str) -> Iterator[str]:
    """Objects under an ``s3://bucket/prefix`` with an image suffix, in S3's (lexicographic) order."""
    bucket, prefix = _split_s3(url)
    client = _s3()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if Path(obj["Key"]).suffix.lower() in IMAGE_SUFFIXES:
                    yield f"s3://{bucket}/{obj['Key']}"
    except client.exceptions.NoSuchBucket:
        raise InvalidInput(f"No such S3 bucket: {bucket}", code="BadRequestPathNotFound") from None


_clients: dict[int, Any] = {}  # boto3 S3 clients, one per thread


def _read_s3(url: str, max_bytes: int) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    ident = threading.get_ident()  # boto3 clients are thread-safe, sessions are not: one client per thread
    client = _clients.get(ident) or _clients.setdefault(ident, _s3())
    bucket, key = _split_s3(url)
    try:
        body = client.get_object(Bucket=bucket, Key=key)
        if body.get("ContentLength", 0) > max_bytes:
            raise ImageError(f"The object is larger than {max_bytes:,} bytes.", code="ErrorImageSize")
        data = body["Body"].read(max_bytes + 1)
    except (BotoCoreError, ClientError) as exc:
        raise ImageError(f"Could not read {url}: {exc}.", code="ErrorSource") from None
    if len(data) > max_bytes:
        raise ImageError(f"The object is larger than {max_bytes:,} bytes.", code="ErrorImageSize")
    return data
