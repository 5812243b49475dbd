"""Exported models: float32 ONNX against its int8 quantisation, on real test photos.

What: a quick-trained classifier on every ``train/`` photo of a dataset (embeddings cached by
bench/_data.py), exported as one ONNX file (``tagvision.export``) and quantised to int8
twice, calibrated on 64 training photos: *before* with the recipe issue 18 replaced
(``export.LEGACY_INT8``: every layer int8) and *after* with today's (``export.Int8Recipe()``,
or the one ``--method`` / ``--float-blocks`` / ``--float-stem`` describe). All run on every
``test/`` photo: top-1 accuracy, top-1 agreement with float32, largest probability gap, file
size, and latency (batch of 1, p50) and throughput (batches of 16) with all cores, the best of
three rounds that take the three models in turn; the float32 model is the baseline of each
ratio, measured in the same run.

Run: ``python bench/export.py [--datasets clothing-small car-damage] [--float-blocks 3]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from _data import MODELS_DIR, cached_embeddings, list_split

from tagvision import backbone, export
from tagvision.learn import QuickClassifier

SPEC = backbone.BACKBONES["general-compact"]


def session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def probabilities(model: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return np.concatenate([model.run(None, {"data": x[i : i + 16]})[0] for i in range(0, len(x), 16)])


def timings(models: list[ort.InferenceSession], x: np.ndarray, rounds: int = 3) -> list[tuple[float, float]]:
    """(p50 ms at batch 1, images/s at batch 16) per model, the best of ``rounds`` rounds that take the models in
    turn, so a machine whose load drifts during the run slows them all alike."""
    best = [(float("inf"), 0.0) for _ in models]
    for model in models:
        model.run(None, {"data": x[:1]})
    for _ in range(rounds):
        for k, model in enumerate(models):
            single = []
            for row in x[:30]:
                started = time.perf_counter()
                model.run(None, {"data": row[None]})
                single.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            for i in range(0, 160, 16):
                model.run(None, {"data": x[i : i + 16]})
            rate = min(160, len(x)) / (time.perf_counter() - started)
            best[k] = (min(best[k][0], float(np.percentile(single, 50))), max(best[k][1], rate))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["clothing-small", "car-damage"])
    default = export.Int8Recipe()
    parser.add_argument("--method", default=default.method, choices=["MinMax", "Entropy", "Percentile"])
    parser.add_argument("--float-blocks", type=int, default=default.float_blocks)
    parser.add_argument("--float-stem", type=int, choices=[0, 1], default=int(default.float_stem))
    args = parser.parse_args()
    after = export.Int8Recipe(method=args.method, float_blocks=args.float_blocks, float_stem=bool(args.float_stem))
    recipes = {"before": export.LEGACY_INT8, "after": after}
    for dataset in args.datasets:
        train, classes = list_split(dataset, "train")
        test, _ = list_split(dataset, "test")
        plain, flipped = cached_embeddings(dataset, "train", [p for p, _ in train])
        labels = np.eye(len(classes), dtype=bool)[[c for _, c in train]]
        head = QuickClassifier(multilabel=False).fit(plain, flipped, labels).head_
        fp32 = export.build_classifier_onnx(SPEC, MODELS_DIR, head, classes)
        rng = np.random.default_rng(0)
        calibration = np.stack(
            [
                backbone.preprocess_bytes(train[i][0].read_bytes(), SPEC)
                for i in rng.choice(len(train), 64, replace=False)
            ]
        )
        x = np.stack([backbone.preprocess_bytes(p.read_bytes(), SPEC) for p, _ in test])
        y = np.array([c for _, c in test])
        quantised = {}
        for when, recipe in recipes.items():
            started = time.perf_counter()
            quantised[when] = (export.quantize_int8(fp32, calibration, recipe), time.perf_counter() - started)
        sessions = [session(fp32)] + [session(model) for model, _ in quantised.values()]
        (ms32, rate32), *int8_timings = timings(sessions, x)
        p32 = probabilities(sessions[0], x)
        print(f"\n{dataset}: {len(train)} train / {len(test)} test photos, {len(classes)} tags")
        print(
            f"  float32     top-1 {(p32.argmax(1) == y).mean():6.1%}   {len(fp32) / 1e6:5.1f} MB   "
            f"batch-1 p50 {ms32:5.1f} ms   {rate32:6.1f} images/s"
        )
        rows = zip(quantised.items(), sessions[1:], int8_timings, strict=True)
        for (when, (int8, seconds)), model, (ms8, rate8) in rows:
            p8 = probabilities(model, x)
            print(
                f"  int8 {when:<6} top-1 {(p8.argmax(1) == y).mean():6.1%}   {len(int8) / 1e6:5.1f} MB   "
                f"batch-1 p50 {ms8:5.1f} ms   {rate8:6.1f} images/s   ({recipes[when].describe()}; quantised in "
                f"{seconds:.0f} s)"
            )
            print(
                f"    {when} vs float32: top-1 agreement {(p8.argmax(1) == p32.argmax(1)).mean():.1%}, largest "
                f"probability gap {np.abs(p8 - p32).max():.3f}, size {len(int8) / len(fp32):.2f}x, "
                f"latency {ms32 / ms8:.2f}x faster, throughput {rate8 / rate32:.2f}x"
            )


if __name__ == "__main__":
    main()
