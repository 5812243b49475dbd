"""The API keys: a Training-Key and a Prediction-Key, kept in the data directory.

Keys are made at first start (32 hex digits, as Azure's) and written to ``keys.json``
readable by its owner only, or given by the operator in ``TAGVISION_TRAINING_KEY`` /
``TAGVISION_PREDICTION_KEY`` (``Settings.training_key`` / ``prediction_key``, which then win
over the file). A running server re-reads the file when it changes, so ``tagvision keys
--regenerate`` takes effect at once. Keys given by a client are compared in constant time
(:func:`matches`), by the API's key headers and the portal's login alike.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from tagvision.errors import InvalidInput

KINDS = ("training", "prediction")


@dataclass(frozen=True)
class Keys:
    training: str
    prediction: str


def matches(given: str | None, expected: str) -> bool:
    """Whether a client's key is ``expected``, in constant time (no timing hints for guessing)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class KeyStore:
    def __init__(self, data_dir: Path, training: str | None = None, prediction: str | None = None) -> None:
        """``training`` / ``prediction``: keys the operator gives, which win over the stored ones."""
        self.path = data_dir / "keys.json"
        self.given = Keys(training or "", prediction or "")
        self._lock = threading.Lock()
        self._cached: tuple[float, Keys] | None = None

    def current(self) -> Keys:
        """The keys in force (made and saved on first use)."""
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                self._write(Keys(_new_key(), _new_key()))
                mtime = self.path.stat().st_mtime
            if self._cached is None or self._cached[0] != mtime:
                stored = json.loads(self.path.read_text())
                self._cached = (mtime, Keys(stored["trainingKey"], stored["predictionKey"]))
            keys = self._cached[1]
        return Keys(self.given.training or keys.training, self.given.prediction or keys.prediction)

    def is_training_key(self, given: str | None) -> bool:
        return matches(given, self.current().training)

    def is_prediction_key(self, given: str | None) -> bool:
        return matches(given, self.current().prediction)

    def regenerate(self, kind: str) -> Keys:
        if kind not in KINDS:
            raise InvalidInput(f"Regenerate 'training' or 'prediction', not {kind!r}.", code="BadRequest")
        keys = self.current()
        with self._lock:
            fresh = Keys(_new_key(), keys.prediction) if kind == "training" else Keys(keys.training, _new_key())
            self._write(fresh)
            self._cached = None
        return self.current()

    def _write(self, keys: Keys) -> None:
        """Atomically, mode 0600 from the first byte."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"trainingKey": keys.training, "predictionKey": keys.prediction}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)


def _new_key() -> str:
    return secrets.token_hex(16)
