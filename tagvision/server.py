"""The ASGI app ``tagvision serve`` runs: the HTTP API and the web portal over one service.

Neither interface imports the other; this module puts them side by side, bounds request bodies
by the limits both declare, and at start-up makes the keys and starts the embedded worker (which
resumes the trainings, exports and acquisitions a stopped server left unfinished) unless the
settings say this server is a pure API replica (``serve --no-worker``). While it runs, it drops
now and then what it cached for iterations deleted since. The OpenAPI page is at ``/docs`` (JSON at
``/openapi.json``); the portal at ``/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from tagvision import __version__, api, web
from tagvision.api.middleware import BodyLimit, CaseInsensitivePaths, Guards
from tagvision.service import Service
from tagvision.service.caches import SWEEP_SECONDS

log = logging.getLogger("tagvision.server")
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt parameters


def return_freed_memory() -> None:
    """Let a long-running server give freed image memory back to the system (glibc only).

    glibc raises its mmap threshold each time a large block is freed, so later large blocks come from the
    heap and stay resident after they are freed: after a burst of large decodes RSS stayed ~1.8 GB above
    idle (bench/memory.py). A fixed threshold keeps blocks over 256 KiB mapped (unmapped when freed), and
    two arenas keep worker threads from fragmenting a heap each.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024)
        libc.mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: its allocator decides
        log.debug("mallopt unavailable; memory is returned as the allocator decides")


def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.keys.current()  # make the keys now, not on the first request
        if service.ctx.settings.embedded_worker:
            await run_in_threadpool(service.jobs.start_worker)
        sweeper = asyncio.create_task(_sweep_caches(service))
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    app = FastAPI(
        title="tagvision",
        version=__version__,
        description=api.DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # web.install_docs serves /docs and /redoc from local files
        redoc_url=None,
    )
    app.state.service = service
    api.install(app)
    web.install(app)
    # The last added runs first: paths are lower-cased before the body limits match them.
    app.add_middleware(BodyLimit, limits=api.BODY_LIMITS + web.BODY_LIMITS)
    app.add_middleware(CaseInsensitivePaths, literals=api.path_words())
    settings = service.ctx.settings
    app.add_middleware(Guards, allowed_hosts=settings.allowed_hosts(), wait_seconds=settings.request_wait_seconds)
    return app


async def _sweep_caches(service: Service) -> None:
    """Every so often, drop what this process cached for iterations deleted since (on any replica)."""
    while True:
        await asyncio.sleep(SWEEP_SECONDS)
        try:
            await run_in_threadpool(service.sweep_caches)
        except Exception:  # the database is unreachable for now: try again later
            log.exception("could not sweep the model caches")
