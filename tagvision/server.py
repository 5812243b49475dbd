"""The ASGI app ``tagvision serve`` runs: the HTTP API and the web portal over one service.

Neither interface imports the other; this module puts them side by side, bounds request bodies
by the limits both declare, and at start-up makes the keys and queues again the trainings, exports
and acquisitions that a stopped server left unfinished. The OpenAPI page is at ``/docs`` (JSON at
``/openapi.json``); the portal at ``/``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tagvision import __version__, api, web
from tagvision.api.middleware import BodyLimit, CaseInsensitivePaths, Guards
from tagvision.service import Service

log = logging.getLogger("tagvision.server")


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.keys.current()  # make the keys now, not on the first request
        resumed = service.jobs.resume()
        if resumed:
            log.info("resumed %d interrupted jobs", resumed)
        yield

    app = FastAPI(title="tagvision", version=__version__, description=api.DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    api.install(app)
    web.install(app)
    # The last added runs first: paths are lower-cased before the body limits match them.
    app.add_middleware(BodyLimit, limits=api.BODY_LIMITS + web.BODY_LIMITS)
    app.add_middleware(CaseInsensitivePaths, literals=api.path_words())
    settings = service.ctx.settings
    app.add_middleware(Guards, allowed_hosts=settings.allowed_hosts(), wait_seconds=settings.request_wait_seconds)
    return app
