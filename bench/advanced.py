"""Advanced training (fine-tuning within a time budget) against quick training and a textbook fine-tune.

What, per dataset (test top-1 on ``test/``, everything trained on ``train/`` only):

* quick: QuickClassifier on the stock backbone's embeddings of every training photo (EfficientNet-Lite0 for
  the default ``--domain general-compact``, Lite2 for ``general``);
* advanced at each budget: ``tagvision.finetune.fine_tune`` (it holds out its own validation
  split), printed with elapsed / budget (must stay <= 1.10) and what it chose;
* peer: a full fine-tune "written the textbook way", given the largest budget: the whole backbone
  unfrozen (BatchNorm in training mode, the model's own dropout and drop connect), a new linear
  classifier, RandomResizedCrop(224, scale 0.08-1) + horizontal flip, Adam at lr 3e-4,
  cross-entropy, batch 32, as many whole epochs as fit the budget (timed on the first steps) with
  a cosine schedule over them, every training photo, evaluated on the centre crop (no test-time flip).

With ``--domain general``, advanced training may fine-tune Lite0 instead of the project's Lite2 (it does
when two Lite2 schedules of ``Recipe.larger_epochs`` do not fit the budget), as the service lets it.
Test predictions of advanced training go through the server's path: the returned backbone ONNX
(the stock one when fine-tuning was not chosen) with its own preprocessing (``result.spec``) on each test
photo and its mirror with an
:class:`~tagvision.backbone.Embedder`, then ``result.head.predict_proba(plain, flipped)``.

Run on an otherwise idle machine; rows are printed as they come.

    .venv/bin/python bench/advanced.py [--datasets car-damage clothing-small] [--budgets 2 5 10] [--no-peer]
                                       [--seeds 0 1 2] [--domain general]
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _data import MODELS_DIR, cached_embeddings, list_split

from tagvision import backbone, finetune, images
from tagvision.learn import QuickClassifier

DEFAULT_BUDGETS = {"car-damage": (2.0, 5.0, 10.0), "clothing-small": (5.0,)}  # minutes


def log(message: str) -> None:
    print(message, flush=True)


def stamp() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S")


def quick(dataset: str, train, test, classes: list[str], domain: str) -> float:
    tr_plain, tr_flipped = cached_embeddings(dataset, "train", [p for p, _ in train], domain, MODELS_DIR)
    te_plain, te_flipped = cached_embeddings(dataset, "test", [p for p, _ in test], domain, MODELS_DIR)
    y = np.array([c for _, c in train])
    model = QuickClassifier().fit(tr_plain, tr_flipped, np.eye(len(classes), dtype=bool)[y])
    predicted = model.predict_proba(te_plain, te_flipped).argmax(axis=1)
    return 100 * float((predicted == np.array([c for _, c in test])).mean())


def served_accuracy(result: finetune.FineTuneResult, test) -> float:
    """Test top-1 through the server's path: ONNX on image + mirror, then the head."""
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = None
        if result.backbone_onnx is not None:
            onnx_file = Path(tmp) / "tuned.onnx"
            onnx_file.write_bytes(result.backbone_onnx)
        embedder = backbone.Embedder(result.spec, MODELS_DIR, onnx_file=onnx_file)
        results = list(embedder.embed([p.read_bytes for p, _ in test]))  # in order; 2560-d for two networks
        for r in results:
            if r.error is not None:
                raise RuntimeError(f"{test[r.index][0]}: {r.error.message}")
        plain, flipped = np.stack([r.plain for r in results]), np.stack([r.flipped for r in results])
    predicted = result.head.predict_proba(plain, flipped).argmax(axis=1)
    return 100 * float((predicted == np.array([c for _, c in test])).mean())


def advanced(
    spec: backbone.BackboneSpec, train, classes: list[str], budget: float, seed: int = 0
) -> tuple[finetune.FineTuneResult, float]:
    y = np.array([c for _, c in train])
    last = [0.0]

    def progress(stage: str, done: int, total: int, eta: float) -> None:
        now = time.perf_counter()
        if now - last[0] > 60:
            last[0] = now
            print(f"    {stamp()} {stage} {done}/{total}, about {eta:.0f} s left", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = finetune.fine_tune(
        spec,
        MODELS_DIR,
        [p.read_bytes for p, _ in train],
        np.eye(len(classes), dtype=bool)[y],
        multilabel=False,
        budget_seconds=budget,
        progress=progress,
        seed=seed,
        backbones=backbone.no_larger_than(spec),
    )
    return result, time.perf_counter() - started


# --------------------------------------------------------------------------- the peer


def peer(
    spec: backbone.BackboneSpec, train, test, classes: list[str], budget: float, seed: int = 0
) -> tuple[float, dict]:
    """A plain full fine-tune as a practitioner writes it; returns test top-1 and what it did."""
    import torch

    from tagvision.finetune import Recipe
    from tagvision.finetune.data import random_view

    started = time.perf_counter()
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(seed)
    decoded = [images.open_rgb(p.read_bytes(), min_side=spec.resize) for p, _ in train]
    small = []
    for img in decoded:  # shorter side to 256, as torchvision's Resize(256) would
        scale = spec.resize / min(img.size)
        small.append(img.resize((round(img.width * scale), round(img.height * scale)), 3))
    y = torch.tensor([c for _, c in train])
    augment = Recipe(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), jitter=0.0)
    model = backbone.build_torch_model(spec)
    model._fc = torch.nn.Linear(model._fc.in_features, len(classes))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    batch, n = 32, len(train)
    steps_per_epoch = math.ceil(n / batch)

    def step(idx: np.ndarray) -> None:
        x = torch.from_numpy(np.stack([random_view(small[i], spec, rng, augment) for i in idx]))
        loss = torch.nn.functional.cross_entropy(model(x), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()

    # Time a few steps, then fix the number of epochs that fit (the textbook plans epochs up front).
    # The first step pays for setting up the kernels (2-3x a later one): it is not timed.
    order = rng.permutation(n)
    probe = 5
    step(order[:batch])
    t0 = time.perf_counter()
    for s in range(1, probe):
        step(order[s * batch : (s + 1) * batch])
    per_step = (time.perf_counter() - t0) / (probe - 1)
    left = budget - (time.perf_counter() - started) - 0.02 * budget - len(test) / 30  # leave time for testing
    epochs = max(1, int(left / (per_step * steps_per_epoch)))
    total_steps = epochs * steps_per_epoch
    done = probe
    for epoch in range(epochs):
        order = rng.permutation(n)
        first = probe if epoch == 0 else 0
        for s in range(first, steps_per_epoch):
            for group in opt.param_groups:  # cosine annealing over the planned steps
                group["lr"] = 3e-4 * 0.5 * (1 + math.cos(math.pi * done / total_steps))
            step(order[s * batch : (s + 1) * batch])
            done += 1
    trained = time.perf_counter() - started
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(test), 64):
            chunk = test[s : s + 64]
            x = torch.from_numpy(np.stack([backbone.preprocess_bytes(p.read_bytes(), spec) for p, _ in chunk]))
            correct += int((model(x).argmax(1).numpy() == np.array([c for _, c in chunk])).sum())
    return 100 * correct / len(test), {
        "epochs": epochs,
        "steps": done,
        "seconds_per_step": round(per_step, 3),
        "train_seconds": round(trained, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(DEFAULT_BUDGETS), default=list(DEFAULT_BUDGETS))
    parser.add_argument(
        "--budgets",
        nargs="+",
        type=float,
        help="minutes, for every dataset (default: 2 5 10 for car-damage, 5 for clothing-small)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the textbook fine-tune")
    parser.add_argument(
        "--busy", action="store_true", help="run beside two CPU-bound processes (a machine shared with other work)"
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="advanced training once per seed "
        "(its validation split, shuffling and crops); test top-1 varies by about a point",
    )
    parser.add_argument(
        "--domain",
        choices=sorted(backbone.BACKBONES),
        default="general-compact",
        help="the project's backbone: general-compact (Lite0) or general (Lite2, which may fine-tune Lite0 instead)",
    )
    args = parser.parse_args()
    spec = backbone.BACKBONES[args.domain]
    burners = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(2 if args.busy else 0)]
    try:
        run(args, spec)
    finally:
        for burner in burners:
            burner.kill()


def run(args: argparse.Namespace, spec: backbone.BackboneSpec) -> None:
    for dataset in args.datasets:  # exit 2 naming a missing folder before any work
        for split in ("train", "test"):
            list_split(dataset, split)

    log(
        f"{stamp()} bench/advanced.py on {os.cpu_count()} cores{' beside 2 CPU-bound processes' if args.busy else ''}; "
        f"domain {args.domain} ({spec.model_name}); test top-1 %"
    )
    header = (
        f"{'dataset':<16}{'method':<22}{'budget':>8}{'test %':>8}{'vs quick':>9}{'elapsed/budget':>16}  chosen / notes"
    )
    rows = []
    for dataset in args.datasets:
        train, classes = list_split(dataset, "train")
        test, test_classes = list_split(dataset, "test")
        assert classes == test_classes
        budgets = args.budgets or DEFAULT_BUDGETS[dataset]
        log(f"\n{stamp()} {dataset}: {len(train)} train, {len(test)} test, {len(classes)} classes")
        log(header)
        base = quick(dataset, train, test, classes, args.domain)
        rows.append(f"{dataset:<16}{'quick (all train)':<22}{'-':>8}{base:>8.1f}{'':>9}{'':>16}  shrinkage LDA")
        log(rows[-1])
        for minutes, seed in [(m, s) for m in budgets for s in args.seeds]:
            result, elapsed = advanced(spec, train, classes, minutes * 60, seed)
            accuracy = served_accuracy(result, test)
            d = result.report.to_json()
            scores = ", ".join(f"{c['name']}={100 * c['validation']['primary']:.1f}" for c in d["candidates"])
            tuning = d.get("fineTuning", {})
            notes = f"{d['chosen']}; validation ({d['split']['validation']} images) {scores}"
            if "fineTunedBackbone" in d:
                notes += f"; fine-tuned {d['fineTunedBackbone']}"
            if "epochs" in tuning:
                notes += (
                    f"; {tuning['epochs']} epochs ({tuning['precision']}, {tuning['secondsPerStep']} s/step, "
                    f"stopped: {tuning['stopped']}, best at step {tuning['bestStep']} of {tuning['steps']})"
                )
                if tuning.get("refit"):
                    notes += f"; refit on every image: {tuning['refit']['epochs']} epochs; served: {tuning['served']}"
            if "choice" in d:
                notes += (
                    f"; quick's lead {100 * d['choice']['quickLead']:+.1f} vs one standard error "
                    f"{100 * d['choice']['standardError']:.1f}"
                )
            method = "advanced" if args.seeds == [0] else f"advanced (seed {seed})"
            rows.append(
                f"{dataset:<16}{method:<22}{f'{minutes:g} min':>8}{accuracy:>8.1f}{accuracy - base:>+9.1f}"
                f"{f'{elapsed:.0f}/{minutes * 60:.0f} = {elapsed / (minutes * 60):.3f}':>16}  {notes}"
            )
            log(f"{rows[-1]}   [{stamp()}]")
        if not args.no_peer:
            minutes = max(budgets)
            accuracy, info = peer(spec, train, test, classes, minutes * 60)
            spent = f"{info['total_seconds']:.0f}/{minutes * 60:.0f}"
            rows.append(
                f"{dataset:<16}{'peer (textbook FT)':<22}{f'{minutes:g} min':>8}{accuracy:>8.1f}"
                f"{accuracy - base:>+9.1f}{spent:>16}  "
                f"{info['epochs']} epochs, {info['steps']} steps, {info['seconds_per_step']} s/step"
            )
            log(f"{rows[-1]}   [{stamp()}]")
    log(f"\n{stamp()} summary\n{header}\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
