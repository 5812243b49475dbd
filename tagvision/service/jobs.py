"""Background work: trainings and exports run on one worker thread, in the order asked;
acquisitions (mostly waiting on the network) on two threads of their own; scorings on one thread of
their own, so a catalogue of hours does not hold trainings back (the two share the cores meanwhile).

One compute worker is deliberate: training and exporting use every core, so two at once would
only slow each other and the predictions being served. A process that stops mid-job leaves the
iteration ``Training`` (the export ``Exporting``, the acquisition ``Running``); :meth:`Jobs.resume`
queues them again at the next start, so nothing stays in that state forever.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from tagvision.service.acquisitions import Acquisitions
from tagvision.service.exports import Exports
from tagvision.service.scoring import Scorings, ScoringView
from tagvision.service.training import Training
from tagvision.service.views import AcquisitionView, ExportView, IterationView

log = logging.getLogger("tagvision.jobs")


class Jobs:
    def __init__(
        self, training: Training, exports: Exports, acquisitions: Acquisitions, scorings: Scorings | None = None
    ) -> None:
        self.training = training
        self.exports = exports
        self.acquisitions = acquisitions
        self.scorings = scorings
        self._score_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagvision-score")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagvision-job")
        self._io_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tagvision-acquire")
        self._pending: list[Future] = []

    def train(self, ref: str, **options) -> IterationView:
        """Start a training (checks run now) and finish it in the background."""
        view = self.training.start(ref, **options)
        self._submit(
            f"train {view.id}", lambda: self.training.run(view.project_id, view.id, self.training.recorder(view.id))
        )
        return view

    def export(self, ref: str, iteration_ref: str, platform: str, flavor: str | None = None) -> ExportView:
        view = self.exports.start(ref, iteration_ref, platform, flavor)
        if view.status == "Exporting":
            self._submit(f"export {view.id}", lambda: self.exports.run(view.id))
        return view

    def acquire(self, ref: str, tags: list[str], **options) -> AcquisitionView:
        """Start gathering images for tags (checks run now) and do it in the background."""
        view = self.acquisitions.start(ref, tags, **options)
        self._submit(f"acquire {view.id}", lambda: self.acquisitions.run(view.id), self._io_pool)
        return view

    def score(self, ref: str, **options) -> ScoringView:
        """Start scoring a folder or URLs (checks run now) and do it in the background."""
        assert self.scorings is not None
        view = self.scorings.start(ref, **options)
        self._submit(f"score {view.id}", lambda: self.scorings.run(view.id), self._score_pool)
        return view

    def set_precision(self, ref: str, iteration_ref: str, precision: str) -> None:
        """Set how an iteration is served and scored; Int8 makes its int8 model now, in the background."""
        assert self.scorings is not None
        if self.scorings.set_precision(ref, iteration_ref, precision) == "Int8":
            self.export(ref, iteration_ref, "ONNX", "Int8")

    def more(self, ref: str, acquisition_id: str) -> AcquisitionView:
        """Review mode: gather the next page of candidates in the background (the look refitted on the answers)."""
        view = self.acquisitions.more(ref, acquisition_id)
        if view.status == "Running":
            self._submit(f"acquire {view.id}", lambda: self.acquisitions.run(view.id), self._io_pool)
        return view

    def resume(self) -> int:
        """Queue the trainings and exports a stopped process left unfinished; returns how many."""
        interrupted = self.training.interrupted()
        for project_id, iteration_id in interrupted:
            log.info("resuming training %s", iteration_id)
            self._submit(
                f"train {iteration_id}",
                lambda p=project_id, i=iteration_id: self.training.run(p, i, self.training.recorder(i)),
            )
        exports = self.exports.interrupted()
        for export_id in exports:
            self._submit(f"export {export_id}", lambda e=export_id: self.exports.run(e))
        acquisitions = self.acquisitions.interrupted()
        for acquisition_id in acquisitions:
            self._submit(f"acquire {acquisition_id}", lambda a=acquisition_id: self.acquisitions.run(a), self._io_pool)
        scorings = self.scorings.interrupted() if self.scorings else []
        for scoring_id in scorings:
            self._submit(f"score {scoring_id}", lambda s=scoring_id: self.scorings.run(s), self._score_pool)
        return len(interrupted) + len(exports) + len(acquisitions) + len(scorings)

    def wait(self) -> None:
        """Block until every job submitted so far has finished (tests, CLI)."""
        for future in list(self._pending):
            future.exception()

    def shutdown(self) -> None:
        for acquisition_id in self.acquisitions.interrupted():
            self.acquisitions.stop(acquisition_id)  # leaves it Running: the next start resumes it
        for scoring_id in self.scorings.interrupted() if self.scorings else []:
            self.scorings.stop(scoring_id)  # leaves it Running: the next start resumes it
        self._io_pool.shutdown(wait=True, cancel_futures=True)
        self._score_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, name: str, fn: Callable[[], object], pool: ThreadPoolExecutor | None = None) -> None:
        def job() -> None:
            try:
                fn()
                log.info("%s: done", name)
            except Exception:  # the service recorded the failure on the iteration or export
                log.exception("%s: failed", name)

        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append((pool or self._pool).submit(job))
