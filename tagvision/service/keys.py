"""The API keys: a Training-Key and a Prediction-Key, kept in the data directory.

Keys are made at first start (32 hex digits, as Azure's) and written to ``keys.json``
readable by its owner only, or given by the operator in ``TAGVISION_TRAINING_KEY`` /
``TAGVISION_PREDICTION_KEY`` (which then win over the file). A running server re-reads
the file when it changes, so ``tagvision keys --regenerate`` takes effect at once.
"""

from __future__ import annotations

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


class KeyStore:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "keys.json"
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
        return Keys(
            os.environ.get("TAGVISION_TRAINING_KEY") or keys.training,
            os.environ.get("TAGVISION_PREDICTION_KEY") or keys.prediction,
        )

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
