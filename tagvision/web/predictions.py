"""Stored predictions (review and re-tag into training images), Quick test, and the Prediction URL."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.datastructures import FormData, UploadFile

from tagvision.errors import InvalidInput
from tagvision.images import MAX_TRAINING_BYTES
from tagvision.service.prediction import PredictionQuery, QueryTag
from tagvision.service.views import IterationView, PredictionView
from tagvision.web import charts, shape
from tagvision.web import session as sessions
from tagvision.web.routing import JsonRoute, PageRoute, safe_next
from tagvision.web.templates import render

pages = APIRouter(route_class=PageRoute)
data = APIRouter(route_class=JsonRoute)
routers = (pages, data)
PER_PAGE = 30
ORDERS = (("Suggested", "Most uncertain first"), ("Newest", "Newest first"), ("Oldest", "Oldest first"))
PREDICTION_VERSION = "v3.0"  # the version Azure's portal shows in its Prediction URL dialog


# ---------------------------------------------------------------------- stored predictions


@dataclass(frozen=True)
class Card:
    prediction: PredictionView
    thumbnail: str
    original: str
    bars: list[charts.Bar]


@pages.get("/projects/{project_id}/predictions")
def prediction_list(
    request: Request,
    project_id: str,
    order: str = "Suggested",
    tag: str = "",
    low: float = 0.5,
    high: float = 1.0,
    iteration: str = "",
    page: str = "",
) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "predictions")
    tags = svc.projects.list_tags(project_id)
    low, high = min(1.0, max(0.0, low)), min(1.0, max(0.0, high))
    query = PredictionQuery(
        order_by=order,
        tags=(QueryTag(shape.tag_by_id(tags, tag).id, low, high),) if tag else (),
        iteration_id=iteration or None,
        max_count=PER_PAGE,
        continuation=page or None,
    )
    found, more = svc.prediction.query(project_id, query)
    order_of = [t.id for t in tags]
    cards = [
        Card(
            p,
            shape.link(request, "prediction-thumbnail", p.sha256),
            shape.link(request, "prediction", p.sha256),
            charts.bars(p.predictions[:3], order_of),
        )
        for p in found
    ]
    filters = {"order": order, "tag": tag, "low": low, "high": high, "iteration": iteration}
    return render(
        request,
        "predictions.html",
        **context,
        tags=tags,
        cards=cards,
        orders=ORDERS,
        filters=filters,
        iterations=svc.training.iterations(project_id),
        first_page=not page,
        more=f"?{urlencode({**filters, 'page': more})}" if more else "",
        multilabel=shape.is_multilabel(context["project"]),
        new_tag=shape.NEW_TAG,
    )


@pages.post("/projects/{project_id}/predictions/{prediction_id}/train")
async def move_to_training(request: Request, project_id: str, prediction_id: str) -> Response:
    """Confirm or correct a stored prediction's tag(s): it becomes a training image and leaves the review list.
    (Without JavaScript; the page's script posts to :func:`tag_prediction` and updates the card in place.)"""
    form = await request.form()
    sessions.current(request).flash("ok", await _to_training(request, project_id, prediction_id, form))
    back = safe_next(shape.form_text(form, "next")) or f"/projects/{project_id}/predictions"
    return RedirectResponse(f"{back}#predictions-heading", status_code=303)


@data.post("/projects/{project_id}/predictions/{prediction_id}/tag")
async def tag_prediction(request: Request, project_id: str, prediction_id: str) -> Response:
    """The same for the page's script: ``{"message"}``, and the card is replaced where it was."""
    form = await request.form()
    return JSONResponse({"message": await _to_training(request, project_id, prediction_id, form)})


async def _to_training(request: Request, project_id: str, prediction_id: str, form: FormData) -> str:
    svc = shape.service(request)
    chosen = await run_in_threadpool(shape.chosen_tags, svc, project_id, form)
    result = await run_in_threadpool(
        svc.prediction.to_training_image, project_id, prediction_id, tuple(t.id for t in chosen)
    )
    if not result.ok:
        raise InvalidInput(result.message or "The image could not be added.", code=result.status)
    names = ", ".join(t.name for t in chosen)
    already = " (it was already among them)" if result.status == "OKDuplicate" else ""
    return f"Added to the training images as {names}{already}. Train again to use it."


# ---------------------------------------------------------------------- quick test


@pages.get("/projects/{project_id}/quicktest")
def quick_test_page(request: Request, project_id: str) -> Response:
    svc = shape.service(request)
    return render(
        request,
        "quicktest.html",
        **shape.project_page(svc, project_id, "quicktest"),
        iterations=_completed(svc.training.iterations(project_id)),
        result=None,
    )


@pages.post("/projects/{project_id}/quicktest")
async def quick_test(request: Request, project_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    iteration = shape.form_text(form, "iteration") or None
    upload = form.get("image")
    url = shape.form_text(form, "url").strip()
    if isinstance(upload, UploadFile) and upload.filename:
        data = await upload.read()
        view = await run_in_threadpool(
            lambda: svc.prediction.classify(project_id, data, iteration_ref=iteration, max_bytes=MAX_TRAINING_BYTES)
        )
        shown = upload.filename
    elif url:
        async with svc.url_gate.slot():
            view = await run_in_threadpool(
                lambda: svc.prediction.classify_url(
                    project_id, url, iteration_ref=iteration, max_bytes=MAX_TRAINING_BYTES
                )
            )
        shown = url
    else:
        raise InvalidInput("Choose an image file or give an image URL to test.", code="BadRequestImageStream")
    tag_order = [t.id for t in svc.projects.list_tags(project_id)]
    iterations = _completed(svc.training.iterations(project_id))
    used = next((i for i in iterations if i.id == view.iteration_id), None)
    return render(
        request,
        "quicktest.html",
        **shape.project_page(svc, project_id, "quicktest"),
        iterations=iterations,
        result=view,
        used=used,
        shown=shown,
        bars=charts.bars(view.predictions, tag_order),
        image=shape.link(request, "prediction", view.sha256) if view.stored else "",  # never stored: no image
    )


def _completed(iterations: list[IterationView]) -> list[IterationView]:
    return [i for i in reversed(iterations) if i.status == "Completed"]


# ---------------------------------------------------------------------- prediction URL


@dataclass(frozen=True)
class Endpoint:
    iteration: IterationView
    image_url: str
    url_url: str
    curl_image: str
    curl_url: str


@pages.get("/projects/{project_id}/prediction-url")
def prediction_url(request: Request, project_id: str) -> Response:
    svc = shape.service(request)
    key = svc.keys.current().prediction
    base = svc.files.base(str(request.base_url))
    endpoints = []
    for it in svc.training.iterations(project_id):
        if not it.publish_name:
            continue
        root = (
            f"{base}/customvision/{PREDICTION_VERSION}/Prediction/{project_id}/classify/iterations/"
            f"{quote(it.publish_name, safe='')}"
        )
        endpoints.append(
            Endpoint(
                it,
                f"{root}/image",
                f"{root}/url",
                f'curl -X POST "{root}/image" \\\n  -H "Prediction-Key: {key}" \\\n'
                f'  -H "Content-Type: application/octet-stream" \\\n  --data-binary @photo.jpg',
                f'curl -X POST "{root}/url" \\\n  -H "Prediction-Key: {key}" \\\n'
                f'  -H "Content-Type: application/json" \\\n  -d \'{{"Url": "https://example.com/photo.jpg"}}\'',
            )
        )
    return render(
        request,
        "prediction_url.html",
        **shape.project_page(svc, project_id, "prediction-url"),
        endpoints=endpoints,
        prediction_key=key,
    )
