"""The tagvision HTTP server: the Custom Vision Training and Prediction APIs over the service layer.

``create_app(service)`` builds the ASGI app; ``tagvision serve`` runs it with uvicorn. At
start-up, trainings and exports that a stopped server left unfinished are queued again.
The OpenAPI page is at ``/docs`` (JSON at ``/openapi.json``); the web portal (``tagvision.web``) at ``/``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from tagvision import __version__, web
from tagvision.api import acquisitions, errors, files, prediction, training
from tagvision.api.links import Links
from tagvision.api.middleware import BodyLimit, CaseInsensitivePaths
from tagvision.service import Service

log = logging.getLogger("tagvision.api")

DESCRIPTION = """Self-hosted image classification, wire-compatible with Azure Custom Vision.

Point the official `azure-cognitiveservices-vision-customvision` SDK (or any Custom Vision client) at this
server with the keys from `tagvision keys`: the Training API lives under `/customvision/v3.4-preview/training`
(also v3.0 to v3.3) with the `Training-Key` header, the Prediction API under `/customvision/v3.1/prediction`
(also v3.0) with the `Prediction-Key` header. Errors are JSON `{"code", "message"}`."""


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.keys.current()  # make the keys now, not on the first request
        resumed = service.jobs.resume()
        if resumed:
            log.info("resumed %d interrupted jobs", resumed)
        yield

    app = FastAPI(title="tagvision", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.state.links = Links(service.keys)
    errors.install(app)
    routers = (training.router, acquisitions.router, prediction.router, files.router)
    for router in routers:
        app.include_router(router)
    web.install(app)  # the portal at / (server-rendered pages: tagvision/web)
    # From the routers themselves: FastAPI >= 0.163 lists an included router as one lazy entry in app.routes.
    literals = {
        segment
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for segment in route.path.split("/")
        if segment and not re.fullmatch(r"\{.*\}", segment)
    }
    app.add_middleware(BodyLimit)
    app.add_middleware(CaseInsensitivePaths, literals=literals | set(training.VERSIONS) | set(prediction.VERSIONS))
    return app
