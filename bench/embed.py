"""Embedding throughput: JPEG files on disk -> embeddings, against the network's own ceiling.

What: images/second of ``Embedder.embed`` over file readers on N photos of
clothing-small/train. Each image yields a plain and a mirrored embedding, as the product
computes them (decode threads feed batches of ``batch_size`` images = 2 * batch_size rows).

How, in one process with one Embedder (best of ``--repeats`` for each figure, after a
warm-up; files are in the OS cache after the first pass):
  1. decode + preprocess only: ``preprocess_bytes(path.read_bytes())`` on a thread pool
     of ``--decode-threads``, no network: how fast the CPU side alone could go;
  2. ceiling: ``Embedder.forward_pairs`` on the pre-made arrays from 1, in batches of
     ``batch_size`` images: ONNX Runtime alone, same pairs layout, no decoding;
  3. pipeline: ``Embedder.embed`` over ``path.read_bytes`` readers (decode + network).
The pipeline's embeddings are compared with the ceiling's (they must be the same numbers).

Target: pipeline >= 100 images/s and >= 0.7 of the ceiling.

    .venv/bin/python bench/embed.py [--images 512] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _data import MODELS_DIR, list_split, make_embedder

from tagvision import backbone

TARGET_RATE, TARGET_RATIO = 100.0, 0.7


def best_rate(fn, n: int, repeats: int) -> tuple[float, object]:
    """(images/s of the fastest of ``repeats`` calls, result of the last call)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return n / min(times), result


def main() -> None:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--images", type=int, default=512, help="photos from clothing-small/train")
    parser.add_argument("--batch-size", type=int, default=16, help="images per network batch (2x rows)")
    parser.add_argument("--decode-threads", type=int, default=max(2, cores), help="decode thread pool")
    parser.add_argument("--threads", type=int, default=cores, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per figure (best is kept)")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="ONNX export cache")
    args = parser.parse_args()

    items, _ = list_split("clothing-small", "train")
    picks = np.linspace(0, len(items) - 1, min(args.images, len(items))).round().astype(int)
    paths = [items[i][0] for i in picks]  # spread over every class folder
    n, bs = len(paths), args.batch_size
    spec = backbone.BACKBONES["general-compact"]
    embedder = make_embedder(
        models_dir=args.models_dir, threads=args.threads, batch_size=bs, decode_threads=args.decode_threads
    )

    # Warm-up: ONNX Runtime's first runs, the decode pool, the file cache.
    list(embedder.embed([p.read_bytes for p in paths[: 2 * bs]]))

    def decode_only() -> np.ndarray:
        with ThreadPoolExecutor(args.decode_threads) as pool:
            return np.stack(list(pool.map(lambda p: backbone.preprocess_bytes(p.read_bytes(), spec), paths)))

    def ceiling() -> np.ndarray:
        return np.concatenate(
            [np.concatenate(embedder.forward_pairs(arrays[s : s + bs]), axis=1) for s in range(0, n, bs)]
        )

    def pipeline() -> np.ndarray:
        out = np.zeros((n, 2 * spec.dim), np.float32)
        for r in embedder.embed([p.read_bytes for p in paths]):
            assert r.error is None, f"{paths[r.index]}: {r.error}"
            out[r.index] = np.concatenate([r.plain, r.flipped])
        return out

    decode_rate, arrays = best_rate(decode_only, n, args.repeats)
    ceiling_rate, reference = best_rate(ceiling, n, args.repeats)
    pipeline_rate, produced = best_rate(pipeline, n, args.repeats)
    ratio = pipeline_rate / ceiling_rate
    difference = float(np.abs(produced - reference).max())

    def met(ok: bool) -> str:
        return "yes" if ok else "NO"

    print(
        f"\nEmbedding throughput: {n} photos of clothing-small/train, {spec.model_name} "
        f"{spec.image_size}px, plain + mirrored per image"
    )
    print(
        f"{cores} cores; ONNX Runtime threads {args.threads}, decode threads {args.decode_threads}, "
        f"batch {bs} images ({2 * bs} rows); best of {args.repeats} passes\n"
    )
    print(f"{'stage':<50}{'images/s':>10}{'ms/image':>10}  {'target':<10}{'met':>4}")
    print("-" * 86)
    rows = [
        ("decode + preprocess only (thread pool, no network)", decode_rate, "", ""),
        ("ceiling: forward_pairs on ready arrays", ceiling_rate, "", ""),
        (
            "pipeline: Embedder.embed, files -> embeddings",
            pipeline_rate,
            f">= {TARGET_RATE:.0f}",
            met(pipeline_rate >= TARGET_RATE),
        ),
    ]
    for name, rate, target, ok in rows:
        print(f"{name:<50}{rate:>10.1f}{1000 / rate:>10.2f}  {target:<10}{ok:>4}")
    print(
        f"{'pipeline / ceiling':<50}{ratio:>10.2f}{'':>10}  {'>= ' + str(TARGET_RATIO):<10}"
        f"{met(ratio >= TARGET_RATIO):>4}"
    )
    print(f"\nmax |pipeline - ceiling| over all embeddings: {difference:.2e} (same numbers expected)")


if __name__ == "__main__":
    main()
