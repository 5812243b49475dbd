"""Training images: the thumbnail grid with its filters and counts, tags, uploads, and acting on a selection."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.datastructures import UploadFile

from tagvision.errors import InvalidInput
from tagvision.service import NewImage
from tagvision.service.views import ImageCreateSummary
from tagvision.web import session as sessions
from tagvision.web import shape
from tagvision.web.routing import JsonRoute, PageRoute, safe_next
from tagvision.web.templates import plural, render

pages = APIRouter(route_class=PageRoute)
data = APIRouter(route_class=JsonRoute)
routers = (pages, data)
PAGE_SIZE = 60
MAX_UPLOAD_FILES = 16  # per request; the page sends small batches so progress shows and nothing freezes


@pages.get("/projects/{project_id}/images")
def image_grid(request: Request, project_id: str, tag: str = "", untagged: bool = False, page: int = 1) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "images")
    tags = svc.projects.list_tags(project_id)
    page = max(1, page)
    if tag:
        current = shape.tag_by_id(tags, tag)
        shown, label = svc.images.count(project_id, tag_ids=[current.id]), f"Tagged {current.name}"
    elif untagged:
        shown, label = svc.images.count(project_id, untagged=True), "Untagged"
    else:
        shown, label = context["project"].image_count, "All images"
    views = svc.images.list(project_id, tag=tag or None, untagged=untagged, skip=(page - 1) * PAGE_SIZE, take=PAGE_SIZE)
    pages_total = max(1, -(-shown // PAGE_SIZE))
    filters = "&".join(f for f in (f"tag={tag}" if tag else "", "untagged=1" if untagged else "") if f)
    return render(
        request,
        "images.html",
        **context,
        tags=tags,
        thumbs=shape.thumbs(request, views),
        untagged_count=svc.images.count(project_id, untagged=True),
        filter_tag=tag,
        untagged=untagged,
        filter_label=label,
        shown=shown,
        page=page,
        pages_total=pages_total,
        filters=filters,
        max_files=MAX_UPLOAD_FILES,
    )


@pages.post("/projects/{project_id}/tags")
async def create_tag(request: Request, project_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    names = [n.strip() for n in shape.form_text(form, "name").split(",") if n.strip()]
    created = await run_in_threadpool(svc.projects.create_tags, project_id, names)
    sessions.current(request).flash(
        "ok", f"Tag{'s' if len(created) > 1 else ''} {', '.join(t.name for t in created)} created."
    )
    return _back(form, project_id)


@pages.post("/projects/{project_id}/tags/{tag_id}/delete")
def delete_tag(request: Request, project_id: str, tag_id: str) -> Response:
    svc = shape.service(request)
    tag = shape.tag_by_id(svc.projects.list_tags(project_id), tag_id)
    svc.projects.delete_tag(project_id, tag.id)
    sessions.current(request).flash("ok", f"Tag {tag.name} deleted; its images stay in the project.")
    return RedirectResponse(f"/projects/{project_id}/images", status_code=303)


@pages.post("/projects/{project_id}/images/selection")
async def act_on_selection(request: Request, project_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    action, ids = shape.form_text(form, "action"), shape.chosen_images(form)
    if action == "delete":
        deleted = await run_in_threadpool(svc.images.delete, project_id, ids)
        sessions.current(request).flash("ok", f"{plural(deleted, 'image')} deleted.")
        return _back(form, project_id)
    tags = svc.projects.list_tags(project_id)
    if not shape.form_text(form, "tag"):
        raise InvalidInput("Choose the tag to add or remove first.", code="BadRequestTagName")
    tag = shape.tag_by_id(tags, shape.form_text(form, "tag"))
    if action == "untag":
        await run_in_threadpool(svc.images.untag, project_id, ids, [tag.id])
        sessions.current(request).flash("ok", f"Tag {tag.name} removed from {plural(len(ids), 'selected image')}.")
        return _back(form, project_id)
    if action != "tag":
        raise InvalidInput("Choose Tag, Remove tag or Delete.", code="BadRequest")
    if not shape.is_multilabel(svc.projects.get(project_id)):
        # Multiclass: one tag per image, so tagging re-tags, in one step and one transaction.
        changed = await run_in_threadpool(svc.images.set_tags, project_id, ids, [tag.id])
        message = f"{plural(changed, 'image')} tagged {tag.name}."
        if changed < len(set(ids)):
            message += f" {plural(len(set(ids)) - changed, 'image')} already had it."
        sessions.current(request).flash("ok", message)
        return _back(form, project_id)
    summary = await run_in_threadpool(svc.images.tag, project_id, [(i, tag.id) for i in ids])
    message = f"{plural(len(summary.created), 'image')} tagged {tag.name}."
    if summary.duplicated:
        message += f" {plural(len(summary.duplicated), 'image')} already had it."
    if summary.exceeded:
        message += (
            f" {plural(len(summary.exceeded), 'image')} already carry another tag and a multiclass project "
            "allows one tag per image: remove that tag first."
        )
    sessions.current(request).flash("error" if summary.exceeded and not summary.created else "ok", message)
    return _back(form, project_id)


@pages.post("/projects/{project_id}/images/{image_id}/tags")
async def set_image_tags(request: Request, project_id: str, image_id: str) -> Response:
    """Re-tag one image in one step (its tags become the chosen ones): from the misclassified images."""
    form = await request.form()
    svc = shape.service(request)
    tags = shape.chosen_tags(svc, project_id, form)
    await run_in_threadpool(svc.images.set_tags, project_id, [image_id], [t.id for t in tags])
    sessions.current(request).flash(
        "ok", f"The image is now tagged {', '.join(t.name for t in tags)}. Train again to use it."
    )
    back = safe_next(shape.form_text(form, "next")) or f"/projects/{project_id}/images"
    return RedirectResponse(f"{back}#wrong-heading" if "/performance" in back else back, status_code=303)


@data.post("/projects/{project_id}/images/upload")
async def upload(request: Request, project_id: str) -> Response:
    """Add a small batch of files (multipart ``file`` parts, optional ``tag``); one result per file."""
    form = await request.form(max_files=MAX_UPLOAD_FILES)
    files = [f for f in form.getlist("file") if isinstance(f, UploadFile)]
    if not files:
        raise InvalidInput("The request has no files; choose or drop image files.", code="BadRequestImageBatch")
    tag = shape.form_text(form, "tag")
    items = [NewImage(f.filename or "image", _reader(await f.read()), (tag,) if tag else ()) for f in files]
    summary = await run_in_threadpool(shape.service(request).images.add, project_id, items)
    return JSONResponse(_upload_json(summary))


def _reader(data: bytes):
    return lambda: data


def _upload_json(summary: ImageCreateSummary) -> dict:
    return {
        "added": summary.count("OK"),
        "duplicates": summary.count("OKDuplicate"),
        "results": [
            {
                "name": r.source_url,
                "status": r.status,
                "ok": r.ok,
                "message": r.message or ("Added." if r.status == "OK" else r.status),
            }
            for r in summary.results
        ],
    }


def _back(form, project_id: str) -> Response:
    return RedirectResponse(
        safe_next(shape.form_text(form, "next")) or f"/projects/{project_id}/images", status_code=303
    )
