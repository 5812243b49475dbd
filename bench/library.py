"""Gathering from the local library: name search, then precision of what is gathered by look.

1. Name search on ``clothing-small/train`` seen as an unlabelled folder tree (its folder names
   happen to be the class names, as in a catalogue folder): each class name as the query, limit
   1000; precision and recall, with the classes that crept in.
2. Gathering by look, names hidden: a dataset's ``train`` split copied into a flat folder under
   hashed names (so keyword matching cannot help); a project with every class as a tag and
   ``--seeds`` seed photos per tag (``numpy.random.default_rng(draw)``, draws 0..``--draws``-1); one
   acquisition of ``--per-tag`` images for every tag, through ``LibraryProvider.search`` end to end
   and as the service settles candidates (a file goes to at most one tag; candidates the look finds
   doubtful are set aside, not added). Precision of the added images per tag (true class = tag):

   * ``centroid``: cosine to the tag's seed centroid (the ranking until now);
   * ``look``: the classifier over every tag (:mod:`tagvision.sources.look`);
   * ``look, N review``: N review pages of ``--page`` candidates per tag first (a simulated user keeps
     the right ones and rejects the others; the look is refitted on the answers before each next
     page), then the rest gathered; precision of all the images the tag ended with. The pages'
     own precision is printed too, and the rounds until the gathered images reach ``--target``.

   Mean and sd over draws of the per-draw mean over tags.

Timings: the first search (embeds the library), a cached search, one refit of the look.

    .venv/bin/python bench/library.py [--draws 5] [--seeds 5] [--per-tag 50] [--page 20] [--target 0.9]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _data import cached_embeddings, list_split, make_embedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tagvision.sources import look  # noqa: E402
from tagvision.sources.library import LibraryProvider  # noqa: E402

MAX_ROUNDS = 5


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


@dataclass
class Project:
    """The simulated project: its tags' images (by library index) and the candidates the user rejected."""

    classes: list[str]
    plain: np.ndarray
    flipped: np.ndarray
    images: dict[int, list[int]]  # class -> indices of its images
    rejected: list[int] = field(default_factory=list)
    settled: set[str] = field(default_factory=set)  # provider ids looked at (a file goes to one tag at most)

    def look(self) -> look.Look:
        rows = [i for c in sorted(self.images) for i in self.images[c]] + self.rejected
        labels = np.zeros((len(rows), len(self.classes)), bool)
        at = 0
        for c in sorted(self.images):
            labels[at : at + len(self.images[c]), c] = True
            at += len(self.images[c])
        return look.fit(look.Examples(tuple(self.classes), self.plain[rows], self.flipped[rows], labels))


def gather(
    provider: LibraryProvider, project: Project, index: dict[str, int], c: int, count: int, seeds: set[int]
) -> tuple[list[int], list[int]]:
    """As an acquisition settles candidates for class ``c``, up to ``count`` added: in the provider's order,
    skipping what was settled, setting aside what the look finds doubtful (at most ``count`` of those).
    Returns (added, offered): library indices added, and every candidate looked at, in order."""
    name, added, offered, doubtful = project.classes[c], [], [], 0
    for candidate in provider.search(name, count * 3 + len(project.settled) + len(seeds)):
        i = index[candidate.provider_id]
        if candidate.provider_id in project.settled or i in seeds:
            continue
        project.settled.add(candidate.provider_id)
        offered.append(i)
        if candidate.verdict is not None and candidate.verdict.doubtful:  # judged among the library, as the service
            doubtful += 1
            if doubtful >= count:
                break
            continue
        added.append(i)
        if len(added) == count:
            break
    return added, offered


def acquisition(
    provider: LibraryProvider,
    project: Project,
    index: dict[str, int],
    labels: np.ndarray,
    seeds: set[int],
    per_tag: int,
    page: int,
    rounds: int,
) -> tuple[float, list[float], float, float]:
    """One acquisition for every tag after ``rounds`` review pages. Returns the precision of what the tags ended
    with (mean over tags), each page's precision, the images each tag ended with (mean), and the precision of
    the first ``per_tag`` candidates the last ranking offered (nothing set aside: the ranking alone)."""
    kept: dict[int, list[int]] = {c: [] for c in range(len(project.classes))}
    pages = []
    for _ in range(rounds):
        provider.look = project.look()  # refitted on the answers so far
        shown = []
        for c in kept:
            for i in gather(provider, project, index, c, min(page, per_tag - len(kept[c])), seeds)[0]:
                right = bool(labels[i] == c)
                shown.append(right)
                (kept[c] if right else project.rejected).append(i)
                if right:
                    project.images[c].append(i)
        pages.append(float(np.mean(shown)) if shown else float("nan"))
    provider.look = project.look()
    got, ranked = {}, []
    for c in kept:
        added, offered = gather(provider, project, index, c, per_tag - len(kept[c]), seeds)
        got[c] = kept[c] + added
        first = kept[c] + offered[: per_tag - len(kept[c])]
        ranked.append(np.mean(labels[first] == c) if first else 0.0)
    precision = float(np.mean([np.mean(labels[g] == c) if g else 0.0 for c, g in got.items()]))
    return precision, pages, float(np.mean([len(g) for g in got.values()])), float(np.mean(ranked))


def measure(dataset: str, args: argparse.Namespace) -> None:
    items, classes = list_split(dataset, "train")
    paths = [p for p, _ in items]
    labels = np.array([c for _, c in items])
    plain, flipped = cached_embeddings(dataset, "train", paths)
    methods = ["centroid", "look", *(f"look, {r} review" for r in range(1, args.rounds + 1))]
    results: dict[str, list[float]] = {m: [] for m in methods}
    counts: dict[str, list[float]] = {m: [] for m in methods}
    ranked: dict[str, list[float]] = {m: [] for m in methods}
    pages: dict[int, list[float]] = {}
    rounds_to: list[int | None] = []
    timings: dict[str, list[float]] = {"search": [], "refit": []}
    with tempfile.TemporaryDirectory() as tmp:
        library, cache = Path(tmp, "library"), Path(tmp, "cache")
        library.mkdir()
        index = {name: i for i, name in enumerate(anonymise(paths, library))}
        provider = LibraryProvider(library, embedder=make_embedder(), cache_dir=cache)
        provider.look = look.Centroid({classes[0]: (plain[:1] + flipped[:1]) / 2})
        started = time.perf_counter()
        next(iter(provider.search(classes[0], 1)))
        embedding = time.perf_counter() - started
        for draw in range(args.draws):
            rng = np.random.default_rng(draw)
            seeds = {
                c: list(rng.choice(np.flatnonzero(labels == c), args.seeds, replace=False)) for c in range(len(classes))
            }
            seed_set = {i for s in seeds.values() for i in s}

            def fresh(seeds: dict[int, list[int]] = seeds) -> Project:
                return Project(classes, plain, flipped, {c: list(s) for c, s in seeds.items()})

            # Today: cosine to each tag's centroid, nothing set aside; a file goes to the first tag that takes it.
            project = fresh()
            provider.look = look.Centroid({classes[c]: (plain[s] + flipped[s]) / 2 for c, s in seeds.items()})
            got = {c: gather(provider, project, index, c, args.per_tag, seed_set)[0] for c in range(len(classes))}
            results["centroid"].append(float(np.mean([np.mean(labels[g] == c) for c, g in got.items()])))
            counts["centroid"].append(float(np.mean([len(g) for g in got.values()])))
            ranked["centroid"].append(results["centroid"][-1])
            for r in range(max(args.rounds, MAX_ROUNDS) + 1):
                started = time.perf_counter()
                precision, shown, count, first = acquisition(
                    provider, fresh(), index, labels, seed_set, args.per_tag, args.page, r
                )
                timings["search"].append(time.perf_counter() - started)
                if r <= args.rounds:
                    method = "look" if r == 0 else f"look, {r} review"
                    results[method].append(precision)
                    counts[method].append(count)
                    ranked[method].append(first)
                if r == args.rounds:
                    for k, p in enumerate(shown, 1):
                        pages.setdefault(k, []).append(p)
                if precision >= args.target and len(rounds_to) == draw:
                    rounds_to.append(r)
                if len(rounds_to) > draw and r >= args.rounds:
                    break
            if len(rounds_to) == draw:
                rounds_to.append(None)
        started = time.perf_counter()
        fresh().look()
        timings["refit"].append(time.perf_counter() - started)

    report(dataset, len(paths), len(classes), args, results, counts, ranked, pages, rounds_to)
    print(
        f"timings: first search (embeds {len(paths)} photos) {embedding:.1f} s = "
        f"{len(paths) / embedding:.0f} images/s; "
        f"one acquisition of every tag (searches, refits) median {np.median(timings['search']):.1f} s; "
        f"a refit of the look on the seeds {timings['refit'][0] * 1000:.0f} ms"
    )


def report(
    dataset: str,
    files: int,
    tags: int,
    args: argparse.Namespace,
    results: dict[str, list[float]],
    counts: dict[str, list[float]],
    ranked: dict[str, list[float]],
    pages: dict[int, list[float]],
    rounds_to: list[int | None],
) -> None:
    """The table of precision per method, the review pages' own precision, the rounds to ``args.target``."""
    methods = list(results)
    print(
        f"\n2. {dataset}/train by look: {files} photos under hashed names, {tags} tags, "
        f"{args.seeds} seeds each, {args.per_tag} gathered per tag; precision of the added images, "
        f"mean ± sd over {args.draws} draws"
    )
    print(f"{'':<18}{'precision':>18}{'added per tag':>15}{'vs centroid':>13}{'ranking alone':>20}")
    base = np.array(results["centroid"])
    for m in methods:
        v, r = np.array(results[m]), np.array(ranked[m])
        print(
            f"{m:<18}{v.mean():>10.3f} ± {v.std():.3f}{np.mean(counts[m]):>15.1f}{(v - base).mean():>+13.3f}"
            f"{r.mean():>12.3f} ± {r.std():.3f}"
        )
    print(
        f"(ranking alone: precision of the first {args.per_tag} candidates offered per tag, nothing set aside; "
        "added per tag: fewer where the look set candidates aside as doubtful)"
    )
    shown = ", ".join(f"page {k}: {np.nanmean(v):.3f}" for k, v in pages.items())
    print(f"precision of the review pages themselves ({args.page} per tag, the user's view): {shown}")
    needed = [r for r in rounds_to if r is not None]
    print(
        f"review rounds until the gathered images reach precision {args.target}: "
        + ", ".join("more than " + str(MAX_ROUNDS) if r is None else str(r) for r in rounds_to)
        + (f" (mean {np.mean(needed):.1f} where reached)" if needed else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5, help="seed photos per tag")
    parser.add_argument("--per-tag", type=int, default=50, help="images gathered per tag")
    parser.add_argument("--page", type=int, default=20, help="review page: candidates per tag")
    parser.add_argument("--rounds", type=int, default=2, help="review rounds measured")
    parser.add_argument("--target", type=float, default=0.9, help="precision the review rounds are counted to")
    parser.add_argument("--datasets", nargs="+", default=["clothing-small", "car-damage"])
    args = parser.parse_args()

    items, classes = list_split("clothing-small", "train")
    paths = [p for p, _ in items]
    name_search(paths[0].parents[1], classes, Counter(classes[c] for _, c in items))
    for dataset in args.datasets:
        measure(dataset, args)


if __name__ == "__main__":
    main()
