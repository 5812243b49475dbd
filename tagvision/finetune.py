"""Advanced training: fine-tune the backbone within a time budget, on CPU.

The recipe, measured on the datasets of ``bench/advanced.py`` on a 2-core machine:

1. Decode every image once; hold out a stratified validation split (``validation_fraction``).
2. *Quick candidate*: the stock backbone's embeddings (image + mirror, ONNX Runtime) and a
   :class:`~tagvision.learn.QuickClassifier` fitted on the training part, scored on the
   validation part. Its head is also the warm start of the classifier below (linear probe,
   then fine-tune: the pretrained features are not wrecked by a random head's gradients).
3. *Frozen prefix, cached views*: the stem and the early stages stay frozen. Each training
   image is cut into several augmented views (random resized crop, horizontal flip, mild
   colour jitter), run once through the frozen prefix (ONNX Runtime, forward only), and the
   activations are kept in memory (float16). The centre crop of every image and its mirror
   are cached the same way, for validation and for the final embeddings.
4. *Train the tail*: the last stages, the head convolution and a linear classifier on the
   power-normalised pooled features (exactly :class:`~tagvision.learn.LinearHead`'s
   features), with AdamW, label smoothing, BatchNorm statistics frozen (small batches) and a
   warm-up + cosine learning rate driven by the *clock*, so the schedule ends when the time
   given to training ends whatever the speed of the machine turns out to be. The validation
   split is scored several times; the best state is kept (early stopping).
5. *Choose*: with the best tail, embed the training and validation images; candidates are
   the trained linear head and an LDA head refitted on the fine-tuned embeddings. The one with
   the best validation score wins against the quick candidate; when neither beats it, the quick
   head is returned with ``backbone_onnx = None``.
6. Export the fine-tuned pooled-feature network to ONNX (same input and output as the stock
   backbone's), so the server's prediction path (embed image + mirror, then the head) serves it.

The wall clock is checked at every step; the final embedding, head fit and export have a
reserve measured before training starts. Torch runs on ``threads`` cores (all by default).

Shapes: ``n`` images, ``T`` tags, ``d`` = 1280 embedding dimensions.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tagvision import backbone, images, learn, metrics
from tagvision.errors import ImageError, TrainingError

Progress = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of the fine-tuning (defaults chosen on validation, see ``bench/advanced.py``)."""

    tuned_stages: int = 3  # trainable MBConv stages counted from the end (Lite has 7), plus the head conv
    views: int = 24  # most augmented views cached per training image (fewer when time or memory is short)
    view_reuse: float = 2.0  # epochs per cached view: views = planned epochs / this
    min_views: int = 6
    max_epochs: float = 15.0  # training ends after this many epochs even with time left
    max_view_seconds_fraction: float = 0.2  # at most this share of the time left goes to making views
    view_memory_bytes: int = 1_500_000_000
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.2  # brightness, contrast, saturation: factors in 1 +- jitter
    batch_size: int = 32
    lr_backbone: float = 3e-4
    lr_head: float = 1e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    dropout: float = 0.2
    drop_connect: float = 0.1
    mixup: float = 0.0  # Beta(a, a) mixing of views; 0 turns it off
    ema: float = 0.0  # decay of an exponential moving average of the trained weights, scored and kept; 0: off
    warmup_fraction: float = 0.05
    evaluations: int = 12  # validation scores during training
    patience_fraction: float = 0.4  # stop when the best score is older than this share of training time
    min_training_seconds: float = 8.0
    min_epochs: float = 1.0
    force_fine_tuned: bool = False  # choose among the fine-tuned candidates even when the quick head scores better


@dataclass(frozen=True)
class FineTuneResult:
    """What advanced training produces.

    - ``backbone_onnx``: the fine-tuned pooled-feature network, with the stock backbone ONNX's
      contract (input ``image`` NCHW float32 as :func:`backbone.preprocess`, output (n, 1280)),
      or ``None`` when fine-tuning did not beat the quick head (or there was no time for it);
    - ``head``: a :class:`~tagvision.learn.LinearHead` on that network's embeddings (the stock
      one's when ``backbone_onnx`` is None), with test-time flip;
    - ``evaluation``: (probabilities (m, T), labels (m, T) bool, row indices into the input) of
      the held-out validation images the choice was made on (the head never saw them);
    - ``details``: JSON-able account of what was tried, measured and chosen.
    """

    backbone_onnx: bytes | None
    head: learn.LinearHead
    evaluation: tuple[np.ndarray, np.ndarray, np.ndarray]
    details: dict = field(default_factory=dict)


def fine_tune(spec: backbone.BackboneSpec, models_dir: Path, images: Sequence[Callable[[], bytes]],
              labels: np.ndarray, *, multilabel: bool, budget_seconds: float, progress: Progress | None = None,
              seed: int = 0, validation_fraction: float = 0.2, threads: int | None = None,
              recipe: Recipe | None = None) -> FineTuneResult:
    """Fine-tune ``spec``'s backbone on ``images`` (callables returning encoded bytes), ``labels`` (n, T) bool.

    Never runs more than ``budget_seconds`` (plus a few per cent of scheduling slack), decoding
    and export included. ``models_dir`` holds the stock backbone ONNX (exported on first use).
    """
    started = time.perf_counter()
    job = _Job(spec, models_dir, list(images), np.asarray(labels, dtype=bool), multilabel, budget_seconds,
               progress, seed, validation_fraction, threads or os.cpu_count() or 1, recipe or Recipe(), started)
    return job.run()


# --------------------------------------------------------------------------- the job


class _OutOfTime(Exception):
    pass


class _Job:
    """One fine-tuning run; the state shared by its stages."""

    def __init__(self, spec: backbone.BackboneSpec, models_dir: Path, sources: list[Callable[[], bytes]],
                 labels: np.ndarray, multilabel: bool, budget: float, progress: Progress | None, seed: int,
                 validation_fraction: float, threads: int, recipe: Recipe, started: float) -> None:
        if labels.ndim != 2 or len(labels) != len(sources) or labels.shape[1] < 2:
            raise ValueError(f"labels {labels.shape} do not match {len(sources)} images with at least two tags")
        if not 0 < validation_fraction < 1:
            raise ValueError("validation_fraction must be between 0 and 1")
        self.spec, self.models_dir, self.sources, self.labels = spec, models_dir, sources, labels
        self.multilabel, self.budget, self.seed, self.threads, self.recipe = multilabel, budget, seed, threads, recipe
        self.validation_fraction = validation_fraction
        self.started = started
        self.deadline = started + budget * 0.97  # everything done by then; 3 % of slack for the unforeseen
        self._progress, self._last_eta = progress, math.inf
        self.rng = np.random.default_rng(seed)
        self.seconds: dict[str, float] = {}
        self.details: dict = {"backbone": spec.model_name, "budgetSeconds": round(budget, 3), "threads": threads}

    # -- helpers

    def now(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def report(self, stage: str, done: int, total: int, eta: float | None = None) -> None:
        if self._progress is None:
            return
        eta = max(0.0, self.left() if eta is None else eta)
        self._last_eta = min(self._last_eta, eta)  # never goes up: a user reads it as a countdown
        self._progress(stage, done, total, round(self._last_eta, 2))

    def timed(self, name: str, since: float) -> float:
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - since, 3)
        return time.perf_counter()

    # -- stages

    def run(self) -> FineTuneResult:
        t = time.perf_counter()
        self.decoded, self.centre = self.decode()
        t = self.timed("decoding", t)
        self.split()
        quick = self.quick_candidate()
        t = self.timed("quick", t)
        candidates = [quick]
        try:
            candidates += self.fine_tuning()
        except _OutOfTime as exc:
            self.details["fineTuning"] = {**self.details.get("fineTuning", {}), "skipped": str(exc)}
        best = max(candidates, key=lambda c: c.score)
        if self.recipe.force_fine_tuned and len(candidates) > 1:
            best = max(candidates[1:], key=lambda c: c.score)
        self.details["candidates"] = [{"name": c.name, "validation": c.scores} for c in candidates]
        self.details["chosen"] = best.name
        onnx_bytes = None
        if best.name != "quick":
            t = time.perf_counter()
            self.report("exporting", 0, 1)
            onnx_bytes = self.export()
            self.timed("export", t)
        self.report("exporting", 1, 1, 0.0)
        self.seconds["total"] = round(self.now(), 3)
        self.details["seconds"] = self.seconds
        self.details["metricsFrom"] = (
            f"held-out validation split: {len(self.val)} of {len(self.labels)} training images "
            f"(stratified, {self.validation_fraction:.0%}); the head and the backbone were not fitted on them, "
            "but the candidate and the early-stopping point were chosen on them (not cross-validation)")
        evaluation = (best.val_proba, self.labels[self.val].copy(), self.val.copy())
        return FineTuneResult(onnx_bytes, best.head, evaluation, _jsonable(self.details))

    def decode(self) -> tuple[list[Image.Image], np.ndarray]:
        """Every image: a copy no larger than needed for crops, and its centre crop as the server sees it
        (:func:`backbone.preprocess`), stored as the uint8 pixels it is made of: (n, 3, S, S)."""
        n = len(self.sources)
        spec = self.spec
        self.report("decoding", 0, n)

        def one(i: int) -> tuple[Image.Image, np.ndarray]:
            try:
                img = images.open_rgb(self.sources[i](), min_side=spec.resize)
            except (ImageError, OSError) as exc:
                message = exc.message if isinstance(exc, ImageError) else str(exc)
                raise TrainingError(f"Training image {i} can no longer be decoded: {message}") from exc
            centre = np.round(backbone.preprocess(img, spec) * 128 + 127).astype(np.uint8)  # exact
            scale = spec.resize / min(img.size)
            if scale < 1:  # keep a copy just large enough for random crops
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                                 Image.Resampling.BICUBIC)
            return img, centre

        decoded: list[Image.Image] = []
        centre = np.zeros((n, 3, spec.image_size, spec.image_size), np.uint8)
        with ThreadPoolExecutor(max(1, self.threads)) as pool:
            for i, (img, arr) in enumerate(pool.map(one, range(n))):
                decoded.append(img)
                centre[i] = arr
                if (i + 1) % 64 == 0:
                    self.report("decoding", i + 1, n)
        self.report("decoding", n, n)
        return decoded, centre

    def split(self) -> None:
        k = max(2, round(1 / self.validation_fraction))
        folds = metrics.stratified_folds(self.labels, k_max=k, seed=self.seed)
        self.val = np.flatnonzero(folds == 0)
        self.train = np.flatnonzero(folds != 0)
        self.details["split"] = {"train": len(self.train), "validation": len(self.val), "folds": int(folds.max()) + 1}

    def quick_candidate(self) -> _Candidate:
        n = len(self.labels)
        self.report("embedding", 0, n)
        embedder = backbone.Embedder(self.spec, self.models_dir, threads=self.threads)
        plain, flipped = [], []
        started = time.perf_counter()
        for s in range(0, n, embedder.batch_size):
            p, f = embedder.forward_pairs(_scaled(self.centre[s:s + embedder.batch_size]))
            plain.append(p)
            flipped.append(f)
            self.report("embedding", min(n, s + embedder.batch_size), n)
        self.stock_plain, self.stock_flipped = np.concatenate(plain), np.concatenate(flipped)
        self.ort_images_per_second = n / max(time.perf_counter() - started, 1e-6)
        self.details["stockImagesPerSecond"] = round(self.ort_images_per_second, 1)
        self.report("fitting head", 0, 1)
        started = time.perf_counter()
        quick = _fit_lda(self.stock_plain[self.train], self.stock_flipped[self.train], self.labels[self.train],
                         self.multilabel, self.seed)
        self.lda_seconds = time.perf_counter() - started
        self.quick_head = quick.head_
        return self.candidate("quick", quick.head_, self.stock_plain[self.val], self.stock_flipped[self.val])

    def candidate(self, name: str, head: learn.LinearHead, plain: np.ndarray, flipped: np.ndarray) -> _Candidate:
        proba = head.predict_proba(plain, flipped)
        return _Candidate(name, head, proba, _scores(proba, self.labels[self.val], self.multilabel))

    # -- fine-tuning

    def fine_tuning(self) -> list[_Candidate]:
        """The fine-tuned candidates; raises :class:`_OutOfTime` when there is no time for them."""
        recipe = self.recipe
        n, n_train = len(self.labels), len(self.train)
        guess_train_rate = self.ort_images_per_second * 0.25  # torch forward + backward of the tail
        need = (2 * n / (self.ort_images_per_second * 1.6) + 2.5  # prefix activations, torch import, model build
                + max(recipe.min_training_seconds, recipe.min_epochs * n_train / guess_train_rate)
                + self.reserve(guess_train_rate * 3))
        if self.left() < need:
            raise _OutOfTime(f"{self.left():.1f} s left, about {need:.1f} s needed to fine-tune")
        import torch

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._fine_tuning()
        finally:
            torch.set_num_threads(previous_threads)

    def _fine_tuning(self) -> list[_Candidate]:
        import torch

        recipe = self.recipe
        n, n_train = len(self.labels), len(self.train)
        t = time.perf_counter()
        self.report("preparing", 0, 1)
        torch.manual_seed(self.seed)
        model = backbone.build_torch_model(self.spec)
        split = _split_block(model, recipe.tuned_stages)
        prefix_session = self.prefix_session(model, split)
        self.model = model
        t = self.timed("prepare", t)

        # Centre crops (+ mirrors) of every image through the frozen prefix.
        centre_act = self.prefix_run(prefix_session, self.centre, False, "frozen layers (images)")
        mirror_act = self.prefix_run(prefix_session, self.centre, True, "frozen layers (mirrors)")
        prefix_rate = 2 * n / max(time.perf_counter() - t, 1e-6)
        t = self.timed("prefix", t)

        # Tail speed, measured: one training step and one forward.
        tail = _Tail(model, split, self.quick_head, recipe)
        step_seconds, forward_seconds = tail.measure(centre_act[:recipe.batch_size], self.labels[:recipe.batch_size])
        per_image_forward = forward_seconds / min(recipe.batch_size, n)
        reserve = self.reserve(1 / per_image_forward)
        t = self.timed("measure", t)

        # Plan: the epochs that fit (at most ``max_epochs``), and enough cached views that each is seen
        # about ``view_reuse`` times, within a share of the time left and within memory.
        view_bytes = centre_act[0].size * 2  # float16
        left_for_work = self.left() - reserve
        train_rate = recipe.batch_size / step_seconds * 0.9  # images per second, scoring included
        fit_epochs = left_for_work * train_rate / max(n_train, 1)
        planned_epochs = min(recipe.max_epochs, fit_epochs)
        views_by_time = int(left_for_work * recipe.max_view_seconds_fraction * prefix_rate / max(n_train, 1))
        views_by_memory = int(recipe.view_memory_bytes / max(view_bytes * n_train, 1))
        views = max(1, min(recipe.views, max(recipe.min_views, math.ceil(planned_epochs / recipe.view_reuse)),
                           views_by_time, views_by_memory))
        view_act = self.make_views(prefix_session, views, centre_act.shape[1:])
        t = self.timed("views", t)

        train_end = time.perf_counter() + self.left() - reserve  # or sooner, after max_epochs
        if train_end - time.perf_counter() < recipe.min_training_seconds:
            raise _OutOfTime("no time left to train after caching the views")
        self.details["fineTuning"] = {
            "recipe": asdict(recipe), "splitBlock": split, "blocks": len(model._blocks), "views": views,
            "plannedEpochs": round(planned_epochs, 2),
            "viewSource": "random resized crop + flip + colour jitter, cached after the frozen prefix",
            "prefixImagesPerSecond": round(prefix_rate, 1), "secondsPerStep": round(step_seconds, 4),
            "reserveSeconds": round(reserve, 2), "trainingSeconds": round(train_end - time.perf_counter(), 2),
        }
        log = tail.train(view_act, centre_act, mirror_act, self, train_end)
        self.details["fineTuning"].update(log)
        t = self.timed("training", t)

        # Embeddings of every image through the best tail; two head candidates.
        self.report("fitting head", 0, 2)
        plain, flipped = tail.embed(centre_act), tail.embed(mirror_act)
        t = self.timed("final embedding", t)
        linear = tail.linear_head()
        candidates = [self.candidate("fine-tuned + trained linear head", linear, plain[self.val], flipped[self.val])]
        self.report("fitting head", 1, 2)
        if self.left() > self.lda_seconds * 1.5 + self.export_seconds_guess():
            lda = _fit_lda(plain[self.train], flipped[self.train], self.labels[self.train], self.multilabel, self.seed)
            candidates.append(self.candidate("fine-tuned + LDA head", lda.head_, plain[self.val], flipped[self.val]))
        self.report("fitting head", 2, 2)
        self.timed("final heads", t)
        return candidates

    def reserve(self, forward_images_per_second: float) -> float:
        """Seconds needed after training: tail forward of every image twice, two head fits, export."""
        n = len(self.labels)
        return (2 * n / forward_images_per_second + 2.5 * self.lda_seconds + self.export_seconds_guess()) * 1.3 + 0.5

    def export_seconds_guess(self) -> float:
        return 0.5 + 150 / self.ort_images_per_second  # ~1.5 s for Lite0 on 2 cores, torch's tracing included

    def prefix_session(self, model, split: int):
        import torch

        class Prefix(torch.nn.Module):
            def __init__(self, net: torch.nn.Module) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return _prefix(self.net, x, split)

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "prefix.onnx"
            backbone.export_onnx(Prefix(model).eval(), path, self.spec.image_size, output_name="activation")
            return backbone._session(path, self.threads)

    def prefix_run(self, session, batch: np.ndarray, mirror: bool, stage: str) -> np.ndarray:
        """Activations (n, C, H, W) float32 after the frozen prefix of uint8 crops ``batch`` (mirrored)."""
        out = []
        for s in range(0, len(batch), 32):
            if self.left() < 0:
                raise _OutOfTime("ran out of time computing activations")
            x = _scaled(batch[s:s + 32])
            out.append(session.run(None, {"image": np.ascontiguousarray(x[..., ::-1] if mirror else x)})[0])
            self.report(stage, min(len(batch), s + 32), len(batch))
        return np.concatenate(out)

    def make_views(self, session, views: int, shape: tuple[int, ...]) -> np.ndarray:
        """(views, n_train, *shape) float16 activations of random augmented crops of the training images."""
        recipe, spec = self.recipe, self.spec
        out = np.zeros((views, len(self.train), *shape), np.float16)
        seeds = self.rng.integers(0, 2**63 - 1, size=(views, len(self.train)))
        jobs = [(v, j) for v in range(views) for j in range(len(self.train))]
        total = len(jobs)

        def one(job: tuple[int, int]) -> np.ndarray:
            v, j = job
            return _random_view(self.decoded[self.train[j]], spec, np.random.default_rng(seeds[v, j]), recipe)

        done = 0
        with ThreadPoolExecutor(max(1, self.threads)) as pool:
            for s in range(0, total, 32):
                if self.left() < 0:
                    raise _OutOfTime("ran out of time making augmented views")
                chunk = jobs[s:s + 32]
                batch = np.stack(list(pool.map(one, chunk)))
                act = session.run(None, {"image": batch})[0].astype(np.float16)
                for (v, j), a in zip(chunk, act, strict=True):
                    out[v, j] = a
                done += len(chunk)
                self.report("augmenting", done, total)
        return out

    def export(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "backbone.onnx"
            backbone.export_onnx(backbone.pooled_features_module(self.model.eval()), path, self.spec.image_size)
            return path.read_bytes()


def _fit_lda(plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray, multilabel: bool,
             seed: int) -> learn.QuickClassifier:
    """:class:`learn.QuickClassifier` with one BLAS thread: its cost is a few 1280 x 1280 eigendecompositions,
    which take ~1.7 s on one thread but anything from 1 s to 20 s on two when other work shares the cores."""
    model = learn.QuickClassifier(multilabel=multilabel, seed=seed)
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return model.fit(plain, flipped, labels)
    with threadpool_limits(limits=1, user_api="blas"):
        return model.fit(plain, flipped, labels)


@dataclass
class _Candidate:
    name: str
    head: learn.LinearHead
    val_proba: np.ndarray
    scores: dict

    @property
    def score(self) -> tuple[float, float]:
        """Primary figure first (accuracy or mean AP), then minus the log loss; higher is better."""
        return self.scores["primary"], -self.scores["logLoss"]


def _scores(proba: np.ndarray, labels: np.ndarray, multilabel: bool) -> dict:
    eps = 1e-7
    if multilabel:
        ap = metrics._average_precision(proba, labels)
        primary = float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0
        p = np.clip(proba, eps, 1 - eps)
        loss = float(-(labels * np.log(p) + (~labels) * np.log(1 - p)).mean())
        return {"primary": round(primary, 6), "metric": "mean average precision", "logLoss": round(loss, 6)}
    target = labels.argmax(axis=1)
    accuracy = float((proba.argmax(axis=1) == target).mean())
    loss = float(-np.log(np.clip(proba[np.arange(len(target)), target], eps, 1)).mean())
    return {"primary": round(accuracy, 6), "metric": "top-1 accuracy", "logLoss": round(loss, 6)}


# --------------------------------------------------------------------------- network pieces


def _split_block(model, tuned_stages: int) -> int:
    """Index of the first block of the last ``tuned_stages`` stages (a stage: blocks with one output width)."""
    starts = [0] + [i for i in range(1, len(model._blocks))
                    if model._blocks[i]._block_args.output_filters != model._blocks[i - 1]._block_args.output_filters]
    return starts[max(0, len(starts) - tuned_stages)] if tuned_stages > 0 else len(model._blocks)


def _prefix(net, x, split: int):
    x = net._swish(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:split]:
        x = block(x)
    return x


def _tail_features(net, x, split: int, drop_connect: float):
    """Blocks ``split..`` and the head conv, average-pooled: (n, 1280). Drop connect only in training mode."""
    count = len(net._blocks)
    for idx in range(split, count):
        x = net._blocks[idx](x, drop_connect_rate=drop_connect * idx / count if drop_connect else None)
    return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))


def torch_embed(model, batch):  # -> torch.Tensor
    """Pooled features of a preprocessed NCHW batch by a torch network (reference for the exported ONNX)."""
    return _tail_features(model, _prefix(model, batch, 0), 0, 0.0)


def _power(x):
    import torch

    return torch.clamp(x, min=1e-6) ** learn.POWER


class _Tail:
    """The trainable end of the network plus a linear classifier on :func:`learn.features` of its output."""

    def __init__(self, model, split: int, head: learn.LinearHead, recipe: Recipe) -> None:
        import torch

        self.model, self.split, self.recipe = model, split, recipe
        for p in model.parameters():
            p.requires_grad_(False)
        self.modules = [*model._blocks[split:], model._conv_head, model._bn1]
        self.params = [p for m in self.modules for p in m.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.linear = torch.nn.Linear(head.weights.shape[0], head.weights.shape[1])
        with torch.no_grad():  # warm start: the quick head on stock features (linear probe, then fine-tune)
            self.linear.weight.copy_(torch.from_numpy(head.weights.T.copy()))
            self.linear.bias.copy_(torch.from_numpy(head.bias.astype(np.float32)))
        self.multilabel = head.multilabel

    def train_mode(self, on: bool) -> None:
        import torch

        self.model.train(on)
        for m in self.model.modules():  # BatchNorm statistics stay frozen: batches are small
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()

    def logits(self, act, training: bool):
        import torch

        x = _tail_features(self.model, act, self.split, self.recipe.drop_connect if training else 0.0)
        f = _power(x)
        if training and self.recipe.dropout:
            f = torch.nn.functional.dropout(f, self.recipe.dropout)
        return self.linear(f)

    def loss(self, logits, target):
        import torch

        if self.multilabel:
            smooth = target * (1 - self.recipe.label_smoothing) + 0.5 * self.recipe.label_smoothing
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, smooth)
        return torch.nn.functional.cross_entropy(logits, target, label_smoothing=self.recipe.label_smoothing)

    def measure(self, act: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """Seconds of one training step and of one forward on ``act`` (no update is kept)."""
        import torch

        x = torch.from_numpy(act.astype(np.float32))
        target = self._target(labels)
        self.train_mode(True)
        for _ in range(2):  # the first call pays for the kernels' set-up
            started = time.perf_counter()
            loss = self.loss(self.logits(x, True), target)
            loss.backward()
            step = time.perf_counter() - started
        for p in [*self.params, *self.linear.parameters()]:
            p.grad = None
        self.train_mode(False)
        started = time.perf_counter()
        with torch.no_grad():
            self.logits(x, False)
        return step, time.perf_counter() - started

    def _target(self, labels: np.ndarray):
        import torch

        if self.multilabel:
            return torch.from_numpy(labels.astype(np.float32))
        return torch.from_numpy(labels.argmax(axis=1))

    def embed(self, act: np.ndarray, batch: int = 64) -> np.ndarray:
        """Pooled features (n, 1280) float32 of cached prefix activations."""
        import torch

        self.train_mode(False)
        out = []
        with torch.no_grad():
            for s in range(0, len(act), batch):
                x = torch.from_numpy(act[s:s + batch].astype(np.float32))
                out.append(_tail_features(self.model, x, self.split, 0.0).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)

    def linear_head(self) -> learn.LinearHead:
        return learn.LinearHead(self.linear.weight.detach().numpy().T.copy(),
                                self.linear.bias.detach().numpy().copy(), self.multilabel)

    def state(self) -> dict:
        return {"tail": [copy.deepcopy(m.state_dict()) for m in self.modules],
                "linear": copy.deepcopy(self.linear.state_dict())}

    def load(self, state: dict) -> None:
        for m, s in zip(self.modules, state["tail"], strict=True):
            m.load_state_dict(s)
        self.linear.load_state_dict(state["linear"])

    def val_proba(self, centre: np.ndarray, mirror: np.ndarray, rows: np.ndarray) -> np.ndarray:
        plain, flipped = self.embed(centre[rows]), self.embed(mirror[rows])
        return self.linear_head().predict_proba(plain, flipped)

    def train(self, views: np.ndarray, centre: np.ndarray, mirror: np.ndarray, job: _Job, end: float) -> dict:
        """Train until ``end`` (perf_counter) or ``max_epochs``, whichever comes first; keep the best state.

        Progress is the larger of the share of time and the share of epochs used, and drives the
        learning rate (warm-up, then cosine to zero) and the scoring points, so the schedule fits
        whatever the speed of the machine turns out to be. ``end`` moves when scoring the validation
        images shows that the work after training will take more (or less) than first measured.
        """
        import torch

        recipe = self.recipe
        opt = torch.optim.AdamW([{"params": self.params, "lr": recipe.lr_backbone},
                                 {"params": list(self.linear.parameters()), "lr": recipe.lr_head}],
                                weight_decay=recipe.weight_decay)
        base = [g["lr"] for g in opt.param_groups]
        target_all = self._target(job.labels[job.train])
        rng = job.rng
        n_views, n_train = views.shape[0], views.shape[1]
        begin = time.perf_counter()
        history: list[dict] = []
        best_score, best_state, best_progress = None, None, 0.0
        steps, order, pos = 0, rng.permutation(n_train), 0
        step_times: list[float] = []
        stopped, next_eval, eval_gap = "time", 1 / recipe.evaluations, 0.0
        last_eval = begin
        trained = [*self.params, *self.linear.parameters()]
        ema = [p.detach().clone() for p in trained] if recipe.ema > 0 else None

        def progress(now: float) -> float:
            return max((now - begin) / max(end - begin, 1e-3), steps * recipe.batch_size / n_train / recipe.max_epochs)

        def score_now() -> tuple[dict, dict]:
            """Validation scores of the current (or averaged) weights, and those weights."""
            current = None
            if ema is not None:
                current = [p.detach().clone() for p in trained]
                with torch.no_grad():
                    torch._foreach_copy_(trained, ema)
            proba = self.val_proba(centre, mirror, job.val)
            state = self.state()
            if current is not None:
                with torch.no_grad():
                    torch._foreach_copy_(trained, current)
            return _scores(proba, job.labels[job.val], self.multilabel), state

        def record(scores: dict, now: float) -> None:
            history.append({"step": steps, "epoch": round(steps * recipe.batch_size / n_train, 2),
                            "seconds": round(now - begin, 1), **scores})

        while True:
            now = time.perf_counter()
            mean_step = float(np.mean(step_times[-20:])) if step_times else 0.0
            if now + mean_step > end or progress(now) >= 1:
                stopped = "time" if now + mean_step > end else "epochs"
                break
            due = progress(now) >= next_eval and now - last_eval >= eval_gap
            if due and progress(now) < 1 - 0.5 / recipe.evaluations:
                scores, state = score_now()
                done = time.perf_counter()
                cost = done - now
                if 2 * len(job.val) >= 64:  # enough images to time the final embedding by
                    end = job.deadline - job.reserve(2 * len(job.val) / cost)
                eval_gap = cost / 0.08  # scoring takes at most ~8 % of the training time
                last_eval, next_eval = done, progress(done) + 1 / recipe.evaluations
                record(scores, now)
                score = (scores["primary"], -scores["logLoss"])
                if best_score is None or score > best_score:
                    best_score, best_state, best_progress = score, state, progress(now)
                elif progress(now) - best_progress > recipe.patience_fraction and progress(now) > 0.5:
                    stopped = "early stopping"
                    break
                continue
            fraction = progress(now)
            if fraction < recipe.warmup_fraction:
                scale = (fraction + 0.02) / (recipe.warmup_fraction + 0.02)
            else:
                scale = 0.5 * (1 + math.cos(math.pi * (fraction - recipe.warmup_fraction)
                                            / (1 - recipe.warmup_fraction)))
            for g, lr in zip(opt.param_groups, base, strict=True):
                g["lr"] = lr * scale
            if pos + recipe.batch_size > n_train:
                order, pos = rng.permutation(n_train), 0
            idx = order[pos:pos + recipe.batch_size]
            pos += recipe.batch_size
            which = rng.integers(0, n_views, size=len(idx))
            x = torch.from_numpy(views[which, idx].astype(np.float32))
            target = target_all[idx]
            self.train_mode(True)
            if recipe.mixup > 0:
                lam = float(rng.beta(recipe.mixup, recipe.mixup))
                perm = torch.from_numpy(rng.permutation(len(idx)))
                logits = self.logits(lam * x + (1 - lam) * x[perm], True)
                loss = lam * self.loss(logits, target) + (1 - lam) * self.loss(logits, target[perm])
            else:
                loss = self.loss(self.logits(x, True), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in trained], 1 - recipe.ema)
            step_times.append(time.perf_counter() - now)
            steps += 1
            left_fraction = max(1e-6, 1 - progress(time.perf_counter()))
            job.report("fine-tuning", steps, steps + int(steps * left_fraction / max(1 - left_fraction, 1e-6)))
        # A last score at the end of the schedule (the cosine's low point is often the best).
        now = time.perf_counter()
        scores, state = score_now()
        record(scores, now)
        if best_score is None or (scores["primary"], -scores["logLoss"]) > best_score:
            best_state, best_step = state, steps
        else:
            best_step = next(h["step"] for h in history if (h["primary"], -h["logLoss"]) == best_score)
        self.load(best_state)
        self.train_mode(False)
        return {"steps": steps, "epochs": round(steps * recipe.batch_size / n_train, 2), "stopped": stopped,
                "bestStep": best_step, "trainedSeconds": round(time.perf_counter() - begin, 1),
                "secondsPerStepMeasured": round(float(np.mean(step_times)), 4) if step_times else None,
                "validationHistory": history}


# --------------------------------------------------------------------------- augmentation


def _scaled(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels -> the network's input scale, ``(x - 127) / 128`` float32."""
    return (pixels.astype(np.float32) - 127.0) / 128.0


_GREY = np.array([0.299, 0.587, 0.114], np.float32)


def _random_view(img: Image.Image, spec: backbone.BackboneSpec, rng: np.random.Generator, recipe: Recipe) -> np.ndarray:
    """A random resized crop of ``img`` (scale of the area, aspect ratio), maybe mirrored, colour-jittered,
    preprocessed like :func:`backbone.preprocess`: (3, S, S) float32."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*recipe.crop_scale)
        ratio = math.exp(rng.uniform(math.log(recipe.crop_ratio[0]), math.log(recipe.crop_ratio[1])))
        cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
        if cw <= w and ch <= h:
            break
    else:
        cw = ch = min(w, h)
    left, top = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
    size = spec.image_size
    crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + cw, top + ch))
    arr = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    j = recipe.jitter
    if j:
        arr = arr * rng.uniform(1 - j, 1 + j)  # brightness
        mean = arr.mean()
        arr = (arr - mean) * rng.uniform(1 - j, 1 + j) + mean  # contrast
        grey = (arr @ _GREY)[..., None]
        arr = (arr - grey) * rng.uniform(1 - j, 1 + j) + grey  # saturation
        arr = np.clip(arr, 0, 255)
    return ((arr - 127.0) / 128.0).transpose(2, 0, 1).astype(np.float32)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["FineTuneResult", "Recipe", "fine_tune", "torch_embed"]
