"""A real local Ray cluster of two nodes (``ray start --head`` and ``ray start --address``), for tests and bench.

Each node has its own CPUs and temp dir under one short folder of its own (Ray's socket paths must stay short).
``ray stop`` would stop every Ray process on the machine, other people's too; :meth:`LocalRayCluster.stop`
ends only this cluster's: the processes whose command line names its folder, and their descendants (the
workers, which rename themselves), then checks that none is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY_BIN = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process /proc shows."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":  # a zombie has ended; whoever adopted it may never reap it
            found[int(entry.name)] = (int(parent), cmdline)
    return found


class LocalRayCluster:
    """``with LocalRayCluster(env=...) as cluster:`` then ``cluster.address``; ``nodes`` nodes of ``cpus`` each."""

    def __init__(self, *, nodes: int = 2, cpus: int = 1, env: dict[str, str] | None = None) -> None:
        self.nodes, self.cpus = nodes, cpus
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
        self.root = Path(tempfile.mkdtemp(prefix="tvray", dir="/tmp"))
        self.address = ""

    def _ray(self, *args: str) -> None:
        log = self.root / "start.log"
        with log.open("ab") as fh:
            done = subprocess.run([str(RAY_BIN), *args], env=self.env, stdout=fh, stderr=fh, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args[:2])} failed: {log.read_text()[-3000:]}")

    def start(self) -> LocalRayCluster:
        port = _free_port()
        common = ["--num-cpus", str(self.cpus), "--object-store-memory", str(150 * 2**20), "--disable-usage-stats"]
        self._ray("start", "--head", "--port", str(port), "--temp-dir", str(self.root / "n0"),
                  "--include-dashboard", "false", *common)  # fmt: skip
        self.address = f"127.0.0.1:{port}"
        for node in range(1, self.nodes):
            self._ray("start", "--address", self.address, "--temp-dir", str(self.root / f"n{node}"), *common)
        return self

    def pids(self) -> set[int]:
        """This cluster's processes: those naming its folder, and all their descendants."""
        table = _processes()
        mine = {pid for pid, (_, cmd) in table.items() if str(self.root) in cmd and pid != os.getpid()}
        grew = True
        while grew:
            children = {pid for pid, (parent, _) in table.items() if parent in mine} - mine
            mine |= children
            grew = bool(children)
        return mine

    def stop(self, grace: float = 60.0) -> None:
        """End this cluster's processes (TERM, then KILL after ``grace`` s); raise if any survives."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                break
        left = self.pids()
        shutil.rmtree(self.root, ignore_errors=True)
        if left:
            raise RuntimeError(f"Ray processes still running after stop: {sorted(left)}")

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
