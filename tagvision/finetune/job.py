"""One advanced training, stage by stage, within a wall-clock budget read from an injected clock.

1. Decode every image once (:mod:`~tagvision.finetune.data`); embed the centre crops and their mirrors
   with each stock backbone involved (ONNX Runtime), timing its speed.
2. Hold out a stratified validation split; fit the quick head on the training part (the candidate)
   and on every image (served when fine-tuning loses, cross-validated; the refit's warm start). These
   fixed costs come before the plan, so the plan is made with what is really left.
3. Fine-tune the largest allowed backbone when two schedules of ``Recipe.larger_epochs`` fit at its
   speed (guessed from its stock speed, then measured on its first steps), else the next smaller one
   (:mod:`~tagvision.finetune.planner`); one schedule on the training part (:mod:`~tagvision.finetune.loop`).
4. Choose against the quick head on the validation split (:mod:`~tagvision.finetune.choice`).
5. When the plan holds it and fine-tuning won, the same schedule again on every image (the refit),
   served beside the first run, logits averaged; the figures stay the first run's.
6. Export the served network(s) to ONNX with the stock backbone's input.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tagvision import backbone, learn, metrics
from tagvision.clock import SYSTEM, Clock
from tagvision.finetune import choice, loop
from tagvision.finetune.data import Decoded
from tagvision.finetune.network import Network, Task, export
from tagvision.finetune.planner import Costs, OutOfTime, Planner, Sizes, TooSlow
from tagvision.finetune.recipe import Recipe
from tagvision.finetune.report import Evaluated, FineTuneResult, Report, Tuning

Progress = Callable[[str, int, int, float], None]
SLACK = 0.03  # of the budget, kept for the unforeseen: everything is planned to end by 97 %


class _Countdown:
    """The budget on the injected clock, and progress reports whose time left never goes up."""

    def __init__(self, budget: float, clock: Clock, progress: Progress | None) -> None:
        self.clock, self.progress = clock, progress
        self.started = clock.monotonic()
        self.deadline = self.started + budget * (1 - SLACK)
        self.eta = math.inf

    def left(self) -> float:
        return self.deadline - self.clock.monotonic()

    def report(self, stage: str, done: int, total: int, eta: float | None = None) -> None:
        if self.progress is None:
            return
        self.eta = min(self.eta, max(0.0, self.left() if eta is None else eta))  # read as a countdown
        self.progress(stage, done, total, round(self.eta, 2))


class Job:
    """The state shared by the stages of one run."""

    def __init__(
        self,
        spec: backbone.BackboneSpec,
        backbones: Sequence[backbone.BackboneSpec],
        models_dir: Path,
        sources: Sequence[Callable[[], bytes]],
        labels: np.ndarray,
        *,
        multilabel: bool,
        budget: float,
        progress: Progress | None,
        seed: int,
        threads: int,
        recipe: Recipe,
        clock: Clock,
    ) -> None:
        if labels.ndim != 2 or len(labels) != len(sources) or labels.shape[1] < 2:
            raise ValueError(f"labels {labels.shape} do not match {len(sources)} images with at least two tags")
        if not backbones:
            raise ValueError("no backbone to fine-tune")
        self.spec, self.models_dir, self.sources, self.labels = spec, models_dir, list(sources), labels
        self.backbones = sorted(set(backbones), key=lambda b: b.image_size, reverse=True)  # largest first
        self.specs = list(dict.fromkeys([spec, *self.backbones]))
        self.multilabel, self.seed, self.threads, self.recipe = multilabel, seed, threads, recipe
        self.clock = clock
        self.countdown = _Countdown(budget, clock, progress)
        self.rng = np.random.default_rng(seed)
        self.report = Report(spec.model_name, budget, threads)

    def timed(self, name: str, since: float) -> float:
        now = self.clock.monotonic()
        self.report.seconds[name] = round(self.report.seconds.get(name, 0.0) + now - since, 3)
        return now

    # -- stages

    def run(self) -> FineTuneResult:
        t = self.clock.monotonic()
        self.data = Decoded(
            self.sources, self.specs, self.threads, lambda done, n: self.countdown.report("decoding", done, n)
        )
        t = self.timed("decoding", t)
        self.stocks = {s.domain: self.stock_embeddings(s) for s in self.specs}
        t = self.timed("stock embeddings", t)
        self.split()
        self.quick, self.quick_every = self.quick_heads()
        self.timed("quick heads", t)
        tuned: Tuning | None = None
        try:
            tuned = self.fine_tuning()
        except OutOfTime as exc:
            self.report.skipped = str(exc)
        wins = self.report.verdict is not None and self.report.verdict.tuned_wins
        if tuned is None or not (wins or self.recipe.force_fine_tuned):
            return self.quick_result()
        return self.tuned_result(tuned)

    def stock_embeddings(self, spec: backbone.BackboneSpec) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of every centre crop and its mirror by ``spec``'s stock network; times its speed."""
        n = len(self.labels)
        self.countdown.report("embedding", 0, n)
        embedder = backbone.Embedder(spec, self.models_dir, threads=self.threads)
        centre = self.data.centres[spec.domain]
        plain, flipped = [], []
        started = self.clock.monotonic()
        for s in range(0, n, embedder.batch_size):
            p, f = embedder.forward_pairs(backbone.normalise(centre[s : s + embedder.batch_size]))
            plain.append(p)
            flipped.append(f)
            self.countdown.report("embedding", min(n, s + embedder.batch_size), n)
        speed = 2 * n / max(self.clock.monotonic() - started, 1e-6)
        self.report.stock_images_per_second[spec.model_name] = round(speed, 1)
        return np.concatenate(plain), np.concatenate(flipped)

    def split(self) -> None:
        """A stratified validation split (a fifth: a tenth of car-damage proved too noisy to choose with)."""
        k = max(2, round(1 / self.recipe.validation_fraction))
        folds = metrics.stratified_folds(self.labels, k_max=k, seed=self.seed)
        self.validation, self.training = np.flatnonzero(folds == 0), np.flatnonzero(folds != 0)
        self.report.split = {
            "train": len(self.training),
            "validation": len(self.validation),
            "folds": int(folds.max()) + 1,
        }

    def quick_heads(self) -> tuple[choice.Candidate, learn.QuickClassifier]:
        """The quick candidate (fitted on the training part, scored on the validation split) and the quick
        classifier on every image (the fallback result, cross-validated)."""
        self.countdown.report("fitting head", 0, 2)
        plain, flipped = self.stocks[self.spec.domain]
        part = self.fit_quick(plain[self.training], flipped[self.training], self.labels[self.training])
        proba = part.head_.predict_proba(plain[self.validation], flipped[self.validation])
        found = choice.figures(proba, self.labels[self.validation], self.multilabel)
        self.countdown.report("fitting head", 1, 2)
        every = self.fit_quick(plain, flipped, self.labels)
        self.countdown.report("fitting head", 2, 2)
        self.report.candidates.append(("quick", found))
        return choice.Candidate("quick", part.head_, proba, found), every

    def fit_quick(self, plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray) -> learn.QuickClassifier:
        return learn.QuickClassifier(multilabel=self.multilabel, seed=self.seed).fit(plain, flipped, labels)

    def fine_tuning(self) -> Tuning:
        """Fine-tune the largest backbone that fits the budget well enough (the smallest always, time allowing)."""
        for k, spec in enumerate(self.backbones):
            larger = k + 1 < len(self.backbones)
            try:
                tuned = self.fine_tune(spec, larger)
            except TooSlow as exc:
                self.report.backbone_choice.append(f"{spec.model_name} not fine-tuned: {exc}")
                continue
            if len(self.backbones) > 1:
                self.report.backbone_choice.append(f"{spec.model_name} fine-tuned")
            return tuned
        raise AssertionError("the smallest backbone never raises TooSlow")

    def fine_tune(self, spec: backbone.BackboneSpec, larger: bool) -> Tuning:
        """Fine-tune ``spec``: the first schedule, the choice against quick, then the refit when planned.
        ``larger``: raise :class:`TooSlow` unless two schedules of ``Recipe.larger_epochs`` fit."""
        sizes = Sizes(
            len(self.training), len(self.validation), len(self.labels), min(self.recipe.batch_size, len(self.training))
        )
        self.costs = Costs(self.report.stock_images_per_second[spec.model_name])
        self.planner = Planner(self.recipe, sizes)
        try:
            self.planner.check_start(self.countdown.left(), self.costs)
        except OutOfTime as exc:
            if larger:
                raise TooSlow(str(exc)) from None
            raise
        if larger:
            self.planner.larger_fits(self.countdown.left(), self.costs, guessed=True)
        import torch  # only once fine-tuning is going to happen: importing it takes seconds

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.schedules(spec, larger)
        finally:
            torch.set_num_threads(previous)

    def schedules(self, spec: backbone.BackboneSpec, larger: bool) -> Tuning:
        """The first schedule, the choice against quick, and the refit when the plan holds one and it won."""
        import torch

        t = self.clock.monotonic()
        self.countdown.report("preparing", 0, 1)
        torch.manual_seed(self.seed)
        task = Task(self.data, self.labels, self.validation, spec, self.multilabel, self.recipe, self.rng)
        stock = self.stocks[spec.domain]
        warm = (
            self.quick.head
            if spec == self.spec
            else self.fit_quick(stock[0][self.training], stock[1][self.training], self.labels[self.training]).head_
        )
        first = Network(task, warm, len(self.training))
        t = self.timed("preparing", t)
        self.refit, self.after = False, self.planner.reserve(self.costs)
        schedule = loop.Schedule(self.training, self.countdown.deadline - self.after, self.recipe.max_epochs, True)
        log = loop.Loop(first, schedule, self.recipe, self.clock, self.rng, self.hooks(larger)).run()
        t = self.timed("fine-tuning", t)
        tuning = Tuning(spec.model_name, self.recipe, f"stem + {first.split} of {len(first.model._blocks)} blocks", log)
        self.report.tuning = tuning  # reported whichever model is served
        head = self.choose(tuning, first)
        self.served = [first]
        wins = self.report.verdict is not None and self.report.verdict.tuned_wins
        if self.refit and (wins or self.recipe.force_fine_tuned):
            refit, tuning.refit = self.refit_schedule(task, first, log)
            self.served.append(refit)
            head = choice.joint_head([first.linear_head(), refit.linear_head()], tuning.temperature)
            self.timed("refit on every image", t)
        self.tuned_head = head
        return tuning

    def choose(self, tuning: Tuning, first: Network) -> learn.LinearHead:
        """Calibrate the first run's best state, score it as a candidate and weigh it against the quick head;
        returns its calibrated head and keeps its validation probabilities."""
        best, labels = tuning.first.best, self.labels[self.validation]
        assert best is not None
        tuning.temperature = choice.temperature(best.logits, labels, self.multilabel)
        self.tuned_proba = learn.link(best.logits * tuning.temperature, self.multilabel)
        found = choice.figures(self.tuned_proba, labels, self.multilabel)
        head = choice.joint_head([first.linear_head()], tuning.temperature)
        self.report.candidates.append(("fine-tuned", found))
        tuned = choice.Candidate("fine-tuned", head, self.tuned_proba, found)
        self.report.verdict = choice.choose(self.quick, tuned, labels, self.multilabel, self.refit, self.seed)
        return head

    def hooks(self, larger: bool) -> loop.Hooks:
        """The first schedule's view of the budget: re-planned once its steps are timed."""

        def replan(measured: float) -> tuple[float, float]:
            self.costs.step_seconds = measured
            if larger:
                self.planner.larger_fits(self.countdown.left(), self.costs, guessed=False)
            plan = self.planner.plan(self.countdown.left(), self.costs)
            self.refit, self.after = plan.refit, plan.after
            return self.clock.monotonic() + plan.seconds, plan.epochs

        return loop.Hooks(
            step_guess=self.costs.step(self.planner.sizes),
            replan=replan,
            latest_end=lambda recent: self.latest_end(recent, networks=2 if self.refit else 1),
            score_seconds=self.planner.score_seconds,
            after=lambda: self.after,
            report=self.countdown.report,
        )

    def latest_end(self, recent: float, networks: int) -> float:
        """When a schedule must end for what follows it to fit, at the machine's pace now."""
        if self.costs.step_seconds:
            self.costs.pace = recent / self.costs.step_seconds
        return self.countdown.deadline - self.planner.reserve(self.costs, networks)

    def refit_schedule(self, task: Task, first: Network, log: loop.Log) -> tuple[Network, loop.Log]:
        """The first schedule again from the pretrained weights on every image, stopping at the epoch where
        the first run scored best."""
        self.countdown.report("preparing", 0, 1)
        stock = self.stocks[task.spec.domain]
        warm = self.quick_every.head_ if task.spec == self.spec else self.fit_quick(*stock, self.labels).head_
        network = Network(task, warm, len(self.labels), precision=first.precision)
        every = np.arange(len(self.labels))
        self.after = self.planner.reserve(self.costs, networks=2)
        best_epoch = log.best_step * self.planner.sizes.batch_size / len(self.training)
        end = self.countdown.deadline - self.after
        schedule = loop.Schedule(every, end, log.epochs, validate=False, stop_epoch=best_epoch)
        hooks = loop.Hooks(
            step_guess=self.costs.step(self.planner.sizes),
            latest_end=lambda recent: self.latest_end(recent, networks=2),
            after=lambda: self.after,
            report=self.countdown.report,
        )
        return network, loop.Loop(network, schedule, self.recipe, self.clock, self.rng, hooks).run()

    # -- results

    def quick_result(self) -> FineTuneResult:
        """A quick training: the quick head on every image, cross-validated."""
        model, n = self.quick_every, len(self.labels)
        self.report.chosen = "quick"
        folds = int(model.folds_.max()) + 1
        self.report.measured_on = metrics.MeasuredOn(metrics.Method.CROSS_VALIDATION, n, n, folds)
        evaluation = Evaluated(model.oof_proba_, self.labels.copy(), np.arange(n), np.asarray(model.folds_))
        self.countdown.report("fitting head", 1, 1, 0.0)
        self.finish()
        return FineTuneResult(None, model.head_, evaluation, self.report, self.spec)

    def tuned_result(self, tuning: Tuning) -> FineTuneResult:
        self.report.chosen = "fine-tuned"
        spec = next(s for s in self.specs if s.model_name == tuning.backbone)
        t = self.clock.monotonic()
        self.countdown.report("exporting", 0, 1)
        onnx = export(self.served, spec)
        self.timed("export", t)
        self.countdown.report("exporting", 1, 1, 0.0)
        head, proba = self.tuned_head, self.tuned_proba
        m, n = len(self.validation), len(self.labels)
        self.report.measured_on = metrics.MeasuredOn(metrics.Method.VALIDATION_SPLIT, m, n, 1, len(self.served) > 1)
        evaluation = Evaluated(proba, self.labels[self.validation].copy(), self.validation.copy(), np.zeros(m, int))
        self.finish()
        return FineTuneResult(onnx, head, evaluation, self.report, spec)

    def finish(self) -> None:
        self.report.seconds["total"] = round(self.clock.monotonic() - self.countdown.started, 3)


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
    clock: Clock = SYSTEM,
) -> FineTuneResult:
    """Fine-tune a backbone on ``images`` (callables returning encoded bytes) with ``labels`` (n, T) bool.

    ``spec`` is the project's backbone: its stock features give the quick candidate. ``backbones`` may be
    fine-tuned (default: ``spec`` alone). Holds ``budget_seconds`` on ``clock``, decoding and export
    included; ``progress(stage, done, total, seconds left)``. ``models_dir`` holds the stock ONNX files.
    """
    return Job(
        spec,
        list(backbones or [spec]),
        models_dir,
        images,
        np.asarray(labels, dtype=bool),
        multilabel=multilabel,
        budget=budget_seconds,
        progress=progress,
        seed=seed,
        threads=threads or os.cpu_count() or 1,
        recipe=recipe or Recipe(),
        clock=clock,
    ).run()
