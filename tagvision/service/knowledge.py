"""Use cases for what tags know: their information, the project's decision rules, and how both reach predictions.

A tag's information is a JSON object (``tagvision.knowledge.information``); every version it has had is kept by
content hash (``TagInformation``) so stored predictions can point at the one they were made with. Predictions
read information and rules through :meth:`Knowledge.of`, a per-process cache keyed by the project's
``last_modified`` and its tags' information hashes: one dictionary lookup per prediction, the JSON parsed only
when something changed. :meth:`ProjectKnowledge.annotate` attaches the information and evaluates the rules;
batch scoring reads :meth:`Knowledge.information_by_name`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Result, Row, select
from sqlalchemy.orm import Session

from tagvision.errors import InvalidInput
from tagvision.knowledge import information as info
from tagvision.knowledge import rules as decision_rules
from tagvision.service.context import Context, get_project, get_tag
from tagvision.service.views import TagProbability, TagView
from tagvision.store import queries
from tagvision.store.models import Project, Tag, utcnow

CACHE = 64  # projects whose knowledge a process keeps parsed
MAX_ATTRIBUTES = 50  # names one request may limit the information to


@dataclass(frozen=True)
class Extras:
    """What a caller asks beyond Custom Vision's request: which information comes back, and its own metadata.

    ``threshold``: only tags at or above this probability carry their information; ``attributes``: only these
    attribute names (None: all); ``metadata``: the caller's key/values, kept with a stored prediction.
    """

    information: bool = True
    threshold: float = 0.0
    attributes: tuple[str, ...] | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput(
                f"informationThreshold is a probability from 0 to 1, not {self.threshold}.", code="BadRequestInvalid"
            )
        if self.attributes is not None and len(self.attributes) > MAX_ATTRIBUTES:
            raise InvalidInput(f"Name at most {MAX_ATTRIBUTES} attributes.", code="BadRequestInvalid")


NO_EXTRAS = Extras()


@dataclass(frozen=True)
class ProjectKnowledge:
    """A project's tag information (tag id -> object, and its version hash) and its decision rules."""

    information: Mapping[str, dict[str, Any]]
    shas: Mapping[str, str]
    rules: list[decision_rules.Rule]
    retention_days: int | None  # effective: None keeps forever, 0 never stores, N days

    @property
    def stores(self) -> bool:
        return self.retention_days != 0

    def annotate(
        self, ranked: list[TagProbability], extras: Extras = NO_EXTRAS
    ) -> tuple[list[TagProbability], dict[str, Any] | None]:
        """The ranked predictions with their tags' information (as ``extras`` asks), and the decision (None
        when the project has no rules)."""
        decision = None
        if self.rules:
            candidates = [
                decision_rules.Candidate(p.tag_id, p.tag_name, p.probability, self.information.get(p.tag_id, {}))
                for p in ranked
            ]
            decision = decision_rules.evaluate(self.rules, candidates)
        if not extras.information or not self.information:
            return ranked, decision
        out = []
        for p in ranked:
            data = self.information.get(p.tag_id)
            if data and p.probability >= extras.threshold:
                chosen = info.select(data, extras.attributes)
                if chosen:
                    p = replace(p, information=chosen)
            out.append(p)
        return out, decision


class Knowledge:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._cache: dict[str, tuple[tuple, ProjectKnowledge]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ for predictions

    def of(self, session: Session, project: Project) -> ProjectKnowledge:
        """The project's knowledge, parsed once per change (``session`` and ``project`` are the caller's)."""
        key = (project.last_modified, project.retention_days, tuple((t.id, t.information_sha) for t in project.tags))
        with self._lock:
            cached = self._cache.get(project.id)
        if cached is not None and cached[0] == key:
            return cached[1]
        shas = {t.id: t.information_sha for t in project.tags if t.information_sha}
        data: dict[str, dict[str, Any]] = {}
        if shas:
            rows: Result[str, dict[str, Any]] = session.execute(
                select(Tag.id, Tag.information).where(Tag.id.in_(list(shas)))
            )
            data = {tag_id: value for tag_id, value in rows}
        made = ProjectKnowledge(
            data, shas, decision_rules.from_stored(project.rules or []), self.retention(project.retention_days)
        )
        with self._lock:
            self._cache[project.id] = (key, made)
            while len(self._cache) > CACHE:
                self._cache.pop(next(iter(self._cache)))
        return made

    def for_project(self, ref: str) -> ProjectKnowledge:
        with self.ctx.db.session() as session:
            return self.of(session, get_project(session, ref))

    def retention(self, project_days: int | None) -> int | None:
        """The retention that applies: the project's (-1: forever), else the server's setting."""
        if project_days is None:
            return self.ctx.settings.prediction_retention_days
        return None if project_days < 0 else project_days

    def information_by_name(self, ref: str, attributes: tuple[str, ...] | None = None) -> dict[str, dict[str, Any]]:
        """Tag information by tag name (tags without any left out): what batch scoring attaches to its rows."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            rows: Sequence[Row[str, dict[str, Any]]] = session.execute(
                select(Tag.name, Tag.information).where(Tag.project_id == project.id, Tag.information_sha.is_not(None))
            ).all()
        return {name: chosen for name, data in rows if (chosen := info.select(data, attributes))}

    # ------------------------------------------------------------------ tag information

    def get(self, ref: str, tag_ref: str) -> TagView:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            tag = get_tag(session, project, tag_ref)
            count = queries.image_counts_by_tag(session, project.id).get(tag.id, 0)
            return TagView(tag.id, tag.name, tag.description, tag.type, count, dict(tag.information or {}))

    def set(
        self,
        ref: str,
        tag_ref: str,
        information: dict[str, Any] | None = None,
        *,
        updates: dict[str, Any] | None = None,
        remove: tuple[str, ...] = (),
    ) -> TagView:
        """Replace a tag's information (``information``), or change some attributes (``updates``, ``remove``).

        The result is validated as a whole and against the project's decision rules; nothing is written when
        it fails.
        """
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            tag = get_tag(session, project, tag_ref)
            current = dict(tag.information or {})
            new = dict(information) if information is not None else current
            new.update(updates or {})
            missing = [k for k in remove if k not in new]
            if missing:
                raise InvalidInput(
                    f"Tag {tag.name!r} has no attribute {missing[0]!r} to remove.", code="BadRequestTagInformation"
                )
            for k in remove:
                del new[k]
            apply_information(session, project, tag, new)
            count = queries.image_counts_by_tag(session, project.id).get(tag.id, 0)
            return TagView(tag.id, tag.name, tag.description, tag.type, count, new)

    # ------------------------------------------------------------------ rules

    def rules(self, ref: str) -> list[dict[str, Any]]:
        """The project's decision rules as a user writes them (tags by name)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            names = {t.id: t.name for t in project.tags}
            return [r.to_json(names) for r in decision_rules.from_stored(project.rules or [])]

    def set_rules(self, ref: str, raw: Any) -> list[dict[str, Any]]:
        """Check the rules against the catalogue (each error names its field) and save them; [] removes them."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            data = information_of(session, project.id)
            catalogue = {t.name: (t.id, data.get(t.id, {})) for t in project.tags}
            parsed = decision_rules.parse(raw, catalogue)
            project.rules = [r.stored() for r in parsed]
            project.last_modified = utcnow()
            names = {t.id: t.name for t in project.tags}
            return [r.to_json(names) for r in parsed]


def information_of(session: Session, project_id: str) -> dict[str, dict[str, Any]]:
    """Tag id -> information, for the project's tags that have some (one query; the column is deferred)."""
    rows: Result[str, dict[str, Any]] = session.execute(
        select(Tag.id, Tag.information).where(Tag.project_id == project_id, Tag.information_sha.is_not(None))
    )
    return {tag_id: data for tag_id, data in rows}


def apply_information(session: Session, project: Project, tag: Tag, new: Any) -> dict[str, Any]:
    """Check new information for a tag (limits, the project's decision rules) and set it."""
    info.validate(new)
    decision_rules.check_information(decision_rules.from_stored(project.rules or []), tag.id, tag.name, new)
    write_information(session, project, tag, new)
    return new


def write_information(session: Session, project: Project, tag: Tag, new: dict[str, Any]) -> None:
    """Set a tag's (validated) information, keep its version, and mark the project changed."""
    sha = info.digest(new)
    if sha is not None:
        queries.add_information_versions(session, {sha: new})
    tag.information = new
    tag.information_sha = sha
    project.last_modified = utcnow()
