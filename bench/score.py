"""Catalogue scoring: images/s of ``tagvision score`` beside the ONNX Runtime ceiling, locally and on Ray.

What: a project quick-trained on 20 clothing-small photos per tag and published, then ``tagvision score``
(the CLI, in a child process) over every photo of clothing-small (train, validation and test: 3781
JPEGs) into a fresh JSON Lines file, in float32 and in int8; beside each, the ceiling: the same exported
classifier in ONNX Runtime on ready (decoded, preprocessed) tensors, batches of 32, nothing else
(``ScoringModel.probabilities``). Then the same float32 job through a local Ray cluster of two nodes of one
CPU each on this machine (``ray start``): on one machine the figure shows Ray's overhead, not a speed-up.
Each measurement runs in its own process, whose peak RSS is reported (for Ray: the driver, and the sum of
the cluster's processes' peaks).

Run: ``python bench/score.py [--limit N] [--no-ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _data import MODELS_DIR, REPO, datasets_root, peak_rss_mb, require  # noqa: E402

BATCH = 32


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line with images/s and the peak RSS."""
    import numpy as np

    from tagvision.scoring import engine

    if args.child == "ceiling":
        from tagvision import backbone
        from tagvision.scoring.sources import folder_keys

        model = engine.ScoringModel(Path(args.model))
        keys = list(folder_keys(Path(args.source)))[:256]
        x = np.stack([backbone.preprocess_bytes(Path(k).read_bytes(), model.spec) for k in keys])
        model.probabilities(x[:BATCH])  # warm up
        started = time.perf_counter()
        for start in range(0, len(x), BATCH):
            model.probabilities(x[start : start + BATCH])
        rate = len(x) / (time.perf_counter() - started)
    else:
        from tagvision.cli import app

        started = time.perf_counter()
        try:
            app(args.cli, standalone_mode=False)
        except SystemExit as exc:
            if exc.code:
                raise
        rate = args.count / (time.perf_counter() - started)
    print(json.dumps({"rate": rate, "peak_rss_mb": peak_rss_mb()}))


def measure(*argv: str, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TAGVISION_MODELS_DIR": str(MODELS_DIR), **(env or {})},
    )
    if done.returncode != 0:
        sys.exit(f"measurement {argv[:2]} failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def prepare(data_dir: Path) -> tuple[Path, Path]:
    """A published quick iteration; returns its float32 and int8 classifiers as files."""
    os.environ["TAGVISION_MODELS_DIR"] = str(MODELS_DIR)
    from tagvision.config import Settings
    from tagvision.service import NewImage, Service

    train = require("clothing-small", "train")
    svc = Service.open(Settings.load(data_dir))
    try:
        tags = sorted(d.name for d in train.iterdir() if d.is_dir())
        svc.projects.create("bench-score", domain="general-compact")
        svc.projects.create_tags("bench-score", tags)
        items = [NewImage(p.name, p.read_bytes, (t,)) for t in tags for p in sorted((train / t).iterdir())[:20]]
        svc.images.add("bench-score", items)
        iteration = svc.training.train("bench-score")
        svc.training.publish("bench-score", iteration.id, "bench")
        fp32, int8 = data_dir / "fp32.onnx", data_dir / "int8.onnx"
        fp32.write_bytes(svc.scorings.model("bench-score", precision="Float32").onnx)
        int8.write_bytes(svc.scorings.model("bench-score", precision="Int8").onnx)
    finally:
        svc.close()
    return fp32, int8


def cluster_peak_mb(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray cluster")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("cli", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    source = require("clothing-small").parent / "clothing-small"
    from tagvision.scoring.sources import folder_keys

    count = len(list(folder_keys(source)))
    print(f"{count} photos under {source.relative_to(datasets_root().parent)}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="tagvision-bench-score-") as tmp:
        data_dir = Path(tmp) / "data"
        fp32, int8 = prepare(data_dir)
        rows = []
        for precision, model in (("fp32", fp32), ("int8", int8)):
            ceiling = measure("--child", "ceiling", "--model", str(model), "--source", str(source))
            out = Path(tmp) / f"{precision}.jsonl"
            cli = ["score", "bench-score", str(source), "--out", str(out), "--precision", precision]
            scored = measure("--child", "cli", "--count", str(count), "--", *cli, "--data-dir", str(data_dir))
            rows.append((f"tagvision score, {precision}", scored, ceiling))
        if not args.no_ray:
            from tests.ray_cluster import LocalRayCluster

            with LocalRayCluster(nodes=2, cpus=1, env={"PYTHONPATH": str(REPO)}) as cluster:
                out = Path(tmp) / "ray.jsonl"
                cli = ["score", "bench-score", str(source), "--out", str(out), "--ray", cluster.address]
                ray = measure("--child", "cli", "--count", str(count), "--", *cli, "--data-dir", str(data_dir))
                ray["cluster_mb"] = cluster_peak_mb(cluster.pids())
            local = rows[0][1]["rate"]
            rows.append(("tagvision score --ray (2 nodes x 1 CPU), fp32", ray, {"rate": local, "ray": True}))
    print()
    for name, got, ceiling in rows:
        if ceiling.get("ray"):
            print(
                f"{name:<48} {got['rate']:6.1f} images/s   {got['rate'] / ceiling['rate']:.2f}x the local fp32 run   "
                f"peak RSS driver {got['peak_rss_mb']:.0f} MB, cluster {got['cluster_mb']:.0f} MB"
            )
            continue
        print(
            f"{name:<48} {got['rate']:6.1f} images/s   ceiling (ORT on ready tensors) {ceiling['rate']:6.1f} "
            f"images/s   ratio {got['rate'] / ceiling['rate']:.2f}   peak RSS {got['peak_rss_mb']:.0f} MB "
            f"(ceiling {ceiling['peak_rss_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
