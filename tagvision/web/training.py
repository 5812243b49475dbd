"""Train, and the Performance page: figures at a threshold, charts, misclassified images, publish, export."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse

from tagvision import metrics
from tagvision.errors import InvalidInput
from tagvision.service import Service, training_checks
from tagvision.service.views import IterationView, PerformanceView
from tagvision.web import charts, shape
from tagvision.web import session as sessions
from tagvision.web.routing import JsonRoute, PageRoute
from tagvision.web.templates import percent, render

pages = APIRouter(route_class=PageRoute)
data = APIRouter(route_class=JsonRoute)
routers = (pages, data)
MISCLASSIFIED_SHOWN = 48
EXPORT_PLATFORM = "ONNX"
DEFAULT_BUDGET_MINUTES = training_checks.DEFAULT_BUDGET_MINUTES
MIN_BUDGET_MINUTES = training_checks.MIN_BUDGET_SECONDS / 60


# ---------------------------------------------------------------------- train


@pages.get("/projects/{project_id}/train")
def train_page(request: Request, project_id: str, iteration: str = "") -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "train")
    iterations = svc.training.iterations(project_id)
    watched = next((i for i in iterations if i.id == iteration), None) or next(
        (i for i in iterations if i.status == "Training"), None
    )
    return render(
        request,
        "train.html",
        **context,
        iterations=list(reversed(iterations)),
        watched=watched,
        tags=svc.projects.list_tags(project_id),
        min_tags=training_checks.MIN_TAGS,
        min_images=training_checks.MIN_IMAGES_PER_TAG,
        min_budget=MIN_BUDGET_MINUTES,
        status=status_sentence(watched) if watched else "",
        bar=progress_bar(watched) if watched else None,
        kind=kind,
        **last_choice(iterations),
    )


def last_choice(iterations: list[IterationView]) -> dict:
    """The form starts with the newest iteration's training type and budget: retraining usually repeats them."""
    newest = iterations[-1] if iterations else None
    if newest is None or newest.training_type != "Advanced" or not newest.budget_seconds:
        return {"advanced": False, "budget": f"{DEFAULT_BUDGET_MINUTES:g}"}
    return {"advanced": True, "budget": f"{newest.budget_seconds / 60:g}"}


@pages.post("/projects/{project_id}/train")
async def train(request: Request, project_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    force = shape.form_text(form, "force") == "on"
    if shape.form_text(form, "type", "quick") == "advanced":
        budget = budget_minutes(shape.form_text(form, "budget_minutes", str(DEFAULT_BUDGET_MINUTES)))
        view = await run_in_threadpool(
            svc.jobs.train, project_id, training_type="Advanced", budget_minutes=budget, force=force
        )
        sessions.current(request).flash("ok", f"{view.name} is training (advanced, within {minutes(budget * 60)}).")
    else:
        view = await run_in_threadpool(svc.jobs.train, project_id, force=force)
        sessions.current(request).flash("ok", f"{view.name} is training.")
    return RedirectResponse(f"/projects/{project_id}/train?iteration={view.id}", status_code=303)


def budget_minutes(text: str) -> float:
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < MIN_BUDGET_MINUTES:
        raise InvalidInput(
            f"The time budget for advanced training is a number of minutes, at least {MIN_BUDGET_MINUTES:g}.",
            code="BadRequestInvalid",
        )
    return value


@data.get("/projects/{project_id}/iterations/{iteration_id}/status")
def iteration_status(request: Request, project_id: str, iteration_id: str) -> Response:
    view = shape.service(request).training.iteration(project_id, iteration_id)
    return JSONResponse(
        {
            "name": view.name,
            "status": view.status,
            "message": status_sentence(view),
            "trainingType": view.training_type,
            "progress": progress_bar(view),
            "stage": (view.progress or {}).get("stage", ""),
        }
    )


def minutes(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    value = seconds / 60
    return f"{value:.1f} min".replace(".0 min", " min")


def elapsed(view: IterationView, now: datetime | None = None) -> float:
    """Seconds since the iteration was created, at ``now`` (the current time unless given)."""
    created = view.created if view.created.tzinfo else view.created.replace(tzinfo=UTC)
    return max(0.0, ((now or datetime.now(UTC)) - created).total_seconds())


def kind(view: IterationView) -> str:
    if view.training_type == "Advanced":
        return f"advanced, budget {minutes(view.budget_seconds)}" if view.budget_seconds else "advanced"
    return "quick"


def status_sentence(view: IterationView, now: datetime | None = None) -> str:
    if view.status == "Completed":
        return (
            f"{view.name}: Completed in {view.training_seconds or 0:.1f} s on {view.image_count} images ({kind(view)})."
        )
    if view.status == "Failed":
        return f"{view.name}: Failed. {view.error or 'The server log has the reason.'}"
    if view.status != "Training":
        return f"{view.name}: {view.status}…"
    step = view.progress or {}
    doing = "starting"
    if step.get("stage"):
        doing = str(step["stage"])
        if step.get("total"):
            doing += f" {step.get('done', 0)} of {step['total']}"
    clock = f"{elapsed(view, now):.0f} s"
    if view.training_type == "Advanced" and view.budget_seconds:
        clock += f" of {minutes(view.budget_seconds)}"
    left = time_left(view, now)
    return f"{view.name}: Training ({kind(view)})… {doing}, {clock} so far" + (
        f", about {minutes(left)} left." if left is not None else "."
    )


def time_left(view: IterationView, now: datetime | None = None) -> float | None:
    """Seconds the training estimated it had left (advanced training reports it), less the time since."""
    step = view.progress or {}
    if step.get("etaSeconds") is None:
        return None
    since = elapsed(view, now) - float(step.get("elapsedSeconds") or 0.0)
    return max(0.0, float(step["etaSeconds"]) - max(0.0, since))


def progress_bar(view: IterationView, now: datetime | None = None) -> dict | None:
    """What the progress bar shows while training: for advanced training, whose schedule follows the clock,
    the time used against the time used plus the estimated time left (the budget until there is an estimate);
    else the current stage's steps; None while it cannot tell (an indeterminate bar)."""
    if view.status != "Training":
        return None
    if view.training_type == "Advanced" and view.budget_seconds:
        used, left = elapsed(view, now), time_left(view, now)
        if left is not None:
            return {"value": round(used, 1), "max": round(used + left, 1)}
        return {"value": round(min(used, view.budget_seconds), 1), "max": view.budget_seconds}
    step = view.progress or {}
    if step.get("total"):
        return {"value": min(step.get("done", 0), step["total"]), "max": step["total"]}
    return None


# ---------------------------------------------------------------------- performance


@dataclass(frozen=True)
class Compared:
    """One iteration in the side-by-side table."""

    iteration: IterationView
    performance: PerformanceView | None


@pages.get("/projects/{project_id}/performance")
def performance_page(request: Request, project_id: str, iteration: str = "", threshold: float = 0.5) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "performance")
    threshold = min(1.0, max(0.0, threshold))
    iterations = svc.training.iterations(project_id)
    completed = [i for i in iterations if i.status == "Completed"]
    if not completed:
        return render(request, "performance.html", **context, selected=None, iterations=iterations)
    selected = next((i for i in completed if i.id == iteration), None) or svc.training.iteration(project_id)
    compared = [
        Compared(i, svc.training.performance(project_id, i.id, threshold) if i.status == "Completed" else None)
        for i in reversed(iterations)
    ]
    figures = next(c.performance for c in compared if c.iteration.id == selected.id)
    evaluation = svc.training.evaluation(project_id, selected.id)
    at_threshold = {t.id: (t.figures.precision, t.figures.recall) for t in figures.per_tag}
    curves = charts.pr_curves(evaluation.probabilities, evaluation.labels, figures.tags, at_threshold)
    matrix = charts.confusion(evaluation.probabilities, evaluation.labels, figures.tags)
    wrong = svc.training.misclassified(project_id, selected.id, threshold)
    measured = selected.measured_on
    return render(
        request,
        "performance.html",
        **context,
        iterations=iterations,
        selected=selected,
        compared=compared,
        figures=performance_json(figures),
        threshold=threshold,
        curves=curves,
        plot=charts.PR_PLOT,
        matrix=matrix,
        misclassified=shape.thumbs(request, [w.image for w in wrong][:MISCLASSIFIED_SHOWN]),
        wrong=wrong[:MISCLASSIFIED_SHOWN],
        wrong_count=len(wrong),
        exports=exports_json(request, svc, project_id, selected.id),
        default_publish_name=publish_name(iterations, selected),
        published={i.publish_name: i.name for i in iterations if i.publish_name and i.id != selected.id},
        evaluated_on=evaluated_on(selected),
        spread=measured is None or measured.has_spread,
        figures_from=figures_from,
        tags=svc.projects.list_tags(project_id),
        multilabel=selected.classification_type == "Multilabel",
        budget=minutes(selected.budget_seconds or 0),
    )


def publish_name(iterations: list[IterationView], selected: IterationView) -> str:
    """The name the publish form offers: the selected iteration's own, else the name the project's apps call
    now (publishing under it swaps the new iteration in), else one made from the iteration's name."""
    current = [i for i in iterations if i.publish_name]
    if selected.publish_name:
        return selected.publish_name
    if current:
        return max(current, key=lambda i: i.last_modified).publish_name or ""
    return selected.name.replace(" ", "")


def evaluated_on(view: IterationView) -> str:
    """Where the misclassified images and the confusion matrix come from, in a heading's words."""
    if view.measured_on is not None:
        held_out = view.measured_on.method is metrics.Method.VALIDATION_SPLIT
        return "the held-out images" if held_out else "cross-validation"
    return "the validation split" if view.fine_tuned else "cross-validation"


def figures_from(view: IterationView, short: bool = False) -> str:
    """What an iteration's figures were measured on (``metrics.MeasuredOn``'s words; a table cell's with
    ``short``), or what an iteration trained before that was recorded says."""
    if view.measured_on is not None:
        return view.measured_on.short() if short else view.measured_on.sentence()
    if short:
        return "validation split" if view.fine_tuned else "cross-validation"
    return view.metrics_from or (
        f"cross-validation on the {view.image_count} training images: each image was scored by a model trained "
        "without it"
    )


@data.get("/projects/{project_id}/iterations/{iteration_id}/performance")
def performance_figures(request: Request, project_id: str, iteration_id: str, threshold: float = 0.5) -> Response:
    figures = shape.service(request).training.performance(project_id, iteration_id, threshold)
    return JSONResponse(performance_json(figures))


def performance_json(figures: PerformanceView) -> dict:
    """The figures with their displayed text (percentages), overall and per tag."""
    body = figures.to_json()

    def shown(entry: dict) -> dict:
        return {**entry, "text": {k: percent(entry[k]) for k in ("precision", "recall", "averagePrecision")}}

    return {
        **shown(body),
        "threshold": figures.threshold,
        "thresholdText": percent(figures.threshold, 0),
        "imageCount": figures.image_count,
        "perTagPerformance": [shown(t) for t in body["perTagPerformance"]],
    }


# ---------------------------------------------------------------------- publish, export


@pages.post("/projects/{project_id}/iterations/{iteration_id}/publish")
async def publish(request: Request, project_id: str, iteration_id: str) -> Response:
    """Publish under a name; a name another iteration has is taken over in one transaction (apps calling it
    never see an error), after the confirmation page when the form did not already confirm it."""
    form = await request.form()
    svc = shape.service(request)
    name = shape.form_text(form, "name").strip()
    holder = _holder(svc, project_id, iteration_id, name)
    replace = shape.form_text(form, "replace") == "1"
    if holder is not None and not replace:
        return RedirectResponse(
            f"/projects/{project_id}/iterations/{iteration_id}/publish?{urlencode({'name': name})}", status_code=303
        )
    view = await run_in_threadpool(svc.training.publish, project_id, iteration_id, name, overwrite=replace)
    swapped = f" in place of {holder.name}: apps calling it get {view.name}'s answers now" if holder else ""
    sessions.current(request).flash(
        "ok", f"{view.name} is published as {view.publish_name}{swapped}. The Prediction URL tab shows how to call it."
    )
    return RedirectResponse(_performance_url(project_id, iteration_id), status_code=303)


@pages.get("/projects/{project_id}/iterations/{iteration_id}/publish")
def confirm_publish(request: Request, project_id: str, iteration_id: str, name: str = "") -> Response:
    """Ask before taking a publish name over from another iteration."""
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "performance")
    view = svc.training.iteration(project_id, iteration_id)
    holder = _holder(svc, project_id, view.id, name.strip())
    if holder is None:  # nobody has it (any more): nothing to confirm
        return RedirectResponse(_performance_url(project_id, view.id), status_code=303)
    return render(
        request,
        "publish_confirm.html",
        **{**context, "title": f"Replace {holder.name} as {name.strip()}?"},
        iteration=view,
        holder=holder,
        publish_name=name.strip(),
        back=_performance_url(project_id, view.id),
    )


def _holder(svc: Service, project_id: str, iteration_id: str, name: str) -> IterationView | None:
    """Another iteration of the project published as ``name``, if one is."""
    return next(
        (i for i in svc.training.iterations(project_id) if name and i.publish_name == name and i.id != iteration_id),
        None,
    )


@pages.post("/projects/{project_id}/iterations/{iteration_id}/unpublish")
def unpublish(request: Request, project_id: str, iteration_id: str) -> Response:
    svc = shape.service(request)
    view = svc.training.iteration(project_id, iteration_id)
    svc.training.unpublish(project_id, iteration_id)
    sessions.current(request).flash(
        "ok", f"{view.name} is unpublished: the Prediction API no longer answers as {view.publish_name}."
    )
    return RedirectResponse(_performance_url(project_id, iteration_id), status_code=303)


@pages.post("/projects/{project_id}/iterations/{iteration_id}/export")
def export(request: Request, project_id: str, iteration_id: str) -> Response:
    view = shape.service(request).jobs.export(project_id, iteration_id, EXPORT_PLATFORM)
    sessions.current(request).flash(
        "ok",
        "The ONNX export is ready below."
        if view.status == "Done"
        else "Exporting to ONNX; the download link appears below when it is ready.",
    )
    return RedirectResponse(_performance_url(project_id, iteration_id) + "#export", status_code=303)


@data.get("/projects/{project_id}/iterations/{iteration_id}/exports")
def export_status(request: Request, project_id: str, iteration_id: str) -> Response:
    return JSONResponse(exports_json(request, shape.service(request), project_id, iteration_id))


def exports_json(request: Request, svc: Service, project_id: str, iteration_id: str) -> list[dict]:
    return [
        {
            "platform": e.platform,
            "status": e.status,
            "error": e.error,
            "url": shape.link(request, "export", e.id) if e.status == "Done" else "",
        }
        for e in svc.exports.list(project_id, iteration_id)
    ]


def _performance_url(project_id: str, iteration_id: str) -> str:
    return f"/projects/{project_id}/performance?iteration={iteration_id}"
