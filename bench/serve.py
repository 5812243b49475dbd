"""Prediction over HTTP: latency and throughput of ``tagvision serve`` beside the engine's own time.

What: a real ``tagvision serve`` process on 127.0.0.1 (access log off), a clothing-small
project (compact domain, 4 tags x 20 photos) trained and published through the API, then
``classify/iterations/{name}/image`` on 400x533 JPEGs from ``test/``:

* engine: the same predictions in this process through the service layer (decode, embed
  image + mirror, head), no HTTP: the floor the server can reach;
* 1 client: one request at a time (stored and ``/nostore``), p50 / p99 latency;
* 8 clients: 8 threads with their own keep-alive connections, throughput and latency;
* replicas (issue 19): the scaled-out shape, a shared store (PostgreSQL when a throw-away cluster
  can start here, else one SQLite file) and blob folder, ``tagvision db upgrade``, one
  ``tagvision worker`` to train, and two ``serve --no-worker`` replicas; 8 clients send each
  request to the next replica in turn (a loopback round-robin balancer), to one replica and to
  both, in the same run, alternating which goes first.

Targets (issue 3, this 2-core machine): p50 under 25 ms at 1 client, over 40 predictions/s
at 8 clients. Run: ``python bench/serve.py [--requests 200] [--part single|replicas|all]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import MODELS_DIR, REPO, require  # noqa: E402

from tagvision.config import Settings  # noqa: E402
from tagvision.service import Service  # noqa: E402

COMPACT = "0732100f-1a38-4e49-a514-c9b44c697ab5"
TAGS = ("dress", "hat", "pants", "shoes")


def start_server(
    data_dir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str, dict[str, str]]:
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TAGVISION_MODELS_DIR": str(MODELS_DIR), **(env or {})}
    process = subprocess.Popen(
        [
            sys.executable,
            *("-m", "tagvision.cli", "serve", "--port", "0", "--no-access-log", "--data-dir", str(data_dir)),
            *args,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "server.log", "wb"),  # noqa: SIM115
    )
    for _ in range(600):
        if (data_dir / "server.json").exists():
            endpoint = json.loads((data_dir / "server.json").read_text())["endpoint"]
            keys = json.loads((data_dir / "keys.json").read_text())
            try:
                httpx.get(f"{endpoint}/openapi.json", timeout=1).raise_for_status()
                return process, endpoint, keys
            except httpx.HTTPError:
                pass
        if process.poll() is not None:
            sys.exit(f"server exited: {(data_dir / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)
    sys.exit("server did not start")


def prepare(endpoint: str, keys: dict[str, str], train_dir: Path) -> str:
    """Create, fill, train and publish a project through the API; returns its id."""
    t = httpx.Client(
        base_url=f"{endpoint}/customvision/v3.4-preview/training",
        headers={"Training-Key": keys["trainingKey"]},
        timeout=120,
    )
    project = t.post("/projects", params={"name": "bench-serve", "domainId": COMPACT}).raise_for_status().json()
    pid = project["id"]
    for tag in TAGS:
        tag_id = t.post(f"/projects/{pid}/tags", params={"name": tag}).raise_for_status().json()["id"]
        files = [("imageData", path.read_bytes()) for path in sorted((train_dir / tag).iterdir())[:20]]
        t.post(f"/projects/{pid}/images", params={"tagIds": tag_id}, files=files).raise_for_status()
    iteration = t.post(f"/projects/{pid}/train").raise_for_status().json()
    while iteration["status"] == "Training":
        time.sleep(0.2)
        iteration = t.get(f"/projects/{pid}/iterations/{iteration['id']}").raise_for_status().json()
    assert iteration["status"] == "Completed", iteration
    t.post(
        f"/projects/{pid}/iterations/{iteration['id']}/publish",
        params={"publishName": "bench", "predictionId": "bench"},
    ).raise_for_status()
    return pid


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):6.1f} ms   p99 {np.percentile(a, 99):6.1f} ms"


def run_clients(
    url: str | list[str], headers: dict[str, str], photos: list[bytes], clients: int, requests: int
) -> tuple[list[float], float]:
    """``clients`` threads send ``requests`` predictions in all; with several URLs (replicas), each request goes
    to the next URL in turn, counted across all the threads (round robin, as a load balancer would)."""
    urls = [url] if isinstance(url, str) else url
    turn = iter(range(10**9))
    latencies: list[float] = []
    lock = threading.Lock()
    per_client = requests // clients

    def client(offset: int) -> None:
        # TCP_NODELAY, as requests (the SDK's transport) and curl set it: without it the body waits
        # for the server's delayed ACK of the headers (~40 ms per request).
        transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        with httpx.Client(headers=headers, timeout=60, transport=transport) as http:
            mine = []
            for i in range(per_client):
                data = photos[(offset + i) % len(photos)]
                with lock:
                    target = urls[next(turn) % len(urls)]
                started = time.perf_counter()
                http.post(target, files={"imageData": data}).raise_for_status()
                mine.append((time.perf_counter() - started) * 1000)
            with lock:
                latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k * 7,)) for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, len(latencies) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement (default 200)")
    parser.add_argument("--part", choices=("single", "replicas", "all"), default="all", help="what to measure")
    args = parser.parse_args()
    train_dir, test_dir = require("clothing-small", "train"), require("clothing-small", "test")
    photos = [p.read_bytes() for tag in TAGS for p in sorted((test_dir / tag).iterdir())[:10]]
    sizes = Counter(Image.open(io.BytesIO(data)).size for data in photos)
    print(f"{len(photos)} test photos, sizes {dict(sizes.most_common(3))}, {os.cpu_count()} cores")
    if args.part in ("single", "all"):
        single(args, train_dir, photos)
    if args.part in ("replicas", "all"):
        from replicas import compare_replicas

        compare_replicas(args.requests, train_dir, photos, start_server, prepare, run_clients, percentiles)


def single(args: argparse.Namespace, train_dir: Path, photos: list[bytes]) -> None:
    """One ``tagvision serve`` (embedded worker, SQLite): the engine's floor, then 1 and 8 clients."""
    with tempfile.TemporaryDirectory(prefix="tagvision-bench-serve-") as tmp:
        data_dir = Path(tmp)
        process, endpoint, keys = start_server(data_dir)
        try:
            started = time.perf_counter()
            pid = prepare(endpoint, keys, train_dir)
            print(
                f"project created, 80 images uploaded, trained and published in {time.perf_counter() - started:.1f} s"
            )

            os.environ["TAGVISION_MODELS_DIR"] = str(MODELS_DIR)
            svc = Service.open(Settings.load(data_dir))
            try:
                for data in photos[:5]:  # warm up
                    svc.prediction.classify(pid, data, published="bench", store=False)
                engine = []
                for i in range(args.requests):
                    started = time.perf_counter()
                    svc.prediction.classify(pid, photos[i % len(photos)], published="bench", store=False)
                    engine.append((time.perf_counter() - started) * 1000)
            finally:
                svc.close()

            headers = {"Prediction-Key": keys["predictionKey"]}
            base = f"{endpoint}/customvision/v3.1/prediction/{pid}/classify/iterations/bench/image"
            run_clients(base + "/nostore", headers, photos, 1, 10)  # warm up the server
            one_nostore, rate1n = run_clients(base + "/nostore", headers, photos, 1, args.requests)
            one_stored, rate1s = run_clients(base, headers, photos, 1, args.requests)
            eight_nostore, rate8n = run_clients(base + "/nostore", headers, photos, 8, args.requests)
            eight_stored, rate8s = run_clients(base, headers, photos, 8, args.requests)
        finally:
            process.terminate()
            process.wait(30)

    engine_p50, engine_rate = float(np.percentile(engine, 50)), 1000 / float(np.mean(engine))
    print(f"\nengine (in process, no HTTP)   {percentiles(engine)}   {engine_rate:6.1f} pred/s")
    rows = [
        ("1 client, nostore", one_nostore, rate1n),
        ("1 client, stored", one_stored, rate1s),
        ("8 clients, nostore", eight_nostore, rate8n),
        ("8 clients, stored", eight_stored, rate8s),
    ]
    for name, latencies, rate in rows:
        overhead = np.percentile(latencies, 50) / engine_p50
        print(
            f"HTTP {name:<21} {percentiles(latencies)}   {rate:6.1f} pred/s   "
            f"p50 / engine p50 {overhead:4.2f}x   rate / engine rate {rate / engine_rate:4.2f}x"
        )
    p50 = float(np.percentile(one_stored, 50))
    print(
        f"\ntargets: p50 at 1 client (stored) {p50:.1f} ms (< 25 ms: {'yes' if p50 < 25 else 'NO'}), "
        f"8 clients (stored) {rate8s:.1f} pred/s (> 40: {'yes' if rate8s > 40 else 'NO'})"
    )


if __name__ == "__main__":
    main()
