"""The Custom Vision Training API (classification), under ``/customvision/{version}/training``.

Routes translate HTTP into service calls and service views into Custom Vision JSON; every
rule lives in the service. Paths, query names, bodies and status codes follow the v3.4-preview
spec that the official SDK 3.1.1 speaks (``docs/custom-vision-api.md``); v3.0 to v3.3 share
the handlers (v3.0-v3.2 clients get 200 instead of 207 for partly failed image batches).
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from tagvision import domains
from tagvision.api import render, schemas
from tagvision.api.auth import require_training_key, version_gate
from tagvision.api.uploads import IMAGE_BODY, image_parts, one_image
from tagvision.errors import InvalidInput
from tagvision.images import MAX_TRAINING_BYTES
from tagvision.service import NewImage, Service
from tagvision.service.images import parse_metadata_filter
from tagvision.service.prediction import PredictionQuery, QueryTag, SuggestionQuery
from tagvision.service.views import ImageCreateSummary

VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")
MAX_BATCH, MAX_TAG_IDS, MAX_IDS, MAX_TAKE = 64, 20, 256, 256


router = APIRouter(
    prefix="/customvision/{version}/training",
    tags=["Training API"],
    dependencies=[Depends(version_gate("Training API", VERSIONS)), Depends(require_training_key)],
)

ProjectId = Annotated[str, Path(alias="projectId")]
IterationId = Annotated[str, Path(alias="iterationId")]
TagId = Annotated[str, Path(alias="tagId")]
OptionalIteration = Annotated[str | None, Query(alias="iterationId")]
Take = Annotated[int, Query(ge=0, le=MAX_TAKE)]
Skip = Annotated[int, Query(ge=0, le=2**31 - 1)]  # int32 in the spec; SQLite overflows past 2**63


def svc(request: Request) -> Service:
    return request.app.state.service


Svc = Annotated[Service, Depends(svc)]


def csv(value: str | None, *, limit: int, what: str) -> list[str]:
    """Custom Vision sends lists as one comma-separated value (``tagIds=a,b``)."""
    items = [v.strip() for v in (value or "").split(",") if v.strip()]
    if len(items) > limit:
        raise InvalidInput(
            f"At most {limit} {what} per request; {len(items)} were given.", code="BadRequestExceededBatchSize"
        )
    return items


def batch_status(version: str, summary_ok: bool) -> int:
    """200 when every image made it; 207 otherwise (v3.3 on; v3.0-v3.2 clients only accept 200)."""
    return 200 if summary_ok or version in ("v3.0", "v3.1", "v3.2") else 207


def summary_response(request: Request, version: str, summary: ImageCreateSummary) -> JSONResponse:
    return JSONResponse(
        render.create_summary(request, summary), status_code=batch_status(version, summary.is_batch_successful)
    )


def newest_first(order_by: str | None) -> bool:
    if order_by in (None, "", "Newest"):
        return True
    if order_by == "Oldest":
        return False
    raise InvalidInput(f"Unknown orderBy {order_by!r}; use Newest or Oldest.", code="BadRequestInvalid")


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


# --------------------------------------------------------------------------- domains and projects


@router.get("/domains", response_model=list[schemas.Domain], summary="List the domains")
def get_domains() -> list[dict]:
    return [d.to_json() for d in domains.DOMAINS]


@router.get("/domains/{domainId}", response_model=schemas.Domain, summary="Get a domain")
def get_domain(domain_id: Annotated[str, Path(alias="domainId")]) -> dict:
    return domains.get(domain_id).to_json()


@router.get("/projects", response_model=list[schemas.Project], summary="List the projects")
def get_projects(service: Svc) -> list[dict]:
    return [p.to_json() for p in service.projects.list()]


@router.post("/projects", response_model=schemas.Project, summary="Create a project")
def create_project(
    service: Svc,
    name: Annotated[str, Query()] = "",
    description: Annotated[str, Query()] = "",
    domain_id: Annotated[str | None, Query(alias="domainId")] = None,
    classification_type: Annotated[str | None, Query(alias="classificationType")] = None,
    _export_platforms: Annotated[str | None, Query(alias="targetExportPlatforms")] = None,
    _options: Annotated[dict[str, Any] | None, Body()] = None,
) -> dict:
    return service.projects.create(
        name,
        classification=classification_type or "Multiclass",
        domain=domain_id or domains.GENERAL,
        description=description,
    ).to_json()


@router.get("/projects/{projectId}", response_model=schemas.Project, summary="Get a project")
def get_project(service: Svc, project_id: ProjectId) -> dict:
    return service.projects.get(project_id).to_json()


@router.patch("/projects/{projectId}", response_model=schemas.Project, summary="Update a project")
def update_project(service: Svc, project_id: ProjectId, body: schemas.ProjectUpdate) -> dict:
    settings = body.settings or schemas.ProjectSettings()
    return service.projects.update(
        project_id,
        name=body.name,
        description=body.description,
        domain=settings.domainId,
        classification=settings.classificationType,
    ).to_json()


@router.delete("/projects/{projectId}", status_code=204, summary="Delete a project")
def delete_project(service: Svc, project_id: ProjectId) -> Response:
    service.projects.delete(project_id)
    return Response(status_code=204)


# --------------------------------------------------------------------------- tags


@router.get("/projects/{projectId}/tags", response_model=list[schemas.Tag], summary="List the tags")
def get_tags(service: Svc, project_id: ProjectId, iteration_id: OptionalIteration = None) -> list[dict]:
    return [t.to_json() for t in service.projects.list_tags(project_id, iteration_id)]


@router.post("/projects/{projectId}/tags", response_model=schemas.Tag, summary="Create a tag")
def create_tag(
    service: Svc,
    project_id: ProjectId,
    name: Annotated[str, Query()] = "",
    description: Annotated[str, Query()] = "",
    type: Annotated[str, Query()] = "Regular",
) -> dict:
    (tag,) = service.projects.create_tags(project_id, [name], description, type)
    return tag.to_json()


@router.get("/projects/{projectId}/tags/{tagId}", response_model=schemas.Tag, summary="Get a tag")
def get_tag(service: Svc, project_id: ProjectId, tag_id: TagId, iteration_id: OptionalIteration = None) -> dict:
    return service.projects.get_tag(project_id, tag_id, iteration_id).to_json()


@router.patch("/projects/{projectId}/tags/{tagId}", response_model=schemas.Tag, summary="Update a tag")
def update_tag(service: Svc, project_id: ProjectId, tag_id: TagId, body: schemas.TagUpdate) -> dict:
    return service.projects.update_tag(
        project_id, tag_id, name=body.name, description=body.description, type_=body.type
    ).to_json()


@router.delete("/projects/{projectId}/tags/{tagId}", status_code=204, summary="Delete a tag")
def delete_tag(service: Svc, project_id: ProjectId, tag_id: TagId) -> Response:
    service.projects.delete_tag(project_id, tag_id)
    return Response(status_code=204)


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


TagIdsQuery = Annotated[str | None, Query(alias="tagIds", description="Comma-separated tag ids.")]
FilterQuery = Annotated[str | None, Query(alias="$filter", description="metadata=key eq 'value' and key2 ne 'v'")]
OrderQuery = Annotated[str | None, Query(alias="orderBy", description="Newest or Oldest")]


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
def create_images_from_urls(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    version: Annotated[str, Path()],
    batch: schemas.ImageUrlCreateBatch,
) -> JSONResponse:
    check_batch(len(batch.images), batch.tagIds)
    if any(e.regions for e in batch.images):
        raise not_supported("Regions")
    summary = service.images.add_urls(
        project_id, [(e.url, union(batch.tagIds, e.tagIds)) for e in batch.images], batch.metadata
    )
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


# --------------------------------------------------------------------------- training and iterations


@router.post(
    "/projects/{projectId}/train",
    response_model=schemas.Iteration,
    summary="Train: returns the new iteration at once (status Training); trainingType=Advanced fine-tunes "
    "the backbone within reservedBudgetInHours (or budgetMinutes)",
)
def train_project(
    service: Svc,
    project_id: ProjectId,
    training_type: Annotated[str | None, Query(alias="trainingType")] = None,
    reserved_budget: Annotated[int, Query(alias="reservedBudgetInHours", le=2**31 - 1)] = 0,
    force_train: Annotated[bool, Query(alias="forceTrain")] = False,
    _email: Annotated[str | None, Query(alias="notificationEmailAddress")] = None,
    budget_minutes: Annotated[
        float | None,
        Query(alias="budgetMinutes", gt=0, le=24 * 60, description="tagvision: an advanced training budget in minutes"),
    ] = None,
    parameters: Annotated[schemas.TrainingParameters | None, Body()] = None,
) -> dict:
    if parameters is not None and parameters.customBaseModelInfo:
        raise InvalidInput("Training from another project's iteration is not available.", code="BadRequestNotSupported")
    selected = parameters.selectedTags if parameters is not None else None
    return service.jobs.train(
        project_id,
        force=force_train,
        training_type=training_type or "Regular",
        selected_tags=selected or None,
        reserved_budget_hours=reserved_budget,
        budget_minutes=budget_minutes,
    ).to_json()


@router.get("/projects/{projectId}/iterations", response_model=list[schemas.Iteration], summary="List iterations")
def get_iterations(service: Svc, project_id: ProjectId) -> list[dict]:
    return [i.to_json() for i in service.training.iterations(project_id)]


@router.get(
    "/projects/{projectId}/iterations/{iterationId}", response_model=schemas.Iteration, summary="Get an iteration"
)
def get_iteration(service: Svc, project_id: ProjectId, iteration_id: IterationId) -> dict:
    return service.training.iteration(project_id, iteration_id).to_json()


@router.patch(
    "/projects/{projectId}/iterations/{iterationId}", response_model=schemas.Iteration, summary="Rename an iteration"
)
def update_iteration(
    service: Svc, project_id: ProjectId, iteration_id: IterationId, body: schemas.IterationUpdate
) -> dict:
    return service.training.rename_iteration(project_id, iteration_id, body.name).to_json()


@router.delete("/projects/{projectId}/iterations/{iterationId}", status_code=204, summary="Delete an iteration")
def delete_iteration(service: Svc, project_id: ProjectId, iteration_id: IterationId) -> Response:
    service.training.delete_iteration(project_id, iteration_id)
    return Response(status_code=204)


@router.get(
    "/projects/{projectId}/iterations/{iterationId}/performance",
    response_model=schemas.IterationPerformance,
    summary="Cross-validated precision, recall and average precision at a threshold",
)
def get_iteration_performance(
    service: Svc,
    project_id: ProjectId,
    iteration_id: IterationId,
    threshold: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
    _overlap: Annotated[float | None, Query(alias="overlapThreshold")] = None,
) -> dict:
    return service.training.performance(project_id, iteration_id, threshold).to_json()


@router.get(
    "/projects/{projectId}/iterations/{iterationId}/performance/images",
    response_model=list[schemas.ImagePerformance],
    summary="Training images with their cross-validated (out-of-fold) predictions",
)
def get_image_performances(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: IterationId,
    tag_ids: TagIdsQuery = None,
    order_by: OrderQuery = None,
    take: Take = 50,
    skip: Skip = 0,
) -> list[dict]:
    views = service.training.image_performances(
        project_id,
        iteration_id,
        tag_ids=csv(tag_ids, limit=MAX_TAG_IDS, what="tag ids"),
        newest_first=newest_first(order_by),
        skip=skip,
        take=take,
    )
    return [render.image_performance(request, v) for v in views]


@router.get(
    "/projects/{projectId}/iterations/{iterationId}/performance/images/count",
    response_model=int,
    summary="Count the images of an iteration's performance",
)
def get_image_performance_count(
    service: Svc, project_id: ProjectId, iteration_id: IterationId, tag_ids: TagIdsQuery = None
) -> int:
    return service.training.image_performance_count(
        project_id, iteration_id, tag_ids=csv(tag_ids, limit=MAX_TAG_IDS, what="tag ids")
    )


@router.post(
    "/projects/{projectId}/iterations/{iterationId}/publish",
    response_model=bool,
    summary="Publish an iteration to the Prediction API",
)
def publish_iteration(
    service: Svc,
    project_id: ProjectId,
    iteration_id: IterationId,
    publish_name: Annotated[str, Query(alias="publishName")] = "",
    prediction_id: Annotated[str, Query(alias="predictionId")] = "",
    overwrite: Annotated[bool, Query()] = False,
) -> bool:
    service.training.publish(project_id, iteration_id, publish_name, prediction_id, overwrite)
    return True


@router.delete(
    "/projects/{projectId}/iterations/{iterationId}/publish", status_code=204, summary="Unpublish an iteration"
)
def unpublish_iteration(service: Svc, project_id: ProjectId, iteration_id: IterationId) -> Response:
    service.training.unpublish(project_id, iteration_id)
    return Response(status_code=204)


@router.get(
    "/projects/{projectId}/iterations/{iterationId}/export",
    response_model=list[schemas.Export],
    summary="List an iteration's exports",
)
def get_exports(request: Request, service: Svc, project_id: ProjectId, iteration_id: IterationId) -> list[dict]:
    return [render.export(request, e) for e in service.exports.list(project_id, iteration_id)]


@router.post(
    "/projects/{projectId}/iterations/{iterationId}/export",
    response_model=schemas.Export,
    summary="Export an iteration (ONNX: backbone, head and softmax/sigmoid in one file, with labels)",
)
def export_iteration(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    iteration_id: IterationId,
    platform: Annotated[str, Query()] = "",
    flavor: Annotated[str | None, Query()] = None,
) -> dict:
    return render.export(request, service.jobs.export(project_id, iteration_id, platform, flavor))


# --------------------------------------------------------------------------- stored predictions and quick tests


@router.post(
    "/projects/{projectId}/predictions/query",
    response_model=schemas.PredictionQueryResult,
    summary="Query stored predictions (Newest, Oldest, or Suggested = most uncertain first)",
)
def query_predictions(
    request: Request, service: Svc, project_id: ProjectId, token: schemas.PredictionQueryToken
) -> dict:
    query = PredictionQuery(
        order_by=token.orderBy or "Newest",
        tags=tuple(QueryTag(t.id, t.minThreshold, t.maxThreshold) for t in token.tags or []),
        iteration_id=token.iterationId,
        start_time=token.startTime,
        end_time=token.endTime,
        application=token.application,
        max_count=token.maxCount or 50,
        continuation=token.continuation,
    )
    page, continuation = service.prediction.query(project_id, query)
    echoed = token.model_dump(mode="json")
    return {
        "token": {**echoed, "continuation": continuation, "session": "1" if continuation else None},
        "results": [render.stored_prediction(request, v) for v in page],
    }


@router.delete("/projects/{projectId}/predictions", status_code=204, summary="Delete stored predictions")
def delete_prediction(service: Svc, project_id: ProjectId, ids: Annotated[str | None, Query()] = None) -> Response:
    service.prediction.delete(project_id, csv(ids, limit=MAX_BATCH, what="prediction ids"))
    return Response(status_code=204)


@router.post(
    "/projects/{projectId}/quicktest/image",
    response_model=schemas.ImagePrediction,
    openapi_extra={"requestBody": IMAGE_BODY},
    summary="Quick test an image",
)
async def quick_test_image(
    request: Request,
    project_id: ProjectId,
    iteration_id: OptionalIteration = None,
    store: Annotated[bool, Query()] = True,
) -> dict:
    service: Service = request.app.state.service
    data = await one_image(request)
    view = await run_in_threadpool(
        lambda: service.prediction.classify(
            project_id, data, iteration_ref=iteration_id, store=store, max_bytes=MAX_TRAINING_BYTES
        )
    )
    return view.to_json()


@router.post(
    "/projects/{projectId}/quicktest/url", response_model=schemas.ImagePrediction, summary="Quick test an image URL"
)
def quick_test_image_url(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    body: schemas.ImageUrl,
    iteration_id: OptionalIteration = None,
    store: Annotated[bool, Query()] = True,
) -> dict:
    return service.prediction.classify_url(
        project_id, body.url, iteration_ref=iteration_id, store=store, max_bytes=MAX_TRAINING_BYTES
    ).to_json()
