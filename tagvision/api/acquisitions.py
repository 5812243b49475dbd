"""tagvision extension of the Training API: gather images for tags from image-search providers.

``POST /projects/{projectId}/acquisitions`` starts an acquisition in the background and answers
at once; ``GET`` it to follow the progress per tag. With ``review``, candidates wait until
``POST .../commit`` adds the chosen ones, a page at a time: ``POST .../more`` gathers the next page,
ranked again with the answers. ``?items=true`` lists every candidate with what became of it and
why (``reason``: a stable code; ``message``; ``detail``: its facts, a ``warning``; ``score``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from tagvision.api import render, schemas
from tagvision.api.auth import require_training_key, version_gate
from tagvision.api.params import VERSIONS, ProjectId, Svc
from tagvision.service.views import AcquisitionView

router = APIRouter(
    prefix="/customvision/{version}/training",
    tags=["Image acquisition (tagvision)"],
    dependencies=[Depends(version_gate("Training API", VERSIONS)), Depends(require_training_key)],
)
AcquisitionId = Annotated[str, Path(alias="acquisitionId")]


def _json(request: Request, view: AcquisitionView) -> dict[str, Any]:
    body = view.to_json()
    for item in body["items"]:
        if item.get("sha256"):
            item["thumbnailUri"] = render.link(request, "thumbnail", item["sha256"])
    return body


@router.post(
    "/projects/{projectId}/acquisitions",
    response_model=schemas.Acquisition,
    summary="Gather images for tags from providers or a library (runs in the background)",
)
def start_acquisition(request: Request, service: Svc, project_id: ProjectId, body: schemas.AcquisitionRequest) -> dict:
    view = service.jobs.acquire(
        project_id,
        body.tags,
        per_tag=body.perTag,
        providers=tuple(body.providers),
        library=body.library,
        review=body.review,
        min_side=body.minSide,
        page_size=body.pageSize,
        retry_refused=body.retryRefused,
    )
    return _json(request, view)


@router.get(
    "/projects/{projectId}/acquisitions",
    response_model=list[schemas.Acquisition],
    summary="List the project's acquisitions",
)
def list_acquisitions(request: Request, service: Svc, project_id: ProjectId) -> list[dict]:
    return [_json(request, v) for v in service.acquisitions.list(project_id)]


@router.get(
    "/projects/{projectId}/acquisitions/{acquisitionId}",
    response_model=schemas.Acquisition,
    summary="An acquisition's status and progress per tag (items: every candidate and what became of it)",
)
def get_acquisition(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    acquisition_id: AcquisitionId,
    items: Annotated[bool, Query()] = False,
) -> dict:
    return _json(request, service.acquisitions.get(project_id, acquisition_id, with_items=items))


@router.post(
    "/projects/{projectId}/acquisitions/{acquisitionId}/cancel",
    response_model=schemas.Acquisition,
    summary="Stop an acquisition; what it added stays",
)
def cancel_acquisition(request: Request, service: Svc, project_id: ProjectId, acquisition_id: AcquisitionId) -> dict:
    return _json(request, service.acquisitions.cancel(project_id, acquisition_id))


@router.post(
    "/projects/{projectId}/acquisitions/{acquisitionId}/commit",
    response_model=schemas.ImageCreateSummary,
    summary="Review mode: add the chosen candidates as training images (the rest are rejected)",
)
def commit_acquisition(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    acquisition_id: AcquisitionId,
    body: schemas.AcquisitionCommit,
) -> dict:
    return render.create_summary(request, service.acquisitions.commit(project_id, acquisition_id, body.itemIds))


@router.post(
    "/projects/{projectId}/acquisitions/{acquisitionId}/more",
    response_model=schemas.Acquisition,
    summary="Review mode: gather the next page of candidates, ranked again with the answers so far",
)
def more_acquisition(request: Request, service: Svc, project_id: ProjectId, acquisition_id: AcquisitionId) -> dict:
    return _json(request, service.jobs.more(project_id, acquisition_id))
