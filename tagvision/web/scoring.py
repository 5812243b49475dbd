"""Score a catalogue from the portal: a form (a server-side folder or URLs) and the jobs with their progress
and downloads. The work runs in the background (``service.jobs.score``); the page refreshes while one runs."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from tagvision.web import shape
from tagvision.web.routing import PageRoute
from tagvision.web.templates import render

pages = APIRouter(route_class=PageRoute)
routers = (pages,)


def _describe(view) -> str:
    p = view.progress
    done, total = p.get("done", 0), p.get("total")
    line = f"{done} of {total}" if total is not None else f"{done} so far"
    if view.status == "Running" and p.get("etaSeconds") is not None:
        line += f", about {p['etaSeconds']:.0f} s left"
    errors = p.get("errors") or {}
    if errors:
        line += "; refused: " + ", ".join(f"{code} {n}" for code, n in sorted(errors.items()))
    return line


@pages.get("/projects/{project_id}/scoring")
def scoring_page(request: Request, project_id: str) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "scoring")
    jobs = svc.scorings.list(project_id)
    iterations = [i for i in svc.training.iterations(project_id) if i.status == "Completed"]
    return render(
        request,
        "scoring.html",
        **context,
        jobs=[(job, _describe(job)) for job in jobs],
        running=any(job.status == "Running" for job in jobs),
        iterations=list(reversed(iterations)),
        roots=[str(root) for root in svc.ctx.settings.library_roots],
    )


@pages.post("/projects/{project_id}/scoring")
async def start_scoring(request: Request, project_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    folder = shape.form_text(form, "folder").strip()
    urls = [u.strip() for u in shape.form_text(form, "urls").splitlines() if u.strip()]
    svc.jobs.score(
        project_id,
        folder=folder or None,
        urls=None if folder else urls,
        iteration_ref=shape.form_text(form, "iteration") or None,
        precision=shape.form_text(form, "precision") or None,
        top=int(shape.form_text(form, "top", "5") or 5),
    )
    return RedirectResponse(f"/projects/{project_id}/scoring", status_code=303)


@pages.post("/projects/{project_id}/scoring/{scoring_id}/cancel")
def cancel_scoring(request: Request, project_id: str, scoring_id: str) -> Response:
    shape.service(request).scorings.cancel(project_id, scoring_id)
    return RedirectResponse(f"/projects/{project_id}/scoring", status_code=303)


@pages.get("/projects/{project_id}/scoring/{scoring_id}/results.{fmt}")
def scoring_results(request: Request, project_id: str, scoring_id: str, fmt: str) -> Response:
    name, media_type, chunks = shape.service(request).scorings.download(project_id, scoring_id, fmt)
    return StreamingResponse(
        chunks, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
