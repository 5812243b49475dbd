"""Labelled image datasets in the formats other tools read and write: folders, CSV and COCO.

* ``folders``: one folder per tag holding that tag's images (an image with two tags is in both);
  ``_untagged/`` holds images without tags; ``tags.json`` (optional on import) keeps each folder's
  tag name (a name may hold characters no folder name can) and type. Metadata and regions have no
  place in this format.
* ``csv``: ``dataset.csv`` with the columns ``image`` (a path relative to the CSV, or an http(s) URL
  on import), ``tags`` (names joined by ``|``, or a JSON list when a name holds ``|``), ``metadata``
  (a JSON object) and, when there are any, ``regions`` (a JSON list); the images in ``images/``.
* ``coco``: ``annotations.json`` in COCO's layout for classification: ``categories`` are the tags
  (with their ``type``), an annotation without ``bbox`` tags an image, one with ``bbox`` (pixels) is
  a region; images carry ``metadata``; the files in ``images/``.

This module reads and writes :class:`Item` values and files only; the service
(:mod:`tagvision.service.datasets`) maps them to projects. Tag names travel as names.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tagvision.errors import InvalidInput

FORMATS = ("folders", "csv", "coco")
UNTAGGED = "_untagged"
CSV_NAME, COCO_NAME, IMAGES, TAGS_NAME = "dataset.csv", "annotations.json", "images", "tags.json"
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class Region:
    tag: str  # the tag's name
    left: float  # fractions of the image's width and height, as Custom Vision's
    top: float
    width: float
    height: float


@dataclass(frozen=True)
class Item:
    """One image of a dataset: where its bytes are, its tags (names), metadata and regions."""

    name: str  # unique file name within the dataset
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    regions: tuple[Region, ...] = ()
    path: Path | None = None  # on import: the file
    url: str | None = None  # on import from CSV: a URL to download instead
    read: Callable[[], bytes] | None = None  # on export: the bytes
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class Dataset:
    """What a dataset read on import holds: every tag named (with its type, where the format says it) and
    the images."""

    tags: dict[str, str]  # name -> type (Regular, Negative, GeneralProduct)
    items: list[Item]


def check_format(value: str) -> str:
    if value not in FORMATS:
        raise InvalidInput(f"Unknown dataset format {value!r}; use {', '.join(FORMATS)}.", code="BadRequestInvalid")
    return value


def file_name(stem: str, sha256: str, image_format: str) -> str:
    """A file name that is safe on any file system and unique by content: ``<stem>-<sha8><suffix>``."""
    clean = re.sub(r"[^\w.-]+", "_", Path(stem).stem)[:80].strip("._") or "image"
    return f"{clean}-{sha256[:8]}{SUFFIXES.get(image_format, '.img')}"


def folder_name(tag: str) -> str:
    """A tag name as a folder name: path separators and a leading dot replaced."""
    name = re.sub(r"[/\\\x00]", "_", tag)
    return "_" + name if name.startswith(".") or name == UNTAGGED else name


# ---------------------------------------------------------------------- writing


def write(items: Iterable[Item], folder: Path, fmt: str, tags: dict[str, str], progress=None) -> int:
    """Write a dataset into ``folder`` (made if missing); returns how many images were written."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = {"folders": _write_folders, "csv": _write_csv, "coco": _write_coco}[check_format(fmt)]
    return writer(items, folder, tags, progress or (lambda _done: None))


def _write_folders(items: Iterable[Item], folder: Path, tags: dict[str, str], progress) -> int:
    names = {folder_name(t): {"name": t, "type": kind} for t, kind in tags.items()}
    (folder / TAGS_NAME).write_text(json.dumps({"folders": names}, indent=1), encoding="utf-8")
    count = 0
    for item in items:
        assert item.read is not None  # export items carry their bytes
        data = item.read()
        for tag in item.tags or (UNTAGGED,):
            target = folder / (folder_name(tag) if item.tags else UNTAGGED) / item.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        count += 1
        progress(count)
    return count


def _write_csv(items: Iterable[Item], folder: Path, _tags: dict[str, str], progress) -> int:
    rows, count = [], 0
    for item in _write_files(items, folder, progress):
        count += 1
        tags = json.dumps(list(item.tags)) if any("|" in t for t in item.tags) else "|".join(item.tags)
        row = {"image": f"{IMAGES}/{item.name}", "tags": tags, "metadata": json.dumps(item.metadata or {})}
        if item.regions:
            row["regions"] = json.dumps([r.__dict__ for r in item.regions])
        rows.append(row)
    columns = ["image", "tags", "metadata"] + (["regions"] if any("regions" in r for r in rows) else [])
    with open(folder / CSV_NAME, "w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, columns)
        out.writeheader()
        out.writerows(rows)
    return count


def _write_coco(items: Iterable[Item], folder: Path, tags: dict[str, str], progress) -> int:
    category = {name: k for k, name in enumerate(tags, 1)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for number, item in enumerate(_write_files(items, folder, progress), 1):
        images.append(
            {
                "id": number,
                "file_name": f"{IMAGES}/{item.name}",
                "width": item.width,
                "height": item.height,
                "metadata": item.metadata or {},
            }
        )
        for tag in item.tags:
            annotations.append({"id": len(annotations) + 1, "image_id": number, "category_id": category[tag]})
        for r in item.regions:
            box = [r.left * item.width, r.top * item.height, r.width * item.width, r.height * item.height]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": number,
                    "category_id": category[r.tag],
                    "bbox": [round(v, 3) for v in box],
                    "area": round(box[2] * box[3], 3),
                    "iscrowd": 0,
                }
            )
    body = {
        "info": {"description": "Exported by tagvision (classification: annotations without bbox tag an image)"},
        "licenses": [],
        "categories": [{"id": k, "name": n, "supercategory": "", "type": tags[n]} for n, k in category.items()],
        "images": images,
        "annotations": annotations,
    }
    (folder / COCO_NAME).write_text(json.dumps(body, indent=1), encoding="utf-8")
    return len(images)


def _write_files(items: Iterable[Item], folder: Path, progress) -> Iterator[Item]:
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    for done, item in enumerate(items, 1):
        assert item.read is not None  # export items carry their bytes
        (folder / IMAGES / item.name).write_bytes(item.read())
        progress(done)
        yield item


# ---------------------------------------------------------------------- reading


def read(path: Path, fmt: str) -> Dataset:
    """A dataset from a folder (``folders``), a CSV file or its folder (``csv``), a COCO JSON file or its
    folder (``coco``)."""
    reader = {"folders": _read_folders, "csv": _read_csv, "coco": _read_coco}[check_format(fmt)]
    if not path.exists():
        raise InvalidInput(f"No such file or folder: {path}", code="BadRequestPathNotFound")
    return reader(path)


def _read_folders(root: Path) -> Dataset:
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder of tag folders.", code="BadRequestInvalid")
    known = (
        _json((root / TAGS_NAME).read_text(encoding="utf-8"), dict, TAGS_NAME) if (root / TAGS_NAME).is_file() else {}
    )
    named = {str(k): v for k, v in (known.get("folders") or {}).items() if isinstance(v, dict) and v.get("name")}
    tags = {str(v["name"]): str(v.get("type") or "Regular") for v in named.values()}
    items = [Item(p.name, path=p) for p in _image_files(root, recursive=False)]
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        names = () if folder.name == UNTAGGED else (str(named.get(folder.name, {}).get("name") or folder.name),)
        for name in names:
            tags.setdefault(name, "Regular")
        items += [Item(p.name, names, path=p) for p in _image_files(folder, recursive=True)]
    return Dataset(tags, items)


def _read_csv(path: Path) -> Dataset:
    file = path / CSV_NAME if path.is_dir() else path
    tags: dict[str, str] = {}
    items = []
    with open(file, newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.DictReader(fh), 2):
            where = f"{file.name} line {number}"
            image = (row.get("image") or row.get("path") or row.get("url") or "").strip()
            if not image:
                raise InvalidInput(f"{where}: no image path or URL.", code="BadRequestInvalid")
            names = _csv_tags(row.get("tags") or "", where)
            for name in names:
                tags.setdefault(name, "Regular")
            metadata = _json(row.get("metadata") or "{}", dict, where)
            try:
                regions = tuple(Region(**r) for r in _json(row.get("regions") or "[]", list, where))
            except TypeError:
                raise InvalidInput(
                    f"{where}: regions are {{tag, left, top, width, height}}.", code="BadRequestInvalid"
                ) from None
            is_url = re.match(r"https?://", image, flags=re.IGNORECASE) is not None
            items.append(
                Item(
                    image.rsplit("/", 1)[-1] or image,
                    names,
                    {str(k): str(v) for k, v in metadata.items()},
                    regions,
                    path=None if is_url else (file.parent / image),
                    url=image if is_url else None,
                )
            )
    return Dataset(tags, items)


def _read_coco(path: Path) -> Dataset:
    file = path / COCO_NAME if path.is_dir() else path
    try:
        body = json.loads(file.read_text(encoding="utf-8"))
        categories = {c["id"]: c for c in body.get("categories") or []}
        found = {i["id"]: i for i in body["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{file} is not COCO JSON ({exc}).", code="BadRequestInvalid") from None
    tags = {str(c["name"]): str(c.get("type") or "Regular") for c in categories.values()}
    labels: dict[Any, list[str]] = {k: [] for k in found}
    regions: dict[Any, list[Region]] = {k: [] for k in found}
    for a in body.get("annotations") or []:
        image, category = found.get(a.get("image_id")), categories.get(a.get("category_id"))
        if image is None or category is None:
            raise InvalidInput(
                f"Annotation {a.get('id')} names an unknown image or category.", code="BadRequestInvalid"
            )
        if a.get("bbox"):
            x, y, w, h = (float(v) for v in a["bbox"])
            width, height = float(image.get("width") or 0), float(image.get("height") or 0)
            if not width or not height:
                raise InvalidInput(
                    f"Image {image['id']} needs its width and height for its boxes.", code="BadRequestInvalid"
                )
            regions[image["id"]].append(Region(category["name"], x / width, y / height, w / width, h / height))
        else:
            labels[image["id"]].append(category["name"])
    items = [
        Item(
            Path(i["file_name"]).name,
            tuple(dict.fromkeys(labels[k])),
            {str(m): str(v) for m, v in (i.get("metadata") or {}).items()},
            tuple(regions[k]),
            path=file.parent / i["file_name"],
        )
        for k, i in found.items()
    ]
    return Dataset(tags, items)


def _csv_tags(value: str, where: str) -> tuple[str, ...]:
    value = value.strip()
    names = _json(value, list, where) if value.startswith("[") else value.split("|")
    return tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))


def _json(text: str, kind: type, where: str):
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidInput(f"{where}: {text[:60]!r} is not valid JSON.", code="BadRequestInvalid") from None
    if not isinstance(value, kind):
        raise InvalidInput(f"{where}: expected a JSON {kind.__name__}.", code="BadRequestInvalid")
    return value


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    children = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in children
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
