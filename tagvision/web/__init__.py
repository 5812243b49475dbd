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
prediction URL), ``scoring`` (score a catalogue in the background, download the results) and ``knowledge``
(catalogue of tag information, a tag's page, decision rules, records).
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
    (re.compile(r"^/projects/[^/]+/catalogue/import$"), 16 * 1024 * 1024 + MULTIPART_SLACK, "BadRequestCatalogue"),
)


REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
EMPTY_SVG = b"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E"


def install(app: FastAPI) -> None:
    """Add the portal's routes, its static files and the API docs page to ``app``."""
    from tagvision.web import auth, images, knowledge, predictions, projects, scoring, search, training

    for module in (auth, projects, images, search, training, predictions, scoring, knowledge):
        for router in module.routers:
            app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_docs(app)


def install_docs(app: FastAPI) -> None:
    """The API docs, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, with their files served from the installed
    ``fastapi-offline`` package (Swagger UI 5, which reads OpenAPI 3.1; no CDN, so the pages work offline), and
    a favicon for browsers that ask for ``/favicon.ico``. The app is made with ``docs_url=None, redoc_url=None``.
    ReDoc's bundle draws Redocly's logo from their CDN once the page has rendered; that one URL is replaced
    by an empty local image, so the docs ask nothing of the network.
    """
    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.responses import FileResponse, HTMLResponse, Response

    assets = Path(fastapi_offline.__file__).parent / "static"
    redoc_js: list[bytes] = []

    async def redoc_bundle() -> Response:
        if not redoc_js:
            text = (assets / "redoc.standalone.js").read_bytes()
            redoc_js.append(text.replace(REDOC_CDN_LOGO, EMPTY_SVG))
        return Response(redoc_js[0], media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})

    app.add_api_route("/docs-assets/redoc.standalone.js", redoc_bundle, methods=["GET"], include_in_schema=False)
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    openapi = app.openapi_url or "/openapi.json"

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title} API",
            redoc_js_url="/docs-assets/redoc.standalone.js",
            redoc_favicon_url="/static/favicon.svg",
            with_google_fonts=False,
        )

    async def favicon() -> FileResponse:
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    app.add_api_route("/favicon.ico", favicon, methods=["GET"], include_in_schema=False)
