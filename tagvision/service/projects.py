"""Use cases for projects and tags."""

from __future__ import annotations

import unicodedata

from sqlalchemy import select

from tagvision import backbone
from tagvision.errors import Conflict, InvalidInput
from tagvision.service.context import Context, get_project, get_tag
from tagvision.service.views import CLASSIFICATION_TYPES, ProjectView, TagView
from tagvision.store import queries
from tagvision.store.models import Project, Tag, utcnow

MAX_NAME = 255


def clean_name(value: str, what: str) -> str:
    """Trimmed, NFC-normalised name; refuses empty, over-long or control-character names."""
    code = f"BadRequest{what.capitalize()}Name"  # BadRequestProjectName, BadRequestTagName
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise InvalidInput(f"The {what} name is empty.", code=code)
    if len(name) > MAX_NAME:
        raise InvalidInput(f"The {what} name has {len(name)} characters; at most {MAX_NAME} are allowed.", code=code)
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise InvalidInput(f"The {what} name {name!r} contains control characters.", code=code)
    return name


def classification_type(value: str) -> str:
    for known in CLASSIFICATION_TYPES:
        if value.lower() == known.lower():
            return known
    raise InvalidInput(f"Unknown classification type {value!r}; choose multiclass or multilabel.",
                       code="BadRequestProjectUnknownClassification")


class Projects:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, name: str, *, classification: str = "Multiclass", domain: str = "general-compact",
               description: str = "") -> ProjectView:
        name = clean_name(name, "project")
        kind = classification_type(classification)
        backbone.spec_for(domain)
        with self.ctx.db.session() as session:
            if session.scalar(select(Project.id).where(Project.name == name)):
                raise Conflict(f"A project named {name!r} already exists.", code="BadRequestProjectNameNotUnique")
            project = Project(name=name, classification_type=kind, domain=domain, description=description)
            session.add(project)
            session.flush()
            return _project_view(session, project)

    def list(self) -> list[ProjectView]:
        with self.ctx.db.session() as session:
            return [_project_view(session, p) for p in session.scalars(select(Project).order_by(Project.created))]

    def get(self, ref: str) -> ProjectView:
        with self.ctx.db.session() as session:
            return _project_view(session, get_project(session, ref))

    def delete(self, ref: str) -> None:
        """Delete a project with its tags, images and iterations (blobs stay for other projects)."""
        with self.ctx.db.session() as session:
            session.delete(get_project(session, ref))

    # ------------------------------------------------------------------ tags

    def create_tags(self, ref: str, names: list[str], description: str = "") -> list[TagView]:
        """Create tags; all or nothing. Names must be new in the project (and distinct)."""
        cleaned = [clean_name(n, "tag") for n in names]
        if not cleaned:
            raise InvalidInput("Name at least one tag.", code="BadRequestTagName")
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            taken = {t.name.casefold() for t in project.tags}
            seen: set[str] = set()
            for name in cleaned:
                if name.casefold() in taken or name.casefold() in seen:
                    raise Conflict(f"Project {project.name!r} already has a tag named {name!r}.",
                                   code="BadRequestTagNameNotUnique")
                seen.add(name.casefold())
            tags = [Tag(project_id=project.id, name=name, description=description) for name in cleaned]
            session.add_all(tags)
            project.last_modified = utcnow()
            session.flush()
            return [TagView(t.id, t.name, t.description, t.type, 0) for t in tags]

    def list_tags(self, ref: str) -> list[TagView]:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            counts = queries.image_counts_by_tag(session, project.id)
            return [TagView(t.id, t.name, t.description, t.type, counts.get(t.id, 0)) for t in project.tags]

    def delete_tag(self, ref: str, tag_ref: str) -> None:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            session.delete(get_tag(session, project, tag_ref))
            project.last_modified = utcnow()


def _project_view(session, project: Project) -> ProjectView:
    return ProjectView(project.id, project.name, project.description, project.classification_type,
                       project.domain, project.created, project.last_modified,
                       queries.image_count(session, project.id), len(project.tags))
