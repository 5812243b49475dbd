"""The API keys: a Training-Key and a Prediction-Key, kept in the database every replica shares.

Keys are made at first start (32 hex digits, as Azure's; an installation from before keys moved into the
database keeps those in its ``keys.json``), or given by the operator in ``TAGVISION_TRAINING_KEY`` /
``TAGVISION_PREDICTION_KEY`` (``Settings.training_key`` / ``prediction_key``, which then win). Each process
keeps a copy of the keys in force in its data directory's ``keys.json`` (readable by its owner only), for
``tagvision keys`` and for whoever set the server up.

A process reads the keys again at most :data:`REFRESH_SECONDS` after it last did, so a key regenerated on
one replica (``tagvision keys --regenerate``) is refused by every other within that time, and at once by a
process whose ``keys.json`` changed (the same data directory). Keys given by a client are compared in
constant time (:func:`matches`), by the API's key headers and the portal's login alike.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from tagvision.clock import SYSTEM, Clock
from tagvision.errors import InvalidInput
from tagvision.store.database import Database, insert_or_skip
from tagvision.store.models import ApiKey, utcnow

KINDS = ("training", "prediction")
REFRESH_SECONDS = 1.0


@dataclass(frozen=True)
class Keys:
    training: str
    prediction: str


def matches(given: str | None, expected: str) -> bool:
    """Whether a client's key is ``expected``, in constant time (no timing hints for guessing)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class KeyStore:
    def __init__(
        self,
        db: Database,
        data_dir: Path,
        training: str | None = None,
        prediction: str | None = None,
        *,
        clock: Clock = SYSTEM,
        refresh: float = REFRESH_SECONDS,
    ) -> None:
        """``training`` / ``prediction``: keys the operator gives, which win over the stored ones."""
        self.db = db
        self.path = data_dir / "keys.json"
        self.given = Keys(training or "", prediction or "")
        self.clock, self.refresh = clock, refresh
        self._lock = threading.Lock()
        self._cached: tuple[float, float | None, Keys] | None = None  # (read at, keys.json's mtime, keys)

    def current(self) -> Keys:
        """The keys in force (made and saved on first use)."""
        with self._lock:
            mtime = self._mtime()
            now = self.clock.monotonic()
            if self._cached is None or now - self._cached[0] >= self.refresh or self._cached[1] != mtime:
                keys = self._load()
                mtime = self._mirror(keys, mtime)
                self._cached = (now, mtime, keys)
            keys = self._cached[2]
        return Keys(self.given.training or keys.training, self.given.prediction or keys.prediction)

    def is_training_key(self, given: str | None) -> bool:
        return matches(given, self.current().training)

    def is_prediction_key(self, given: str | None) -> bool:
        return matches(given, self.current().prediction)

    def regenerate(self, kind: str) -> Keys:
        if kind not in KINDS:
            raise InvalidInput(f"Regenerate 'training' or 'prediction', not {kind!r}.", code="BadRequest")
        self.current()  # made, if this is the first use
        with self.db.session() as session:
            session.execute(update(ApiKey).where(ApiKey.kind == kind).values(value=_new_key(), updated=utcnow()))
        with self._lock:
            self._cached = None
        return self.current()

    def _load(self) -> Keys:
        """The stored keys; on first use, those of an older installation's keys.json, else new ones."""
        stored = self._stored()
        if len(stored) < len(KINDS):
            seed = self._from_file() or Keys(_new_key(), _new_key())
            with self.db.session() as session:  # another process may make them at the same moment: first wins
                for kind in KINDS:
                    row = {"kind": kind, "value": getattr(seed, kind), "updated": utcnow()}
                    session.execute(insert_or_skip(self.db.dialect, ApiKey, row, index_elements=["kind"]))
            stored = self._stored()
        return Keys(stored["training"], stored["prediction"])

    def _stored(self) -> dict[str, str]:
        with self.db.session() as session:
            return {row.kind: row.value for row in session.scalars(select(ApiKey))}

    def _from_file(self) -> Keys | None:
        try:
            stored = json.loads(self.path.read_text())
            return Keys(stored["trainingKey"], stored["predictionKey"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def _mirror(self, keys: Keys, mtime: float | None) -> float | None:
        """Keep keys.json saying the stored keys; returns its modification time."""
        if self._cached is not None and self._cached[2] == keys and self._cached[1] == mtime and mtime is not None:
            return mtime
        if self._from_file() != keys:
            self._write(keys)
        return self._mtime()

    def _write(self, keys: Keys) -> None:
        """Atomically, mode 0600 from the first byte."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".keys-{os.getpid()}-{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"trainingKey": keys.training, "predictionKey": keys.prediction}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def _new_key() -> str:
    return secrets.token_hex(16)
