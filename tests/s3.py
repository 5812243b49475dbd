"""A standalone S3-compatible server on loopback for the S3 blob store's tests: moto's server (``moto[server]``)
in a process of its own, spoken to over HTTP by boto3 exactly as a real bucket is."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

ACCESS = {"TAGVISION_S3_ACCESS_KEY_ID": "testing", "TAGVISION_S3_SECRET_ACCESS_KEY": "testing"}


class Unavailable(RuntimeError):
    """No S3 stand-in can run here; the message says why."""


@dataclass
class S3Server:
    process: subprocess.Popen
    endpoint: str

    def new_bucket(self) -> str:
        """A fresh bucket; returns its name."""
        name = f"tagvision-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def env(self, bucket: str, prefix: str = "blobs") -> dict[str, str]:
        """The variables that point tagvision at ``s3://bucket/prefix`` on this server."""
        return {
            "TAGVISION_BLOB_URL": f"s3://{bucket}/{prefix}",
            "TAGVISION_S3_ENDPOINT_URL": self.endpoint,
            "TAGVISION_S3_REGION": "us-east-1",
            **ACCESS,
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(log: Path | None = None) -> S3Server:
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise Unavailable("boto3 is not installed (pip install 'tagvision[s3]')") from None
    command = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if command is None:
        raise Unavailable("moto[server] is not installed: no S3 stand-in to test against")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (kept open for the process)
    process = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)], stdout=output, stderr=output)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a give-up deadline only
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise Unavailable(f"moto_server exited with {process.returncode}")
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=2)
            return S3Server(process, endpoint)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise Unavailable("moto_server did not answer in 600 s")
