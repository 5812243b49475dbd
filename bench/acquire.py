"""Acquisition throughput from a loopback provider with realistic latency.

What: a loopback Openverse (tests/fake_providers) serving real clothing-small photos, each
image answered after ``--latency`` seconds (default 0.1, a typical CDN round trip). Measured
in one run:

* downloader alone (fetch through the SSRF guard, validate, hash) on the same candidates with
  1 worker (the baseline) and with the chosen concurrency (8 workers, at most 6 per host);
* a whole acquisition through the service: search pages (Openverse's anonymous pacing of
  1 request/s included), download, validate, de-duplicate, store, tag.

Run: ``python bench/acquire.py [--per-tag 40] [--latency 0.1]``.
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
from tagvision.service import Service  # noqa: E402
from tagvision.sources.download import Downloader  # noqa: E402
from tagvision.sources.openverse import OpenverseProvider  # noqa: E402
from tests.fake_providers.openverse import make_openverse  # noqa: E402

TAGS = ("hat", "shoes", "dress")


def downloader_rate(provider: OpenverseProvider, workers: int, count: int) -> float:
    candidates = list(provider.search("hat", count))
    started = time.perf_counter()
    results = list(Downloader(workers=workers, allow_private=True).download(candidates))
    elapsed = time.perf_counter() - started
    assert sum(r.status == "OK" for r in results) == len(candidates), [r.message for r in results if r.message]
    return len(results) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-tag", type=int, default=40, help="images per tag (default 40)")
    parser.add_argument("--latency", type=float, default=0.1, help="seconds before each image answer (default 0.1)")
    args = parser.parse_args()
    train = require("clothing-small", "train")
    photos = {tag: sorted((train / tag).iterdir())[: args.per_tag + 10] for tag in TAGS}
    os.environ["TAGVISION_ALLOW_PRIVATE_URLS"] = "1"
    os.environ["TAGVISION_MODELS_DIR"] = str(MODELS_DIR)
    fake = make_openverse(photos)
    fake.image_latency = args.latency
    os.environ["TAGVISION_OPENVERSE_URL"] = fake.url
    print(
        f"loopback Openverse, {args.latency * 1000:.0f} ms per image, real photos "
        f"({sum(p.stat().st_size for ps in photos.values() for p in ps) / 1e6 / sum(map(len, photos.values())):.2f}"
        f" MB each on average), {os.cpu_count()} cores"
    )
    try:
        provider = OpenverseProvider(fake.url, min_interval=0.0)
        one = downloader_rate(provider, 1, args.per_tag)
        eight = downloader_rate(provider, 8, args.per_tag)
        print(f"downloader, 1 worker (baseline)   {one:6.1f} images/s")
        print(
            f"downloader, 8 workers             {eight:6.1f} images/s   {eight / one:4.1f}x the baseline "
            f"(ceiling {8 / args.latency:.0f}/s from latency alone)"
        )

        with tempfile.TemporaryDirectory(prefix="tagvision-bench-acquire-") as tmp:
            svc = Service.open(Settings.load(Path(tmp)))
            try:
                svc.projects.create("bench", domain="general-compact")
                started = time.perf_counter()
                view = svc.acquisitions.run(svc.acquisitions.start("bench", list(TAGS), per_tag=args.per_tag).id)
                elapsed = time.perf_counter() - started
                added = sum(t["added"] for t in view.to_json()["tags"])
                assert view.status == "Completed", view.error
                searches = len(fake.requests_to("/v1/images/"))
                print(
                    f"whole acquisition (3 tags x {args.per_tag})  {added / elapsed:6.1f} images/s   "
                    f"{added} images in {elapsed:.1f} s, {searches} search pages at Openverse's 1 request/s"
                )
            finally:
                svc.close()
    finally:
        fake.close()


if __name__ == "__main__":
    main()
