"""One settings object, read from ``TAGVISION_*`` environment variables and CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("tagvision-data")


@dataclass(frozen=True)
class Settings:
    """Where tagvision keeps its state, and what its operator allows.

    The embedded default is one data directory (``TAGVISION_DATA_DIR``) holding ``tagvision.db``
    (SQLite, WAL) and ``blobs/`` (content-addressed files) and ``models/`` (the backbones exported
    to ONNX); ``TAGVISION_DATABASE_URL``, ``TAGVISION_BLOB_ROOT`` and ``TAGVISION_MODELS_DIR`` move
    them elsewhere (PostgreSQL, shared storage, a read-only model cache).
    """

    data_dir: Path
    database_url: str
    blob_root: Path
    models_dir: Path  # exported backbones (ONNX), shared by every project
    # TAGVISION_TRAINING_KEY / TAGVISION_PREDICTION_KEY: keys the operator gives, winning over keys.json.
    training_key: str | None = None
    prediction_key: str | None = None

    @classmethod
    def load(cls, data_dir: Path | str | None = None) -> Settings:
        """Settings from explicit values, else ``TAGVISION_*`` variables, else defaults."""
        env = os.environ
        root = Path(data_dir or env.get("TAGVISION_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()
        url = env.get("TAGVISION_DATABASE_URL") or f"sqlite:///{root / 'tagvision.db'}"
        blobs = Path(env.get("TAGVISION_BLOB_ROOT") or root / "blobs").expanduser().resolve()
        models = Path(env.get("TAGVISION_MODELS_DIR") or root / "models").expanduser().resolve()
        return cls(
            data_dir=root,
            database_url=url,
            blob_root=blobs,
            models_dir=models,
            training_key=env.get("TAGVISION_TRAINING_KEY") or None,
            prediction_key=env.get("TAGVISION_PREDICTION_KEY") or None,
        )
