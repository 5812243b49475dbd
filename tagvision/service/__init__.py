"""The use cases of tagvision. Interfaces (CLI, API, web) call these and nothing below them.

``Service.open(settings)`` gives one object whose parts are ``projects`` (projects and
tags), ``images``, ``training`` (iterations, performance, publishing), ``prediction``
(classifying, stored predictions, suggestions), ``exports``, ``acquisitions`` (gathering
images for tags from providers), ``scorings`` (scoring catalogues), ``jobs`` (background training,
exports, acquisitions and scorings), ``keys`` (the API keys), ``files`` (signed links to images and exports,
and their bytes), ``migrations`` (projects brought over from a Custom Vision Training API), ``transfer``
(projects as ``.tvproj`` archives), ``datasets`` (folders, CSV and COCO out and in), ``knowledge`` (tag
information and decision rules), ``catalogue`` (catalogue import and export) and ``records`` (stored
predictions with the caller's metadata: search, export, retention).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tagvision.clock import SYSTEM, Clock
from tagvision.config import Settings

if TYPE_CHECKING:
    from tagvision.service.context import Context, Progress, no_progress
    from tagvision.service.images import NewImage

# The parts are imported when a Service is made, not when this package is: ``tagvision --help`` and
# ``tagvision keys`` (which read tagvision.service.keys) then start without numpy, SQLAlchemy or scipy.
_LAZY = {
    "NewImage": "tagvision.service.images",
    "Context": "tagvision.service.context",
    "Progress": "tagvision.service.context",
    "no_progress": "tagvision.service.context",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Service:
    def __init__(self, ctx: Context, clock: Clock = SYSTEM) -> None:
        from tagvision.service.acquisitions import Acquisitions
        from tagvision.service.catalogue import Catalogue
        from tagvision.service.datasets import Datasets
        from tagvision.service.exports import Exports
        from tagvision.service.files import Files
        from tagvision.service.images import Images
        from tagvision.service.jobs import Jobs
        from tagvision.service.keys import KeyStore
        from tagvision.service.knowledge import Knowledge
        from tagvision.service.limits import Gate
        from tagvision.service.migrations import Migrations
        from tagvision.service.prediction import Prediction
        from tagvision.service.projects import Projects
        from tagvision.service.records import Records
        from tagvision.service.scoring import Scorings
        from tagvision.service.sessions import LoginPace, Sessions
        from tagvision.service.training import Training
        from tagvision.service.transfer import Transfer

        self.ctx = ctx
        self.projects = Projects(ctx)
        self.images = Images(ctx)
        self.training = Training(ctx)
        self.exports = Exports(ctx)
        self.knowledge = Knowledge(ctx)
        self.scorings = Scorings(ctx, self.exports, self.knowledge)
        self.prediction = Prediction(ctx, self.training, int8=self.scorings.int8_model, knowledge=self.knowledge)
        self.acquisitions = Acquisitions(ctx, self.training)
        self.jobs = Jobs(ctx, self.training, self.exports, self.acquisitions, self.scorings, clock)
        self.keys = KeyStore(
            ctx.db, ctx.settings.data_dir, ctx.settings.training_key, ctx.settings.prediction_key, clock=clock
        )
        self.files = Files(ctx, self.keys, self.exports)
        settings = ctx.settings
        self.sessions = Sessions(ctx)
        self.login_pace = LoginPace()
        self.url_gate = Gate(settings.url_fetchers, settings.request_wait_seconds, "downloading image URLs")
        self.migrations = Migrations(ctx, self.images, self.training)
        self.transfer = Transfer(ctx)
        self.datasets = Datasets(ctx, self.projects, self.images)
        self.catalogue = Catalogue(ctx, self.images.fetchers)
        self.records = Records(ctx, self.prediction, self.knowledge)
        self.prediction.on_store = self.records.after_store

    @classmethod
    def open(cls, settings: Settings | None = None, clock: Clock = SYSTEM) -> Service:
        from tagvision.service.context import Context

        return cls(Context.open(settings or Settings.load()), clock)

    def sweep_caches(self) -> list[str]:
        """Drop what this process cached for iterations deleted since (here or by another replica); returns the
        ids and blob keys dropped."""
        return self.prediction.sweep() + self.ctx.sweep()

    def close(self) -> None:
        self.records.close()
        self.jobs.shutdown()
        self.images.fetchers.shutdown(wait=True, cancel_futures=True)
        self.images.http.close()
        self.ctx.close()


__all__ = ["NewImage", "Progress", "Service", "Settings", "no_progress"]
