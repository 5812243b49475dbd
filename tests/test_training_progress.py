"""Quick training never looks frozen: the head's fit reports its steps, the progress recorder writes every
change of stage (its once-a-second throttle only drops repeats within a stage), and an iteration knows its
image and tag counts from the moment it starts. Real photos, no embedding (nothing here trains)."""

from __future__ import annotations

import numpy as np

from tagvision import learn
from tagvision.clock import ManualClock
from tagvision.service import NewImage
from tests.conftest import CLOTHING, photos


def test_the_quick_fit_reports_every_step_up_to_its_total() -> None:
    rng = np.random.default_rng(0)
    labels = np.eye(3, dtype=bool)[np.repeat(np.arange(3), 6)]
    plain = rng.normal(size=(18, 16)).astype(np.float32) + labels @ rng.normal(size=(3, 16)).astype(np.float32)
    flipped = plain + rng.normal(scale=0.01, size=plain.shape).astype(np.float32)
    steps: list[tuple[int, int]] = []
    model = learn.QuickClassifier().fit(
        plain, flipped, labels, progress=lambda done, total: steps.append((done, total))
    )
    total = steps[0][1]
    folds, shrinkages = int(model.folds_.max()) + 1, len(model.shrinkages)
    assert total == folds * (shrinkages + 1) + shrinkages + 1
    assert [done for done, _ in steps] == list(range(total + 1)) and {t for _, t in steps} == {total}
    unreported = learn.QuickClassifier().fit(plain, flipped, labels)
    np.testing.assert_array_equal(unreported.head_.weights, model.head_.weights)  # reporting changes nothing


def test_a_training_iteration_has_its_counts_and_every_stage_is_recorded(svc) -> None:
    project = svc.projects.create("p")
    tags = svc.projects.create_tags(project.id, ["dress", "hat"])
    items = [
        NewImage(str(path), path.read_bytes, (tag.id,))
        for tag in tags
        for path in photos(CLOTHING, "train", tag.name, 5)
    ]
    svc.images.add(project.id, items)
    started = svc.training.start(project.id)
    assert (started.status, started.image_count, started.tag_count) == ("Training", 10, 2)
    assert svc.training.iteration(project.id, started.id).image_count == 10  # the portal's table shows it

    clock = ManualClock()
    record = svc.training.recorder(started.id, clock=clock)

    def stage() -> tuple[str, int, int]:
        step = svc.training.iteration(project.id, started.id).progress or {}
        return step.get("stage", ""), step.get("done", -1), step.get("total", -1)

    clock.sleep(5)
    record("embedding images", 3, 10)
    assert stage() == ("embedding images", 3, 10)
    record("embedding images", 4, 10)  # within the second: a repeat of the stage, dropped
    assert stage() == ("embedding images", 3, 10)
    record("embedding images", 10, 10)  # a stage's last step is always written
    assert stage() == ("embedding images", 10, 10)
    record("fitting", 0, 25)  # a new stage is always written, however soon
    assert stage() == ("fitting", 0, 25)
    record("fitting", 1, 25)
    assert stage() == ("fitting", 0, 25)
    clock.sleep(1.5)
    record("fitting", 7, 25)
    assert stage() == ("fitting", 7, 25)
