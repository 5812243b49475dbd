"""One settings object, read from ``TAGVISION_*`` environment variables and CLI flags.

:meth:`Settings.load` is the only place that reads the environment; everything else is handed
the settings (or the one value it needs) by whoever opened the service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_DATA_DIR = Path("tagvision-data")
ALLOW_PRIVATE_URLS_ENV = "TAGVISION_ALLOW_PRIVATE_URLS"
LIBRARY_ROOTS_ENV = "TAGVISION_LIBRARY_ROOTS"


@dataclass(frozen=True)
class ProviderSettings:
    """Keys and endpoints of the image-search providers (``tagvision.sources``).

    Each field comes from ``TAGVISION_`` + its name in capitals (``pexels_key`` from
    ``TAGVISION_PEXELS_KEY``); an unset or empty variable is None, and the provider then uses
    its public endpoint, or refuses to start naming the variable its key needs.
    """

    openverse_url: str | None = None
    openverse_client_id: str | None = None  # with the secret: pages of 500 instead of 20
    openverse_client_secret: str | None = None
    openverse_license_type: str | None = None  # Openverse's license_type filter, e.g. "commercial"
    openverse_license: str | None = None  # Openverse's license filter, e.g. "by,by-sa"
    wikimedia_url: str | None = None
    wikimedia_user_agent: str | None = None  # Wikimedia asks API clients to name themselves
    pexels_key: str | None = None
    pexels_url: str | None = None
    unsplash_key: str | None = None
    unsplash_url: str | None = None
    unsplash_app: str | None = None  # the app name Unsplash's attribution links carry
    pixabay_key: str | None = None
    pixabay_url: str | None = None
    bing_endpoint: str | None = None
    bing_key: str | None = None
    bing_market: str | None = None
    bing_safesearch: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProviderSettings:
        return cls(**{f.name: env.get(f"TAGVISION_{f.name.upper()}") or None for f in fields(cls)})


@dataclass(frozen=True)
class S3Settings:
    """Where an S3-compatible blob store (``TAGVISION_BLOB_URL=s3://bucket/prefix``) is and how to sign in.

    ``TAGVISION_S3_ENDPOINT_URL`` (MinIO, Ceph, a cloud's S3 endpoint; unset: AWS), ``TAGVISION_S3_REGION``,
    ``TAGVISION_S3_ACCESS_KEY_ID`` and ``TAGVISION_S3_SECRET_ACCESS_KEY``; unset credentials leave boto3 to its
    usual chain (instance roles, ``AWS_*`` variables, profiles).
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        return cls(**{f.name: env.get(f"TAGVISION_S3_{f.name.upper()}") or None for f in fields(cls)})


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
    # TAGVISION_ALLOW_PRIVATE_URLS=1 (exactly "1"): image URLs may name loopback, private and link-local
    # addresses (an intranet image server, tests); otherwise they are refused (SSRF).
    allow_private_urls: bool = False
    # TAGVISION_LIBRARY_ROOTS (os.pathsep-separated): the only folders the library provider may read over
    # the API and the portal (the CLI names any folder).
    library_roots: tuple[Path, ...] = ()
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    # TAGVISION_PUBLIC_URL: the base of every absolute URL the server hands out (signed links, the Prediction
    # URL), e.g. https://vision.example.com; never taken from a request's Host header when set.
    public_url: str | None = None
    # TAGVISION_TRUSTED_HOSTS (comma-separated, "*.example.com" allowed): Host headers the server answers;
    # empty: the public URL's host and loopback names when a public URL is set, else any.
    trusted_hosts: tuple[str, ...] = ()
    # TAGVISION_DECODE_MEMORY_MB: decoded pixels one process holds at once (images.DECODES); with the bodies
    # in flight it bounds the server's memory (README: "Memory").
    decode_memory_mb: int = 1024
    # TAGVISION_REQUEST_WAIT_SECONDS: how long a request waits for decode memory or a URL fetcher before 429.
    request_wait_seconds: float = 10.0
    # TAGVISION_URL_FETCHERS: concurrent downloads of image URLs for requests, process-wide.
    url_fetchers: int = 8
    # TAGVISION_PREDICTION_RETENTION_DAYS: days stored predictions are kept (0 or "never": not stored at all;
    # unset or "forever": kept until deleted); a project may set its own.
    prediction_retention_days: int | None = None
    # TAGVISION_BLOB_URL=s3://bucket/prefix: blobs in an S3-compatible bucket (docs/deploy.md) instead of blob_root.
    blob_url: str | None = None
    s3: S3Settings = field(default_factory=S3Settings)
    # TAGVISION_MIGRATE_AT_OPEN=0: never change the schema at start (replicas); `tagvision db upgrade` does it once.
    migrate_at_open: bool = True
    # TAGVISION_EMBEDDED_WORKER=0 (or `serve --no-worker`): the server only answers requests; `tagvision worker`
    # processes run its trainings, exports and acquisitions.
    embedded_worker: bool = True
    # TAGVISION_JOB_LEASE_SECONDS: how long a worker's claim on a job lasts unless renewed (every third of it);
    # a killed worker's jobs are taken over this long after its last renewal.
    job_lease_seconds: float = 30.0
    # TAGVISION_WORKER_POLL_SECONDS: how often an idle worker looks for jobs queued by other processes.
    worker_poll_seconds: float = 1.0

    data_dir_from: str = ""  # where data_dir came from ("--data-dir", "TAGVISION_DATA_DIR"; "": the default)

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
            data_dir_from="--data-dir" if data_dir else "TAGVISION_DATA_DIR" if env.get("TAGVISION_DATA_DIR") else "",
            database_url=url,
            blob_root=blobs,
            models_dir=models,
            training_key=env.get("TAGVISION_TRAINING_KEY") or None,
            prediction_key=env.get("TAGVISION_PREDICTION_KEY") or None,
            allow_private_urls=env.get(ALLOW_PRIVATE_URLS_ENV) == "1",
            library_roots=tuple(Path(r) for r in env.get(LIBRARY_ROOTS_ENV, "").split(os.pathsep) if r),
            providers=ProviderSettings.from_env(env),
            public_url=(env.get("TAGVISION_PUBLIC_URL") or "").rstrip("/") or None,
            trusted_hosts=tuple(h.strip() for h in env.get("TAGVISION_TRUSTED_HOSTS", "").split(",") if h.strip()),
            decode_memory_mb=_number(env, "TAGVISION_DECODE_MEMORY_MB", 1024, int),
            request_wait_seconds=_number(env, "TAGVISION_REQUEST_WAIT_SECONDS", 10.0, float),
            url_fetchers=_number(env, "TAGVISION_URL_FETCHERS", 8, int),
            prediction_retention_days=_retention(env.get("TAGVISION_PREDICTION_RETENTION_DAYS", "")),
            blob_url=env.get("TAGVISION_BLOB_URL") or None,
            s3=S3Settings.from_env(env),
            migrate_at_open=_flag(env, "TAGVISION_MIGRATE_AT_OPEN", True),
            embedded_worker=_flag(env, "TAGVISION_EMBEDDED_WORKER", True),
            job_lease_seconds=_number(env, "TAGVISION_JOB_LEASE_SECONDS", 30.0, float),
            worker_poll_seconds=_number(env, "TAGVISION_WORKER_POLL_SECONDS", 1.0, float),
        )

    def allowed_hosts(self) -> tuple[str, ...]:
        """Host headers to answer (``"*"``: any): as configured, else the public URL's host and loopback."""
        if self.trusted_hosts:
            return self.trusted_hosts
        if self.public_url:
            return (urlsplit(self.public_url).hostname or "", "localhost", "127.0.0.1", "::1")
        return ("*",)


def _retention(raw: str) -> int | None:
    """Days to keep stored predictions: a whole number of days, 0 or "never" (not stored), "" or "forever"."""
    value = raw.strip().lower()
    if value in ("", "forever"):
        return None
    if value == "never":
        return 0
    if not value.isdigit():
        raise ValueError(f"TAGVISION_PREDICTION_RETENTION_DAYS={raw!r}: give days (0: never store) or 'forever'.")
    return int(value)


def _number(env: Mapping[str, str], name: str, default, kind):
    """A positive number from ``env``, or ``default``; a clear error naming the variable otherwise."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number.") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive.")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A yes/no variable (1/0, true/false, yes/no, on/off), or ``default``; a clear error naming it otherwise."""
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={env[name]!r} is not 1 or 0.")
