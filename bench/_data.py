"""Shared helpers for the benchmarks: the datasets folder, split listings, cached embeddings.

The datasets live beside the project in ``../shared/datasets`` (``TAGVISION_DATASETS``
overrides); a missing folder ends the benchmark with exit status 2 and its name.
Embeddings of a whole split are cached under ``tagvision-data/bench-cache/``, keyed by
dataset, split and exported backbone (model name + weights digest), so a re-run skips
the network.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tagvision import backbone

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "tagvision-data" / "bench-models"  # ONNX export, kept between runs
CACHE_DIR = REPO / "tagvision-data" / "bench-cache"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})


def datasets_root() -> Path:
    env = os.environ.get("TAGVISION_DATASETS")
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[2] / "shared" / "datasets"


def require(*parts: str) -> Path:
    """``datasets_root()/parts``, or exit with status 2 naming the missing folder."""
    folder = datasets_root().joinpath(*parts)
    if not folder.is_dir():
        print(
            f"Missing dataset folder: {folder} (see ../shared/datasets/README.md; "
            "set TAGVISION_DATASETS to point elsewhere). Nothing measured.",
            file=sys.stderr,
        )
        sys.exit(2)
    return folder


def list_split(dataset: str, split: str) -> tuple[list[tuple[Path, int]], list[str]]:
    """The images of one split as (path, class index), sorted, and the class names (folder names)."""
    root = require(dataset, split)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = [
        (f, i)
        for i, name in enumerate(classes)
        for f in sorted((root / name).iterdir())
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    return items, classes


def make_embedder(domain: str = "general-compact", models_dir: Path = MODELS_DIR, **options) -> backbone.Embedder:
    return backbone.Embedder(backbone.BACKBONES[domain], models_dir, **options)


def embed_files(embedder: backbone.Embedder, paths: Sequence[Path], label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Embed image files with ``Embedder.embed``: (plain, flipped), each (n, dim) float32."""
    n, dim = len(paths), embedder.spec.dim
    plain, flipped = np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32)
    started, step = time.perf_counter(), max(1, n // 10)
    for r in embedder.embed([p.read_bytes for p in paths]):
        if r.error is not None:
            raise RuntimeError(f"{paths[r.index]}: {r.error.message}")
        plain[r.index], flipped[r.index] = r.plain, r.flipped
        if label and ((r.index + 1) % step == 0 or r.index + 1 == n):
            rate = (r.index + 1) / (time.perf_counter() - started)
            print(f"  embedding {label}: {r.index + 1}/{n} ({rate:.0f} images/s)", file=sys.stderr, flush=True)
    return plain, flipped


def cached_embeddings(
    dataset: str, split: str, paths: Sequence[Path], domain: str = "general-compact", models_dir: Path = MODELS_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """(plain, flipped) of ``paths`` from the cache, computing and storing them on a miss."""
    spec = backbone.BACKBONES[domain]
    key = backbone.onnx_path(spec, models_dir).stem
    cache = CACHE_DIR / f"{dataset}-{split}-{key}.npz"
    names = np.array([str(p.relative_to(datasets_root())) for p in paths])
    if cache.exists():
        with np.load(cache) as saved:
            if np.array_equal(saved["names"], names):
                return saved["plain"], saved["flipped"]
    plain, flipped = embed_files(make_embedder(domain, models_dir), paths, label=f"{dataset}/{split}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, names=names, plain=plain, flipped=flipped)
    os.replace(tmp, cache)
    return plain, flipped


def peak_rss_mb() -> float:
    """Peak resident set of this process, MB: ``VmHWM`` where /proc has it, else ``ru_maxrss``.

    On Linux ``ru_maxrss`` of a subprocess starts at its parent's peak (kept across fork +
    exec), so it cannot measure a child alone; ``VmHWM`` belongs to the process's own memory.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
