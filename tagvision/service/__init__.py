"""The use cases of tagvision. Interfaces (CLI, API, web) call these and nothing below them.

``Service.open(settings)`` gives one object whose parts are ``projects`` (projects and
tags), ``images``, ``training`` (iterations, performance, publishing), ``prediction``
(classifying, stored predictions, suggestions), ``exports``, ``acquisitions`` (gathering
images for tags from providers), ``jobs`` (background training, exports and acquisitions),
``keys`` (the API keys) and ``files`` (signed links to images and exports, and their bytes).
"""

from __future__ import annotations

from tagvision.clock import SYSTEM, Clock
from tagvision.config import Settings
from tagvision.service.acquisitions import Acquisitions
from tagvision.service.context import Context, Progress, no_progress
from tagvision.service.exports import Exports
from tagvision.service.files import Files
from tagvision.service.images import Images, NewImage
from tagvision.service.jobs import Jobs
from tagvision.service.keys import KeyStore
from tagvision.service.limits import Gate
from tagvision.service.prediction import Prediction
from tagvision.service.projects import Projects
from tagvision.service.sessions import LoginPace, Sessions
from tagvision.service.training import Training


class Service:
    def __init__(self, ctx: Context, clock: Clock = SYSTEM) -> None:
        self.ctx = ctx
        self.projects = Projects(ctx)
        self.images = Images(ctx)
        self.training = Training(ctx)
        self.prediction = Prediction(ctx, self.training)
        self.exports = Exports(ctx)
        self.acquisitions = Acquisitions(ctx, self.training)
        self.jobs = Jobs(ctx, self.training, self.exports, self.acquisitions, clock)
        self.keys = KeyStore(
            ctx.db, ctx.settings.data_dir, ctx.settings.training_key, ctx.settings.prediction_key, clock=clock
        )
        self.files = Files(ctx, self.keys, self.exports)
        settings = ctx.settings
        self.sessions = Sessions(ctx)
        self.login_pace = LoginPace()
        self.url_gate = Gate(settings.url_fetchers, settings.request_wait_seconds, "downloading image URLs")

    @classmethod
    def open(cls, settings: Settings | None = None, clock: Clock = SYSTEM) -> Service:
        return cls(Context.open(settings or Settings.load()), clock)

    def sweep_caches(self) -> list[str]:
        """Drop what this process cached for iterations deleted since (here or by another replica); returns the
        ids and blob keys dropped."""
        return self.prediction.sweep() + self.ctx.sweep()

    def close(self) -> None:
        self.jobs.shutdown()
        self.images.fetchers.shutdown(wait=True, cancel_futures=True)
        self.ctx.close()


__all__ = ["NewImage", "Progress", "Service", "Settings", "no_progress"]
