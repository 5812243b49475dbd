"""Use cases for projects and tags."""

from __future__ import annotations

import builtins
import unicodedata

from sqlalchemy import select

from tagvision import domains
from tagvision.errors import Conflict, InvalidInput, NotFound
from tagvision.service.context import Context, get_iteration, get_project, get_tag
from tagvision.service.details import IterationDetails
from tagvision.service.knowledge import apply_information
from tagvision.service.views import CLASSIFICATION_TYPES, TAG_TYPES, ProjectView, TagView
from tagvision.store import queries
from tagvision.store.models import Project, Tag, utcnow

MAX_NAME = 255
MAX_DESCRIPTION = 4000


def clean_name(value: str, what: str) -> str:
    """Trimmed, NFC-normalised name; refuses empty, over-long or control-character names."""
    code = f"BadRequest{what.capitalize()}Name"  # BadRequestProjectName, BadRequestTagName
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise InvalidInput(f"The {what} name is empty.", code=code)
    if len(name) > MAX_NAME:
        raise InvalidInput(f"The {what} name has {len(name)} characters; at most {MAX_NAME} are allowed.", code=code)
    # Zero-width (non-)joiners are format characters that real text needs: emoji ZWJ sequences, Persian, Indic.
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\u200c\u200d" for ch in name):
        raise InvalidInput(f"The {what} name {name!r} contains control characters.", code=code)
    return name


def free_name(name: str, taken: set[str], word: str = "") -> str:
    """``name``, else ``name (word)``, ``name (word 2)``... (``name (2)``... without a word): the first whose
    casefold is not in ``taken`` (projects and tags brought over keep their names where they can)."""
    if name.casefold() not in taken:
        return name
    for n in range(1, 10_000):
        label = " ".join(x for x in (word, str(n) if n > 1 or not word else "") if x)
        candidate = f"{name[: MAX_NAME - len(label) - 3]} ({label})"
        if candidate.casefold() not in taken:
            return candidate
    raise Conflict(f"Could not find a free name for {name!r}.", code="BadRequestProjectNameNotUnique")


def classification_type(value: str) -> str:
    for known in CLASSIFICATION_TYPES:
        if value.lower() == known.lower():
            return known
    raise InvalidInput(
        f"Unknown classification type {value!r}; choose multiclass or multilabel.",
        code="BadRequestProjectUnknownClassification",
    )


class Projects:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(
        self, name: str, *, classification: str = "Multiclass", domain: str = "general-compact", description: str = ""
    ) -> ProjectView:
        name = clean_name(name, "project")
        kind = classification_type(classification)
        domain_id = domains.resolve(domain).id
        taken = Conflict(f"A project named {name!r} already exists.", code="BadRequestProjectNameNotUnique")
        with self.ctx.db.session(not_unique=taken) as session:
            if session.scalar(select(Project.id).where(Project.name == name)):
                raise taken
            project = Project(
                name=name, classification_type=kind, domain=domain_id, description=_description(description, "Project")
            )
            session.add(project)
            session.flush()
            return _project_view(session, project)

    def list(self) -> list[ProjectView]:
        with self.ctx.db.session() as session:
            return [_project_view(session, p) for p in session.scalars(select(Project).order_by(Project.created))]

    def get(self, ref: str) -> ProjectView:
        with self.ctx.db.session() as session:
            return _project_view(session, get_project(session, ref))

    def update(
        self,
        ref: str,
        *,
        name: str | None = None,
        description: str | None = None,
        domain: str | None = None,
        classification: str | None = None,
    ) -> ProjectView:
        """Rename, describe, or change the domain or classification type (the next training uses them)."""
        name = clean_name(name, "project") if name is not None else None
        taken = Conflict(f"A project named {name!r} already exists.", code="BadRequestProjectNameNotUnique")
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            if name is not None:
                clash = session.scalar(select(Project.id).where(Project.name == name, Project.id != project.id))
                if clash:
                    raise taken
                project.name = name
            if description is not None:
                project.description = _description(description, "Project")
            if domain is not None and domain.lower() != (project.detection_domain or "").lower():
                project.domain = domains.resolve(domain).id
            if classification is not None:
                kind = classification_type(classification)
                if kind == "Multiclass" and queries.multi_tagged_image_count(session, project.id):
                    raise InvalidInput(
                        "Some images carry more than one tag; a multiclass project allows one tag "
                        "per image. Remove the extra tags first.",
                        code="BadRequestImageTags",
                    )
                project.classification_type = kind
            project.last_modified = utcnow()
            session.flush()
            return _project_view(session, project)

    def delete(self, ref: str) -> None:
        """Delete a project with its tags, images and iterations (blobs stay for other projects)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            if any(i.status == "Training" for i in project.iterations):
                raise Conflict(
                    f"Project {project.name!r} is training; delete it when the training has ended.",
                    code="BadRequestTrainingAlreadyInProgress",
                )
            session.delete(project)

    # ------------------------------------------------------------------ tags

    def create_tags(
        self, ref: str, names: builtins.list[str], description: str = "", type_: str = "Regular"
    ) -> builtins.list[TagView]:
        """Create tags; all or nothing. Names must be new in the project (and distinct)."""
        cleaned = [clean_name(n, "tag") for n in names]
        if not cleaned:
            raise InvalidInput("Name at least one tag.", code="BadRequestTagName")
        kind = tag_type(type_)
        description = _description(description, "Tag")
        taken = Conflict("Another request created a tag of that name first.", code="BadRequestTagNameNotUnique")
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            if kind == "Negative" and (len(cleaned) > 1 or any(t.type == "Negative" for t in project.tags)):
                raise InvalidInput("A project has at most one Negative tag.", code="BadRequestMultipleNegativeTag")
            existing = {t.name.casefold() for t in project.tags}
            seen: set[str] = set()
            for name in cleaned:
                if name.casefold() in existing or name.casefold() in seen:
                    raise Conflict(
                        f"Project {project.name!r} already has a tag named {name!r}.", code="BadRequestTagNameNotUnique"
                    )
                seen.add(name.casefold())
            tags = [Tag(project_id=project.id, name=name, description=description, type=kind) for name in cleaned]
            session.add_all(tags)
            project.last_modified = utcnow()
            session.flush()
            return [TagView(t.id, t.name, t.description, t.type, 0) for t in tags]

    def list_tags(self, ref: str, iteration_ref: str | None = None) -> builtins.list[TagView]:
        """The project's tags with their image counts (as trained in ``iteration_ref``, when given)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            data = _information(session, project.id)
            if iteration_ref is None:
                counts = queries.image_counts_by_tag(session, project.id)
                return [
                    TagView(t.id, t.name, t.description, t.type, counts.get(t.id, 0), data.get(t.id, {}))
                    for t in project.tags
                ]
            iteration = get_iteration(session, project, iteration_ref)
            trained = dict((tag_id, n) for tag_id, _, n in _trained_tags(iteration))
            return [
                TagView(t.id, t.name, t.description, t.type, trained[t.id], data.get(t.id, {}))
                for t in project.tags
                if t.id in trained
            ]

    def get_tag(self, ref: str, tag_ref: str, iteration_ref: str | None = None) -> TagView:
        for tag in self.list_tags(ref, iteration_ref):
            if tag_ref in (tag.id, tag.name):
                return tag
        raise NotFound(
            f"No tag {tag_ref!r} in this project" + (" and iteration." if iteration_ref else "."), code="NotFoundTag"
        )

    def update_tag(
        self,
        ref: str,
        tag_ref: str,
        *,
        name: str | None = None,
        description: str | None = None,
        type_: str | None = None,
        information: dict | None = None,
    ) -> TagView:
        """Rename, describe, retype, or (tagvision) replace the tag's information; all or nothing."""
        taken = Conflict("Another request gave a tag that name first.", code="BadRequestTagNameNotUnique")
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            tag = get_tag(session, project, tag_ref)
            if name is not None:
                name = clean_name(name, "tag")
                if any(t.name.casefold() == name.casefold() and t.id != tag.id for t in project.tags):
                    raise Conflict(
                        f"Project {project.name!r} already has a tag named {name!r}.", code="BadRequestTagNameNotUnique"
                    )
                tag.name = name
            if description is not None:
                tag.description = _description(description, "Tag")
            if type_ is not None:
                kind = tag_type(type_)
                if kind == "Negative" and any(t.type == "Negative" and t.id != tag.id for t in project.tags):
                    raise InvalidInput("A project has at most one Negative tag.", code="BadRequestMultipleNegativeTag")
                tag.type = kind
            if information is not None:
                apply_information(session, project, tag, information)
            project.last_modified = utcnow()
            count = queries.image_counts_by_tag(session, project.id).get(tag.id, 0)
            return TagView(tag.id, tag.name, tag.description, tag.type, count, dict(tag.information or {}))

    def delete_tag(self, ref: str, tag_ref: str) -> None:
        """Delete a tag; its images stay (untagged if it was their only tag)."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            session.delete(get_tag(session, project, tag_ref))
            project.last_modified = utcnow()


def tag_type(value: str) -> str:
    for known in TAG_TYPES:
        if value.lower() == known.lower():
            return known
    raise InvalidInput(f"Unknown tag type {value!r}; choose one of: {', '.join(TAG_TYPES)}.", code="BadRequestTagType")


def _description(value: str, what: str) -> str:
    if len(value) > MAX_DESCRIPTION:
        raise InvalidInput(
            f"The description has {len(value)} characters; at most {MAX_DESCRIPTION} are allowed.",
            code=f"BadRequest{what}Description",
        )
    return value


def _information(session, project_id: str) -> dict[str, dict]:
    """Tag id -> information for the tags that have some (one query: the column is deferred)."""
    rows = session.execute(
        select(Tag.id, Tag.information).where(Tag.project_id == project_id, Tag.information_sha.is_not(None))
    )
    return {tag_id: data for tag_id, data in rows}


def _trained_tags(iteration) -> list[tuple[str, str, int]]:
    """(tag id, name, image count) of the tags an iteration was trained on."""
    details = IterationDetails.from_json(iteration.details)
    counts = details.tag_image_counts or [0] * len(details.tags)
    return [(tag_id, name, n) for (tag_id, name), n in zip(details.tags, counts, strict=True)]


def _project_view(session, project: Project) -> ProjectView:
    return ProjectView(
        project.id,
        project.name,
        project.description,
        project.classification_type,
        project.domain,
        project.created,
        project.last_modified,
        queries.image_count(session, project.id),
        len(project.tags),
        project.detection_domain,
    )
