"""The local image library provider: name search and "more like these" on clothing-small/train.

What, with ``clothing-small/train`` seen as an unlabelled folder tree (the provider gets only
the root; its folder names happen to be the class names, as in a catalogue folder):

1. name search: each class name as the query, limit 1000; precision (returned files whose
   true class is the query's) and recall, with the classes that crept in;
2. more like these, names hidden: the photos copied into a flat folder, named by a hash
   of their path; 5 seed photos per class (``numpy.random.default_rng(draw)``, draws 0..2) rank the
   rest; precision@50 per class (the seed files themselves, also in the library, are left
   out of the 50): through ``LibraryProvider.search`` end to end ("provider"), and for each
   scoring rule on L2-normalised ``features()`` of the cached flip-mean split embeddings
   (cosine to the seeds' centroid, mean of the top-3 seed similarities, nearest seed),
   beside 50 drawn at random (``default_rng(1000 + draw)``) and the expected precision of
   a random pick (the class's share of the library);
3. the scoring rules again over more draws (``--sweep-draws``) and 3, 5, 10, 20 seeds.

Timings: the first scan (reading headers and keywords), a name search, embedding the whole
library once (first "more like these" search), a cached search, and a fresh provider
loading the embedding cache from disk.

    .venv/bin/python bench/library.py [--draws 3] [--seeds 5] [--top 50]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from _data import cached_embeddings, list_split, make_embedder

from tagvision.learn import features
from tagvision.sources.library import LibraryProvider


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def name_search(root: Path, classes: list[str], counts: Counter) -> None:
    started = time.perf_counter()
    provider = LibraryProvider(root)
    scanned = time.perf_counter() - started
    print(f"\n1. Name search on {root} (limit 1000); first scan {scanned:.2f} s")
    print(f"{'query':<12}{'files':>7}{'returned':>10}{'precision':>11}{'recall':>8}  other classes returned")
    for name in classes:
        started = time.perf_counter()
        found = Counter(c.provider_id.split("/")[0] for c in provider.search(name, 1000))
        took = time.perf_counter() - started
        returned = sum(found.values())
        others = ", ".join(f"{k} {v}" for k, v in found.most_common() if k != name) or "-"
        print(
            f"{name:<12}{counts[name]:>7}{returned:>10}{found[name] / max(returned, 1):>11.3f}"
            f"{found[name] / counts[name]:>8.3f}  {others}  ({took * 1000:.0f} ms)"
        )


def anonymise(paths: list[Path], folder: Path) -> list[str]:
    """Copy ``paths`` flat into ``folder`` named by a hash of their path (unique, even for twin photos)."""
    names = []
    for path in paths:
        name = hashlib.sha256(str(path).encode()).hexdigest()[:20] + path.suffix.lower()
        shutil.copy2(path, folder / name)
        names.append(name)
    return names


RULES = {  # seed similarities (n, k) -> one score per file; cosines of L2-normalised features
    "centroid": lambda sims: sims.mean(axis=1),  # same order as the cosine to the seeds' centroid
    "top-3 mean": lambda sims: np.sort(sims, axis=1)[:, -3:].mean(axis=1),
    "nearest": lambda sims: sims.max(axis=1),
}


def offline(vectors: np.ndarray, labels: np.ndarray, seeds: np.ndarray, top: int) -> dict[str, float]:
    """Precision@top of each rule for the class of ``seeds``, ranking every other file."""
    rest = np.setdiff1d(np.arange(len(labels)), seeds)
    sims = vectors[rest] @ vectors[seeds].T
    c = labels[seeds[0]]
    return {
        rule: float(np.mean(labels[rest[np.argsort(-score(sims), kind="stable")[:top]]] == c))
        for rule, score in RULES.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="seed photos per class")
    parser.add_argument("--top", type=int, default=50, help="precision@top")
    parser.add_argument("--sweep-draws", type=int, default=20, help="draws of the offline rule sweep")
    args = parser.parse_args()

    items, classes = list_split("clothing-small", "train")
    paths = [p for p, _ in items]
    labels = np.array([c for _, c in items])
    name_search(paths[0].parents[1], classes, Counter(classes[c] for c in labels))

    plain, flipped = cached_embeddings("clothing-small", "train", paths)
    means = (plain + flipped) / 2
    vectors = unit(features(means))
    columns = ("provider", *RULES, "random", "expected")
    results = {k: np.zeros((args.draws, len(classes))) for k in columns}
    timings: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        library, cache = Path(tmp, "library"), Path(tmp, "cache")
        library.mkdir()
        index = {name: i for i, name in enumerate(anonymise(paths, library))}
        provider = LibraryProvider(library, embedder=make_embedder(), cache_dir=cache)
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            for c, name in enumerate(classes):
                seeds = rng.choice(np.flatnonzero(labels == c), args.seeds, replace=False)
                rest = np.setdiff1d(np.arange(len(paths)), seeds)
                provider.seeds = {name: means[seeds]}
                started = time.perf_counter()
                found = [index[x.provider_id] for x in provider.search(name, args.top + args.seeds)]
                timings.append(time.perf_counter() - started)
                top = [i for i in found if i not in set(seeds)][: args.top]
                results["provider"][draw, c] = np.mean(labels[top] == c)
                for rule, value in offline(vectors, labels, seeds, args.top).items():
                    results[rule][draw, c] = value
                random = np.random.default_rng(1000 + draw).choice(rest, args.top, replace=False)
                results["random"][draw, c] = np.mean(labels[random] == c)
                results["expected"][draw, c] = np.mean(labels[rest] == c)
        started = time.perf_counter()
        fresh = LibraryProvider(library, seeds=provider.seeds, embedder=provider.embedder, cache_dir=cache)
        next(iter(fresh.search(classes[-1], 1)))
        reload = time.perf_counter() - started

    print(
        f"\n2. More like these: {len(paths)} photos under hashed names, {args.seeds} seeds per class, "
        f"precision@{args.top}, mean ± sd over {args.draws} draws"
    )
    print(f"{'class':<12}" + "".join(f"{k:>16}" for k in columns))
    for c, name in enumerate(classes):
        print(f"{name:<12}" + "".join(f"{v[:, c].mean():>9.3f} ± {v[:, c].std():.3f}" for v in results.values()))
    print(
        f"{'mean':<12}"
        + "".join(f"{v.mean(axis=1).mean():>9.3f} ± {v.mean(axis=1).std():.3f}" for v in results.values())
    )
    gap = np.abs(results["provider"] - results["centroid"]).max()
    print(
        f"(provider: LibraryProvider.search end to end; the rules: rankings from the cached split embeddings; "
        f"sd of the class mean over draws; largest provider-centroid gap {gap:.3f})"
    )
    print(
        f"\nTimings: first search (embeds {len(paths)} photos) {timings[0]:.1f} s = "
        f"{len(paths) / timings[0]:.0f} images/s; cached searches median {np.median(timings[1:]) * 1000:.0f} ms "
        f"(max {max(timings[1:]) * 1000:.0f} ms); fresh provider from the disk cache {reload * 1000:.0f} ms "
        "(scan + load + search)"
    )

    print(f"\n3. Scoring rules, mean precision@{args.top} over 10 classes x {args.sweep_draws} draws")
    print(f"{'seeds':<8}" + "".join(f"{k:>12}" for k in RULES))
    for k in (3, 5, 10, 20):
        scores = [
            offline(
                vectors,
                labels,
                np.random.default_rng(draw).choice(np.flatnonzero(labels == c), k, replace=False),
                args.top,
            )
            for draw in range(args.sweep_draws)
            for c in range(len(classes))
        ]
        print(f"{k:<8}" + "".join(f"{np.mean([s[rule] for s in scores]):>12.3f}" for rule in RULES))


if __name__ == "__main__":
    main()
