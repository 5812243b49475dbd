"""The decisions advanced training takes from time, with made-up costs and a fake clock: no torch, no photos.

The planner (costs in, decisions out) and one training schedule (a fake network whose steps advance a fake
clock) are tested here exactly; how long real training takes on a real machine is ``bench/advanced.py``'s.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagvision.clock import ManualClock
from tagvision.finetune import Recipe
from tagvision.finetune.loop import Hooks, Loop, Schedule, Scored, Stop, learning_rate
from tagvision.finetune.planner import Costs, OutOfTime, Planner, Sizes, TooSlow

SIZES = Sizes(train=24, validation=6, every=30, batch_size=24)


# --------------------------------------------------------------------------- the planner


def test_fine_tuning_starts_only_when_an_epoch_and_what_follows_fit() -> None:
    planner = Planner(Recipe(), SIZES)
    costs = Costs(images_per_second=100.0)  # a step guessed at 4 forwards of a batch: 0.96 s
    assert costs.step(SIZES) == pytest.approx(0.96)
    # Set-up 2 s + one step + the reserve: (a last score 0.16 s + an export 1 + 300/100 s) * 1.2 + 0.5.
    need = 2.0 + 0.96 + (0.16 + 4.0) * 1.2 + 0.5
    with pytest.raises(OutOfTime, match=f"about {need:.1f} s needed"):
        planner.check_start(need - 0.05, costs)
    planner.check_start(need + 0.05, costs)


def test_a_refit_is_planned_when_two_schedules_of_its_minimum_fit() -> None:
    recipe = Recipe(refit_min_epochs=5.0, max_epochs=10.0)
    planner = Planner(recipe, SIZES)
    costs = Costs(images_per_second=100.0, step_seconds=1.0, export_seconds=2.0)
    part, every = planner.epoch_seconds(costs)  # one step per epoch on 24 (+5 % scoring), two on 30 images
    assert (part, every) == (pytest.approx(1.05), 2.0)
    reserve = planner.reserve(costs, networks=2)
    # Exactly 6 epochs per schedule fit: a refit, both schedules of 6 epochs, the first given its share.
    plan = planner.plan(reserve + 6 * (part + every), costs)
    assert plan.refit and plan.epochs == pytest.approx(6.0)
    assert plan.seconds == pytest.approx(6 * part) and plan.after == pytest.approx(6 * every + reserve)
    # Plenty of time: both schedules get the most epochs; the first may take its share of the time.
    plan = planner.plan(1000.0, costs)
    assert plan.refit and plan.epochs == 10.0 and plan.seconds > 10 * part
    # 4 epochs per schedule fit: no refit, the first schedule has all the time (less the reserve).
    left = planner.reserve(costs, networks=2) + 4 * (part + every)
    plan = planner.plan(left, costs)
    assert not plan.refit and plan.epochs == 10.0
    assert plan.seconds == pytest.approx(left - planner.reserve(costs)) and plan.after == planner.reserve(costs)


def test_a_larger_backbone_is_tuned_only_when_its_epochs_fit() -> None:
    planner = Planner(Recipe(larger_epochs=10.0), SIZES)
    costs = Costs(images_per_second=100.0, step_seconds=1.0, export_seconds=2.0)
    enough = planner.reserve(costs, networks=2) + 10 * sum(planner.epoch_seconds(costs))
    planner.larger_fits(enough, costs, guessed=False)
    with pytest.raises(TooSlow, match=r"^9\.\d epochs per schedule fit at its measured 1.00 s per step"):
        planner.larger_fits(enough - 1.0, costs, guessed=False)
    with pytest.raises(TooSlow, match=r"^about 9\.\d epochs .*\(guessed from its stock speed, 100 images/s"):
        planner.larger_fits(enough - 1.0, costs, guessed=True)


def test_the_reserve_grows_when_the_machine_slows_down() -> None:
    planner = Planner(Recipe(), SIZES)
    costs = Costs(images_per_second=100.0, step_seconds=1.0, export_seconds=2.0)
    quiet = planner.reserve(costs)
    costs.pace = 3.0  # steps now take three times what the plan was made with
    assert planner.reserve(costs) == pytest.approx(3 * quiet)
    costs.pace = 0.5  # a faster machine never shrinks it below what was measured
    assert planner.reserve(costs) == pytest.approx(quiet)


# --------------------------------------------------------------------------- one schedule


class FakeNetwork:
    """Steps cost ``step_seconds[precision]`` of the fake clock; scores come from ``scores`` in turn."""

    def __init__(
        self,
        clock: ManualClock,
        step_seconds: dict[str, float],
        scores: list[float] | None = None,
        precision: str | None = None,
        score_seconds: float = 0.1,
    ) -> None:
        self.clock, self.step_seconds, self.scores = clock, step_seconds, list(scores or [])
        self.precision, self.score_seconds = precision, score_seconds
        self.state = 0  # steps taken: what a snapshot keeps
        self.steps: list[tuple[float, float, str, int]] = []  # (when, lr, precision, batch size)

    def step(self, rows: np.ndarray, lr: float, precision: str) -> None:
        self.steps.append((self.clock.monotonic(), lr, precision, len(rows)))
        self.clock.advance(self.step_seconds[precision])
        self.state += 1

    def score(self) -> Scored:
        self.clock.advance(self.score_seconds)
        primary = self.scores.pop(0) if self.scores else 0.5
        return Scored(primary, {"primary": primary}, np.full((1, 2), float(self.state)))

    def snapshot(self) -> object:
        return self.state

    def restore(self, snapshot: object) -> None:
        assert isinstance(snapshot, int)
        self.state = snapshot


def run(
    network: FakeNetwork,
    clock: ManualClock,
    *,
    rows: int = 64,
    end: float = 100.0,
    epochs: float = 1000.0,
    validate: bool = False,
    stop_epoch: float | None = None,
    recipe: Recipe | None = None,
    **hooks,
) -> tuple[Loop, list[tuple[str, int, int, float | None, float]]]:
    events: list[tuple[str, int, int, float | None, float]] = []
    hooks.setdefault(
        "report", lambda stage, done, total, eta: events.append((stage, done, total, eta, clock.monotonic()))
    )
    schedule = Schedule(np.arange(rows), end, epochs, validate, stop_epoch)
    loop = Loop(network, schedule, recipe or Recipe(batch_size=32), clock, np.random.default_rng(0), Hooks(**hooks))
    loop.run()
    return loop, events


def test_a_schedule_measures_the_faster_precision_and_ends_on_time() -> None:
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 2.0, "bfloat16": 1.0})
    loop, _ = run(network, clock, end=50.0)
    log = loop.log
    assert [p for _, _, p, _ in network.steps[:4]] == ["float32", "float32", "bfloat16", "bfloat16"]
    assert log.probed == {"float32": 2.0, "bfloat16": 1.0} and log.precision == network.precision == "bfloat16"
    assert {p for _, _, p, _ in network.steps[4:]} == {"bfloat16"}
    # 6 s of probing, then 1 s steps: the last step ends exactly at the end, never past it.
    assert log.stopped is Stop.TIME and clock.monotonic() == 50.0 and log.steps == 4 + 44
    assert all(size == 32 for *_, size in network.steps)


def test_a_schedule_shorter_than_the_probe_still_settles_its_precision() -> None:
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0, "bfloat16": 0.5})
    loop, _ = run(network, clock, rows=32, end=1e6, epochs=2.0)  # two steps: bfloat16 is never timed
    assert loop.log.steps == 2 and network.precision == loop.log.precision == "float32"


def test_the_learning_rate_warms_up_then_follows_a_cosine_to_zero() -> None:
    recipe = Recipe(batch_size=32, warmup_fraction=0.05, lr=1e-3)
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0}, precision="float32")
    run(network, clock, end=100.0, recipe=recipe)
    lrs = [lr for _, lr, _, _ in network.steps]
    peak = int(np.argmax(lrs))
    assert 3 <= peak <= 6 and max(lrs) == pytest.approx(1e-3, rel=0.01)
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False)) and lrs[-1] < 1e-5
    assert learning_rate(recipe, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_a_schedule_ends_after_its_epochs_when_time_is_plentiful() -> None:
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0, "bfloat16": 1.5})
    loop, _ = run(network, clock, rows=64, end=1e6, epochs=3.0)
    assert loop.log.stopped is Stop.EPOCHS and loop.log.steps == 6 and loop.log.epochs == 3.0


def test_early_stopping_keeps_the_best_state() -> None:
    """Scores from half-way on; two in a row below the best stop the schedule and the best state comes back."""
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0}, scores=[0.5, 0.7, 0.6, 0.55], precision="float32")
    loop, events = run(network, clock, end=100.0, validate=True, recipe=Recipe(batch_size=32, evaluations=5))
    log = loop.log
    assert [h["primary"] for h in log.history] == [0.5, 0.7, 0.6, 0.55]
    # Scored at 60, 70, 80 and 90 % of the schedule's time (steps of 1 s, scores of 0.1 s).
    assert [h["step"] for h in log.history] == [60, 70, 80, 90]
    assert log.stopped is Stop.EARLY and log.best is not None and log.best.primary == 0.7
    assert network.state == log.best_step == 70 and log.best.logits[0, 0] == 70.0
    assert [e[0] for e in events].count("validating") == 4


def test_scoring_that_would_eat_the_schedule_happens_once_at_the_end() -> None:
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0}, precision="float32", score_seconds=5.0)
    loop, _ = run(network, clock, end=40.0, validate=True, score_seconds=lambda step: 5.0)
    assert len(loop.log.history) == 1 and loop.log.history[0]["step"] == loop.log.steps


def test_the_schedule_is_replanned_from_its_measured_step() -> None:
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 3.0, "bfloat16": 2.0})
    asked: list[float] = []

    def replan(step: float) -> tuple[float, float]:
        asked.append(step)
        return clock.monotonic() + 20.0, 7.5

    loop, _ = run(network, clock, end=1000.0, replan=replan)
    assert asked == [2.0]  # once, with the faster precision's timed step
    assert loop.log.planned_epochs == 7.5 and loop.log.stopped is Stop.TIME
    assert clock.monotonic() == 10.0 + 20.0  # 10 s of probing, then the 20 s it was given


def test_the_time_left_is_the_time_that_was_left() -> None:
    """Unknown (None) until the steps are timed, then exact on a fake clock: the schedule's own time left plus
    what the job says comes after it."""
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0, "bfloat16": 1.0})
    loop, events = run(network, clock, end=60.0, after=lambda: 7.0)
    end = clock.monotonic()
    assert [eta for *_, eta, _ in events[:3]] == [None, None, None]
    for _, done, total, eta, when in events[3:]:
        assert eta == pytest.approx(end - when + 7.0, abs=1.0), (done, eta, end - when)
        assert done <= total


def test_a_machine_that_slows_down_ends_the_schedule_early_enough() -> None:
    """Steps get three times slower half-way: the schedule stops where what follows it still fits the budget."""
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0}, precision="float32")
    reserve = 5.0

    def latest_end(recent: float) -> float:  # the job: deadline - its reserve, scaled by the pace now
        return 100.0 - reserve * max(1.0, recent / 1.0)

    original = network.step

    def slowing(rows: np.ndarray, lr: float, precision: str) -> None:
        network.step_seconds["float32"] = 3.0 if clock.monotonic() >= 40 else 1.0
        original(rows, lr, precision)

    network.step = slowing  # type: ignore[method-assign]
    loop, _ = run(network, clock, end=95.0, latest_end=latest_end)
    assert loop.log.stopped is Stop.TIME
    assert clock.monotonic() <= 100.0 - 3 * reserve, clock.monotonic()  # the reserve, at the slower pace, is left


def test_a_refit_stops_at_the_epoch_where_its_first_run_was_best() -> None:
    clock = ManualClock()
    network = FakeNetwork(clock, {"float32": 1.0}, precision="float32")
    loop, _ = run(network, clock, rows=64, end=1e6, epochs=10.0, stop_epoch=2.5)
    # Two steps an epoch: the fifth step reaches epoch 2.5.
    assert loop.log.stopped is Stop.FIRST_RUN_BEST and loop.log.epochs == 2.5 and loop.log.best_step == 5
    assert math.isclose(loop.log.to_json()["epochs"], 2.5)
