"""What a query of stored predictions or of suggestions for untagged images asks for, checked as Custom Vision
checks it, and how it becomes SQL filters and pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, select

from tagvision.errors import InvalidInput
from tagvision.service.views import SuggestionView
from tagvision.store.models import Prediction as StoredPrediction
from tagvision.store.models import PredictionMetadata, PredictionTag

MAX_QUERY_TAGS = 2
MAX_QUERY_RESULTS = 256


@dataclass(frozen=True)
class QueryTag:
    tag_id: str
    min_threshold: float = 0.0
    max_threshold: float = 1.0


@dataclass(frozen=True)
class PredictionQuery:
    """Custom Vision's PredictionQueryToken: which stored predictions, in which order, from where."""

    order_by: str = "Newest"  # Newest | Oldest | Suggested (most uncertain first)
    tags: tuple[QueryTag, ...] = ()
    iteration_id: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    application: str | None = None
    max_count: int = 50
    continuation: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # tagvision: the caller's key/values, all of which must match

    def __post_init__(self) -> None:
        _check_count(self.max_count)
        for tag in self.tags:
            check_threshold(tag.min_threshold)
            check_threshold(tag.max_threshold)


@dataclass(frozen=True)
class SuggestionQuery:
    """Custom Vision's SuggestedTagAndRegionQueryToken: which untagged images, in which order, which page.

    With ``tag_ids``, only images where one of those tags reaches ``threshold``; ``continuation`` is the
    token of the previous page (anything else starts at the first).
    """

    tag_ids: tuple[str, ...] = ()
    threshold: float = 0.0
    sort_by: str = "UncertaintyDescending"  # or UncertaintyAscending; anything else sorts descending
    max_count: int = 50
    continuation: str | None = None

    def __post_init__(self) -> None:
        _check_count(self.max_count)
        check_threshold(self.threshold)


def _check_count(count: int) -> None:
    if count < 0:
        raise InvalidInput(f"maxCount must be 0 (the default page) or more, not {count}.", code="BadRequestInvalid")


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInput(f"A threshold is a probability from 0 to 1, not {threshold}.", code="BadRequestInvalid")


ORDERS = {  # a prediction query's orderBy -> its SQL order; the id last, so pages never overlap
    "Newest": (StoredPrediction.created.desc(), StoredPrediction.id),
    "Oldest": (StoredPrediction.created, StoredPrediction.id),
    "Suggested": (StoredPrediction.uncertainty.desc(), StoredPrediction.created.desc(), StoredPrediction.id),
}


def page_bounds(query: PredictionQuery) -> tuple[int, int]:
    """Check a prediction query's tags, order and continuation token; -> (offset, page size)."""
    if len(query.tags) > MAX_QUERY_TAGS:
        raise InvalidInput(
            f"A prediction query combines at most {MAX_QUERY_TAGS} tags.",
            code="BadRequestPredictionTagsExceededCount",
        )
    if query.order_by not in ORDERS:
        raise InvalidInput(
            f"Unknown orderBy {query.order_by!r}; use Newest, Oldest or Suggested.",
            code="BadRequestPredictionInvalidQueryParameters",
        )
    try:
        offset = int(query.continuation or 0)
        if not 0 <= offset < 2**31:  # a token we gave out; SQLite overflows past 2**63
            raise ValueError(offset)
    except ValueError:
        raise InvalidInput(
            "The continuation token is not one this server gave out.",
            code="BadRequestPredictionInvalidQueryParameters",
        ) from None
    return offset, max(1, min(query.max_count or 50, MAX_QUERY_RESULTS))


def matching(project_id: str, iteration_id: str | None, query: PredictionQuery) -> Select[StoredPrediction]:
    """The project's stored predictions that pass every filter of ``query`` (unordered)."""
    sql = select(StoredPrediction).where(StoredPrediction.project_id == project_id)
    if iteration_id:
        sql = sql.where(StoredPrediction.iteration_id == iteration_id)
    if query.application:
        sql = sql.where(StoredPrediction.application == query.application)
    if query.start_time:
        sql = sql.where(StoredPrediction.created >= query.start_time)
    if query.end_time:
        sql = sql.where(StoredPrediction.created <= query.end_time)
    for key, value in query.metadata:
        sql = sql.where(
            StoredPrediction.caller_metadata.any(and_(PredictionMetadata.key == key, PredictionMetadata.value == value))
        )
    for tag in query.tags:
        sql = sql.where(
            StoredPrediction.tags.any(
                and_(
                    PredictionTag.tag_id == tag.tag_id,
                    PredictionTag.probability >= tag.min_threshold,
                    PredictionTag.probability <= tag.max_threshold,
                )
            )
        )
    return sql


def suggestion_page(views: list[SuggestionView], query: SuggestionQuery) -> tuple[list[SuggestionView], str | None]:
    """Sorted by uncertainty as asked; -> (the page after ``continuation``, the next token or None at the end)."""
    descending = query.sort_by != "UncertaintyAscending"
    ordered = sorted(views, key=lambda v: -v.uncertainty if descending else v.uncertainty)
    token = query.continuation or ""
    start = int(token) if token.isdecimal() else 0
    end = start + max(1, min(query.max_count or 50, MAX_QUERY_RESULTS))
    return ordered[start:end], (str(end) if end < len(ordered) else None)
