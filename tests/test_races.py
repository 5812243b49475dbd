"""Concurrent writers racing for the same unique row get the answer a lone writer would, never a crash.

Each test forces its race: both writers are held at a barrier after their check and before their write,
so both have decided "it is new" when they write, on any machine. Real SQLite file, the real service.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import pytest
from PIL import Image
from sqlalchemy import delete

from tagvision.errors import Conflict, TrainingError
from tagvision.service import NewImage
from tagvision.store import queries
from tagvision.store.models import Acquisition, AcquisitionItem

WRITERS = 4


def race(monkeypatch: pytest.MonkeyPatch, target: object, name: str, writers: int = WRITERS) -> None:
    """Hold the first call of ``target.name`` in each of ``writers`` threads until all have made it."""
    barrier = threading.Barrier(writers, timeout=60)
    original = getattr(target, name)
    waited = threading.local()

    def held(*args, **kwargs):
        result = original(*args, **kwargs)
        if not getattr(waited, "done", False):
            waited.done = True
            barrier.wait()
        return result

    monkeypatch.setattr(target, name, held)


def run_together(calls: list[Callable[[], object]]) -> list[object]:
    """Run each call on its own thread; returns what each returned or raised."""
    results: list[object] = [None] * len(calls)

    def run(k: int) -> None:
        try:
            results[k] = calls[k]()
        except Exception as exc:  # what a racing writer raises is the point of the test
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def png(k: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (k * 40 % 256, 80, 160)).save(out, "PNG")
    return out.getvalue()


def test_identical_uploads_at_once_are_added_once_and_the_rest_are_duplicates(svc, monkeypatch) -> None:
    svc.projects.create("p")
    svc.projects.create_tags("p", ["a"])
    race(monkeypatch, queries, "existing_hashes")
    batch = [NewImage(f"{k}.png", lambda k=k: png(k), ("a",)) for k in range(6)]
    summaries = run_together([lambda: svc.images.add("p", batch) for _ in range(WRITERS)])

    assert not [s for s in summaries if isinstance(s, Exception)], summaries
    statuses = [r.status for s in summaries for r in s.results]
    assert statuses.count("OK") == 6 and statuses.count("OKDuplicate") == 6 * (WRITERS - 1)
    ids = {r.image_id for s in summaries for r in s.results}
    assert len(ids) == 6 and svc.images.count("p") == 6


def test_one_project_name_taken_at_once_is_a_conflict_not_a_crash(svc, monkeypatch) -> None:
    from tagvision.service import projects

    race(monkeypatch, projects, "_description")
    results = run_together([lambda: svc.projects.create("shop") for _ in range(WRITERS)])

    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(conflicts) == WRITERS - 1 and all(c.code == "BadRequestProjectNameNotUnique" for c in conflicts)
    assert len(svc.projects.list()) == 1


def test_one_tag_name_taken_at_once_is_a_conflict(svc, monkeypatch) -> None:
    from tagvision.service import projects

    svc.projects.create("p")
    race(monkeypatch, projects, "Tag")  # between the name check and the insert
    results = run_together([lambda: svc.projects.create_tags("p", ["heels"]) for _ in range(WRITERS)])

    monkeypatch.undo()  # list_tags reads the Tag model too
    conflicts = [r for r in results if isinstance(r, Conflict)]
    assert len(conflicts) == WRITERS - 1 and {c.code for c in conflicts} == {"BadRequestTagNameNotUnique"}
    assert [t.name for t in svc.projects.list_tags("p")] == ["heels"]


def test_two_trainings_started_at_once_one_is_refused(svc, monkeypatch) -> None:
    from tagvision.service import training

    svc.projects.create("p")
    svc.projects.create_tags("p", ["a", "b"])
    svc.images.add("p", [NewImage(f"{k}.png", lambda k=k: png(k), ("a" if k < 5 else "b",)) for k in range(10)])
    race(monkeypatch, training, "_next_name", writers=2)
    results = run_together([lambda: svc.training.start("p") for _ in range(2)])

    refused = [r for r in results if isinstance(r, TrainingError)]
    assert len(refused) == 1 and refused[0].code == "BadRequestTrainingAlreadyInProgress", results
    assert [i.status for i in svc.training.iterations("p")] == ["Training"]


def test_the_same_embeddings_cached_at_once_are_kept_once(svc, monkeypatch) -> None:
    from tagvision.store import models

    svc.projects.create("p")
    svc.projects.create_tags("p", ["a"])
    svc.images.add("p", [NewImage(f"{k}.png", lambda k=k: png(k), ("a",)) for k in range(3)])
    hashes = [i.sha256 for i in svc.images.list("p")]
    race(monkeypatch, queries, "cached_embedding_hashes", writers=2)
    results = run_together(
        [lambda: svc.training.cache_embeddings(svc.projects.get("p").domain, hashes) for _ in range(2)]
    )

    assert results == [3, 3]  # both computed all three; the second writer's rows were skipped, not an error
    with svc.ctx.db.session() as session:
        assert session.query(models.Embedding).count() == 3


def test_an_acquisition_deleted_while_its_candidates_are_added_is_no_crash(svc, monkeypatch) -> None:
    """Committing candidates adds the images first, then marks the candidates: if the acquisition was deleted in
    between (its candidates with it), the images stay added and there is nothing left to mark."""
    project = svc.projects.create("p")
    (tag,) = svc.projects.create_tags("p", ["a"])
    with svc.ctx.db.session() as session:
        acquisition = Acquisition(project_id=project.id, status="Completed", review=True)
        session.add(acquisition)
        session.flush()
        item = AcquisitionItem(
            acquisition_id=acquisition.id,
            project_id=project.id,
            tag_id=tag.id,
            key="library:one",
            status="Pending",
            sha256=svc.ctx.blobs.put(png(1)),
            source={"url": "file:///one.png"},
        )
        session.add(item)
        session.flush()
        acquisition_id, item_id = acquisition.id, item.id
    add = svc.acquisitions.images.add

    def add_then_delete(ref, items, **kwargs):
        summary = add(ref, items, **kwargs)
        with svc.ctx.db.session() as session:
            session.execute(delete(Acquisition).where(Acquisition.id == acquisition_id))
        return summary

    monkeypatch.setattr(svc.acquisitions.images, "add", add_then_delete)
    summary = svc.acquisitions.commit("p", acquisition_id, [item_id])
    assert summary.count("OK") == 1
    assert svc.images.count("p") == 1
