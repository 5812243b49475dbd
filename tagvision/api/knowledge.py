"""tagvision extensions of the Training API for what tags know and the records predictions leave.

* ``GET/POST /projects/{projectId}/catalogue``: export the tags' information as CSV, JSON or JSON Lines; import
  such a file (the request body) with a report per row (200 when every row applied, 207 otherwise).
* ``GET/PUT /projects/{projectId}/rules``: the project's decision rules (checked when saved).
* ``GET/PUT /projects/{projectId}/retention``: how long stored predictions are kept.
* ``GET /projects/{projectId}/predictions/export``: stored predictions as CSV or JSON Lines, with image links,
  the caller's metadata, and the tag information and decision as they were when each was made.

A tag's information itself rides on Custom Vision's tag routes (``GET``/``PATCH .../tags/{tagId}``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from tagvision.api import schemas
from tagvision.api.auth import require_training_key, version_gate
from tagvision.api.params import VERSIONS, OptionalIteration, ProjectId, Svc
from tagvision.knowledge import catalogue as cat
from tagvision.service import Service
from tagvision.service.prediction import PredictionQuery
from tagvision.service.records import metadata_from_text

router = APIRouter(
    prefix="/customvision/{version}/training",
    tags=["Tag information, rules and records (tagvision)"],
    dependencies=[Depends(version_gate("Training API", VERSIONS)), Depends(require_training_key)],
)
MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json", "jsonl": "application/x-ndjson"}
Format = Annotated[str, Query(alias="format", description="csv, json or jsonl")]


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("/projects/{projectId}/catalogue", summary="Export the tags' information (csv, json or jsonl)")
def export_catalogue(service: Svc, project_id: ProjectId, fmt: Format = "csv", key: str = "tag") -> Response:
    name, data = service.catalogue.export(project_id, fmt, key)
    return Response(data, media_type=MEDIA[cat.format_of(name)], headers=_attachment(name))


@router.post(
    "/projects/{projectId}/catalogue",
    response_model=schemas.CatalogueReport,
    summary="Import a catalogue file (the body): one row per tag, errors per row; the good rows in one transaction",
    openapi_extra={"requestBody": {"content": {m.split(";")[0]: {} for m in MEDIA.values()}, "required": True}},
)
async def import_catalogue(
    request: Request,
    project_id: ProjectId,
    fmt: Format = "csv",
    key: Annotated[str, Query(description="The column naming the tag.")] = "tag",
    images: Annotated[str | None, Query(alias="imagesColumn", description="A column of image URLs.")] = None,
    dry_run: Annotated[bool, Query(alias="dryRun", description="Report what would change; change nothing.")] = False,
) -> Response:
    service: Service = request.app.state.service
    data = await request.body()
    report = await run_in_threadpool(
        lambda: service.catalogue.import_(
            project_id, data, fmt, key=key, images_column=images, dry_run=dry_run, local_files=None
        )
    )
    return JSONResponse(report.to_json(), status_code=207 if report.errors else 200)


@router.get("/projects/{projectId}/rules", response_model=schemas.RulesView, summary="The decision rules")
def get_rules(service: Svc, project_id: ProjectId) -> dict:
    return {"rules": service.knowledge.rules(project_id)}


@router.put(
    "/projects/{projectId}/rules",
    response_model=schemas.RulesView,
    summary="Replace the decision rules (checked against the catalogue; each error names its field)",
)
def set_rules(service: Svc, project_id: ProjectId, body: Annotated[schemas.Rules, Body()]) -> dict:
    return {"rules": service.knowledge.set_rules(project_id, body.rules)}


@router.get("/projects/{projectId}/retention", response_model=schemas.RetentionView, summary="Prediction retention")
def get_retention(service: Svc, project_id: ProjectId) -> dict:
    return service.records.retention(project_id).to_json()


@router.put(
    "/projects/{projectId}/retention",
    response_model=schemas.RetentionView,
    summary="Set how long stored predictions are kept (days, never, forever, default); purges what is past it",
)
def set_retention(service: Svc, project_id: ProjectId, body: schemas.Retention) -> dict:
    view, purged = service.records.set_retention(project_id, body.retention)
    return {**view.to_json(), "purged": purged}


@router.get(
    "/projects/{projectId}/predictions/export",
    summary="Stored predictions as csv or jsonl: image links, metadata, tag information and decision as they were",
)
def export_predictions(
    request: Request,
    service: Svc,
    project_id: ProjectId,
    fmt: Format = "jsonl",
    metadata: Annotated[str | None, Query(description='Only records with this metadata: {"claim": "C-1"}')] = None,
    iteration_id: OptionalIteration = None,
    start_time: Annotated[datetime | None, Query(alias="startTime")] = None,
    end_time: Annotated[datetime | None, Query(alias="endTime")] = None,
) -> Response:
    query = PredictionQuery(
        order_by="Oldest",
        iteration_id=iteration_id,
        start_time=start_time,
        end_time=end_time,
        metadata=tuple(metadata_from_text(metadata).items()),
    )
    service.prediction.query(project_id, query)  # unknown project or iteration: the error before the stream
    base = str(request.base_url)
    rows = service.records.export(project_id, query, fmt, link=lambda sha: service.files.url(base, "prediction", sha))
    return StreamingResponse(rows, media_type=MEDIA[fmt], headers=_attachment(f"predictions.{fmt}"))
