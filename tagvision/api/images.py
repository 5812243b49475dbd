"""The Training API's image routes: listing and counting, adding (files, URLs, predictions), metadata,
tagging, deleting, and suggested tags for untagged images.

Routes parse the request, call the service and render its views as Custom Vision JSON
(``render``); the image size and batch limits are the spec's.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import Body, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from tagvision.api import render, schemas
from tagvision.api.params import (
    MAX_BATCH,
    MAX_IDS,
    MAX_TAG_IDS,
    OptionalIteration,
    OrderQuery,
    ProjectId,
    Skip,
    Svc,
    TagIdsQuery,
    Take,
    csv,
    newest_first,
    training_router,
)
from tagvision.api.uploads import IMAGE_BODY, image_parts
from tagvision.errors import InvalidInput
from tagvision.service import NewImage, Service
from tagvision.service.images import parse_metadata_filter
from tagvision.service.prediction import SuggestionQuery
from tagvision.service.views import ImageCreateSummary

router = training_router()


def batch_status(version: str, summary_ok: bool) -> int:
    """200 when every image made it; 207 otherwise (v3.3 on; v3.0-v3.2 clients only accept 200)."""
    return 200 if summary_ok or version in ("v3.0", "v3.1", "v3.2") else 207


def summary_response(request: Request, version: str, summary: ImageCreateSummary) -> JSONResponse:
    return JSONResponse(
        render.create_summary(request, summary), status_code=batch_status(version, summary.is_batch_successful)
    )


def tagging(status: str | None) -> tuple[bool, bool]:
    """taggingStatus -> (tagged only, untagged only)."""
    match (status or "All").lower():
        case "all":
            return False, False
        case "tagged":
            return True, False
        case "untagged":
            return False, True
    raise InvalidInput(f"Unknown taggingStatus {status!r}; use All, Tagged or Untagged.", code="BadRequestInvalid")


def check_batch(count: int, tag_ids: list[str] | None) -> None:
    if count > MAX_BATCH:
        raise InvalidInput(
            f"At most {MAX_BATCH} images per batch; {count} were sent.", code="BadRequestExceededBatchSize"
        )
    if count == 0:
        raise InvalidInput("The batch has no images.", code="BadRequestImageBatch")
    if tag_ids and len(tag_ids) > MAX_TAG_IDS:
        raise InvalidInput(f"At most {MAX_TAG_IDS} tags per image.", code="BadRequestExceedTagPerImageLimit")


def union(*lists: list[str] | None) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for tags in lists for t in tags or []))


def not_supported(what: str) -> InvalidInput:
    return InvalidInput(
        f"{what} belongs to object detection; tagvision trains image classifiers only.", code="BadRequestNotSupported"
    )


FilterQuery = Annotated[str | None, Query(alias="$filter", description="metadata=key eq 'value' and key2 ne 'v'")]


# --------------------------------------------------------------------------- images: listing


def _list_images(
    request: Request,
    service: Service,
    project_id: str,
    *,
    iteration_id=None,
    tag_ids=None,
    tagging_status=None,
    filter_=None,
    order_by=None,
    take=50,
    skip=0,
) -> list[dict]:
    tagged, untagged = tagging(tagging_status)
    views = service.images.list(
        project_id,
        tag_ids=csv(tag_ids, limit=MAX_TAG_IDS, what="tag ids"),
        tagged=tagged,
        untagged=untagged,
        iteration=iteration_id,
        metadata=parse_metadata_filter(filter_) if filter_ else None,
        newest_first=newest_first(order_by),
        skip=skip,
        take=take,
    )
    return [render.image(request, v) for v in views]


def _count_images(
    service: Service, project_id: str, *, iteration_id=None, tag_ids=None, tagging_status=None, filter_=None
) -> int:
    tagged, untagged = tagging(tagging_status)
    return service.images.count(
        project_id,
        tag_ids=csv(tag_ids, limit=MAX_TAG_IDS, what="tag ids"),
        tagged=tagged,
        untagged=untagged,
        iteration=iteration_id,
        metadata=parse_metadata_filter(filter_) if filter_ else None,
    )


@router.get("/projects/{projectId}/images", response_model=list[schemas.Image], summary="List images")
def get_images(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: OptionalIteration = None,
    tag_ids: TagIdsQuery = None,
    tagging_status: Annotated[str | None, Query(alias="taggingStatus")] = None,
    filter_: FilterQuery = None,
    order_by: OrderQuery = None,
    take: Take = 50,
    skip: Skip = 0,
) -> list[dict]:
    return _list_images(
        request,
        service,
        project_id,
        iteration_id=iteration_id,
        tag_ids=tag_ids,
        tagging_status=tagging_status,
        filter_=filter_,
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{projectId}/images/count", response_model=int, summary="Count images")
def get_image_count(
    service: Svc,
    project_id: ProjectId,
    iteration_id: OptionalIteration = None,
    tagging_status: Annotated[str | None, Query(alias="taggingStatus")] = None,
    filter_: FilterQuery = None,
    tag_ids: TagIdsQuery = None,
) -> int:
    return _count_images(
        service, project_id, iteration_id=iteration_id, tag_ids=tag_ids, tagging_status=tagging_status, filter_=filter_
    )


@router.get("/projects/{projectId}/images/tagged", response_model=list[schemas.Image], summary="List tagged images")
def get_tagged_images(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: OptionalIteration = None,
    tag_ids: TagIdsQuery = None,
    order_by: OrderQuery = None,
    take: Take = 50,
    skip: Skip = 0,
) -> list[dict]:
    return _list_images(
        request,
        service,
        project_id,
        iteration_id=iteration_id,
        tag_ids=tag_ids,
        tagging_status="Tagged",
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{projectId}/images/tagged/count", response_model=int, summary="Count tagged images")
def get_tagged_image_count(
    service: Svc, project_id: ProjectId, iteration_id: OptionalIteration = None, tag_ids: TagIdsQuery = None
) -> int:
    return _count_images(service, project_id, iteration_id=iteration_id, tag_ids=tag_ids, tagging_status="Tagged")


@router.get("/projects/{projectId}/images/untagged", response_model=list[schemas.Image], summary="List untagged images")
def get_untagged_images(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: OptionalIteration = None,
    order_by: OrderQuery = None,
    take: Take = 50,
    skip: Skip = 0,
) -> list[dict]:
    return _list_images(
        request,
        service,
        project_id,
        iteration_id=iteration_id,
        tagging_status="Untagged",
        order_by=order_by,
        take=take,
        skip=skip,
    )


@router.get("/projects/{projectId}/images/untagged/count", response_model=int, summary="Count untagged images")
def get_untagged_image_count(service: Svc, project_id: ProjectId, iteration_id: OptionalIteration = None) -> int:
    return _count_images(service, project_id, iteration_id=iteration_id, tagging_status="Untagged")


@router.get("/projects/{projectId}/images/id", response_model=list[schemas.Image], summary="Get images by id")
def get_images_by_ids(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    image_ids: Annotated[str | None, Query(alias="imageIds")] = None,
    iteration_id: OptionalIteration = None,
) -> list[dict]:
    ids = csv(image_ids, limit=MAX_IDS, what="image ids")
    return [render.image(request, v) for v in service.images.by_ids(project_id, ids, iteration=iteration_id)]


# --------------------------------------------------------------------------- images: adding


@router.post(
    "/projects/{projectId}/images",
    response_model=schemas.ImageCreateSummary,
    openapi_extra={"requestBody": IMAGE_BODY},
    responses={207: {"model": schemas.ImageCreateSummary}},
    summary="Add images (multipart imageData parts, or one raw image)",
)
async def create_images_from_data(
    request: Request, project_id: ProjectId, version: Annotated[str, Path()], tag_ids: TagIdsQuery = None
) -> JSONResponse:
    service: Service = request.app.state.service
    tags = csv(tag_ids, limit=MAX_TAG_IDS, what="tag ids")
    parts = await image_parts(request)
    check_batch(len(parts), tags)
    items = [NewImage(f'"{p.name}"' if p.name else "", lambda d=p.data: d, tuple(tags)) for p in parts]
    summary = await run_in_threadpool(service.images.add, project_id, items)
    return summary_response(request, version, summary)


@router.post(
    "/projects/{projectId}/images/files",
    response_model=schemas.ImageCreateSummary,
    responses={207: {"model": schemas.ImageCreateSummary}},
    summary="Add images from base64 files",
)
def create_images_from_files(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    version: Annotated[str, Path()],
    batch: schemas.ImageFileCreateBatch,
) -> JSONResponse:
    check_batch(len(batch.images), batch.tagIds)
    if any(e.regions for e in batch.images):
        raise not_supported("Regions")
    items = [
        NewImage(e.name or "", _base64_reader(e.contents), union(batch.tagIds, e.tagIds), metadata=batch.metadata or {})
        for e in batch.images
    ]
    summary = service.images.add(project_id, items)
    return summary_response(request, version, summary)


def _base64_reader(contents: str):
    def read() -> bytes:
        try:
            return base64.b64decode(contents, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("The contents are not valid base64.", code="ErrorImageFormat") from None

    return read


@router.post(
    "/projects/{projectId}/images/urls",
    response_model=schemas.ImageCreateSummary,
    responses={207: {"model": schemas.ImageCreateSummary}},
    summary="Add images from URLs",
)
async def create_images_from_urls(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    version: Annotated[str, Path()],
    batch: schemas.ImageUrlCreateBatch,
) -> JSONResponse:
    check_batch(len(batch.images), batch.tagIds)
    if any(e.regions for e in batch.images):
        raise not_supported("Regions")
    entries = [(e.url, union(batch.tagIds, e.tagIds)) for e in batch.images]
    async with service.url_gate.slot():  # a slow remote host holds one of a few places, not the server
        summary = await run_in_threadpool(service.images.add_urls, project_id, entries, batch.metadata)
    return summary_response(request, version, summary)


@router.post(
    "/projects/{projectId}/images/predictions",
    response_model=schemas.ImageCreateSummary,
    responses={207: {"model": schemas.ImageCreateSummary}},
    summary="Add stored predictions' images as training images",
)
def create_images_from_predictions(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    version: Annotated[str, Path()],
    batch: schemas.ImageIdCreateBatch,
) -> JSONResponse:
    check_batch(len(batch.images), batch.tagIds)
    summary = service.prediction.to_training_images(
        project_id, [(e.id, union(batch.tagIds, e.tagIds)) for e in batch.images], batch.metadata
    )
    return summary_response(request, version, summary)


@router.post(
    "/projects/{projectId}/images/metadata",
    response_model=schemas.ImageMetadataUpdateSummary,
    responses={207: {"model": schemas.ImageMetadataUpdateSummary}},
    summary="Update image metadata",
)
def update_image_metadata(
    service: Svc,
    project_id: ProjectId,
    version: Annotated[str, Path()],
    metadata: Annotated[dict[str, str], Body()],
    image_ids: Annotated[str | None, Query(alias="imageIds")] = None,
) -> JSONResponse:
    ids = csv(image_ids, limit=MAX_IDS, what="image ids")
    if not ids:
        raise InvalidInput("Name the images with imageIds.", code="BadRequestRequiredParamIsNull")
    results = service.images.set_metadata(project_id, ids, metadata)
    ok = all(status == "OK" for _, status, _ in results)
    return JSONResponse(
        {
            "isBatchSuccessful": ok,
            "images": [{"imageId": i, "status": status, "metadata": meta or None} for i, status, meta in results],
        },
        status_code=batch_status(version, ok),
    )


@router.delete("/projects/{projectId}/images", status_code=204, responses={202: {}}, summary="Delete images")
def delete_images(
    service: Svc,
    project_id: ProjectId,
    image_ids: Annotated[str | None, Query(alias="imageIds")] = None,
    all_images: Annotated[bool, Query(alias="allImages")] = False,
    all_iterations: Annotated[bool, Query(alias="allIterations")] = False,
) -> Response:
    ids = csv(image_ids, limit=MAX_IDS, what="image ids")
    if not ids and not all_images:
        raise InvalidInput(
            "Name the images with imageIds, or set allImages=true.", code="BadRequestRequiredParamIsNull"
        )
    service.images.delete(project_id, ids, every=all_images)
    return Response(status_code=202 if all_images or all_iterations else 204)


@router.post("/projects/{projectId}/images/tags", response_model=schemas.ImageTagCreateSummary, summary="Tag images")
def create_image_tags(service: Svc, project_id: ProjectId, batch: schemas.ImageTagCreateBatch) -> dict:
    if len(batch.tags) > MAX_BATCH * MAX_TAG_IDS:
        raise InvalidInput("Too many taggings in one batch.", code="BadRequestExceededBatchSize")
    return service.images.tag(project_id, [(e.imageId, e.tagId) for e in batch.tags]).to_json()


@router.delete("/projects/{projectId}/images/tags", status_code=204, summary="Remove tags from images")
def delete_image_tags(
    service: Svc,
    project_id: ProjectId,
    image_ids: Annotated[str | None, Query(alias="imageIds")] = None,
    tag_ids: TagIdsQuery = None,
) -> Response:
    images = csv(image_ids, limit=MAX_BATCH, what="image ids")
    tags = csv(tag_ids, limit=MAX_TAG_IDS, what="tag ids")
    if not images or not tags:
        raise InvalidInput("Name imageIds and tagIds.", code="BadRequestRequiredParamIsNull")
    service.images.untag(project_id, images, tags)
    return Response(status_code=204)


@router.post("/projects/{projectId}/images/regions", summary="Object detection: not supported")
@router.delete("/projects/{projectId}/images/regions", summary="Object detection: not supported")
@router.post("/projects/{projectId}/images/{imageId}/regionproposals", summary="Object detection: not supported")
def regions(project_id: ProjectId) -> None:
    raise not_supported("Regions")


# --------------------------------------------------------------------------- suggestions for untagged images


@router.post(
    "/projects/{projectId}/tagsandregions/suggestions",
    response_model=list[schemas.StoredSuggestedTagAndRegion],
    summary="Suggest tags for images",
)
def suggest_tags_and_regions(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: Annotated[str, Query(alias="iterationId")],
    image_ids: Annotated[str | None, Query(alias="imageIds")] = None,
) -> list[dict]:
    ids = csv(image_ids, limit=MAX_BATCH, what="image ids")
    return [render.suggestion(request, v) for v in service.prediction.suggest(project_id, iteration_id, ids)]


@router.post(
    "/projects/{projectId}/images/suggested",
    response_model=schemas.SuggestedTagAndRegionQuery,
    summary="Untagged images with suggested tags, most uncertain first by default",
)
def query_suggested_images(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: Annotated[str, Query(alias="iterationId")],
    query: schemas.SuggestedTagAndRegionQueryToken,
) -> dict:
    asked = SuggestionQuery(
        tag_ids=tuple(query.tagIds or ()),
        threshold=query.threshold or 0.0,
        sort_by=query.sortBy or "UncertaintyDescending",
        max_count=query.maxCount or 50,
        continuation=query.continuation,
    )
    page, continuation = service.prediction.suggested(project_id, iteration_id, asked)
    token = {**query.model_dump(), "continuation": continuation}
    return {"token": token, "results": [render.suggestion(request, v) for v in page]}


@router.post(
    "/projects/{projectId}/images/suggested/count",
    response_model=dict[str, int],
    summary="Count untagged images suggested per tag",
)
def query_suggested_image_count(
    service: Svc,
    project_id: ProjectId,
    iteration_id: Annotated[str, Query(alias="iterationId")],
    tag_filter: schemas.TagFilter,
) -> dict[str, int]:
    return service.prediction.suggested_counts(
        project_id, iteration_id, tag_filter.tagIds or None, threshold=tag_filter.threshold or 0.0
    )
