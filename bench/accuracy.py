"""Quick-training accuracy against the datasets README's linear-probe reference figures.

What: top-1 accuracy on ``test/`` of clothing-small and car-damage for a QuickClassifier
(shrinkage LDA, shrinkage chosen by 5-fold CV) trained on k photos per class from
``train/`` (k = 5, 10, 20, 50) and on every training photo.

How: embed train/ and test/ once (plain + mirrored, cached under
``tagvision-data/bench-cache/``); for each k draw k photos per class with
``numpy.random.default_rng(draw)``, draws 0..4, and average; "all" is one run. Training
uses both embeddings of each photo; prediction uses test-time flip
(``predict_proba(plain, flipped)``). As a check of the cross-validated figures the
product reports, the out-of-fold accuracy (``oof_proba_``) of the all-photos model is
printed beside its test accuracy.

Target: at least the reference (a plain logistic-regression probe on the same
EfficientNet-Lite0 embeddings with flip augmentation and test-time flip, mean of 5 draws).

    .venv/bin/python bench/accuracy.py [--datasets clothing-small car-damage] [--draws 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _data import MODELS_DIR, cached_embeddings, list_split

from tagvision.learn import QuickClassifier

KS = ("5", "10", "20", "50", "all")
REFERENCE = {  # ../shared/datasets/README.md
    "clothing-small": dict(zip(KS, (76.3, 79.7, 83.5, 85.9, 90.1), strict=True)),
    "car-damage": dict(zip(KS, (61.4, 67.3, 73.5, 76.9, 80.4), strict=True)),
}


def draw_indices(labels: np.ndarray, k: int, draw: int) -> np.ndarray:
    """k indices per class (all of a class with fewer), with ``default_rng(draw)``."""
    rng = np.random.default_rng(draw)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=min(k, int((labels == c).sum())), replace=False)
        for c in range(labels.max() + 1)
    ]
    return np.sort(np.concatenate(picks))


def load(dataset: str, split: str, models_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    items, classes = list_split(dataset, split)
    plain, flipped = cached_embeddings(dataset, split, [p for p, _ in items], models_dir=models_dir)
    return plain, flipped, np.array([c for _, c in items]), classes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(REFERENCE), default=list(REFERENCE))
    parser.add_argument("--draws", type=int, default=5, help="random draws per k (seeds 0..draws-1)")
    parser.add_argument("--ks", nargs="+", choices=KS, default=list(KS), help="images per class")
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR, help="ONNX export cache")
    args = parser.parse_args()
    for dataset in args.datasets:  # exit 2 naming a missing folder before any work
        for split in ("train", "test"):
            list_split(dataset, split)

    header = (
        f"{'dataset':<16}{'k':>4}{'draws':>6}{'ours %':>9}{'± sd':>6}{'ref %':>7}{'diff':>7}"
        f"{'shrinkage':>14}{'fit s':>7}"
    )
    table, checks = [], []
    for dataset in args.datasets:
        tr_plain, tr_flipped, tr_y, classes = load(dataset, "train", args.models_dir)
        te_plain, te_flipped, te_y, test_classes = load(dataset, "test", args.models_dir)
        assert classes == test_classes, f"{dataset}: train and test class folders differ"
        onehot = np.eye(len(classes), dtype=bool)
        for k in args.ks:
            draws = [None] if k == "all" else range(args.draws)
            accuracies, shrinkages, seconds = [], [], []
            for draw in draws:
                idx = np.arange(len(tr_y)) if draw is None else draw_indices(tr_y, int(k), draw)
                started = time.perf_counter()
                model = QuickClassifier().fit(tr_plain[idx], tr_flipped[idx], onehot[tr_y[idx]])
                seconds.append(time.perf_counter() - started)
                predicted = model.predict_proba(te_plain, te_flipped).argmax(axis=1)
                accuracies.append(100 * float((predicted == te_y).mean()))
                shrinkages.append(model.shrinkage_)
            if k == "all":
                oof = 100 * float((model.oof_proba_.argmax(axis=1) == tr_y).mean())
                checks.append((dataset, len(tr_y), model.folds_.max() + 1, oof, accuracies[0]))
            mean, ref = float(np.mean(accuracies)), REFERENCE[dataset][k]
            low, high = min(shrinkages), max(shrinkages)
            shrink = f"{low:g}" if low == high else f"{low:g}-{high:g}"
            table.append(
                f"{dataset:<16}{k:>4}{len(accuracies):>6}{mean:>9.1f}{np.std(accuracies):>6.1f}"
                f"{ref:>7.1f}{mean - ref:>+7.1f}{shrink:>14}{np.mean(seconds):>7.2f}"
            )

    print(
        "\nTop-1 accuracy on test/ (QuickClassifier, flip augmentation + test-time flip), "
        "mean over draws; ref = datasets README linear probe\n"
    )
    print(header)
    print("-" * len(header))
    print("\n".join(table))
    if checks:
        print("\nCross-validation check, model on all training images:")
        print(f"{'dataset':<16}{'images':>7}{'folds':>6}{'out-of-fold %':>15}{'test %':>8}{'oof - test':>11}")
        for dataset, n, folds, oof, test in checks:
            print(f"{dataset:<16}{n:>7}{folds:>6}{oof:>15.1f}{test:>8.1f}{oof - test:>+11.1f}")


if __name__ == "__main__":
    main()
