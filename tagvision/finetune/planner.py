"""The budget planner: costs measured on this machine in, decisions out.

Pure arithmetic (no torch, no clock of its own), so every decision that depends on speed can be
tested with made-up costs. The job measures; the planner says whether fine-tuning fits at all
(:meth:`Planner.check_start`), whether a larger backbone gets enough epochs (:meth:`Planner.larger_fits`),
and how the time left splits between the first schedule and a refit on every image (:meth:`Planner.plan`).
Every cost after training (the last validation score, the export) is reserved before the schedules
get their share, scaled by ``Costs.pace`` when the machine has slowed down since it was measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tagvision.finetune.recipe import Recipe

GUESSED_HEAD_SECONDS = 2.0  # a quick-head fit on 2 cores (1.3-1.7 s), until one is timed
SETUP_SECONDS = 2.0  # building the torch network and its first steps' kernels
STEP_FORWARDS = 4  # a training step of the trained blocks costs about four forward passes
SCORING_OVERHEAD = 1.05  # validation scores while training add about 5 % to a schedule


# Stock forward passes a second (image and mirror each count) on a 2-core machine, before anything is measured.
GUESSED_IMAGES_PER_SECOND = {"efficientnet-lite0": 160.0, "efficientnet-lite2": 70.0}
GUESSED_DECODES_PER_SECOND = 60.0  # a phone photo decoded once per backbone


def minimum_seconds(images: int, backbones: list[str], recipe: Recipe) -> float:
    """A lower estimate of the seconds before advanced training of ``images`` can fine-tune at all: decoding,
    the stock embeddings of every backbone involved, two quick-head fits, one epoch of the smallest backbone
    and its export. A budget below it can only give a quick training late, so the service refuses it."""
    speeds = [GUESSED_IMAGES_PER_SECOND.get(b, 70.0) for b in backbones]
    fixed = images * len(backbones) / GUESSED_DECODES_PER_SECOND + sum(2 * images / ips for ips in speeds)
    smallest = max(speeds)
    train = max(1, round(images * (1 - recipe.validation_fraction)))
    epoch = recipe.min_epochs * STEP_FORWARDS * train / smallest
    return fixed + 2 * GUESSED_HEAD_SECONDS + SETUP_SECONDS + epoch + 1.0 + 300 / smallest


class OutOfTime(Exception):
    """Fine-tuning does not fit in what is left of the budget."""


class TooSlow(Exception):
    """A larger backbone would not get ``Recipe.larger_epochs`` per schedule: the next smaller one is tuned."""


@dataclass(frozen=True)
class Sizes:
    """How many images each stage sees."""

    train: int  # the first schedule's images (the training part of the split)
    validation: int  # the held-out split, scored during and after the first schedule
    every: int  # every image (the refit)
    batch_size: int  # images per step


@dataclass
class Costs:
    """Seconds this machine takes, as measured in this run: the planner's only view of speed."""

    images_per_second: float  # forward passes of the stock backbone being tuned (ONNX Runtime)
    step_seconds: float | None = None  # one training step, once timed; guessed from the forward speed before
    export_seconds: float | None = None  # exporting one network, once timed
    pace: float = 1.0  # recent step time over the step time the plan was made with (> 1: the machine slowed)

    def step(self, sizes: Sizes) -> float:
        return self.step_seconds or STEP_FORWARDS * sizes.batch_size / self.images_per_second

    def export(self, networks: int) -> float:
        """~2 s per network for Lite0 on 2 cores, torch's tracing included; more for slower backbones."""
        one = self.export_seconds or 1.0 + 300 / self.images_per_second
        return one * networks


@dataclass(frozen=True)
class Plan:
    """How the time left is spent on training."""

    epochs: float  # the first schedule's epochs (at most ``Recipe.max_epochs``)
    seconds: float  # the first schedule's share of the time
    refit: bool  # a second schedule on every image follows (then both get ``epochs``)
    after: float  # seconds of work expected after the first schedule (the refit, the reserve): for the ETA


class Planner:
    def __init__(self, recipe: Recipe, sizes: Sizes) -> None:
        self.recipe, self.sizes = recipe, sizes

    def score_seconds(self, step_seconds: float) -> float:
        """Scoring the validation split: its images and mirrors, forward only (a third of a step each)."""
        return 2 * self.sizes.validation / self.sizes.batch_size * step_seconds / 3

    def reserve(self, costs: Costs, networks: int = 1) -> float:
        """Seconds needed after training: a last validation score, then exporting ``networks``."""
        score = self.score_seconds(costs.step(self.sizes))
        return ((score + costs.export(networks)) * 1.2 + 0.5) * max(costs.pace, 1.0)

    def epoch_seconds(self, costs: Costs) -> tuple[float, float]:
        """One epoch of the first schedule (scoring included) and one of the refit on every image."""
        step, batch = costs.step(self.sizes), self.sizes.batch_size
        return (
            math.ceil(self.sizes.train / batch) * step * SCORING_OVERHEAD,
            math.ceil(self.sizes.every / batch) * step,
        )

    def check_start(self, left: float, costs: Costs) -> None:
        """Raise :class:`OutOfTime` unless ``Recipe.min_epochs`` of fine-tuning fit in ``left`` seconds."""
        steps = math.ceil(self.recipe.min_epochs * self.sizes.train / self.sizes.batch_size)
        need = SETUP_SECONDS + steps * costs.step(self.sizes) + self.reserve(costs)
        if left < need:
            raise OutOfTime(f"{left:.1f} s left, about {need:.1f} s needed to fine-tune")

    def epochs_that_fit(self, left: float, costs: Costs) -> float:
        """Epochs of each of two schedules (the training part, then every image) that fit in ``left``."""
        return (left - self.reserve(costs, networks=2)) / sum(self.epoch_seconds(costs))

    def larger_fits(self, left: float, costs: Costs, guessed: bool) -> None:
        """Raise :class:`TooSlow` unless two schedules of ``Recipe.larger_epochs`` fit (a larger backbone's test)."""
        fit = self.epochs_that_fit(left, costs)
        if fit >= self.recipe.larger_epochs:
            return
        if guessed:
            raise TooSlow(
                f"about {fit:.1f} epochs per schedule would fit (guessed from its stock speed, "
                f"{costs.images_per_second:.0f} images/s); it is fine-tuned when {self.recipe.larger_epochs:g} fit"
            )
        raise TooSlow(
            f"{fit:.1f} epochs per schedule fit at its measured {costs.step(self.sizes):.2f} s per step; "
            f"it is fine-tuned when {self.recipe.larger_epochs:g} fit"
        )

    def plan(self, left: float, costs: Costs) -> Plan:
        """Split ``left`` seconds once a step is timed. When two schedules of at least ``Recipe.refit_min_epochs``
        fit, the first gets its share of the time (the refit the rest) and both the same epochs; otherwise the
        first schedule has all the time, up to ``Recipe.max_epochs``."""
        recipe = self.recipe
        fit = self.epochs_that_fit(left, costs)
        epochs = min(recipe.max_epochs, fit)
        if epochs >= recipe.refit_min_epochs:
            part, every = self.epoch_seconds(costs)
            training = left - self.reserve(costs, networks=2)
            return Plan(epochs, training * part / (part + every), True, epochs * every + self.reserve(costs, 2))
        reserve = self.reserve(costs)
        return Plan(recipe.max_epochs, left - reserve, False, reserve)
