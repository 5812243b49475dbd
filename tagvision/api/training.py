"""The Custom Vision Training API (classification), under ``/customvision/{version}/training``: domains,
projects, tags, training and iterations, performance, publishing, exports, stored predictions and quick
tests. The image routes are in ``images``, the parameters both share in ``params``.

Routes translate HTTP into service calls and service views into Custom Vision JSON; every
rule lives in the service. Paths, query names, bodies and status codes follow the v3.4-preview
spec that the official SDK 3.1.1 speaks (``docs/custom-vision-api.md``); v3.0 to v3.3 share
the handlers (v3.0-v3.2 clients get 200 instead of 207 for partly failed image batches).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from tagvision import domains
from tagvision.api import render, schemas
from tagvision.api.extras import PredictionExtras
from tagvision.api.params import (
    MAX_BATCH,
    MAX_TAG_IDS,
    IterationId,
    OptionalIteration,
    OrderQuery,
    ProjectId,
    Skip,
    Svc,
    TagId,
    TagIdsQuery,
    Take,
    csv,
    newest_first,
    training_router,
)
from tagvision.api.uploads import IMAGE_BODY, one_image
from tagvision.errors import InvalidInput
from tagvision.images import MAX_TRAINING_BYTES
from tagvision.service import Service
from tagvision.service.prediction import PredictionQuery, QueryTag
from tagvision.service.records import check_metadata

router = training_router()


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
        project_id, tag_id, name=body.name, description=body.description, type_=body.type, information=body.information
    ).to_json()


@router.delete("/projects/{projectId}/tags/{tagId}", status_code=204, summary="Delete a tag")
def delete_tag(service: Svc, project_id: ProjectId, tag_id: TagId) -> Response:
    service.projects.delete_tag(project_id, tag_id)
    return Response(status_code=204)


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
    "/projects/{projectId}/iterations/{iterationId}",
    response_model=schemas.Iteration,
    summary="Rename an iteration; tagvision: set its precision (Float32 or Int8) for predictions and scorings",
)
def update_iteration(
    service: Svc, project_id: ProjectId, iteration_id: IterationId, body: schemas.IterationUpdate
) -> dict:
    if body.precision is not None:
        service.jobs.set_precision(project_id, iteration_id, body.precision)
    if body.name is not None:
        return service.training.rename_iteration(project_id, iteration_id, body.name).to_json()
    return service.training.iteration(project_id, iteration_id).to_json()


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
        metadata=tuple(check_metadata(token.metadata).items()),
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
    extras: PredictionExtras,
    iteration_id: OptionalIteration = None,
    store: Annotated[bool, Query()] = True,
) -> dict:
    service: Service = request.app.state.service
    data = await one_image(request)
    view = await run_in_threadpool(
        lambda: service.prediction.classify(
            project_id, data, iteration_ref=iteration_id, store=store, max_bytes=MAX_TRAINING_BYTES, extras=extras
        )
    )
    return view.to_json()


@router.post(
    "/projects/{projectId}/quicktest/url", response_model=schemas.ImagePrediction, summary="Quick test an image URL"
)
async def quick_test_image_url(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    body: schemas.ImageUrl,
    extras: PredictionExtras,
    iteration_id: OptionalIteration = None,
    store: Annotated[bool, Query()] = True,
) -> dict:
    async with service.url_gate.slot():
        view = await run_in_threadpool(
            lambda: service.prediction.classify_url(
                project_id,
                body.url,
                iteration_ref=iteration_id,
                store=store,
                max_bytes=MAX_TRAINING_BYTES,
                extras=extras,
            )
        )
    return view.to_json()
