"""Two API replicas against one behind a loopback round-robin client (issue 19); run by ``bench/serve.py``.

The scaled-out shape on this machine: a shared store (PostgreSQL from a throw-away cluster, tests/pg.py, when one
can start here, else one SQLite file) and one blob folder, the schema made by ``tagvision db upgrade``, one
``tagvision worker`` that trains the project, and two ``tagvision serve --no-worker`` replicas. 8 client threads
send predictions, each request to the next replica in turn; the same replicas are measured alone and as a pair,
in the order 1, 2, 2, 1 (each count twice, so drift from other load on the machine falls on both).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _data import MODELS_DIR, REPO


def shared_store(root: Path) -> tuple[dict[str, str], str, Callable[[], None]]:
    """(variables naming the shared store, what it is, how to stop it)."""
    sys.path.insert(0, str(REPO))
    from tests import pg

    env = {
        "TAGVISION_BLOB_ROOT": str(root / "blobs"),
        "TAGVISION_MIGRATE_AT_OPEN": "0",
        "TAGVISION_WORKER_POLL_SECONDS": "0.2",
    }
    try:
        cluster = pg.start()
    except pg.Unavailable as exc:
        env["TAGVISION_DATABASE_URL"] = f"sqlite:///{root / 'shared.db'}"
        return env, f"one SQLite file (PostgreSQL unavailable: {exc})", lambda: None
    env["TAGVISION_DATABASE_URL"] = cluster.create_database("bench")
    return env, f"PostgreSQL {cluster.bin_dir.parent.name} (throw-away cluster, fsync off)", cluster.stop


def compare_replicas(
    requests: int, train_dir: Path, photos: list[bytes], start_server, prepare, run_clients, percentiles
):
    with tempfile.TemporaryDirectory(prefix="tagvision-bench-replicas-") as tmp:
        root = Path(tmp)
        env, described, stop_store = shared_store(root)
        full_env = {**os.environ, "TAGVISION_MODELS_DIR": str(MODELS_DIR), **env}
        processes: list[subprocess.Popen] = []
        try:
            cli = [sys.executable, "-m", "tagvision.cli"]
            subprocess.run([*cli, "db", "upgrade", "--data-dir", str(root / "cli")], env=full_env, cwd=REPO, check=True)
            (root / "worker").mkdir()
            worker_log = open(root / "worker" / "worker.log", "wb")  # noqa: SIM115 (kept open for the process)
            processes.append(
                subprocess.Popen(
                    [*cli, "worker", "--data-dir", str(root / "worker")],
                    env=full_env,
                    cwd=REPO,
                    stdout=worker_log,
                    stderr=worker_log,
                )
            )
            replicas = []
            for k in range(2):
                process, endpoint, keys = start_server(root / f"replica{k}", env, ("--no-worker",))
                processes.append(process)
                replicas.append(endpoint)
            pid = prepare(replicas[0], keys, train_dir)
            headers = {"Prediction-Key": keys["predictionKey"]}
            urls = [f"{e}/customvision/v3.1/prediction/{pid}/classify/iterations/bench/image" for e in replicas]
            for url in urls:  # warm both up
                run_clients(url + "/nostore", headers, photos, 1, 10)
            measured: dict[tuple[int, str], list[tuple[list[float], float]]] = {}
            for count in (1, 2, 2, 1):
                for route in ("/nostore", ""):
                    targets = [url + route for url in urls[:count]]
                    measured.setdefault((count, route), []).append(run_clients(targets, headers, photos, 8, requests))
        finally:
            for process in processes:
                process.terminate()
                process.wait(60)
            stop_store()
    print(f"\nreplicas: shared store {described}, blobs in one folder, 8 clients, round robin over the replicas")
    for route, name in (("/nostore", "nostore"), ("", "stored")):
        rates = {}
        for count in (1, 2):
            runs = measured[(count, route)]
            latencies = [ms for run, _ in runs for ms in run]
            rates[count] = float(np.mean([rate for _, rate in runs]))
            each = " / ".join(f"{rate:.1f}" for _, rate in runs)
            print(
                f"  {count} replica{'s' if count > 1 else ' '} {name:<8} {percentiles(latencies)}   "
                f"{rates[count]:6.1f} pred/s (runs: {each})"
            )
        print(f"  2 replicas / 1 replica, {name}: {rates[2] / rates[1]:.2f}x throughput")
