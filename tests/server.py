"""Real ``tagvision serve`` processes on 127.0.0.1 for end-to-end tests, and ``tagvision worker`` processes beside
them (tests/test_topology.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import MODELS, REPO


class _Process:
    """What a server and a worker process share: their log file in the data dir, kill -9 and a clean stop."""

    LOG = ""
    STOP_WAIT = 20.0  # seconds a clean stop may take before it becomes a kill

    data_dir: Path
    process: subprocess.Popen | None

    def log(self) -> str:
        path = self.data_dir / self.LOG
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a power cut or an OOM kill (a worker's jobs keep its name until
        their leases lapse)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(self.STOP_WAIT)
            except subprocess.TimeoutExpired:
                self.kill()


class Server(_Process):
    """Starts ``python -m tagvision.cli serve --port 0`` on a data dir; ``endpoint`` and keys once up."""

    LOG = "server.log"

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        """``args``: more options for ``serve`` (``--no-worker`` for an API replica)."""
        self.data_dir = data_dir
        self.args = args
        self.env = {
            **os.environ,
            "TAGVISION_MODELS_DIR": str(MODELS),
            "TAGVISION_ALLOW_PRIVATE_URLS": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.endpoint = ""
        self.training_key = ""
        self.prediction_key = ""

    def start(self, timeout: float = 600.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "server.json").unlink(missing_ok=True)
        log = open(self.data_dir / self.LOG, "ab")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tagvision.cli",
                "serve",
                "--port",
                "0",
                "--no-access-log",
                "--data-dir",
                str(self.data_dir),
                *self.args,
            ],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log()[-2000:]}")
            if (self.data_dir / "server.json").exists():
                self.endpoint = json.loads((self.data_dir / "server.json").read_text())["endpoint"]
                keys = json.loads((self.data_dir / "keys.json").read_text())
                self.training_key, self.prediction_key = keys["trainingKey"], keys["predictionKey"]
                try:
                    if httpx.get(f"{self.endpoint}/openapi.json", timeout=2).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout} s: {self.log()[-2000:]}")

    def training(self, path: str = "") -> str:
        return f"{self.endpoint}/customvision/v3.4-preview/training{path}"

    def prediction(self, path: str = "") -> str:
        return f"{self.endpoint}/customvision/v3.1/prediction{path}"

    @property
    def training_headers(self) -> dict[str, str]:
        return {"Training-Key": self.training_key}

    @property
    def prediction_headers(self) -> dict[str, str]:
        return {"Prediction-Key": self.prediction_key}

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


class Worker(_Process):
    """A ``python -m tagvision.cli worker`` process on a data dir of its own; ``name`` (its worker name, which
    the jobs it claims carry) once it runs."""

    LOG = "worker.log"
    STOP_WAIT = 60.0  # it finishes a training or export under way

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "TAGVISION_MODELS_DIR": str(MODELS), **(env or {})}
        self.process: subprocess.Popen | None = None
        self.name = ""

    def start(self, timeout: float = 600.0) -> Worker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "worker.json").unlink(missing_ok=True)
        log = open(self.data_dir / self.LOG, "ab")  # noqa: SIM115 (kept open for the process)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tagvision.cli", "worker", "--data-dir", str(self.data_dir)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}: {self.log()[-2000:]}")
            if (self.data_dir / "worker.json").exists():
                self.name = json.loads((self.data_dir / "worker.json").read_text())["name"]
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"worker did not start in {timeout} s: {self.log()[-2000:]}")
