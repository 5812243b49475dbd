"""Prediction records a business keeps: the caller's metadata, exports, and how long they are kept.

A stored prediction may carry the caller's key/values (claim number, field id, store id...), sent with the
request as a tagvision extension; queries find predictions by them. Exports (CSV, JSON Lines) give each record
with its image link, its probabilities, the tag information and the decision as they were when it was made
(the information versions it points at, never the tags' current information). Retention: the server's
``TAGVISION_PREDICTION_RETENTION_DAYS``, or a project's own setting (days, forever, or never stored); expired
records are purged in the background, with the image files nothing else refers to.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select

from tagvision import images
from tagvision.clock import SYSTEM, Clock
from tagvision.errors import InvalidInput
from tagvision.knowledge import catalogue as cat
from tagvision.service.context import Context, get_project
from tagvision.service.files import THUMBNAIL
from tagvision.service.images import MAX_METADATA_KEY, MAX_METADATA_PAIRS, MAX_METADATA_VALUE
from tagvision.service.knowledge import Knowledge
from tagvision.service.prediction import Prediction, PredictionQuery
from tagvision.service.views import PredictionView, iso_time
from tagvision.store.models import AcquisitionItem, Image, Project, utcnow
from tagvision.store.models import Prediction as StoredPrediction

log = logging.getLogger("tagvision.records")
PURGE_EVERY = 600.0  # seconds between background purges in a process that stores predictions
MAX_DAYS = 36500
PAGE = 256
FORMATS = ("csv", "jsonl")
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/bmp": "bmp", "image/webp": "webp"}
METADATA_CODE = "BadRequestPredictionMetadata"


def check_metadata(raw: Any) -> dict[str, str]:
    """The caller's metadata: at most 10 string keys (1-128 characters) to string values (at most 256)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("Prediction metadata is a JSON object of string values.", code=METADATA_CODE)
    if len(raw) > MAX_METADATA_PAIRS:
        raise InvalidInput(
            f"Prediction metadata has {len(raw)} keys; at most {MAX_METADATA_PAIRS} are allowed.", code=METADATA_CODE
        )
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_METADATA_KEY or _control(key):
            raise InvalidInput(
                f"Metadata key {str(key)[:40]!r}: keys are 1 to {MAX_METADATA_KEY} characters, no control characters.",
                code=METADATA_CODE,
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = json.dumps(value)
        if not isinstance(value, str) or len(value) > MAX_METADATA_VALUE or _control(value):
            raise InvalidInput(
                f"Metadata {key!r}: values are text of at most {MAX_METADATA_VALUE} characters.", code=METADATA_CODE
            )
        out[key] = value
    return out


def metadata_from_text(text: str | None) -> dict[str, str]:
    """Metadata as a JSON object in a header or query value (``{"claim": "C-1042"}``), or ``k=v;k2=v2``."""
    if text is None or not text.strip():
        return {}
    body = text.strip()
    if body.startswith("{"):
        try:
            return check_metadata(json.loads(body))
        except ValueError:
            raise InvalidInput("Prediction metadata is not valid JSON.", code=METADATA_CODE) from None
    return metadata_from_pairs(re.split(r"\s*;\s*", body))


def metadata_from_pairs(pairs: list[str]) -> dict[str, str]:
    """``key=value`` items (the CLI's ``--meta claim=C-1042``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"Write metadata as key=value, not {pair!r}.", code=METADATA_CODE)
        out[key.strip()] = value.strip()
    return check_metadata(out)


def _control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


@dataclass(frozen=True)
class RetentionView:
    """A project's retention: its own setting (None: the server's), the server's, and the one that applies."""

    project_days: int | None  # None: the server's; -1 forever; 0 never stored; N days
    server_days: int | None  # None forever; 0 never stored
    effective_days: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "project": "default" if self.project_days is None else describe(self.project_days),
            "server": describe(self.server_days),
            "effective": describe(self.effective_days),
        }


def describe(days: int | None) -> str | int:
    """How a retention reads: ``forever``, ``never`` (not stored) or a number of days."""
    if days is None or days < 0:
        return "forever"
    return "never" if days == 0 else days


def parse_retention(value: Any) -> int | None:
    """``default`` -> None, ``forever`` -> -1, ``never`` or 0 -> 0, N days -> N (1 to 36500)."""
    text = str(value).strip().lower() if value is not None else "default"
    if text in ("default", ""):
        return None
    if text == "forever":
        return -1
    if text == "never":
        return 0
    if text.isdigit() and int(text) <= MAX_DAYS:
        return int(text)
    raise InvalidInput(
        f"Retention {value!r}: give days (0 to {MAX_DAYS}; 0: never store), 'forever', 'never' or 'default'.",
        code="BadRequestInvalid",
    )


class Records:
    def __init__(self, ctx: Context, prediction: Prediction, knowledge: Knowledge, clock: Clock = SYSTEM) -> None:
        self.ctx = ctx
        self.prediction = prediction
        self.knowledge = knowledge
        self.clock = clock
        self._next_purge = float("-inf")
        self._purging = threading.Lock()

    # ------------------------------------------------------------------ search and export

    def search(self, ref: str, query: PredictionQuery) -> Iterator[PredictionView]:
        """Every stored prediction matching ``query`` (metadata, time, tags), page by page, in its order."""
        token = query.continuation
        while True:
            page, token = self.prediction.query(ref, replace(query, max_count=PAGE, continuation=token))
            yield from page
            if token is None:
                return

    def export(
        self,
        ref: str,
        query: PredictionQuery,
        fmt: str,
        link: Callable[[str], str] | None = None,
        images_dir: Path | None = None,
    ) -> Iterator[bytes]:
        """Records as CSV or JSON Lines, streamed. ``link``: sha256 -> an image URL; ``images_dir``: copy each
        image there too (a record that outlives signed links) and name the file in ``imageFile``."""
        if fmt not in FORMATS:
            raise InvalidInput(f"Export as csv or jsonl, not {fmt!r}.", code="BadRequestInvalid")
        if fmt == "jsonl":
            return self._jsonl(ref, query, link, images_dir)
        return self._csv(ref, query, link, images_dir)

    def _jsonl(
        self, ref: str, query: PredictionQuery, link: Callable[[str], str] | None, images_dir: Path | None
    ) -> Iterator[bytes]:
        for view in self.search(ref, query):
            yield (json.dumps(self._record(view, link, images_dir), ensure_ascii=False) + "\n").encode()

    def _record(self, view: PredictionView, link: Callable[[str], str] | None, images_dir: Path | None) -> dict:
        body = view.to_stored_json()
        body.update(
            imageUri=link(view.sha256) if link else None,
            sha256=view.sha256,
            metadata=view.metadata,
            decision=view.decision,
            created=iso_time(view.created),
        )
        if images_dir is not None:
            body["imageFile"] = self._copy_image(view.sha256, images_dir)
        for key in ("resizedImageUri", "thumbnailUri", "originalImageUri"):
            body.pop(key, None)
        return body

    def _copy_image(self, sha256: str, folder: Path) -> str | None:
        if not self.ctx.blobs.exists(sha256):
            return None
        data = self.ctx.blobs.get(sha256)
        kind = images.FORMATS.get(images.sniff_format(data) or "", "")
        name = f"{sha256}.{EXTENSIONS.get(kind, 'bin')}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if not target.exists():
            tmp = target.with_name(name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        return name

    def _csv(
        self, ref: str, query: PredictionQuery, link: Callable[[str], str] | None, images_dir: Path | None
    ) -> Iterator[bytes]:
        """Two passes: the first finds the columns (metadata keys, decision names, information attributes)."""
        meta_keys: dict[str, None] = {}
        decisions: dict[str, None] = {}
        attributes: dict[str, None] = {}
        for view in self.search(ref, query):
            meta_keys.update(dict.fromkeys(view.metadata))
            decisions.update(dict.fromkeys(view.decision or {}))
            top = view.predictions[0] if view.predictions else None
            attributes.update(dict.fromkeys(top.information or {} if top else {}))
        header = ["id", "created", "iteration", "imageUri", *(["imageFile"] if images_dir else [])]
        header += ["sha256", "sourceUrl", "application", "topTag", "topProbability"]
        header += [f"metadata.{k}" for k in meta_keys] + [f"decision.{k}" for k in decisions]
        header += [f"information.{k}" for k in attributes] + ["predictions", "decision"]
        yield _csv_line(header)
        for view in self.search(ref, query):
            top = view.predictions[0] if view.predictions else None
            data = (top.information or {}) if top else {}
            decision = view.decision or {}
            row = [view.id, iso_time(view.created), view.iteration_id or "", link(view.sha256) if link else ""]
            if images_dir is not None:
                row.append(self._copy_image(view.sha256, images_dir) or "")
            row += [view.sha256, view.source or "", view.application or ""]
            row += [top.tag_name if top else "", _num(top.probability) if top else ""]
            row += [view.metadata.get(k, "") for k in meta_keys]
            row += [cat.cell(decision[k]["value"]) if k in decision else "" for k in decisions]
            row += [cat.cell(data[k]) if k in data else "" for k in attributes]
            row.append(json.dumps([{"tagName": p.tag_name, "probability": p.probability} for p in view.predictions]))
            row.append(json.dumps(decision, ensure_ascii=False) if view.decision is not None else "")
            yield _csv_line([_safe(c) for c in row])

    # ------------------------------------------------------------------ retention

    def retention(self, ref: str) -> RetentionView:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            return self._view(project.retention_days)

    def set_retention(self, ref: str, value: Any) -> tuple[RetentionView, int]:
        """Set a project's retention; records now past it are purged at once. -> (the setting, purged count)."""
        days = parse_retention(value)
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            project.retention_days = days
            project.last_modified = utcnow()
            view, project_id = self._view(days), project.id
        return view, self.purge(project_id)

    def _view(self, project_days: int | None) -> RetentionView:
        return RetentionView(
            project_days, self.ctx.settings.prediction_retention_days, self.knowledge.retention(project_days)
        )

    def after_store(self) -> None:
        """Called after a prediction is stored: purge expired records in the background, at most every 10 min."""
        now = self.clock.monotonic()
        if now < self._next_purge or not self._purging.acquire(blocking=False):
            return
        self._next_purge = now + PURGE_EVERY

        def run() -> None:
            try:
                purged = self.purge()
                if purged:
                    log.info("retention: purged %d stored predictions", purged)
            except Exception:
                log.exception("retention: purge failed")
            finally:
                self._purging.release()

        threading.Thread(target=run, name="tagvision-retention", daemon=True).start()

    def close(self) -> None:
        """Wait for a background purge to finish (the service is closing)."""
        with self._purging:
            pass

    def purge(self, ref: str | None = None) -> int:
        """Delete the stored predictions past their project's retention (one project, or all); -> how many.

        Rows go first, in one transaction; then each image file no image, prediction or acquisition refers to.
        """
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        purged = 0
        hashes: set[str] = set()
        with self.ctx.db.session() as session:
            projects = [get_project(session, ref)] if ref else list(session.scalars(select(Project)))
            for project in projects:
                days = self.knowledge.retention(project.retention_days)
                if days is None:
                    continue
                cutoff = now - timedelta(days=days)
                rows = session.execute(
                    select(StoredPrediction.id, StoredPrediction.sha256).where(
                        StoredPrediction.project_id == project.id, StoredPrediction.created <= cutoff
                    )
                ).all()
                for start in range(0, len(rows), 500):
                    chunk = [r.id for r in rows[start : start + 500]]
                    session.execute(delete(StoredPrediction).where(StoredPrediction.id.in_(chunk)))
                purged += len(rows)
                hashes.update(r.sha256 for r in rows)
        for sha in sorted(hashes):
            self._drop_blob(sha)
        return purged

    def _drop_blob(self, sha256: str) -> None:
        """Delete an image file nothing refers to. A prediction stored meanwhile with the same image gets it
        back: its bytes are held until the references are checked once more (and ``classify`` re-writes a blob
        it finds gone after its commit)."""
        if self._referenced(sha256) or not self.ctx.blobs.exists(sha256):
            return
        data = self.ctx.blobs.get(sha256)
        self.ctx.blobs.delete(sha256)
        if self._referenced(sha256):
            self.ctx.blobs.put(data)
            return
        self.ctx.blobs.delete_derived(THUMBNAIL, sha256)

    def _referenced(self, sha256: str) -> bool:
        with self.ctx.db.session() as session:
            for column in (Image.sha256, StoredPrediction.sha256, AcquisitionItem.sha256):
                if session.scalar(select(column).where(column == sha256).limit(1)) is not None:
                    return True
        return False


def _csv_line(cells: list[Any]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue().encode()


def _safe(value: Any) -> str:
    """Text a spreadsheet shows as text: a cell starting like a formula is written as a JSON string."""
    text = str(value)
    if text and text[0] in cat.FORMULA and not cat.NUMBER.fullmatch(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _num(value: float) -> str:
    return repr(float(value))
