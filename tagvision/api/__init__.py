"""The HTTP API: Custom Vision's Training and Prediction APIs, and tagvision's extensions in their style.

Routers translate HTTP into service calls and service views into Custom Vision JSON: ``training``
(projects, tags, iterations, exports, stored predictions), ``images`` (training images),
``acquisitions`` (images for tags from providers), ``transfer`` (project export and import by token),
``scorings`` (scoring catalogues), ``knowledge`` (catalogues of tag information, decision rules, retention
and prediction records), ``prediction`` and ``files`` (signed downloads); ``params`` holds what
the Training API's routers share. ``errors`` gives every error
the ``{"code", "message"}`` body, ``auth`` checks the key headers, ``middleware`` matches paths
case-insensitively and bounds request bodies. ``tagvision.server`` mounts it beside the portal.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from tagvision.api.middleware import LIMITS
from tagvision.knowledge.catalogue import MAX_FILE as MAX_CATALOGUE

# A catalogue file (tagvision.api.knowledge) may be larger than the default body.
BODY_LIMITS = LIMITS + ((re.compile(r"/training/projects/[^/]+/catalogue$"), MAX_CATALOGUE, "BadRequestCatalogue"),)

DESCRIPTION = """Self-hosted image classification, wire-compatible with Azure Custom Vision.

Point the official `azure-cognitiveservices-vision-customvision` SDK (or any Custom Vision client) at this
server with the keys from `tagvision keys`: the Training API lives under `/customvision/v3.4-preview/training`
(also v3.0 to v3.3) with the `Training-Key` header, the Prediction API under `/customvision/v3.1/prediction`
(also v3.0) with the `Prediction-Key` header. Errors are JSON `{"code", "message"}`."""


def routers() -> tuple[APIRouter, ...]:
    # Imported here: the route modules import from this package (auth, render, ...).
    from tagvision.api import acquisitions, files, images, knowledge, prediction, scorings, training, transfer

    return (
        training.router,
        images.router,
        transfer.router,
        acquisitions.router,
        scorings.router,
        knowledge.router,
        prediction.router,
        files.router,
    )


def install(app: FastAPI) -> None:
    """Add the API's routes and its error model to ``app``."""
    from tagvision.api import errors

    errors.install(app)
    for router in routers():
        app.include_router(router)


def path_words() -> set[str]:
    """The literal words of the API's paths and its version names, which clients may write in any case."""
    from tagvision.api import params, prediction

    # From the routers themselves: FastAPI >= 0.163 lists an included router as one lazy entry in app.routes.
    return {
        segment
        for router in routers()
        for route in router.routes
        if isinstance(route, APIRoute)
        for segment in route.path.split("/")
        if segment and not re.fullmatch(r"\{.*\}", segment)
    } | set(params.VERSIONS + prediction.VERSIONS)


__all__ = ["BODY_LIMITS", "DESCRIPTION", "install", "path_words", "routers"]
