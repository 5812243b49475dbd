"""Custom Vision's project export and import (token based), on tagvision's ``.tvproj`` archives.

``GET /projects/{projectId}/export`` writes the project's archive and answers a ``ProjectExport`` whose
``token`` names it (its signed download link and hash); ``POST /projects/import?token=&name=`` on this
server or another one brings the project in with new ids, its iterations predicting as before. The
rules live in ``tagvision.service.transfer``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from tagvision.api import render, schemas
from tagvision.api.params import ProjectId, Svc, training_router
from tagvision.errors import InvalidInput

router = training_router()
IMPORT_MS_PER_IMAGE = 15  # validating and storing one image, about


@router.get(
    "/projects/{projectId}/export",
    response_model=schemas.ProjectExport,
    summary="Export a project (tags, images, iterations with their models) for import_project",
)
def export_project(request: Request, service: Svc, project_id: ProjectId) -> dict:
    summary = service.transfer.export_token(project_id)
    token = service.transfer.token(summary, render.link(request, "project", summary.sha256))
    return {
        "iterationCount": summary.iterations,
        "imageCount": summary.images,
        "tagCount": summary.tags,
        "regionCount": summary.regions,
        "estimatedImportTimeInMS": summary.images * IMPORT_MS_PER_IMAGE,
        "token": token,
        "skippedIterations": summary.skipped_iterations,
    }


@router.post("/projects/import", response_model=schemas.Project, summary="Import a project exported by export_project")
def import_project(
    service: Svc,
    token: Annotated[str, Query()] = "",
    name: Annotated[str | None, Query()] = None,
) -> dict:
    if not token:
        raise InvalidInput("Give the token export_project answered.", code="BadRequestInvalidImportToken")
    return service.transfer.import_token(token, name).to_json()
