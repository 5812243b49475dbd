"""Migration throughput: images/s brought over from a Custom Vision Training API, by download concurrency.

What: a real ``tagvision serve`` on 127.0.0.1 is the source, holding one multiclass project of ``--images``
clothing-small photos (400x533 JPEGs, about 40 KB) with tags and metadata; each run migrates it into a fresh
data dir through the service (``Migrations.run``: paging at take=256, downloads of the originals through their
signed links, validation, blobs, rows in batches of 32), as ``tagvision migrate`` does. ``--latency-ms`` puts a
proxy in front (a small Python one, itself a cost) that delays every original, standing in for a blob store
across the internet (Azure's originals are not on loopback); without it the source is read directly. The
Training API is paced at 100 calls/s here (Azure: about 10), which costs a few calls per project either way.

Prints images/s per concurrency and the ratio to one download at a time, measured in the same run.
Run: ``python bench/migrate.py [--images 300] [--concurrency 1 4 8 16] [--latency-ms 0 50]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _data import MODELS_DIR, require  # noqa: E402

from tagvision.config import Settings  # noqa: E402
from tagvision.service import NewImage, Service  # noqa: E402
from tagvision.service.migrations import MigrationRequest  # noqa: E402
from tests.fake_azure import HoldingProxy  # noqa: E402
from tests.server import Server  # noqa: E402

TAGS = ("dress", "hat", "pants", "shoes", "shorts", "longsleeve", "t-shirt", "shirt")


def seed(data_dir: Path, count: int) -> None:
    """The source project, written through the service before the server starts (seeding is not measured)."""
    root = require("clothing-small", "train")
    per_tag = -(-count // len(TAGS))
    files = [(tag, p) for tag in TAGS for p in sorted((root / tag).iterdir())[:per_tag]][:count]
    svc = Service.open(Settings.load(data_dir))
    try:
        project = svc.projects.create("bench", classification="multiclass", domain="general-compact")
        svc.projects.create_tags(project.id, list(TAGS))
        svc.images.add(project.id, [NewImage(p.name, p.read_bytes, (t,), metadata={"shop": t}) for t, p in files])
    finally:
        svc.close()


def migrate_once(endpoint: str, key: str, concurrency: int, workdir: Path) -> tuple[int, float]:
    target = Path(tempfile.mkdtemp(dir=workdir, prefix=f"c{concurrency}-"))
    svc = Service.open(Settings.load(target))
    try:
        request = MigrationRequest(endpoint, key, every=True, concurrency=concurrency, calls_per_second=100)
        started = time.perf_counter()
        report = svc.migrations.run(request)
        seconds = time.perf_counter() - started
    finally:
        svc.close()
    (project,) = report.projects
    assert not project.refused and project.error is None, project.to_json()
    return project.added, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0.0, 50.0])
    args = parser.parse_args()
    os.environ["TAGVISION_ALLOW_PRIVATE_URLS"] = "1"  # the source is on loopback
    os.environ["TAGVISION_MODELS_DIR"] = str(MODELS_DIR)
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as folder:
        workdir = Path(folder)
        seed(workdir / "source", args.images)
        with Server(workdir / "source") as source:
            print(f"source: tagvision serve on loopback, {args.images} photos; {os.cpu_count()} cores")
            print(f"{'latency':>8} {'concurrency':>11} {'images':>6} {'seconds':>8} {'images/s':>9} {'vs 1':>6}")
            for latency in args.latency_ms:
                proxy = HoldingProxy(source.endpoint, latency=latency / 1000) if latency else None
                endpoint = proxy.url if proxy else source.endpoint
                try:
                    baseline = None
                    for concurrency in args.concurrency:
                        count, seconds = migrate_once(endpoint, source.training_key, concurrency, workdir)
                        rate = count / seconds
                        baseline = baseline or rate
                        print(
                            f"{latency:>6.0f}ms {concurrency:>11} {count:>6} {seconds:>8.2f} {rate:>9.1f} "
                            f"{rate / baseline:>5.2f}x",
                            flush=True,
                        )
                finally:
                    if proxy:
                        proxy.close()


if __name__ == "__main__":
    main()
