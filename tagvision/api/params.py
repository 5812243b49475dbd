"""What the Training API's routers share: its versions, limits, path and query parameters and their parsing."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from tagvision.api.auth import require_training_key, version_gate
from tagvision.errors import InvalidInput
from tagvision.service import Service

VERSIONS = ("v3.0", "v3.1", "v3.2", "v3.3", "v3.4-preview")
MAX_BATCH, MAX_TAG_IDS, MAX_IDS, MAX_TAKE = 64, 20, 256, 256


def training_router() -> APIRouter:
    """A router under the Training API's prefix that checks the version and the Training-Key."""
    return APIRouter(
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


def newest_first(order_by: str | None) -> bool:
    if order_by in (None, "", "Newest"):
        return True
    if order_by == "Oldest":
        return False
    raise InvalidInput(f"Unknown orderBy {order_by!r}; use Newest or Oldest.", code="BadRequestInvalid")


TagIdsQuery = Annotated[str | None, Query(alias="tagIds", description="Comma-separated tag ids.")]
OrderQuery = Annotated[str | None, Query(alias="orderBy", description="Newest or Oldest")]
