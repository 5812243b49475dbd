"""Small helpers that turn service views into what the templates show. No rules live here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData

from tagvision import domains
from tagvision.errors import InvalidInput, TagvisionError
from tagvision.service import Service
from tagvision.service.views import ProjectView, TagView

TABS = (  # (tab id, label, path under the project)
    ("images", "Training images", "images"),
    ("search", "Search images", "search"),
    ("train", "Train", "train"),
    ("performance", "Performance", "performance"),
    ("predictions", "Predictions", "predictions"),
    ("quicktest", "Quick test", "quicktest"),
    ("prediction-url", "Prediction URL", "prediction-url"),
    ("scoring", "Score a catalogue", "scoring"),
    ("catalogue", "Catalogue", "catalogue"),
    ("records", "Records", "records"),
)


def service(request: Request) -> Service:
    return request.app.state.service


def link(request: Request, kind: str, ident: str) -> str:
    """A signed link to an image, a thumbnail or an export file (``tagvision.service.files``)."""
    return service(request).files.url(str(request.base_url), kind, ident)


def domain_name(domain_id: str) -> str:
    try:
        return domains.resolve(domain_id).name
    except TagvisionError:
        return domain_id


def classification_domains() -> list[domains.Domain]:
    return [d for d in domains.DOMAINS if d.type == domains.CLASSIFICATION and d.backbone]


def project_page(svc: Service, project_id: str, tab: str) -> dict[str, Any]:
    """What every project page shows in its header and tabs."""
    project = svc.projects.get(project_id)
    return {
        "project": project,
        "tab": tab,
        "tabs": TABS,
        "domain": domain_name(project.domain),
        "title": f"{dict((t, label) for t, label, _ in TABS)[tab]} · {project.name}",
    }


def form_values(form: FormData, name: str) -> list[str]:
    return [str(v) for v in form.getlist(name) if str(v)]


def form_text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name)
    return default if value is None else str(value)


def tag_by_id(tags: list[TagView], tag_id: str) -> TagView:
    for tag in tags:
        if tag.id == tag_id:
            return tag
    raise InvalidInput("Choose one of the project's tags.", code="BadRequestTagName")


NEW_TAG = "__new__"  # the "New tag…" choice of a tag list; its name comes in the form's ``new_tag`` field


def chosen_tags(svc: Service, project_id: str, form: FormData) -> list[TagView]:
    """The tags a re-tagging form chose (``tag`` values: ids, or ``NEW_TAG`` with a ``new_tag`` name, which is
    created unless the project has it already)."""
    tags = svc.projects.list_tags(project_id)
    values = form_values(form, "tag")
    chosen = [tag_by_id(tags, v) for v in values if v != NEW_TAG]
    new_name = form_text(form, "new_tag").strip()
    if NEW_TAG in values or (new_name and not chosen):
        if not new_name:
            raise InvalidInput("Type the new tag's name.", code="BadRequestTagName")
        existing = next((t for t in tags if t.name.lower() == new_name.lower()), None)
        chosen.append(existing or svc.projects.create_tags(project_id, [new_name])[0])
    if not chosen:
        raise InvalidInput("Choose the image's tag first.", code="BadRequestTagName")
    return list({t.id: t for t in chosen}.values())


def chosen_images(form: FormData) -> list[str]:
    ids = form_values(form, "image")
    if not ids:
        raise InvalidInput("Select at least one image first.", code="BadRequest")
    return ids


@dataclass(frozen=True)
class Thumb:
    """An image as a grid cell shows it."""

    id: str
    thumbnail: str
    original: str
    name: str
    tags: list[str]


def image_name(source: dict[str, Any]) -> str:
    name = str(source.get("name") or source.get("url") or "")
    return name.rsplit("/", 1)[-1] or "image"


def thumbs(request: Request, views: list) -> list[Thumb]:
    return [
        Thumb(
            v.id,
            link(request, "thumbnail", v.sha256),
            link(request, "image", v.sha256),
            image_name(v.source),
            [name for _, name, _ in v.tags],
        )
        for v in views
    ]


def is_multilabel(project: ProjectView) -> bool:
    return project.classification_type == "Multilabel"
