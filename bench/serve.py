"""Prediction over HTTP: latency and throughput of ``tagvision serve`` beside the engine's own time.

What: a real ``tagvision serve`` process on 127.0.0.1 (access log off), a clothing-small
project (compact domain, 4 tags x 20 photos) trained and published through the API, then
``classify/iterations/{name}/image`` on 400x533 JPEGs from ``test/``:

* engine: the same predictions in this process through the service layer (decode, embed
  image + mirror, head), no HTTP: the floor the server can reach;
* 1 client: one request at a time (stored and ``/nostore``), p50 / p99 latency;
* 8 clients: 8 threads with their own keep-alive connections, throughput and latency;
* tag information (issue 16): a catalogue of product information (~1 KB per tag) and a decision
  rule are added, then 1 client sends pairs of requests on the same photo, one with the information
  attached (the default) and one without (``information=false``), in alternating order, so both
  see the same machine load; the median of the paired differences is what attaching it costs (aim:
  under 1 ms; on a loaded machine the two p50s alone differ by more than that from noise). In
  process: ``ProjectKnowledge.annotate`` alone, and the response model's JSON with and without.
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


def catalogue_csv() -> bytes:
    """Product information for the bench tags, about 1 KB each: text, numbers, lists, a nested object."""
    lines = ["tag,brand,price,currency,sizes,colours,stock,material,care,description,premiumFactor"]
    for i, tag in enumerate(TAGS):
        sizes = json.dumps(["XS", "S", "M", "L", "XL"]).replace('"', '""')
        stock = json.dumps({"XS": 2, "S": 11, "M": 7, "L": 0, "XL": 3, "warehouse": "Berlin-3"}).replace('"', '""')
        description = f"A {tag} from the bench catalogue. " * 14
        lines.append(
            f'{tag},Brand {i},{19.5 + i},EUR,"{sizes}","[""navy"",""black"",""red""]","{stock}",cotton,'
            f'"Wash at 30 degrees, do not tumble dry",{description.strip()},{1 + i / 10}'
        )
    return ("\n".join(lines) + "\n").encode()


def add_information(endpoint: str, keys: dict[str, str], pid: str) -> int:
    """Import the catalogue and a rule through the API; -> the average information size in bytes."""
    t = httpx.Client(
        base_url=f"{endpoint}/customvision/v3.4-preview/training",
        headers={"Training-Key": keys["trainingKey"]},
        timeout=120,
    )
    report = t.post(f"/projects/{pid}/catalogue", content=catalogue_csv()).raise_for_status().json()
    assert report["failed"] == 0, report
    rules = [{"rule": "most-probable-above", "attribute": "premiumFactor", "threshold": 0.5, "default": 1.0}]
    t.put(f"/projects/{pid}/rules", json={"rules": rules}).raise_for_status()
    sizes = [len(json.dumps(tag["information"])) for tag in t.get(f"/projects/{pid}/tags").raise_for_status().json()]
    return sum(sizes) // len(sizes)


def alternate(url: str, headers: dict[str, str], photos: list[bytes], pairs: int) -> dict[str, list[float]]:
    """1 client, one keep-alive connection: pairs of requests on one photo, with and without information
    (which goes first alternates); -> latencies, answer sizes and the paired differences (ms)."""
    out: dict[str, list[float]] = {"with": [], "without": [], "bytes_with": [], "bytes_without": [], "diff": []}
    transport = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(headers=headers, timeout=60, transport=transport) as http:
        for i in range(pairs):
            pair = {}
            for kind in ("with", "without") if i % 2 == 0 else ("without", "with"):
                params = {} if kind == "with" else {"information": "false"}
                started = time.perf_counter()
                response = http.post(url, params=params, files={"imageData": photos[i % len(photos)]})
                response.raise_for_status()
                pair[kind] = (time.perf_counter() - started) * 1000
                out[kind].append(pair[kind])
                out[f"bytes_{kind}"].append(len(response.content))
            out["diff"].append(pair["with"] - pair["without"])
    return out


def in_process_costs(data_dir: Path, pid: str, calls: int = 5000) -> tuple[float, float, float]:
    """Microseconds per ``ProjectKnowledge.annotate`` (information attached, rule evaluated), and per answer
    through the API's response model to JSON (as FastAPI sends it) with and without the information."""
    from datetime import UTC, datetime

    from pydantic import TypeAdapter

    from tagvision.api.schemas import ImagePrediction
    from tagvision.service.knowledge import Extras
    from tagvision.service.views import PredictionView, TagProbability

    svc = Service.open(Settings.load(data_dir))
    try:
        knowledge = svc.knowledge.for_project(pid)
        tags = svc.projects.list_tags(pid)
        ranked = [TagProbability(t.id, t.name, p, "Regular") for t, p in zip(tags, (0.7, 0.2, 0.06, 0.04), strict=True)]
        started = time.perf_counter()
        for _ in range(calls):
            knowledge.annotate(ranked)
        annotate = (time.perf_counter() - started) / calls * 1e6
        adapter = TypeAdapter(ImagePrediction)
        costs = []
        for extras in (Extras(), Extras(information=False)):
            annotated, decision = knowledge.annotate(ranked, extras)
            view = PredictionView("id", pid, "it", datetime.now(UTC), annotated, decision=decision)
            started = time.perf_counter()
            for _ in range(calls):
                adapter.dump_json(adapter.validate_python(view.to_json()))
            costs.append((time.perf_counter() - started) / calls * 1e6)
        return annotate, costs[0], costs[1]
    finally:
        svc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per measurement (default 200)")
    parser.add_argument("--part", choices=("single", "replicas", "all"), default="all", help="what to measure")
    parser.add_argument(
        "--information-only", action="store_true", help="in the single part, measure only what tag information costs"
    )
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
            headers = {"Prediction-Key": keys["predictionKey"]}
            base = f"{endpoint}/customvision/v3.1/prediction/{pid}/classify/iterations/bench/image"
            if not args.information_only:
                plain = measure_plain(data_dir, pid, base, headers, photos, args.requests)
            info_bytes = add_information(endpoint, keys, pid)
            alternate(base + "/nostore", headers, photos, 10)  # warm up
            info = alternate(base + "/nostore", headers, photos, args.requests)
            costs = in_process_costs(data_dir, pid)
        finally:
            process.terminate()
            process.wait(30)

    if not args.information_only:
        report_plain(*plain)
    report_information(info, info_bytes, *costs)


def measure_plain(data_dir: Path, pid: str, base: str, headers: dict[str, str], photos: list[bytes], requests: int):
    """The engine in process, then HTTP at 1 and 8 clients, stored and not (no tag information yet)."""
    os.environ["TAGVISION_MODELS_DIR"] = str(MODELS_DIR)
    svc = Service.open(Settings.load(data_dir))
    try:
        for data in photos[:5]:  # warm up
            svc.prediction.classify(pid, data, published="bench", store=False)
        engine = []
        for i in range(requests):
            started = time.perf_counter()
            svc.prediction.classify(pid, photos[i % len(photos)], published="bench", store=False)
            engine.append((time.perf_counter() - started) * 1000)
    finally:
        svc.close()
    run_clients(base + "/nostore", headers, photos, 1, 10)  # warm up the server
    rows = [
        ("1 client, nostore", *run_clients(base + "/nostore", headers, photos, 1, requests)),
        ("1 client, stored", *run_clients(base, headers, photos, 1, requests)),
        ("8 clients, nostore", *run_clients(base + "/nostore", headers, photos, 8, requests)),
        ("8 clients, stored", *run_clients(base, headers, photos, 8, requests)),
    ]
    return engine, rows


def report_plain(engine: list[float], rows: list[tuple[str, list[float], float]]) -> None:
    engine_p50, engine_rate = float(np.percentile(engine, 50)), 1000 / float(np.mean(engine))
    print(f"\nengine (in process, no HTTP)   {percentiles(engine)}   {engine_rate:6.1f} pred/s")
    for name, latencies, rate in rows:
        overhead = np.percentile(latencies, 50) / engine_p50
        print(
            f"HTTP {name:<21} {percentiles(latencies)}   {rate:6.1f} pred/s   "
            f"p50 / engine p50 {overhead:4.2f}x   rate / engine rate {rate / engine_rate:4.2f}x"
        )
    p50, rate8s = float(np.percentile(rows[1][1], 50)), rows[3][2]
    print(
        f"\ntargets: p50 at 1 client (stored) {p50:.1f} ms (< 25 ms: {'yes' if p50 < 25 else 'NO'}), "
        f"8 clients (stored) {rate8s:.1f} pred/s (> 40: {'yes' if rate8s > 40 else 'NO'})"
    )


def report_information(
    info: dict[str, list[float]], info_bytes: int, annotate_us: float, json_with_us: float, json_without_us: float
) -> None:
    diffs = np.asarray(info["diff"])
    boot = np.median(np.random.default_rng(0).choice(diffs, size=(2000, len(diffs))), axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    median = float(np.median(diffs))
    print(
        f"\ntag information ({len(TAGS)} tags, ~{info_bytes} B of JSON each, 1 rule; 1 client, nostore, "
        f"{len(diffs)} pairs on the same photo):"
    )
    print(f"  with information     {percentiles(info['with'])}   {np.mean(info['bytes_with']):7.0f} B per answer")
    print(f"  without              {percentiles(info['without'])}   {np.mean(info['bytes_without']):7.0f} B per answer")
    print(
        f"  paired difference: median {median:+.2f} ms (95% CI {low:+.2f} to {high:+.2f}); "
        f"aim under 1 ms: {'yes' if median < 1 else 'NO'}"
    )
    print(
        f"  in process: ProjectKnowledge.annotate {annotate_us:.1f} us; the answer's JSON through the response "
        f"model {json_with_us:.1f} us with, {json_without_us:.1f} us without"
    )


if __name__ == "__main__":
    main()
