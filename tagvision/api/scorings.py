"""tagvision extension of the Training API: score a catalogue (a server-side folder or a list of URLs).

``POST /projects/{projectId}/scorings`` starts a scoring job in the background and answers at once; ``GET``
it to follow its progress (done of total, an ETA, errors per code); ``GET .../results?format=jsonl|csv``
downloads the rows so far; ``POST .../cancel`` stops it after its batch. A folder must lie under the
operator's ``TAGVISION_LIBRARY_ROOTS``; URLs go through the server's SSRF guard.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from tagvision.api.auth import require_training_key, version_gate
from tagvision.api.params import VERSIONS, ProjectId, Svc

router = APIRouter(
    prefix="/customvision/{version}/training",
    tags=["Scoring (tagvision)"],
    dependencies=[Depends(version_gate("Training API", VERSIONS)), Depends(require_training_key)],
)
ScoringId = Annotated[str, Path(alias="scoringId")]


class ScoringRequest(BaseModel):
    """Exactly one of ``folder`` (on the server, under its library roots) and ``urls``."""

    model_config = ConfigDict(extra="ignore")
    folder: str | None = None
    urls: list[str] | None = None
    iterationId: str | None = Field(None, description="Default: the project's published iteration.")
    precision: str | None = Field(None, description="Float32 or Int8; default: the iteration's setting.")
    top: int = Field(5, description="Tags per image, most probable first.")


class Scoring(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    projectId: str
    iterationId: str | None
    precision: str
    status: str = Field(description="Running, Completed, Cancelled or Failed")
    source: dict[str, Any]
    top: int
    progress: dict[str, Any] = Field(description="done, total, etaSeconds, scored, errors (count per code)")
    error: str | None = None
    errorCode: str | None = None
    created: str
    lastModified: str


@router.post("/projects/{projectId}/scorings", response_model=Scoring, summary="Score a folder or URLs (background)")
def start_scoring(service: Svc, project_id: ProjectId, body: ScoringRequest) -> dict:
    return service.jobs.score(
        project_id,
        folder=body.folder,
        urls=body.urls,
        iteration_ref=body.iterationId,
        precision=body.precision,
        top=body.top,
    ).to_json()


@router.get("/projects/{projectId}/scorings", response_model=list[Scoring], summary="List the scoring jobs")
def list_scorings(service: Svc, project_id: ProjectId) -> list[dict]:
    return [v.to_json() for v in service.scorings.list(project_id)]


@router.get(
    "/projects/{projectId}/scorings/{scoringId}", response_model=Scoring, summary="A scoring job's status and progress"
)
def get_scoring(service: Svc, project_id: ProjectId, scoring_id: ScoringId) -> dict:
    return service.scorings.get(project_id, scoring_id).to_json()


@router.post("/projects/{projectId}/scorings/{scoringId}/cancel", response_model=Scoring, summary="Stop a scoring job")
def cancel_scoring(service: Svc, project_id: ProjectId, scoring_id: ScoringId) -> dict:
    return service.scorings.cancel(project_id, scoring_id).to_json()


@router.get(
    "/projects/{projectId}/scorings/{scoringId}/results",
    summary="The rows scored so far, as JSON Lines or CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
)
def scoring_results(
    service: Svc,
    project_id: ProjectId,
    scoring_id: ScoringId,
    format: Annotated[str, Query(description="jsonl or csv")] = "jsonl",  # noqa: A002 (the query's name)
) -> StreamingResponse:
    name, media_type, chunks = service.scorings.download(project_id, scoring_id, format)
    return StreamingResponse(
        chunks, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
