"""Advanced training: fine-tune the backbone within a time budget, on CPU.

The recipe (measured with ``bench/advanced.py`` on a 2-core machine):

1. Decode every image once (a copy just large enough for random crops, and its centre crop as
   the server sees it, for each backbone involved). Hold out a stratified validation split.
2. *Quick candidate*: the project's stock backbone's embeddings (image + mirror, ONNX Runtime) and a
   :class:`~tagvision.learn.QuickClassifier` fitted on the training part, scored on the
   validation part. Its head is the warm start of the fine-tuned classifier (linear probe, then
   fine-tune: a random head's first gradients would wreck the pretrained features).
3. *Which backbone*: when smaller backbones may be served too (``backbones``: a General project,
   Lite2, may be served a fine-tuned Lite0), the largest is fine-tuned only when two schedules of
   ``Recipe.larger_epochs`` fit the budget at its speed, guessed from its stock speed and then
   measured on its first steps; else the next smaller one, warm-started by the linear probe on its
   own stock features. On car-damage (2 cores, test top-1) a Lite2 training step at 260 px took
   1.4-1.8 s against Lite0's 0.8 at 224 px. At 10 minutes, Lite2 got 5.8 epochs (and a 4.4-epoch
   refit) and scored 86.3 %; Lite0 got 7-10 epochs and 85.9-88.5 % (four runs); Lite2's whole recipe
   (10 + 10 epochs, 17 minutes) scored 87.2 %. So on a CPU the budget is better spent on Lite0, and
   Lite2, the backbone the user's domain names, is fine-tuned when time does not bind it.
4. *Fine-tune* the whole network except the stem and the first ``Recipe.frozen_blocks`` blocks,
   on fresh augmented crops every step (random resized crop, flip, colour jitter), with AdamW,
   label smoothing, dropout and drop connect, BatchNorm statistics updated in the trained blocks,
   channels-last memory (1.6-1.8x faster convolutions on CPU than the default layout), and
   bfloat16 autocast when the first steps measure it faster on this CPU. The learning rate warms
   up, then follows a cosine to zero driven by the *clock* and the epochs: the schedule ends when
   its time or its epochs (at most ``Recipe.max_epochs``) are used up, whatever the speed of the
   machine turns out to be.
5. *Early stopping*: the validation split is scored in the second half of the schedule; the
   best state is kept, and training stops when two scores in a row fall below the best.
6. *Choose*: the fine-tuned network with its trained linear head (its logits scaled by one
   temperature fitted on the validation split) against the quick head, on the same validation
   images (when a refit follows, a lead of the quick head within one standard error does not count:
   :meth:`_Job.beats_quick`). When fine-tuning does not win, the result is exactly a quick training
   (the quick head fitted on every image, cross-validated), with ``backbone_onnx = None``.
7. *Refit*: when the budget holds two schedules of at least ``Recipe.refit_min_epochs`` epochs,
   the first (step 4) gets its share of the time, and after it wins the same schedule runs again
   from the pretrained weights on every image, validation split included, stopping at the epoch
   where the first run scored best. (On car-damage, training without the held-out fifth cost
   1.5-3 points of test accuracy.) Both networks are served together: their logits are averaged,
   which on car-damage scored 0.9-2.5 points above the refit alone (a weight average of the two,
   0.6-1.4; three seeds). They share the frozen stem and first blocks, so serving costs less than twice one
   network. The figures stay the first run's.
8. Export the served pooled-feature network(s) to ONNX (the stock backbone's input; the features of
   each network side by side), so the server's prediction path (embed image + mirror, then the
   head) serves it.

The wall clock is checked at every step; the scoring and export after training have a reserve.
Torch runs on ``threads`` cores (all by default).

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
    """Hyper-parameters of the fine-tuning (chosen on car-damage and clothing-small, see ``bench/advanced.py``)."""

    frozen_blocks: int = 3  # the stem and this many MBConv blocks keep their pretrained weights (Lite has 16)
    crop_scale: tuple[float, float] = (0.25, 1.0)  # random resized crop: share of the image's area
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.2  # brightness, contrast, saturation: factors in 1 +- jitter
    batch_size: int = 32
    lr: float = 1e-3  # AdamW, backbone and head alike, at the top of the schedule
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    dropout: float = 0.2
    drop_connect: float = 0.1
    warmup_fraction: float = 0.05
    max_epochs: float = 10.0  # a schedule ends after this many epochs even with time left (car-damage: 9-11
    # epochs on every image scored 87-88 % on test, 12-25 epochs 86 %)
    min_epochs: float = 1.0  # fine-tuning is skipped when fewer fit in the budget
    refit_min_epochs: float = 5.0  # train again on every image when two schedules of this many epochs fit
    larger_epochs: float = 10.0  # a larger backbone is fine-tuned only when two schedules of this many epochs fit
    # (car-damage: Lite2 with 5.8 + 4.4 epochs 86.3 %, Lite0 with 7-10 + 6-9 epochs 85.9-88.5 %)
    bf16: str = "auto"  # bfloat16 autocast while training: "on", "off", or "auto" (when it measures faster)
    scores_from: float = 0.5  # the validation split is scored from this share of the schedule on ...
    evaluations: int = 4  # ... this many times (the last at the end), fewer when scoring is slow
    validation_fraction: float = 0.2  # held out (stratified) for early stopping and the choice against quick
    force_fine_tuned: bool = False  # choose the fine-tuned network even when the quick head scores better


@dataclass(frozen=True)
class FineTuneResult:
    """What advanced training produces.

    - ``backbone_onnx``: the fine-tuned pooled-feature network, with the stock backbone ONNX's
      input (``image`` NCHW float32 as :func:`backbone.preprocess`) and output (n, 1280), or
      (n, 2560) for the first run and its refit side by side; ``None`` when fine-tuning did not
      beat the quick head (or there was no time for it);
    - ``head``: a :class:`~tagvision.learn.LinearHead` on those embeddings (the stock network's
      when ``backbone_onnx`` is None), with test-time flip;
    - ``evaluation``: (probabilities (m, T), labels (m, T) bool, row indices into the input):
      the held-out validation images for a fine-tuned result, the out-of-fold probabilities of
      every image for a quick one;
    - ``details``: JSON-able account of what was tried, measured and chosen (``metricsFrom`` says
      what the evaluation was computed on);
    - ``spec``: the backbone the served network comes from, whose preprocessing it takes (the
      fine-tuned one may be smaller than the project's; the ONNX file names it too).
    """

    backbone_onnx: bytes | None
    head: learn.LinearHead
    evaluation: tuple[np.ndarray, np.ndarray, np.ndarray]
    details: dict = field(default_factory=dict)
    spec: backbone.BackboneSpec | None = None  # the backbone the served network was made from (its preprocessing)


def fine_tune(
    spec: backbone.BackboneSpec,
    models_dir: Path,
    images: Sequence[Callable[[], bytes]],
    labels: np.ndarray,
    *,
    multilabel: bool,
    budget_seconds: float,
    progress: Progress | None = None,
    seed: int = 0,
    threads: int | None = None,
    recipe: Recipe | None = None,
    backbones: Sequence[backbone.BackboneSpec] | None = None,
) -> FineTuneResult:
    """Fine-tune a backbone on ``images`` (callables returning encoded bytes), ``labels`` (n, T) bool.

    ``spec`` is the project's backbone: its stock features give the quick candidate. ``backbones`` are
    those that may be fine-tuned (default: ``spec`` alone); the largest is, when two schedules of
    ``Recipe.larger_epochs`` fit the budget at its measured speed, else the next smaller one.
    Never runs more than ``budget_seconds`` (plus a few per cent of scheduling slack), decoding
    and export included. ``models_dir`` holds the stock backbone ONNX files (exported on first use).
    """
    started = time.perf_counter()
    job = _Job(
        spec,
        list(backbones or [spec]),
        models_dir,
        list(images),
        np.asarray(labels, dtype=bool),
        multilabel,
        budget_seconds,
        progress,
        seed,
        threads or os.cpu_count() or 1,
        recipe or Recipe(),
        started,
    )
    return job.run()


# --------------------------------------------------------------------------- the job


class _OutOfTime(Exception):
    pass


class _TooSlow(Exception):
    """A larger backbone would not get ``Recipe.larger_epochs`` in the budget: the next smaller one is tuned."""


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


class _Job:
    """One fine-tuning run; the state shared by its stages."""

    def __init__(
        self,
        spec: backbone.BackboneSpec,
        backbones: list[backbone.BackboneSpec],
        models_dir: Path,
        sources: list[Callable[[], bytes]],
        labels: np.ndarray,
        multilabel: bool,
        budget: float,
        progress: Progress | None,
        seed: int,
        threads: int,
        recipe: Recipe,
        started: float,
    ) -> None:
        if labels.ndim != 2 or len(labels) != len(sources) or labels.shape[1] < 2:
            raise ValueError(f"labels {labels.shape} do not match {len(sources)} images with at least two tags")
        if not backbones:
            raise ValueError("no backbone to fine-tune")
        self.spec, self.models_dir, self.sources, self.labels = spec, models_dir, sources, labels
        # Largest first: each is tried only when it fits the budget well enough (:meth:`fine_tuning`).
        self.backbones = sorted(dict.fromkeys(backbones), key=lambda b: b.image_size, reverse=True)
        self.tune = self.backbones[-1]  # the backbone being fine-tuned
        self.lda_seconds = 2.0  # a QuickClassifier fit on 2 cores (1.3-1.7 s), until one is timed
        self.multilabel, self.budget, self.seed, self.threads, self.recipe = multilabel, budget, seed, threads, recipe
        self.started = started
        self.deadline = started + budget * 0.97  # everything done by then; 3 % of slack for the unforeseen
        self._progress, self._last_eta = progress, math.inf
        self.then = 0.0  # seconds of work expected after the running training schedule ends (for the ETA)
        self.refit = False  # set by plan() when the budget holds a refit on every image
        self.rng = np.random.default_rng(seed)
        self.seconds: dict[str, float] = {}
        self.details: dict = {"backbone": spec.model_name, "budgetSeconds": round(budget, 3), "threads": threads}

    # -- helpers

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
        self.decoded, self.centres = self.decode()
        t = self.timed("decoding", t)
        self.ips: dict[str, float] = {}  # stock ONNX Runtime images per second, by backbone
        self.stocks = {s.domain: self.stock_embeddings(s) for s in self.specs()}
        self.stock = self.stocks[self.spec.domain]
        t = self.timed("stock embeddings", t)
        self.split()
        candidates: list[_Candidate] = []
        tuned = None
        self.tuned_wins = False
        try:
            self.check_time(self.backbones[-1])
            quick = self.quick = self.quick_candidate()
            candidates.append(quick)
            t = self.timed("quick head", t)
            tuned = self.fine_tuning()
            candidates.append(tuned)
        except _OutOfTime as exc:
            self.details["fineTuning"] = {**self.details.get("fineTuning", {}), "skipped": str(exc)}
        self.details["candidates"] = [{"name": c.name, "validation": c.scores} for c in candidates]
        best = tuned if tuned is not None and (self.tuned_wins or self.recipe.force_fine_tuned) else None
        if best is None:
            return self.quick_result()
        self.details["chosen"] = best.name
        t = time.perf_counter()
        self.report("exporting", 0, 1)
        onnx_bytes = self.export()
        self.timed("export", t)
        self.report("exporting", 1, 1, 0.0)
        self.finish()
        self.details["metricsFrom"] = (
            f"held-out validation split: {len(self.val)} of {len(self.labels)} training images (stratified); "
            "the network and its head were not fitted on them, but the early-stopping point and the choice "
            "against the quick head were made on them (not cross-validation)"
        )
        if self.details["fineTuning"].get("refit"):
            self.details["metricsFrom"] += (
                "; the network was then trained again the same way on every image, validation split included, "
                "and the two are served together (logits averaged), so the figures describe the first run alone"
            )
        evaluation = (best.val_proba, self.labels[self.val].copy(), self.val.copy())
        return FineTuneResult(onnx_bytes, best.head, evaluation, _jsonable(self.details), self.tune)

    def quick_result(self) -> FineTuneResult:
        """A quick training: the quick head on every image, with its out-of-fold probabilities."""
        since = time.perf_counter()
        self.report("fitting head", 0, 1)
        model = learn.QuickClassifier(multilabel=self.multilabel, seed=self.seed).fit(*self.stock, self.labels)
        self.timed("quick head on every image", since)
        self.report("fitting head", 1, 1, 0.0)
        folds = int(model.folds_.max()) + 1
        self.details["chosen"] = "quick"
        self.details["metricsFrom"] = (
            f"{folds}-fold cross-validation on the training images (quick training: "
            "fine-tuning did not beat it on the validation split or did not fit the budget)"
        )
        self.finish()
        rows = np.arange(len(self.labels))
        return FineTuneResult(
            None, model.head_, (model.oof_proba_, self.labels.copy(), rows), _jsonable(self.details), self.spec
        )

    def finish(self) -> None:
        self.seconds["total"] = round(time.perf_counter() - self.started, 3)
        self.details["seconds"] = self.seconds

    def specs(self) -> list[backbone.BackboneSpec]:
        """The project's backbone and those that may be fine-tuned."""
        return list(dict.fromkeys([self.spec, *self.backbones]))

    def decode(self) -> tuple[list[Image.Image], dict[str, np.ndarray]]:
        """Every image: a copy no larger than needed for crops, and its centre crop as the server sees it
        (:func:`backbone.preprocess`) for each backbone, stored as the uint8 pixels it is made of: (n, 3, S, S)."""
        n = len(self.sources)
        specs = self.specs()
        largest = max(s.resize for s in specs)
        self.report("decoding", 0, n)

        def one(i: int) -> tuple[Image.Image, list[np.ndarray]]:
            try:
                data = self.sources[i]()
                # Decoded per backbone as the server decodes it (JPEG draft mode depends on the size wanted).
                opened = {s.resize: images.open_rgb(data, min_side=s.resize) for s in specs}
            except (ImageError, OSError) as exc:
                message = exc.message if isinstance(exc, ImageError) else str(exc)
                raise TrainingError(f"Training image {i} can no longer be decoded: {message}") from exc
            centres = [
                np.round(backbone.preprocess(opened[s.resize], s) * 128 + 127).astype(np.uint8)  # exact
                for s in specs
            ]
            img = opened[largest]
            scale = largest / min(img.size)
            if scale < 1:  # keep a copy just large enough for random crops
                img = img.resize(
                    (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
                )
            return img, centres

        decoded: list[Image.Image] = []
        centres = {s.domain: np.zeros((n, 3, s.image_size, s.image_size), np.uint8) for s in specs}
        with ThreadPoolExecutor(max(1, self.threads)) as pool:
            for i, (img, arrays) in enumerate(pool.map(one, range(n))):
                decoded.append(img)
                for s, arr in zip(specs, arrays, strict=True):
                    centres[s.domain][i] = arr
                if (i + 1) % 64 == 0:
                    self.report("decoding", i + 1, n)
        self.report("decoding", n, n)
        return decoded, centres

    def stock_embeddings(self, spec: backbone.BackboneSpec) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.labels)
        self.report("embedding", 0, n)
        embedder = backbone.Embedder(spec, self.models_dir, threads=self.threads)
        centre = self.centres[spec.domain]
        plain, flipped = [], []
        started = time.perf_counter()
        for s in range(0, n, embedder.batch_size):
            p, f = embedder.forward_pairs(_scaled(centre[s : s + embedder.batch_size]))
            plain.append(p)
            flipped.append(f)
            self.report("embedding", min(n, s + embedder.batch_size), n)
        self.ips[spec.domain] = 2 * n / max(time.perf_counter() - started, 1e-6)
        self.details.setdefault("stockImagesPerSecond", {})[spec.model_name] = round(self.ips[spec.domain], 1)
        return np.concatenate(plain), np.concatenate(flipped)

    def split(self) -> None:
        """A stratified validation split. A tenth of car-damage (106 images) proved too noisy to choose between
        quick (79 %) and fine-tuned (77-81 %) heads whose test accuracies differ by 3 points; with the refit
        on every image the larger split costs the served network nothing."""
        k = max(2, round(1 / self.recipe.validation_fraction))
        folds = metrics.stratified_folds(self.labels, k_max=k, seed=self.seed)
        self.val = np.flatnonzero(folds == 0)
        self.train = np.flatnonzero(folds != 0)
        self.details["split"] = {"train": len(self.train), "validation": len(self.val), "folds": int(folds.max()) + 1}

    def check_time(self, spec: backbone.BackboneSpec) -> None:
        """Make ``spec`` the backbone to fine-tune, with a first guess of its step time from the stock network's
        speed (a training step costs about four forwards of the trained part); raise :class:`_OutOfTime` unless
        ``min_epochs`` of it fit in what is left."""
        n_train = len(self.train)
        self.tune = spec
        self.guess_step = 4 * min(self.recipe.batch_size, n_train) / self.ips[spec.domain]
        steps = math.ceil(self.recipe.min_epochs * n_train / self.recipe.batch_size)
        need = self.lda_seconds + 2.0 + steps * self.guess_step + self.reserve(self.score_seconds(self.guess_step))
        if self.left() < need:
            raise _OutOfTime(f"{self.left():.1f} s left, about {need:.1f} s needed to fine-tune")

    def reserve(self, score_seconds: float) -> float:
        """Seconds needed after training: a last validation score, then the export or (when fine-tuning
        loses) the quick head on every image."""
        return (score_seconds + max(self.export_seconds(), 1.5 * self.lda_seconds)) * 1.2 + 0.5

    def score_seconds(self, step_seconds: float) -> float:
        """Scoring the validation split: its images and mirrors forward only (a third of a step's cost)."""
        return 2 * len(self.val) / min(self.recipe.batch_size, len(self.train)) * step_seconds / 3

    def export_seconds(self) -> float:
        """~2 s per network for Lite0 on 2 cores, torch's tracing included (two once a refit is planned), more for
        slower backbones."""
        return (1.0 + 300 / self.ips[self.tune.domain]) * (2 if self.refit else 1)

    def quick_candidate(self) -> _Candidate:
        self.report("fitting head", 0, 1)
        started = time.perf_counter()
        plain, flipped = self.stock
        quick = learn.QuickClassifier(multilabel=self.multilabel, seed=self.seed).fit(
            plain[self.train], flipped[self.train], self.labels[self.train]
        )
        self.lda_seconds = time.perf_counter() - started
        self.report("fitting head", 1, 1)
        proba = quick.head_.predict_proba(plain[self.val], flipped[self.val])
        return _Candidate("quick", quick.head_, proba, _scores(proba, self.labels[self.val], self.multilabel))

    # -- fine-tuning

    def fine_tuning(self) -> _Candidate:
        """Fine-tune the largest backbone that fits the budget well enough: a larger one when two schedules of
        ``Recipe.larger_epochs`` fit at its measured speed (else the next smaller one; the smallest always)."""
        choice = self.details["backboneChoice"] = []
        for k, spec in enumerate(self.backbones):
            smaller = self.backbones[k + 1] if k + 1 < len(self.backbones) else None
            try:
                tuned = self.fine_tune_backbone(spec, self.recipe.larger_epochs if smaller else None)
            except _TooSlow as exc:
                assert smaller is not None
                choice.append(f"{spec.model_name} not fine-tuned: {exc}")
                continue
            choice.append(f"{spec.model_name} fine-tuned")
            return tuned
        raise AssertionError("the smallest backbone never raises _TooSlow")

    def fine_tune_backbone(self, spec: backbone.BackboneSpec, must_fit: float | None) -> _Candidate:
        """Train ``spec`` on the training part, scored on the validation part; then, when two schedules fit in the
        budget and fine-tuning won, the same schedule again from the start on every image (the refit).
        ``must_fit``: raise :class:`_TooSlow` unless two schedules of that many epochs fit."""
        import torch

        try:
            self.check_time(spec)
        except _OutOfTime as exc:
            if must_fit is None:
                raise
            raise _TooSlow(str(exc)) from None
        if must_fit is not None:  # a first guess from the stock network's speed, before a network is built
            epochs = self.epochs_that_fit(
                self.guess_step, len(self.train), min(self.recipe.batch_size, len(self.train))
            )
            if epochs < must_fit:
                raise _TooSlow(
                    f"about {epochs:.1f} epochs per schedule would fit (guessed from its stock speed, "
                    f"{self.ips[spec.domain]:.0f} images/s); it is fine-tuned when {must_fit:g} fit"
                )
        self.details["fineTunedBackbone"] = spec.model_name
        stock = self.stocks[spec.domain]
        if spec == self.spec:
            warm_start = self.quick.head
        else:  # the linear probe on this backbone's stock features
            t = time.perf_counter()
            warm_start = (
                learn.QuickClassifier(multilabel=self.multilabel, seed=self.seed)
                .fit(stock[0][self.train], stock[1][self.train], self.labels[self.train])
                .head_
            )
            self.timed(f"linear probe on {spec.model_name}", t)

        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            t = time.perf_counter()
            self.report("preparing", 0, 1)
            torch.manual_seed(self.seed)
            net = self.network(warm_start, len(self.train))
            self.timed("preparing", t)
            self.then = self.reserve(self.score_seconds(self.guess_step))
            log = net.train(
                self,
                self.train,
                self.deadline - self.reserve(self.score_seconds(self.guess_step)),
                self.recipe.max_epochs,
                validate=True,
                replan=lambda step, n_rows, batch_size: self.plan(step, n_rows, batch_size, must_fit),
            )
            self.details["fineTuning"] = {"recipe": asdict(self.recipe), **log, "refit": None}
            t = self.timed("fine-tuning", t)
            # One temperature on the validation logits: the trained head's raw probabilities are far too sure
            # of themselves on unseen images (0 or 1 to many decimals). Order, hence accuracy and AP, unchanged.
            slope = _temperature(net.best_logits, self.labels[self.val], self.multilabel)
            self.details["fineTuning"]["temperatureSlope"] = round(slope, 4)
            proba = learn.link(net.best_logits * slope, self.multilabel)
            tuned = _Candidate(
                "fine-tuned",
                _joint_head([net.linear_head()], slope),
                proba,
                _scores(proba, self.labels[self.val], self.multilabel),
            )
            self.served = [net]
            self.tuned_wins = self.beats_quick(tuned)
            if self.refit and (self.tuned_wins or self.recipe.force_fine_tuned):
                # The same schedule on every image, served beside the first run (logits averaged). The validation
                # figures stay those of the first run (the refit has seen the validation images).
                self.report("preparing", 0, 1)
                everything = learn.QuickClassifier(multilabel=self.multilabel, seed=self.seed).fit(*stock, self.labels)
                refit = self.network(everything.head_, len(self.labels), precision=net.precision)
                every = np.arange(len(self.labels))
                best_epoch = log["bestStep"] * net.batch_size / len(self.train)
                self.then = self.reserve(0.0)
                refit_log = refit.train(
                    self, every, self.deadline - self.reserve(0.0), log["epochs"], validate=False, stop_epoch=best_epoch
                )
                self.details["fineTuning"]["refit"] = refit_log
                self.timed("refit on every image", t)
                self.served = [net, refit]
                tuned = _Candidate(
                    "fine-tuned", _joint_head([net.linear_head(), refit.linear_head()], slope), proba, tuned.scores
                )
            self.details["fineTuning"]["served"] = (
                "the first run and its refit on every image, logits averaged"
                if len(self.served) == 2
                else "the first run"
            )
            return tuned
        finally:
            torch.set_num_threads(previous_threads)

    def beats_quick(self, tuned: _Candidate) -> bool:
        """Whether the fine-tuned candidate is served rather than the quick head.

        It wins when it scores higher on the validation split. When a refit on every image follows, it also
        wins unless the quick head leads by more than one standard error of the paired difference (bootstrap
        over the validation images): within that the two cannot be told apart on this split, and what is
        served then gains more from the extra fifth than the quick head does (car-damage, 10 minutes, test
        top-1 from the first run to what is served: +2.4 to +2.9 points, the quick head +0 to +1.5; a
        212-image split once kept quick at 80.7 vs 78.8 % when the fine-tuned network scored 86.6 vs 83.9 %
        on test)."""
        quick = self.quick
        if tuned.score > quick.score:
            return True
        if not self.refit:
            return False
        lead = quick.scores["primary"] - tuned.scores["primary"]
        rng = np.random.default_rng(self.seed)
        truth = self.labels[self.val]
        differences = []
        for _ in range(200):
            rows = rng.integers(0, len(truth), len(truth))
            differences.append(
                _scores(quick.val_proba[rows], truth[rows], self.multilabel)["primary"]
                - _scores(tuned.val_proba[rows], truth[rows], self.multilabel)["primary"]
            )
        error = float(np.std(differences))
        self.details["choice"] = {"quickLead": round(lead, 6), "standardError": round(error, 6)}
        return lead <= error

    def network(self, warm_start: learn.LinearHead, n_rows: int, precision: str | None = None) -> _Network:
        return _Network(
            backbone.build_torch_model(self.tune),
            warm_start,
            self.recipe,
            batch_norm=min(self.recipe.batch_size, n_rows) >= 16,
            precision=precision,
        )

    def epoch_seconds(self, step_seconds: float, n_rows: int, batch_size: int) -> tuple[float, float]:
        """Seconds of one epoch on the training part (scoring: ~5 % on top) and of one on every image."""
        return (
            math.ceil(n_rows / batch_size) * step_seconds * 1.05,
            math.ceil(len(self.labels) / batch_size) * step_seconds,
        )

    def epochs_that_fit(self, step_seconds: float, n_rows: int, batch_size: int) -> float:
        """Epochs of each of two schedules (the training part, then every image) that fit in what is left."""
        available = self.left() - self.reserve(self.score_seconds(step_seconds))
        return available / sum(self.epoch_seconds(step_seconds, n_rows, batch_size))

    def plan(
        self, step_seconds: float, n_rows: int, batch_size: int, must_fit: float | None = None
    ) -> tuple[float, float]:
        """Once a step is timed: the end of the first schedule and its epochs. When two schedules of at least
        ``refit_min_epochs`` fit (the training part, then every image), the first gets its share of the time
        and ``self.refit`` is set; otherwise the first schedule has all the time. Raises :class:`_TooSlow` when
        fewer than ``must_fit`` epochs per schedule fit."""
        recipe = self.recipe
        after = self.reserve(self.score_seconds(step_seconds))
        fit = self.epochs_that_fit(step_seconds, n_rows, batch_size)
        if must_fit is not None and fit < must_fit:
            raise _TooSlow(
                f"{fit:.1f} epochs per schedule fit at its measured {step_seconds:.2f} s per step; "
                f"it is fine-tuned when {must_fit:g} fit"
            )
        epoch_part, epoch_all = self.epoch_seconds(step_seconds, n_rows, batch_size)
        both = min(recipe.max_epochs, fit)
        self.refit = both >= recipe.refit_min_epochs
        self.then = after + (both * epoch_all if self.refit else 0.0)
        if self.refit:
            return time.perf_counter() + both * epoch_part, both
        return self.deadline - after, recipe.max_epochs

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """Augmented crops of images ``rows``: (len(rows), 3, S, S) float32."""
        return np.stack([_random_view(self.decoded[i], self.tune, self.rng, self.recipe) for i in rows])

    def export(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "backbone.onnx"
            backbone.export_onnx(
                _side_by_side([n.exportable() for n in self.served], self.served[0].split), path, self.tune
            )
            return path.read_bytes()


# --------------------------------------------------------------------------- the network


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


def _side_by_side(models: list, split: int):  # -> torch.nn.Module
    """The pooled features of ``models`` (networks differing only after block ``split``) side by side,
    (n, 1280 * len(models)): the shared stem and first blocks run once."""
    import torch

    class SideBySide(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nets = torch.nn.ModuleList(models)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shared = _prefix(self.nets[0], x, split)
            return torch.cat([_tail_features(net, shared, split, 0.0) for net in self.nets], dim=1)

    return SideBySide().eval()


class _Network:
    """The backbone, its trainable part, and a linear classifier on :func:`learn.features` of its pooled output."""

    def __init__(
        self, model, head: learn.LinearHead, recipe: Recipe, batch_norm: bool, precision: str | None = None
    ) -> None:
        import torch

        self.model = model.to(memory_format=torch.channels_last)
        self.recipe, self.multilabel, self.batch_norm = recipe, head.multilabel, batch_norm
        # "float32" or "bfloat16" while training (scoring and export are float32); None: measured in the first steps
        self.precision = precision or {"on": "bfloat16", "off": "float32"}.get(recipe.bf16)
        self.split = min(recipe.frozen_blocks, len(model._blocks))
        for p in model.parameters():
            p.requires_grad_(False)
        self.trained = [*model._blocks[self.split :], model._conv_head, model._bn1]
        self.linear = torch.nn.Linear(head.weights.shape[0], head.weights.shape[1])
        with torch.no_grad():  # warm start: the quick head on stock features (linear probe, then fine-tune)
            self.linear.weight.copy_(torch.from_numpy(head.weights.T.copy()))
            self.linear.bias.copy_(torch.from_numpy(head.bias.astype(np.float32)))
        self.params = [p for m in self.trained for p in m.parameters()] + list(self.linear.parameters())
        for p in self.params:
            p.requires_grad_(True)
        self.best_logits: np.ndarray = np.zeros((0, head.weights.shape[1]))

    def mode(self, training: bool) -> None:
        """Frozen blocks always in eval mode; BatchNorm statistics of the trained ones updated while training."""
        self.model.eval()
        if training:
            for m in self.trained:
                m.train()
            if not self.batch_norm:
                import torch

                for m in self.model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.eval()

    def features(self, x, training: bool):
        import torch

        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            x = _prefix(self.model, x, self.split)
        return _tail_features(self.model, x, self.split, self.recipe.drop_connect if training else 0.0)

    def logits(self, x, training: bool, precision: str = "float32"):
        """Class logits (float32); with ``precision="bfloat16"`` the convolutions run under bfloat16 autocast,
        the power normalisation and the classifier in float32."""
        import contextlib

        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bfloat16" else contextlib.nullcontext():
            pooled = self.features(x, training)
        f = torch.clamp(pooled.float(), min=1e-6) ** learn.POWER
        if training and self.recipe.dropout:
            f = torch.nn.functional.dropout(f, self.recipe.dropout)
        return self.linear(f)

    def loss(self, logits, target):
        import torch

        smoothing = self.recipe.label_smoothing
        if self.multilabel:
            smooth = target * (1 - smoothing) + 0.5 * smoothing
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, smooth)
        return torch.nn.functional.cross_entropy(logits, target, label_smoothing=smoothing)

    def target(self, labels: np.ndarray):
        import torch

        if self.multilabel:
            return torch.from_numpy(labels.astype(np.float32))
        return torch.from_numpy(labels.argmax(axis=1))

    def embed(self, pixels: np.ndarray, mirror: bool, batch: int = 32) -> np.ndarray:
        """Pooled features (n, 1280) float32 of uint8 centre crops (mirrored), as the exported network computes them."""
        import torch

        self.mode(False)
        out = []
        with torch.no_grad():
            for s in range(0, len(pixels), batch):
                x = _scaled(pixels[s : s + batch])
                x = np.ascontiguousarray(x[..., ::-1] if mirror else x)
                out.append(self.features(torch.from_numpy(x), False).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1280), np.float32)

    def linear_head(self) -> learn.LinearHead:
        return learn.LinearHead(
            self.linear.weight.detach().numpy().T.copy(), self.linear.bias.detach().numpy().copy(), self.multilabel
        )

    def validation_logits(self, job: _Job) -> np.ndarray:
        pixels = job.centres[job.tune.domain][job.val]
        return self.linear_head().decision_function(self.embed(pixels, False), self.embed(pixels, True))

    def state(self) -> dict:
        return {
            "trained": [copy.deepcopy(m.state_dict()) for m in self.trained],
            "linear": copy.deepcopy(self.linear.state_dict()),
        }

    def load(self, state: dict) -> None:
        for m, s in zip(self.trained, state["trained"], strict=True):
            m.load_state_dict(s)
        self.linear.load_state_dict(state["linear"])

    def exportable(self):
        import torch

        self.mode(False)
        return self.model.to(memory_format=torch.contiguous_format)

    def train(
        self,
        job: _Job,
        rows: np.ndarray,
        end: float,
        epochs: float,
        *,
        validate: bool,
        replan: Callable[[float, int, int], tuple[float, float]] | None = None,
        stop_epoch: float | None = None,
    ) -> dict:
        """Train on images ``rows`` until ``end`` (perf_counter) or after ``epochs``, whichever comes first.

        Progress, the larger of the share of time and the share of epochs used, drives the learning
        rate (warm-up, then cosine to zero) and the scoring points. Once the first steps are timed,
        ``replan(seconds per step, len(rows), batch size)`` may move ``end`` and ``epochs``. With
        ``validate``, the validation split is scored and the best state kept (early stopping);
        ``stop_epoch`` ends training there (a refit stopping where its first run was best).
        """
        import torch

        recipe, n_rows = self.recipe, len(rows)
        batch_size = self.batch_size = min(recipe.batch_size, n_rows)
        opt = torch.optim.AdamW(self.params, lr=recipe.lr, weight_decay=recipe.weight_decay)
        targets = self.target(job.labels[rows])
        begin = time.perf_counter()
        score_cost = job.score_seconds(job.guess_step)
        history: list[dict] = []
        step_times: list[float] = []
        best_score, best_state, best_step, below = None, None, 0, 0
        steps, order, pos = 0, job.rng.permutation(n_rows), 0
        stopped = "time"
        score_at = (
            [
                recipe.scores_from + (1 - recipe.scores_from) * (k + 1) / recipe.evaluations
                for k in range(recipe.evaluations)
            ][:-1]
            if validate
            else []
        )  # the last score is at the end
        probe = ["float32", "float32", "bfloat16", "bfloat16"] if self.precision is None else []
        timings: dict[str, float] = {}

        def progress(now: float) -> float:
            return max((now - begin) / max(end - begin, 1e-3), steps * batch_size / n_rows / max(epochs, 1e-6))

        def score(now: float) -> bool:
            """Score the validation split; False when it says to stop (two scores in a row below the best)."""
            nonlocal best_score, best_state, best_step, below
            job.report("validating", steps, steps)
            logits = self.validation_logits(job)
            scores = _scores(learn.link(logits, self.multilabel), job.labels[job.val], self.multilabel)
            history.append(
                {
                    "step": steps,
                    "epoch": round(steps * batch_size / n_rows, 2),
                    "seconds": round(now - begin, 1),
                    **scores,
                }
            )
            if best_score is None or scores["primary"] >= best_score:  # a later state wins a tie
                best_score, best_state, best_step, below = scores["primary"], self.state(), steps, 0
                self.best_logits = logits
            else:
                below += 1
            return below < 2

        while True:
            now = time.perf_counter()
            next_step = max(step_times[-5:], default=job.guess_step)  # the slowest recent step: cores may be shared
            fraction = progress(now)
            if stop_epoch is not None and steps * batch_size / n_rows >= stop_epoch - 1e-9:
                stopped = "epoch of the first run's best score"
                break
            if now + next_step > end or fraction >= 1:
                stopped = "time" if fraction < 1 else "epochs"
                break
            if score_at and fraction >= score_at[0]:
                score_at = [p for p in score_at if p > fraction]
                if score_cost * (len(score_at) + 2) > 0.1 * (end - begin):
                    continue  # scoring would take more than a tenth of the training time: the last score only
                started = time.perf_counter()
                go_on = score(now)
                score_cost = time.perf_counter() - started
                if not go_on:
                    stopped = "early stopping"
                    break
                continue
            if fraction < recipe.warmup_fraction:
                scale = (fraction + 0.02) / (recipe.warmup_fraction + 0.02)
            else:
                scale = 0.5 * (
                    1 + math.cos(math.pi * (fraction - recipe.warmup_fraction) / (1 - recipe.warmup_fraction))
                )
            for g in opt.param_groups:
                g["lr"] = recipe.lr * scale
            if pos + batch_size > n_rows:
                order, pos = job.rng.permutation(n_rows), 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            x = torch.from_numpy(job.batch(rows[idx]))
            precision = probe[steps] if steps < len(probe) else self.precision
            self.mode(True)
            loss = self.loss(self.logits(x, True, precision), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - now)
            steps += 1
            if probe and steps in (2, 4):  # the second step of each precision (the first sets up its kernels)
                timings[precision] = step_times[-1]
            if steps == max(len(probe), 2):
                if probe:
                    self.precision = min(timings, key=timings.get)
                    step_times = [timings[self.precision]]
                measured = float(np.median(step_times[-2:]))
                score_cost = job.score_seconds(measured)
                if replan is not None:
                    end, epochs = replan(measured, n_rows, batch_size)
            now = time.perf_counter()
            left = max(1e-6, 1 - progress(now))
            eta = None  # until the steps are timed and the schedule planned: the time to the deadline
            if steps >= max(len(probe), 2):
                last_epoch = min(epochs, stop_epoch if stop_epoch is not None else epochs)
                steps_left = max(0.0, last_epoch * n_rows / batch_size - steps)
                step_cost = float(np.median(step_times[-5:])) * (1.05 if validate else 1.0)  # scoring: ~5 %
                eta = min(end - now, steps_left * step_cost) + job.then
            job.report("fine-tuning", steps, steps + int(steps * left / max(1 - left, 1e-6)), eta)
        if validate and stopped != "early stopping":
            score(time.perf_counter())
        if best_state is not None:
            self.load(best_state)
        self.mode(False)
        return {
            "frozenBlocks": f"stem + {self.split} of {len(self.model._blocks)} blocks",
            "augmentation": "random resized crop + flip + colour jitter, fresh every step",
            "images": n_rows,
            "precision": self.precision,
            "probedSecondsPerStep": {k: round(v, 4) for k, v in timings.items()},
            "plannedEpochs": round(epochs, 2),
            "steps": steps,
            "epochs": round(steps * batch_size / n_rows, 2),
            "stopped": stopped,
            "bestStep": best_step if validate else steps,
            "trainedSeconds": round(time.perf_counter() - begin, 1),
            "secondsPerStep": round(float(np.mean(step_times)), 4) if step_times else None,
            "validationHistory": history,
        }


# --------------------------------------------------------------------------- scoring, augmentation


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


def _temperature(logits: np.ndarray, labels: np.ndarray, multilabel: bool) -> float:
    """The factor on the logits (at most ~1.6) that minimises the log loss of ``labels``."""
    from scipy.optimize import minimize_scalar

    def loss(log_slope: float) -> float:
        return _scores(learn.link(logits * math.exp(log_slope), multilabel), labels, multilabel)["logLoss"]

    return float(math.exp(minimize_scalar(loss, bounds=(-6.0, 0.5), method="bounded").x))


def _joint_head(heads: list[learn.LinearHead], slope: float) -> learn.LinearHead:
    """One head on the features of several networks side by side: the mean of their logits, times ``slope``."""
    k = len(heads)
    weights = np.concatenate([h.weights for h in heads]) * (slope / k)
    bias = np.sum([h.bias for h in heads], axis=0) * (slope / k)
    return learn.LinearHead(weights.astype(np.float32), bias.astype(np.float32), heads[0].multilabel)


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
