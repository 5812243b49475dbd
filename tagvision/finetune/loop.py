"""One training schedule, whatever the network: learning rate, scoring points, early stopping,
re-planning once the steps are timed, and the estimated time left.

The network is behind :class:`Trainee` and the clock is injected, so every decision the schedule
takes from time (when to stop, when to score, what to report as time left) can be tested with a
fake network and a fake clock. Progress through the schedule is the larger of the share of its
time and the share of its epochs used: it drives the learning rate (warm-up, then a cosine to
zero) and the scoring points, so the schedule ends cleanly whichever runs out first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from tagvision.clock import Clock
from tagvision.finetune.recipe import Recipe

Report = Callable[[str, int, int, float | None], None]
PROBE = ("float32", "float32", "bfloat16", "bfloat16")  # the second step of each is timed (the first sets up)


class Stop(StrEnum):
    TIME = "time"
    EPOCHS = "epochs"
    EARLY = "early stopping"
    FIRST_RUN_BEST = "epoch of the first run's best score"


@dataclass(frozen=True)
class Scored:
    """A validation score: the figures (``primary`` first: higher is better) and the logits they came from."""

    primary: float
    figures: dict[str, Any]
    logits: np.ndarray


class Trainee(Protocol):
    """What the schedule trains. ``precision`` is None until the schedule has measured which is faster."""

    precision: str | None

    def step(self, rows: np.ndarray, lr: float, precision: str) -> None: ...

    def score(self) -> Scored: ...

    def snapshot(self) -> object: ...

    def restore(self, snapshot: object) -> None: ...


@dataclass(frozen=True)
class Schedule:
    """A schedule to run: train on ``rows`` until the clock reads ``end`` or after ``epochs``, whichever first.

    ``validate``: score the validation split from ``Recipe.scores_from`` on and keep the best state;
    ``stop_epoch``: end there (a refit stopping where its first run was best).
    """

    rows: np.ndarray
    end: float
    epochs: float
    validate: bool
    stop_epoch: float | None = None


@dataclass
class Hooks:
    """What the schedule asks of the job: all optional, all in seconds of the injected clock."""

    step_guess: float = 0.0  # a step's cost before one is timed
    replan: Callable[[float], tuple[float, float]] | None = None  # measured step -> (end, epochs)
    latest_end: Callable[[float], float] | None = None  # recent step cost -> the latest end the budget allows
    score_seconds: Callable[[float], float] = lambda step: 0.0  # step cost -> cost of one validation score
    after: Callable[[], float] = lambda: 0.0  # seconds of work after this schedule (for the time left)
    report: Report = lambda stage, done, total, eta: None


@dataclass
class Log:
    """What a schedule did."""

    images: int
    planned_epochs: float
    precision: str | None = None
    probed: dict[str, float] = field(default_factory=dict)  # seconds of a step, by precision
    steps: int = 0
    epochs: float = 0.0
    stopped: Stop = Stop.TIME
    best_step: int = 0
    seconds: float = 0.0
    step_times: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: Scored | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "precision": self.precision,
            "probedSecondsPerStep": {k: round(v, 4) for k, v in self.probed.items()},
            "plannedEpochs": round(self.planned_epochs, 2),
            "steps": self.steps,
            "epochs": round(self.epochs, 2),
            "stopped": self.stopped.value,
            "bestStep": self.best_step,
            "trainedSeconds": round(self.seconds, 1),
            "secondsPerStep": round(float(np.mean(self.step_times)), 4) if self.step_times else None,
            "validationHistory": self.history,
        }


def learning_rate(recipe: Recipe, fraction: float) -> float:
    """The learning rate at ``fraction`` of the schedule: a linear warm-up, then a cosine to zero."""
    warmup = recipe.warmup_fraction
    if fraction < warmup:
        return recipe.lr * (fraction + 0.02) / (warmup + 0.02)
    return recipe.lr * 0.5 * (1 + math.cos(math.pi * (fraction - warmup) / (1 - warmup)))


class Loop:
    """Runs one :class:`Schedule` on a :class:`Trainee`; ``run()`` returns its :class:`Log`."""

    def __init__(
        self,
        trainee: Trainee,
        schedule: Schedule,
        recipe: Recipe,
        clock: Clock,
        rng: np.random.Generator,
        hooks: Hooks | None = None,
    ) -> None:
        self.trainee, self.recipe, self.clock, self.rng = trainee, recipe, clock, rng
        self.hooks = hooks or Hooks()
        self.rows, self.end, self.epochs = schedule.rows, schedule.end, schedule.epochs
        self.validate, self.stop_epoch = schedule.validate, schedule.stop_epoch
        self.batch_size = min(recipe.batch_size, len(self.rows))
        self.log = Log(len(self.rows), schedule.epochs, trainee.precision)
        self.probe = PROBE if trainee.precision is None else ()
        self.planned = False  # the steps are timed and the schedule re-planned
        self.score_at = self._scoring_points() if schedule.validate else []
        self.below = 0  # scores in a row below the best
        self.best_state: object = None

    def run(self) -> Log:
        self.begin = self.clock.monotonic()
        self.score_cost = self.hooks.score_seconds(self.hooks.step_guess)
        self.order, self.pos = self.rng.permutation(len(self.rows)), 0
        while (stop := self._stop(self.clock.monotonic())) is None:
            if self._score_due():
                if not self._score():
                    stop = Stop.EARLY
                    break
                continue
            self._step()
        self.log.stopped = stop
        if self.trainee.precision is None:  # ended before the probe did: the faster of those timed, else float32
            self.trainee.precision = self.log.precision = min(
                self.log.probed, key=self.log.probed.__getitem__, default="float32"
            )
        if self.validate and stop is not Stop.EARLY:
            self._score()
        if self.log.best is not None:
            self.trainee.restore(self.best_state)
        self.log.seconds = self.clock.monotonic() - self.begin
        self.log.epochs = self.epoch()
        if not self.validate:
            self.log.best_step = self.log.steps
        return self.log

    # -- where the schedule is

    def epoch(self) -> float:
        return self.log.steps * self.batch_size / len(self.rows)

    def fraction(self, now: float) -> float:
        """The share of the schedule used: of its time or of its epochs, whichever is larger."""
        return max((now - self.begin) / max(self.end - self.begin, 1e-3), self.epoch() / max(self.epochs, 1e-6))

    def _scoring_points(self) -> list[float]:
        """Fractions at which the validation split is scored (the last score comes at the end)."""
        r = self.recipe
        return [r.scores_from + (1 - r.scores_from) * (k + 1) / r.evaluations for k in range(r.evaluations)][:-1]

    def _stop(self, now: float) -> Stop | None:
        if self.stop_epoch is not None and self.epoch() >= self.stop_epoch - 1e-9:
            return Stop.FIRST_RUN_BEST
        if self.fraction(now) >= 1:
            return Stop.EPOCHS if self.epoch() >= self.epochs - 1e-9 else Stop.TIME
        recent = max(self.log.step_times[-5:], default=self.hooks.step_guess)  # the slowest recent: cores are shared
        end = (
            self.end
            if self.hooks.latest_end is None or not self.planned
            else min(self.end, self.hooks.latest_end(recent))
        )
        if now + recent > end:
            return Stop.TIME
        return None

    # -- scoring

    def _score_due(self) -> bool:
        """Whether a scoring point has been passed; points that would cost more than a tenth of the
        schedule's time are dropped (the last score at the end always happens)."""
        fraction = self.fraction(self.clock.monotonic())
        if not self.score_at or fraction < self.score_at[0]:
            return False
        self.score_at = [p for p in self.score_at if p > fraction]
        return self.score_cost * (len(self.score_at) + 2) <= 0.1 * (self.end - self.begin)

    def _score(self) -> bool:
        """Score the validation split and keep the best state; False when two scores in a row fell below it."""
        started = self.clock.monotonic()
        self.hooks.report("validating", self.log.steps, self.log.steps, None)
        scored = self.trainee.score()
        entry = {"step": self.log.steps, "epoch": round(self.epoch(), 2), "seconds": round(started - self.begin, 1)}
        self.log.history.append({**entry, **scored.figures})
        best = self.log.best
        if best is None or scored.primary >= best.primary:  # a later state wins a tie
            self.log.best, self.log.best_step, self.below = scored, self.log.steps, 0
            self.best_state = self.trainee.snapshot()
        else:
            self.below += 1
        self.score_cost = self.clock.monotonic() - started
        return self.below < 2

    # -- training

    def _step(self) -> None:
        started = self.clock.monotonic()
        if self.pos + self.batch_size > len(self.rows):
            self.order, self.pos = self.rng.permutation(len(self.rows)), 0
        batch = self.rows[self.order[self.pos : self.pos + self.batch_size]]
        self.pos += self.batch_size
        steps = self.log.steps
        precision = self.probe[steps] if steps < len(self.probe) else self.trainee.precision
        assert precision is not None
        self.trainee.step(batch, learning_rate(self.recipe, self.fraction(started)), precision)
        self.log.step_times.append(self.clock.monotonic() - started)
        self.log.steps += 1
        if self.probe and self.log.steps in (2, 4):
            self.log.probed[precision] = self.log.step_times[-1]
        if not self.planned and self.log.steps >= max(len(self.probe), 2):
            self._plan()
        self._report()

    def _plan(self) -> None:
        """Once the steps are timed: the faster precision, and the schedule re-planned from the measured step."""
        if self.probe:
            self.trainee.precision = self.log.precision = min(self.log.probed, key=self.log.probed.__getitem__)
            self.log.step_times = [self.log.probed[self.log.precision]]  # the probing steps mixed precisions
        measured = float(np.median(self.log.step_times[-2:]))
        self.score_cost = self.hooks.score_seconds(measured)
        if self.hooks.replan is not None:
            self.end, self.epochs = self.hooks.replan(measured)
            self.log.planned_epochs = self.epochs
        self.planned = True

    def _report(self) -> None:
        """Steps done of the steps expected, and the time left: unknown (None) until the schedule is planned."""
        now = self.clock.monotonic()
        left = max(1e-6, 1 - self.fraction(now))
        steps = self.log.steps
        eta = None
        if self.planned:
            last_epoch = min(self.epochs, self.stop_epoch if self.stop_epoch is not None else self.epochs)
            steps_left = max(0.0, last_epoch * len(self.rows) / self.batch_size - steps)
            step_cost = float(np.median(self.log.step_times[-5:])) * (1.05 if self.validate else 1.0)
            eta = min(self.end - now, steps_left * step_cost) + self.hooks.after()
        self.hooks.report("fine-tuning", steps, steps + int(steps * left / max(1 - left, 1e-6)), eta)
