"""A worker: claims jobs from the database and runs them, holding a lease on each while it works.

``tagvision worker`` is one; ``tagvision serve`` runs one inside itself unless told ``--no-worker``. Jobs go
in lanes: *compute* (trainings, exports: one at a time, since each uses every core) and *io* (acquisitions,
mostly waiting on the network: two at a time). A free slot claims the oldest job of its lane
(``tagvision.store.jobs.claim``), so each job runs on exactly one worker.

While a job runs, a keeper thread renews its lease every third of the lease and watches for a cancel
asked through the database. If the lease is lost (the worker stalled past it and another took the job
over, or it could not reach the database to renew in time) the job is interrupted: its progress callback
raises :class:`LeaseLost`, and nothing of it is recorded as finished. A worker killed outright stops
renewing; once the lease lapses another worker takes the job over and runs it again from the start.
Decisions about time read an injected :class:`~tagvision.clock.Clock`, so tests move a ManualClock past
a lease instead of sleeping.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tagvision.clock import SYSTEM, Clock
from tagvision.store import jobs as queue
from tagvision.store.database import Database
from tagvision.store.jobs import Claim

log = logging.getLogger("tagvision.worker")


class LeaseLost(BaseException):  # noqa: N818 (not an error of the job: it is someone else's now)
    """Raised inside a job whose worker no longer holds it. A BaseException, so that the use cases' ``except
    Exception`` blocks (which record a failure on the iteration or acquisition) let it through."""


Check = Callable[[], None]  # raises LeaseLost once the job is no longer this worker's


@dataclass(frozen=True)
class Runner:
    """How to run one kind of job on its target (an iteration, export or acquisition id).

    ``run(target, check)`` does the work, calling ``check()`` now and then (from its progress callback);
    ``pending(target)``: whether the target still waits for the work (a job taken over after its first worker
    finished the work but not the job is closed without running again); ``cancelled(target)``: whether a
    user asked to stop it (checked by the keeper); ``interrupt(target)``: ask the running work to stop soon.
    """

    run: Callable[[str, Check], object]
    pending: Callable[[str], bool]
    cancelled: Callable[[str], bool] = lambda _target: False
    interrupt: Callable[[str], None] = lambda _target: None
    lane: str = "compute"


@dataclass
class _Running:
    """A job this worker runs: its claim (renewed by the keeper) and what the keeper and the stop tell it."""

    claim: Claim
    thread: threading.Thread | None = None
    lost: threading.Event = field(default_factory=threading.Event)  # another worker has it now
    stopping: threading.Event = field(default_factory=threading.Event)  # interrupted to hand it back
    finished: threading.Event = field(default_factory=threading.Event)

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


def worker_name() -> str:
    """host:pid:random, unique among live workers; the host and pid let a restarted process on the same machine
    see that a job's holder is dead (:meth:`Worker.take_over_dead`)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        db: Database,
        runners: dict[str, Runner],
        lanes: dict[str, int],
        *,
        name: str | None = None,
        clock: Clock = SYSTEM,
        lease: float = 30.0,
        poll: float = 1.0,
        tick: float | None = None,
        every_poll: Callable[[], object] | None = None,
    ) -> None:
        """``lanes``: slots per lane; ``lease``: seconds a claim lasts unrenewed; ``poll``: how often an idle
        worker looks for jobs; ``tick``: how often a keeper wakes to renew or look for a cancel (real seconds;
        what it does then is decided on ``clock``); ``every_poll``: housekeeping run at each look."""
        self.every_poll = every_poll
        self.db, self.runners, self.lanes = db, runners, lanes
        self.name = name or worker_name()
        self.clock, self.lease, self.poll = clock, lease, poll
        self.tick = tick if tick is not None else min(poll, lease / 6)
        self._running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the loop

    def start(self) -> Worker:
        self.take_over_dead()
        self._thread = threading.Thread(target=self._loop, name=f"tagvision-worker-{self.name}", daemon=True)
        self._thread.start()
        log.info("worker %s started (lanes %s, lease %.0f s)", self.name, self.lanes, self.lease)
        return self

    def wake(self) -> None:
        """Look for jobs now (this process queued one), not at the next poll."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.claim_free_slots()
                if self.every_poll is not None:
                    self.every_poll()
            except Exception:  # the database is unreachable for now: try again at the next poll
                log.exception("worker %s: could not look for jobs", self.name)
            self._wake.wait(self.poll)
            self._wake.clear()

    def claim_free_slots(self) -> list[Claim]:
        """Claim a job for each free slot and start it on a thread of its own; returns what was claimed."""
        claimed = []
        for lane, slots in self.lanes.items():
            kinds = [kind for kind, runner in self.runners.items() if runner.lane == lane]
            while not self._stop.is_set() and kinds and self._busy(lane) < slots:
                if not queue.any_claimable(self.db, kinds, self.clock.time()):
                    break
                claim = queue.claim(self.db, self.name, kinds, self.clock.time(), self.lease)
                if claim is None:
                    break
                claimed.append(claim)
                self._start(claim)
        return claimed

    def _busy(self, lane: str) -> int:
        with self._lock:
            self._running = {k: r for k, r in self._running.items() if r.alive()}
            return sum(self.runners[r.claim.kind].lane == lane for r in self._running.values())

    def _start(self, claim: Claim) -> None:
        running = _Running(claim)
        running.thread = threading.Thread(
            target=self.execute, args=(claim, running), name=f"tagvision-job-{claim.kind}", daemon=True
        )
        with self._lock:
            self._running[claim.job_id] = running
        running.thread.start()

    # ------------------------------------------------------------------ one job

    def execute(self, claim: Claim, running: _Running | None = None) -> str:
        """Run a claimed job to its end; returns what became of it: done, failed, lost or released."""
        running = running or _Running(claim, threading.current_thread())
        runner = self.runners[claim.kind]
        if not runner.pending(claim.target_id):
            queue.finish(self.db, claim, self.clock.time())
            return "done"
        log.info("%s %s: started by %s (attempt %d)", claim.kind, claim.target_id, self.name, claim.attempt)
        keeper = threading.Thread(target=self._keep, args=(running, runner), name="tagvision-lease", daemon=True)
        keeper.start()

        def check() -> None:
            if running.lost.is_set():
                raise LeaseLost(f"{claim.kind} {claim.target_id} is no longer held by {self.name}")

        error = None
        try:
            runner.run(claim.target_id, check)
        except LeaseLost:
            log.warning("%s %s: lost its lease; another worker has it", claim.kind, claim.target_id)
        except Exception as exc:  # the use case recorded the failure on its row; the job says it too
            log.exception("%s %s: failed", claim.kind, claim.target_id)
            error = f"{type(exc).__name__}: {exc}"
        finally:
            running.finished.set()
            keeper.join()
        try:
            return self._close(running, runner, error)
        finally:
            self._wake.set()  # a slot is free: the next job need not wait for the poll

    def _close(self, running: _Running, runner: Runner, error: str | None) -> str:
        claim = running.claim
        if running.lost.is_set():
            return "lost"
        if running.stopping.is_set() and runner.pending(claim.target_id):
            queue.release(self.db, claim)  # this worker is stopping: the next one carries on
            log.info("%s %s: released for another worker", claim.kind, claim.target_id)
            return "released"
        if not queue.finish(self.db, claim, self.clock.time(), error):
            return "lost"
        log.info("%s %s: %s", claim.kind, claim.target_id, "failed" if error else "done")
        return "failed" if error else "done"

    def _keep(self, running: _Running, runner: Runner) -> None:
        """Until the job ends: renew its lease every third of it, pass on a cancel, and interrupt the job if the
        lease is lost."""
        while True:
            if not self._renew_if_due(running):
                running.lost.set()
                runner.interrupt(running.claim.target_id)
                return
            try:
                if runner.cancelled(running.claim.target_id):
                    runner.interrupt(running.claim.target_id)
            except Exception:  # the database is unreachable for now: look again at the next tick
                log.exception("%s %s: could not check for a cancel", running.claim.kind, running.claim.target_id)
            if running.finished.wait(self.tick):
                return

    def _renew_if_due(self, running: _Running) -> bool:
        """Renew the lease once a third of it has passed; False when it is lost (another worker holds the job, or
        the lease ran out before the database could be reached)."""
        claim, now = running.claim, self.clock.time()
        if now < claim.lease_expires - 2 * self.lease / 3:
            return True
        try:
            renewed = queue.renew(self.db, claim, now, self.lease)
        except Exception:
            log.exception("%s %s: could not renew its lease", claim.kind, claim.target_id)
            return now < claim.lease_expires
        if renewed is None:
            return False
        running.claim = renewed
        return True

    # ------------------------------------------------------------------ stopping, and dead workers

    def take_over_dead(self) -> int:
        """On SQLite (one machine by nature), end at once the leases of workers on this host whose process is gone
        (a server killed and started again resumes its training now, not a lease later); returns how many."""
        if self.db.dialect != "sqlite":
            return 0
        host = self.name.split(":")[0]
        ended = 0
        for job_id, holder in queue.holders(self.db, f"{host}:"):
            if holder != self.name and not _alive(holder):
                queue.expire(self.db, job_id, holder)
                ended += 1
        return ended

    def stop(self, wait: bool = True) -> None:
        """Stop claiming; io jobs (acquisitions) are interrupted and given back for another worker, compute jobs
        (trainings, exports) run to their end when ``wait``."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            running = list(self._running.values())
        for item in running:
            runner = self.runners[item.claim.kind]
            if runner.lane != "compute":
                item.stopping.set()
                runner.interrupt(item.claim.target_id)
        if self._thread is not None:
            self._thread.join()
        if wait:
            for item in running:
                if item.thread is not None:  # always set before the job is registered
                    item.thread.join()

    def running(self) -> list[Claim]:
        with self._lock:
            return [r.claim for r in self._running.values() if r.alive()]


def _alive(holder: str) -> bool:
    """Whether the process named in a worker name (host:pid:random) still runs on this host."""
    try:
        pid = int(holder.split(":")[1])
    except (IndexError, ValueError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
