"""Projects: list, create, open, delete (after a confirmation page)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from tagvision import domains
from tagvision.web import session as sessions
from tagvision.web import shape
from tagvision.web.routing import PageRoute
from tagvision.web.templates import render

pages = APIRouter(route_class=PageRoute)
routers = (pages,)


@pages.get("/")
def project_list(request: Request) -> Response:
    svc = shape.service(request)
    projects = [(p, shape.domain_name(p.domain)) for p in svc.projects.list()]
    return render(
        request,
        "projects.html",
        title="Projects",
        projects=projects,
        domains=shape.classification_domains(),
        default_domain=domains.GENERAL_COMPACT,
    )


@pages.post("/projects")
async def create_project(request: Request) -> Response:
    form = await request.form()
    svc = shape.service(request)
    project = await run_in_threadpool(
        svc.projects.create,
        shape.form_text(form, "name"),
        description=shape.form_text(form, "description"),
        classification=shape.form_text(form, "classification", "Multiclass"),
        domain=shape.form_text(form, "domain", domains.GENERAL_COMPACT),
    )
    sessions.current(request).flash("ok", f"Project {project.name} created. Add tags and images to train it.")
    return RedirectResponse(f"/projects/{project.id}/images", status_code=303)


@pages.get("/projects/{project_id}")
def open_project(project_id: str) -> Response:
    return RedirectResponse(f"/projects/{project_id}/images", status_code=303)


@pages.get("/projects/{project_id}/delete")
def confirm_delete(request: Request, project_id: str) -> Response:
    svc = shape.service(request)
    project = svc.projects.get(project_id)
    iterations = svc.training.iterations(project_id)
    return render(
        request, "project_delete.html", title=f"Delete {project.name}", project=project, iterations=len(iterations)
    )


@pages.post("/projects/{project_id}/delete")
def delete_project(request: Request, project_id: str) -> Response:
    svc = shape.service(request)
    name = svc.projects.get(project_id).name
    svc.projects.delete(project_id)
    sessions.current(request).flash("ok", f"Project {name} and its images and iterations are deleted.")
    return RedirectResponse("/", status_code=303)
