"""The web portal: the whole Custom Vision workflow in a browser, served by ``tagvision serve`` at ``/``.

Server-rendered Jinja2 pages with a little plain JavaScript (``static/portal.js``) and CSS; no
build step. The portal is behind a login with the Training-Key; every form and state-changing
fetch carries a CSRF token bound to the session (``session.py``). Route handlers parse forms and
call the service layer; ``shape.py`` turns service views into what the templates show, and
``charts.py`` draws the SVG charts. Nothing here touches the store.

Modules: ``routing`` (the page and JSON route classes: login, CSRF, errors as sentences),
``auth`` (log in and out), ``projects``, ``images`` (training images and uploads), ``search`` (search
providers for images of tags, review the candidates, add them), ``training``
(train, performance, publish, export), ``predictions`` (stored predictions, quick test,
prediction URL) and ``scoring`` (score a catalogue in the background, download the results).
``tagvision.server`` mounts the portal beside the API; neither imports the other.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from tagvision.images import MAX_TRAINING_BYTES

STATIC = Path(__file__).parent / "static"
MULTIPART_SLACK = 64 * 1024  # a multipart body's part headers and boundaries
# (path pattern, byte limit, code) for the server's body-size middleware: uploads come in batches of at
# most 16 files (images.MAX_UPLOAD_FILES), the quick test takes one image.
BODY_LIMITS = (
    (
        re.compile(r"^/projects/[^/]+/images/upload$"),
        16 * (MAX_TRAINING_BYTES + MULTIPART_SLACK),
        "BadRequestExceededBatchSize",
    ),
    (re.compile(r"^/projects/[^/]+/quicktest$"), MAX_TRAINING_BYTES + MULTIPART_SLACK, "BadRequestImageSizeBytes"),
)


def install(app: FastAPI) -> None:
    """Add the portal's routes and its static files to ``app``."""
    from tagvision.web import auth, images, predictions, projects, scoring, search, training

    for module in (auth, projects, images, search, training, predictions, scoring):
        for router in module.routers:
            app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
