"""Jobs claimed by workers, on SQLite and PostgreSQL: one worker per job, leases renewed while a job runs and taken
over once they lapse, cancels and stops passed on through the database; keys and model caches every replica
agrees on. Time-driven behaviour runs on ManualClocks (tagvision/clock.py): leases lapse because a test moved
the clock, never because a machine was slow."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tagvision.clock import ManualClock
from tagvision.config import Settings
from tagvision.learn import LinearHead
from tagvision.service import NewImage, Service
from tagvision.service.caches import LRU, Sweeper
from tagvision.service.details import IterationDetails
from tagvision.service.keys import KeyStore
from tagvision.service.worker import LeaseLost, Runner, Worker, worker_name
from tagvision.store import jobs as queue
from tagvision.store.database import Database
from tagvision.store.models import Iteration, Job
from tests.conftest import CLOTHING, DATABASES, each_database, photos
from tests.gates import wait_for

LEASE = 30.0


@pytest.fixture(params=DATABASES)
def database_url(request) -> str | None:
    return each_database(request)


@pytest.fixture
def db(database_url: str | None, tmp_path: Path):
    opened = Database(database_url or f"sqlite:///{tmp_path / 'jobs.db'}")
    yield opened
    opened.close()


def until(condition, what: str):
    """``condition()`` once true, looked at often: these tests wait on threads of this process."""
    return wait_for(condition, what, pause=0.005)


def job_row(db: Database, job_id: str) -> Job:
    with db.session() as session:
        return session.get(Job, job_id)


class Blocking:
    """A runner whose job runs until released (or interrupted), calling ``check()`` all along."""

    def __init__(self, lane: str = "compute") -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.interrupted = threading.Event()
        self.outcomes: list[str] = []
        self.cancel = False
        self.done: set[str] = set()
        self.lane = lane

    def run(self, target: str, check) -> None:
        self.started.set()
        try:
            while not (self.release.is_set() or self.interrupted.is_set()):
                check()
                time.sleep(0.002)
            check()
        except LeaseLost:
            self.outcomes.append("lease lost")
            raise
        if self.interrupted.is_set():  # stopped early: its work still waits
            self.outcomes.append("interrupted")
        else:
            self.done.add(target)
            self.outcomes.append("finished")

    def runner(self) -> Runner:
        return Runner(
            self.run,
            lambda target: target not in self.done,
            cancelled=lambda _target: self.cancel,
            interrupt=lambda _target: self.interrupted.set(),
            lane=self.lane,
        )


# ---------------------------------------------------------------------- the queue


def test_each_job_is_claimed_by_exactly_one_of_many_workers(db: Database) -> None:
    for k in range(12):
        queue.enqueue(db, "train", f"iteration-{k:02d}")
    queue.enqueue(db, "train", "iteration-00")  # queued twice: one job
    barrier = threading.Barrier(6)
    claimed: dict[str, list[str]] = {}

    def claimer(name: str) -> None:
        barrier.wait()
        mine = claimed.setdefault(name, [])
        while claim := queue.claim(db, name, ["train"], 1000.0, LEASE):
            mine.append(claim.target_id)

    threads = [threading.Thread(target=claimer, args=(f"w{k}",)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = sorted(t for targets in claimed.values() for t in targets)
    assert everything == [f"iteration-{k:02d}" for k in range(12)], claimed
    assert queue.claim(db, "late", ["train"], 1000.0, LEASE) is None
    assert queue.claim(db, "other lane", ["acquire"], 5000.0, LEASE) is None


def test_a_lapsed_lease_is_taken_over_and_its_old_holder_changes_nothing(db: Database) -> None:
    clock = ManualClock(unix=1000.0)
    queue.enqueue(db, "train", "it")
    first = queue.claim(db, "a", ["train"], clock.time(), LEASE)
    assert first is not None and first.attempt == 1 and first.lease_expires == 1030.0
    clock.advance(LEASE - 1)
    assert queue.claim(db, "b", ["train"], clock.time(), LEASE) is None  # still a's
    renewed = queue.renew(db, first, clock.time(), LEASE)
    assert renewed is not None and renewed.lease_expires == 1059.0
    clock.advance(LEASE - 1)  # past the first lease, within the renewed one
    assert queue.claim(db, "b", ["train"], clock.time(), LEASE) is None

    clock.advance(2)  # a stopped renewing: its lease lapsed
    second = queue.claim(db, "b", ["train"], clock.time(), LEASE)
    assert second is not None and second.attempt == 2 and second.worker == "b"
    assert queue.renew(db, renewed, clock.time(), LEASE) is None, "a learns it lost the job"
    assert not queue.finish(db, renewed, clock.time()) and not queue.release(db, renewed)
    assert queue.finish(db, second, clock.time())
    row = job_row(db, second.job_id)
    assert (row.status, row.worker, row.attempt, row.started) == ("Done", "b", 2, 1060.0)


# ---------------------------------------------------------------------- workers


def make_worker(db: Database, runner: Runner, clock: ManualClock, name: str, kind: str = "train") -> Worker:
    return Worker(db, {kind: runner}, {"compute": 1, "io": 2}, name=name, clock=clock, lease=LEASE, tick=0.005)


def test_a_worker_renews_its_lease_and_a_stalled_one_loses_its_job_to_another(db: Database) -> None:
    """a runs a job; its keeper renews the lease as a's clock moves. Then a stalls (its clock stops) while time
    goes on for b: b takes the job over after the lease, and a, moving again, stops its run and records nothing."""
    blocking = Blocking()
    a_clock, b_clock = ManualClock(unix=1000.0), ManualClock(unix=1000.0)
    a = make_worker(db, blocking.runner(), a_clock, "a")
    b = make_worker(db, Blocking().runner(), b_clock, "b")
    queue.enqueue(db, "train", "it")
    claim = queue.claim(db, a.name, ["train"], a_clock.time(), LEASE)
    outcome: list[str] = []
    running = threading.Thread(target=lambda: outcome.append(a.execute(claim)))
    running.start()
    blocking.started.wait()

    a_clock.advance(LEASE / 3)
    until(lambda: job_row(db, claim.job_id).lease_expires == 1010.0 + LEASE, "a's renewal")
    b_clock.advance(LEASE)  # b's time: 1030, within a's renewed lease
    assert queue.claim(db, b.name, ["train"], b_clock.time(), LEASE) is None

    b_clock.advance(LEASE)  # 1060: a's lease (to 1040) lapsed, a did not renew (stalled)
    taken = queue.claim(db, b.name, ["train"], b_clock.time(), LEASE)
    assert taken is not None and taken.attempt == 2
    a_clock.advance(LEASE / 3)  # a moves again: its renewal finds b's name
    running.join(600)
    assert outcome == ["lost"] and blocking.outcomes == ["lease lost"]
    row = job_row(db, claim.job_id)
    assert (row.status, row.worker, row.attempt) == ("Running", "b", 2)


def test_a_killed_workers_job_is_run_by_another_after_its_lease(db: Database) -> None:
    clock = ManualClock(unix=1000.0)
    queue.enqueue(db, "train", "it")
    dead = queue.claim(db, "elsewhere:1:dead", ["train"], clock.time(), LEASE)  # then killed: never renews
    blocking = Blocking()
    blocking.release.set()
    survivor = make_worker(db, blocking.runner(), clock, "survivor")
    clock.advance(LEASE - 0.5)
    assert survivor.claim_free_slots() == []
    clock.advance(1)
    (taken,) = survivor.claim_free_slots()
    assert taken.job_id == dead.job_id and taken.attempt == 2
    until(lambda: job_row(db, dead.job_id).status == "Done", "the survivor to finish it")
    assert blocking.outcomes == ["finished"] and job_row(db, dead.job_id).worker == "survivor"
    survivor.stop()


def test_on_sqlite_a_dead_process_on_this_host_loses_its_jobs_at_once(db: Database) -> None:
    """A server killed and started again on SQLite resumes its training at start, not a lease later."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    clock = ManualClock(unix=1000.0)
    survivor = make_worker(db, Blocking().runner(), clock, worker_name())
    host = survivor.name.split(":")[0]
    queue.enqueue(db, "train", "it")
    queue.enqueue(db, "train", "other")
    queue.claim(db, f"{host}:{gone.stdout.strip()}:old", ["train"], clock.time(), LEASE)
    queue.claim(db, f"{host}:1:init", ["train"], clock.time(), LEASE)  # pid 1 lives: its job stays
    ended = survivor.take_over_dead()
    claim = queue.claim(db, "next", ["train"], clock.time(), LEASE)
    if db.dialect == "sqlite":
        assert ended == 1 and claim is not None and claim.target_id == "it"
    else:  # PostgreSQL may be shared by several machines: leases decide alone
        assert ended == 0 and claim is None


def test_a_cancel_asked_through_the_database_interrupts_the_job(db: Database) -> None:
    blocking = Blocking(lane="io")
    worker = make_worker(db, blocking.runner(), ManualClock(), "w", kind="acquire")
    queue.enqueue(db, "acquire", "a1")
    worker.start()
    blocking.started.wait()
    blocking.cancel = True  # as another replica's cancel, written to the acquisition's row
    until(lambda: blocking.outcomes == ["interrupted"], "the cancel to reach the job")
    until(lambda: job_row(db, queue.job_id(db, "acquire", "a1")).status == "Done", "the job to close")
    worker.stop()


def test_a_stopping_worker_hands_io_jobs_back_and_finishes_compute_jobs(db: Database) -> None:
    acquiring, training = Blocking(lane="io"), Blocking()
    clock = ManualClock()
    worker = Worker(
        db,
        {"acquire": acquiring.runner(), "train": training.runner()},
        {"compute": 1, "io": 2},
        name="w",
        clock=clock,
        lease=LEASE,
        tick=0.005,
    )
    queue.enqueue(db, "acquire", "a1")
    queue.enqueue(db, "train", "t1")
    worker.start()
    acquiring.started.wait()
    training.started.wait()
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    until(lambda: acquiring.outcomes == ["interrupted"], "the acquisition to be interrupted")
    assert stopper.is_alive(), "the training under way is waited for"
    training.release.set()
    stopper.join(600)
    acquisition = job_row(db, queue.job_id(db, "acquire", "a1"))
    assert (acquisition.status, acquisition.lease_expires) == ("Queued", None)
    assert job_row(db, queue.job_id(db, "train", "t1")).status == "Done"


def test_a_job_whose_work_another_worker_finished_is_closed_without_running(db: Database) -> None:
    blocking = Blocking()
    blocking.done.add("it")
    worker = make_worker(db, blocking.runner(), ManualClock(), "w")
    queue.enqueue(db, "train", "it")
    claim = queue.claim(db, "w", ["train"], 0.0, LEASE)
    assert worker.execute(claim) == "done" and not blocking.started.is_set()


# ---------------------------------------------------------------------- replicas agree


def test_a_key_rotated_on_one_replica_is_refused_by_another_within_a_second(db: Database, tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keys.json").write_text('{"trainingKey": "t" , "predictionKey": "p"}')
    clock = ManualClock()
    one = KeyStore(db, tmp_path / "old", clock=clock)
    other = KeyStore(db, tmp_path / "other", clock=clock)
    assert one.current().training == "t", "an older installation's keys.json is taken into the database"
    assert other.current() == one.current()
    assert stat.S_IMODE((tmp_path / "other" / "keys.json").stat().st_mode) == 0o600

    rotated = one.regenerate("training")
    assert rotated.training != "t" and rotated.prediction == "p"
    assert other.is_training_key("t"), "within the second, the other replica still reads its copy"
    clock.advance(1.0)
    assert not other.is_training_key("t") and other.is_training_key(rotated.training)
    assert '"trainingKey": "' + rotated.training in (tmp_path / "other" / "keys.json").read_text()


def test_lru_keeps_the_recently_used_and_sweeps_on_a_clock() -> None:
    dropped: list[str] = []
    cache: LRU[str, int] = LRU(2, on_drop=dropped.append)
    cache.get_or_make("a", lambda: 1)
    cache.get_or_make("b", lambda: 2)
    assert cache.get_or_make("a", lambda: 99) == 1  # a is used again: b is now the oldest
    cache.get_or_make("c", lambda: 3)
    assert cache.cached() == ["a", "c"] and dropped == ["b"]
    assert cache.keep_only(["c"]) == ["a"] and len(cache) == 1

    clock, swept = ManualClock(), []
    sweeper = Sweeper(lambda: swept.append(clock.monotonic()), every=10.0, clock=clock)
    assert not sweeper.maybe()
    clock.advance(10.0)
    assert sweeper.maybe() and not sweeper.maybe() and swept == [10.0]


def _completed_iteration(svc: Service, project: str, name: str) -> str:
    """A Completed iteration of ``project`` with a stored head (no training: the cache is what is tested); heads
    with the same bytes are one blob, as two iterations trained alike are."""
    tags = [(t.id, t.name) for t in svc.projects.list_tags(project)]
    head = LinearHead(np.zeros((8, len(tags)), np.float32), np.zeros(len(tags), np.float32), False)
    key = svc.ctx.blobs.put(head.to_bytes())
    with svc.ctx.db.session() as session:
        iteration = Iteration(
            project_id=svc.projects.get(project).id,
            name=name,
            status="Completed",
            classification_type="Multiclass",
            domain=svc.projects.get(project).domain,
            head_blob=key,
            details=IterationDetails(tags=tags).to_json(),
        )
        session.add(iteration)
        session.flush()
        return iteration.id


def test_a_deleted_iteration_leaves_no_cache_behind_on_any_replica(
    tmp_path: Path, database_url: str | None, monkeypatch
) -> None:
    monkeypatch.setenv("TAGVISION_DATABASE_URL", database_url or f"sqlite:///{tmp_path / 'shared.db'}")
    monkeypatch.setenv("TAGVISION_BLOB_ROOT", str(tmp_path / "shared-blobs"))
    one, other = Service.open(Settings.load(tmp_path / "one")), Service.open(Settings.load(tmp_path / "two"))
    try:
        one.projects.create("p")
        one.projects.create_tags("p", ["a", "b"])
        first, second = _completed_iteration(one, "p", "first"), _completed_iteration(one, "p", "second")
        for iteration in (first, second):
            assert other.prediction.model("p", iteration).iteration_id == iteration
        assert len(other.prediction._models) == 2
        one.training.delete_iteration("p", first)  # on one replica
        assert other.sweep_caches() == [first]  # the other drops its copy
        assert [key[0] for key in other.prediction._models.cached()] == [second]
    finally:
        one.close()
        other.close()


# ---------------------------------------------------------------------- the service's jobs, on real photos


@pytest.mark.slow  # embeds real photos
def test_a_training_queued_by_an_api_replica_is_run_by_a_worker_process_sharing_the_store(
    tmp_path: Path, database_url: str | None, monkeypatch
) -> None:
    monkeypatch.setenv("TAGVISION_DATABASE_URL", database_url or f"sqlite:///{tmp_path / 'shared.db'}")
    monkeypatch.setenv("TAGVISION_BLOB_ROOT", str(tmp_path / "shared-blobs"))
    monkeypatch.setenv("TAGVISION_WORKER_POLL_SECONDS", "0.05")
    api, worker = Service.open(Settings.load(tmp_path / "api")), Service.open(Settings.load(tmp_path / "worker"))
    try:
        api.projects.create("p", domain="general-compact")
        api.projects.create_tags("p", ["hat", "shoes"])
        items = [
            NewImage(p.name, p.read_bytes, (t,)) for t in ("hat", "shoes") for p in photos(CLOTHING, "train", t, 5)
        ]
        assert api.images.add("p", items).is_batch_successful
        started = api.jobs.train("p")
        running = worker.jobs.start_worker()
        done = until(
            lambda: (view := api.training.iteration("p", started.id)).status != "Training" and view,
            "the other service's worker to train it",
        )
        assert done.status == "Completed" and done.image_count == 10
        job_id = queue.job_id(api.ctx.db, "train", started.id)
        job = until(lambda: (row := job_row(api.ctx.db, job_id)).status == "Done" and row, "the job closed")
        assert (job.worker, job.attempt) == (running.name, 1)  # the iteration is written first, then its job
    finally:
        api.close()
        worker.close()


@pytest.mark.slow  # embeds real photos
def test_without_a_worker_wait_runs_the_queued_jobs_here(svc) -> None:
    svc.projects.create("p", domain="general-compact")
    svc.projects.create_tags("p", ["hat", "shoes"])
    items = [NewImage(p.name, p.read_bytes, (t,)) for t in ("hat", "shoes") for p in photos(CLOTHING, "train", t, 5)]
    assert svc.images.add("p", items).is_batch_successful
    started = svc.jobs.train("p")
    svc.jobs.wait()
    assert svc.training.iteration("p", started.id).status == "Completed"
    export = svc.jobs.export("p", started.id, "ONNX")
    svc.jobs.wait()
    assert [e.status for e in svc.exports.list("p", started.id)] == ["Done"] and export.status == "Exporting"


def test_db_upgrade_runs_once_and_replicas_that_do_not_migrate_need_it(tmp_path: Path, database_url) -> None:
    from tests.cli import tagvision

    env = {"TAGVISION_DATABASE_URL": database_url or f"sqlite:///{tmp_path / 'fresh.db'}"}
    if database_url:  # the template is migrated already: start from nothing
        from tagvision.store import database as store

        engine = store.make_engine(database_url)
        store.downgrade(engine, "base")
        engine.dispose()
    behind = tagvision("db", "status", data_dir=tmp_path / "cli", env=env, check=False)
    assert behind.returncode == 1 and "run `tagvision db upgrade`" in behind.stdout
    refused = tagvision("keys", data_dir=tmp_path / "cli", env={**env, "TAGVISION_MIGRATE_AT_OPEN": "0"}, check=False)
    assert refused.returncode == 1 and "tagvision db upgrade" in refused.stderr
    assert (
        "Upgraded the schema from nothing to" in tagvision("db", "upgrade", data_dir=tmp_path / "cli", env=env).stdout
    )
    assert "nothing to do" in tagvision("db", "upgrade", data_dir=tmp_path / "cli", env=env).stdout
    assert tagvision("db", "status", "--json", data_dir=tmp_path / "cli", env=env).stdout.count('"upToDate": true') == 1
    keys = tagvision("keys", "--json", data_dir=tmp_path / "cli", env={**env, "TAGVISION_MIGRATE_AT_OPEN": "0"})
    assert '"trainingKey"' in keys.stdout


@pytest.mark.process  # an S3 server
def test_a_fine_tuned_network_in_s3_is_copied_here_once_and_dropped_when_unused(
    tmp_path: Path, s3_server, monkeypatch
) -> None:
    """ONNX Runtime opens files: a fine-tuned network kept in S3 is copied into the data dir's blob cache, checked,
    and loaded once; when no iteration uses it any more, the sweep drops the network and the copy."""
    import onnx

    from tagvision import backbone

    for name, value in s3_server.env(s3_server.new_bucket()).items():
        monkeypatch.setenv(name, value)
    svc = Service.open(Settings.load(tmp_path / "data"))
    try:
        lite0 = backbone.BACKBONES["general-compact"]
        model = onnx.load(str(backbone.ensure_onnx(lite0, svc.ctx.settings.models_dir)))
        onnx.helper.set_model_props(model, {"domain": "general-compact", "backbone": "efficientnet-lite0"})
        tuned = svc.ctx.blobs.put(model.SerializeToString())
        copy = tmp_path / "data" / "blob-cache" / tuned[:2] / tuned[2:]
        assert not copy.exists()
        assert svc.ctx.spec("general", tuned) == lite0 and copy.is_file()
        assert svc.ctx.embedder("general", tuned) is svc.ctx.embedder("general", tuned)
        assert svc.sweep_caches() == [tuned]  # no iteration names it
        assert not copy.exists() and tuned not in svc.ctx._embedders
    finally:
        svc.close()
