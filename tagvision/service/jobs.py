"""Background work: trainings, exports, acquisitions and scorings are queued in the database and run by workers.

Starting one (:meth:`Jobs.train`, :meth:`Jobs.export`, :meth:`Jobs.acquire`, :meth:`Jobs.score`) runs its
checks now, records it (an iteration Training, an export Exporting, an acquisition or a scoring Running) and
queues a job for it. A worker (``tagvision.service.worker``) claims the job: the one inside ``tagvision serve``
by default, woken at once when its own process queued the job, or any ``tagvision worker`` process sharing the
database. Trainings and exports run one at a time per worker (each uses every core), acquisitions two at a
time, and scorings one at a time in a lane of their own, so a catalogue of hours does not hold trainings back.

A job whose worker stopped mid-way is taken over by the next worker once its lease lapses (at once when the
dead worker was on the same machine, on SQLite), so nothing stays Training, Exporting or Running forever.
Later kinds of job register a :class:`~tagvision.service.worker.Runner` (:meth:`Jobs.register`).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import and_, select, update

from tagvision.clock import SYSTEM, Clock
from tagvision.service.acquisitions import Acquisitions
from tagvision.service.caches import Sweeper
from tagvision.service.context import Context
from tagvision.service.exports import Exports
from tagvision.service.scoring import Scorings, ScoringView
from tagvision.service.training import Training
from tagvision.service.views import AcquisitionView, ExportView, IterationView
from tagvision.service.worker import Check, Runner, Worker
from tagvision.store import jobs as queue
from tagvision.store.models import Acquisition, Export, Iteration, Job, Scoring

log = logging.getLogger("tagvision.jobs")
LANES = {"compute": 1, "io": 2, "score": 1}  # slots per worker: trainings and exports use every core


class Jobs:
    def __init__(
        self,
        ctx: Context,
        training: Training,
        exports: Exports,
        acquisitions: Acquisitions,
        scorings: Scorings,
        clock: Clock = SYSTEM,
    ) -> None:
        self.ctx, self.clock = ctx, clock
        self.training = training
        self.exports = exports
        self.acquisitions = acquisitions
        self.scorings = scorings
        self.runners: dict[str, Runner] = {
            "train": Runner(self._train, lambda i: self._status(Iteration, i) == "Training"),
            "export": Runner(lambda e, _check: exports.run(e), lambda e: self._status(Export, e) == "Exporting"),
            "acquire": Runner(
                self._acquire,
                lambda a: self._status(Acquisition, a) == "Running",
                cancelled=lambda a: self._status(Acquisition, a) == "Cancelled",
                interrupt=acquisitions.stop,
                lane="io",
            ),
            "score": Runner(
                lambda s, _check: scorings.run(s),
                lambda s: self._status(Scoring, s) == "Running",
                cancelled=lambda s: self._status(Scoring, s) == "Cancelled",
                interrupt=scorings.stop,
                lane="score",
            ),
        }
        self.worker: Worker | None = None
        self._mine: list[str] = []  # jobs this process queued (for wait)

    # ------------------------------------------------------------------ starting work

    def train(self, ref: str, **options) -> IterationView:
        """Start a training (checks run now) and queue it for a worker."""
        view = self.training.start(ref, **options)
        self.enqueue("train", view.id)
        return view

    def export(self, ref: str, iteration_ref: str, platform: str, flavor: str | None = None) -> ExportView:
        view = self.exports.start(ref, iteration_ref, platform, flavor)
        if view.status == "Exporting":
            self.enqueue("export", view.id)
        return view

    def acquire(self, ref: str, tags: list[str], **options) -> AcquisitionView:
        """Start gathering images for tags (checks run now) and queue it for a worker."""
        view = self.acquisitions.start(ref, tags, **options)
        self.enqueue("acquire", view.id)
        return view

    def more(self, ref: str, acquisition_id: str) -> AcquisitionView:
        """Review mode: gather the next page of candidates (the look refitted on the answers), queued again."""
        view = self.acquisitions.more(ref, acquisition_id)
        if view.status == "Running":
            self.enqueue("acquire", view.id, again=True)
        return view

    def score(self, ref: str, **options) -> ScoringView:
        """Start scoring a folder or URLs (checks run now) and queue it for a worker."""
        view = self.scorings.start(ref, **options)
        self.enqueue("score", view.id)
        return view

    def set_precision(self, ref: str, iteration_ref: str, precision: str) -> None:
        """Set how an iteration is served and scored; Int8 makes its int8 model now, in the background."""
        if self.scorings.set_precision(ref, iteration_ref, precision) == "Int8":
            self.export(ref, iteration_ref, "ONNX", "Int8")

    def register(self, kind: str, runner: Runner) -> None:
        """Let workers run another kind of job (``runner.lane``: compute or io)."""
        self.runners[kind] = runner

    def enqueue(self, kind: str, target_id: str, again: bool = False) -> None:
        """Queue work of a registered kind on ``target_id`` (once, however often asked, unless ``again``: work
        that finished is queued once more) and wake this process's worker."""
        queue.enqueue(self.ctx.db, kind, target_id, again=again)
        job_id = queue.job_id(self.ctx.db, kind, target_id)
        if job_id:
            self._mine = [*self._mine[-999:], job_id]
        if self.worker is not None:
            self.worker.wake()

    # ------------------------------------------------------------------ workers

    def start_worker(self, name: str | None = None) -> Worker:
        """Run a worker in this process (as ``tagvision serve`` and ``tagvision worker`` do) until :meth:`shutdown`."""
        resumed = self.resume()
        if resumed:
            log.info("queued again %d jobs left without one", resumed)
        swept = self.ctx.blobs.sweep()
        if swept:
            log.info("removed %d temporary files of unfinished blob writes", swept)
        settings = self.ctx.settings
        self.worker = Worker(
            self.ctx.db,
            self.runners,
            LANES,
            name=name,
            clock=self.clock,
            lease=settings.job_lease_seconds,
            poll=settings.worker_poll_seconds,
            every_poll=Sweeper(self.ctx.sweep, clock=self.clock).maybe,  # networks of deleted iterations go
        ).start()
        return self.worker

    def resume(self) -> int:
        """Queue work left unfinished without a live job (its process stopped before it could queue it, or it
        was started outside the queue, as ``tagvision train`` does); returns how many."""
        kinds = (
            ("train", Iteration, "Training"),
            ("export", Export, "Exporting"),
            ("acquire", Acquisition, "Running"),
            ("score", Scoring, "Running"),
        )
        count = 0
        for kind, model, status in kinds:
            with self.ctx.db.session() as session:
                rows = session.execute(
                    select(model.id, Job.status)
                    .outerjoin(Job, and_(Job.kind == kind, Job.target_id == model.id))
                    .where(model.status == status)
                    .order_by(model.created)
                ).all()
                finished = [target for target, job in rows if job in ("Done", "Failed")]
                if finished:
                    session.execute(
                        update(Job)
                        .where(Job.kind == kind, Job.target_id.in_(finished), Job.status.in_(("Done", "Failed")))
                        .values(status="Queued", worker=None, lease_expires=None)
                    )
            for target, job in rows:
                if job is None:
                    queue.enqueue(self.ctx.db, kind, target)
            count += sum(job is None or job in ("Done", "Failed") for _, job in rows)
        return count

    def wait(self) -> None:
        """Block until every job this process queued has finished (tests). Without a worker in this process,
        the jobs no other worker holds run here, one by one."""
        mine = list(self._mine)
        if self.worker is None:
            here = Worker(self.ctx.db, self.runners, LANES, clock=self.clock, lease=self.ctx.settings.job_lease_seconds)
            with self.ctx.db.session() as session:
                targets = list(session.scalars(select(Job.target_id).where(Job.id.in_(mine))))
            kinds = list(self.runners)
            while claim := queue.claim(here.db, here.name, kinds, self.clock.time(), here.lease, targets):
                here.execute(claim)
        while queue.unfinished(self.ctx.db, mine):
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Stop this process's worker: acquisitions are handed back for the next worker; a training or export
        under way is finished first."""
        if self.worker is not None:
            self.worker.stop(wait=True)
            self.worker = None

    # ------------------------------------------------------------------ runners

    def _train(self, iteration_id: str, check: Check) -> None:
        with self.ctx.db.session() as session:
            iteration = session.get(Iteration, iteration_id)
            project_id = iteration.project_id if iteration else iteration_id
        record = self.training.recorder(iteration_id)

        def progress(stage: str, done: int, total: int, /, eta: float | None = None) -> None:
            check()
            record(stage, done, total, eta=eta)

        self.training.run(project_id, iteration_id, progress)

    def _acquire(self, acquisition_id: str, check: Check) -> None:
        def progress(_stage: str, _done: int, _total: int, /, eta: float | None = None) -> None:
            check()

        self.acquisitions.run(acquisition_id, progress)

    def _status(self, model, target_id: str) -> str | None:
        with self.ctx.db.session() as session:
            row = session.get(model, target_id)
            return row.status if row is not None else None
