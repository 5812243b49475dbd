"""The Custom Vision Prediction API (classification), under ``/customvision/{version}/prediction``.

A published iteration answers as ``/{projectId}/classify/iterations/{publishedName}/image``
(and ``/url``); both store the prediction for review unless called on their ``/nostore``
form. Detection routes answer ``BadRequestNotSupported``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from tagvision.api import schemas
from tagvision.api.auth import require_prediction_key, version_gate
from tagvision.api.extras import PredictionExtras
from tagvision.api.uploads import IMAGE_BODY, one_image
from tagvision.errors import InvalidInput
from tagvision.service import Service
from tagvision.service.knowledge import Extras

VERSIONS = ("v3.0", "v3.1")


router = APIRouter(
    prefix="/customvision/{version}/prediction",
    tags=["Prediction API"],
    dependencies=[Depends(version_gate("Prediction API", VERSIONS)), Depends(require_prediction_key)],
)

ProjectId = Annotated[str, Path(alias="projectId")]
PublishedName = Annotated[str, Path(alias="publishedName")]
Application = Annotated[str | None, Query(max_length=255)]


async def _classify_image(
    request: Request, project_id: str, published: str, application: str | None, store: bool, extras: Extras
) -> dict:
    service: Service = request.app.state.service
    data = await one_image(request)
    view = await run_in_threadpool(
        lambda: service.prediction.classify(
            project_id, data, published=published, store=store, application=application, extras=extras
        )
    )
    return view.to_json()


async def _classify_url(
    request: Request, project_id: str, published: str, url: str, application: str | None, store: bool, extras: Extras
) -> dict:
    service: Service = request.app.state.service
    async with service.url_gate.slot():
        view = await run_in_threadpool(
            lambda: service.prediction.classify_url(
                project_id, url, published=published, store=store, application=application, extras=extras
            )
        )
    return view.to_json()


@router.post(
    "/{projectId}/classify/iterations/{publishedName}/image",
    response_model=schemas.ImagePrediction,
    openapi_extra={"requestBody": IMAGE_BODY},
    summary="Classify an image (stored for review)",
)
async def classify_image(
    request: Request,
    project_id: ProjectId,
    published_name: PublishedName,
    extras: PredictionExtras,
    application: Application = None,
) -> dict:
    return await _classify_image(request, project_id, published_name, application, True, extras)


@router.post(
    "/{projectId}/classify/iterations/{publishedName}/image/nostore",
    response_model=schemas.ImagePrediction,
    openapi_extra={"requestBody": IMAGE_BODY},
    summary="Classify an image without storing it",
)
async def classify_image_with_no_store(
    request: Request,
    project_id: ProjectId,
    published_name: PublishedName,
    extras: PredictionExtras,
    application: Application = None,
) -> dict:
    return await _classify_image(request, project_id, published_name, application, False, extras)


@router.post(
    "/{projectId}/classify/iterations/{publishedName}/url",
    response_model=schemas.ImagePrediction,
    summary="Classify an image URL (stored for review)",
)
async def classify_image_url(
    request: Request,
    project_id: ProjectId,
    published_name: PublishedName,
    body: schemas.ImageUrl,
    extras: PredictionExtras,
    application: Application = None,
) -> dict:
    return await _classify_url(request, project_id, published_name, body.url, application, True, extras)


@router.post(
    "/{projectId}/classify/iterations/{publishedName}/url/nostore",
    response_model=schemas.ImagePrediction,
    summary="Classify an image URL without storing it",
)
async def classify_image_url_with_no_store(
    request: Request,
    project_id: ProjectId,
    published_name: PublishedName,
    body: schemas.ImageUrl,
    extras: PredictionExtras,
    application: Application = None,
) -> dict:
    return await _classify_url(request, project_id, published_name, body.url, application, False, extras)


@router.post("/{projectId}/detect/iterations/{publishedName}/image", summary="Object detection: not supported")
@router.post("/{projectId}/detect/iterations/{publishedName}/image/nostore", summary="Object detection: not supported")
@router.post("/{projectId}/detect/iterations/{publishedName}/url", summary="Object detection: not supported")
@router.post("/{projectId}/detect/iterations/{publishedName}/url/nostore", summary="Object detection: not supported")
def detect(project_id: ProjectId) -> None:
    raise InvalidInput(
        "Object detection is not supported; tagvision serves image classifiers. Use the classify routes.",
        code="BadRequestNotSupported",
    )
