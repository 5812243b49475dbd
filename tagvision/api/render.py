"""Service views -> Custom Vision JSON, with the signed links a client can GET without a key."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from tagvision.service.views import (
    ExportView,
    ImageCreateSummary,
    ImagePerformanceView,
    ImageView,
    PredictionView,
    SuggestionView,
)


def _links(request: Request):
    return request.app.state.links


def image(request: Request, view: ImageView) -> dict[str, Any]:
    links = _links(request)
    original = links.url(request, "image", view.sha256)
    return {**view.to_json(), "originalImageUri": original, "resizedImageUri": original,
            "thumbnailUri": links.url(request, "thumbnail", view.sha256)}


def create_summary(request: Request, summary: ImageCreateSummary) -> dict[str, Any]:
    body = summary.to_json()
    for result, entry in zip(summary.results, body["images"], strict=True):
        if result.image is not None:
            entry["image"] = image(request, result.image)
    return body


def image_performance(request: Request, view: ImagePerformanceView) -> dict[str, Any]:
    links = _links(request)
    return {**view.to_json(), "imageUri": links.url(request, "image", view.image.sha256),
            "thumbnailUri": links.url(request, "thumbnail", view.image.sha256)}


def stored_prediction(request: Request, view: PredictionView) -> dict[str, Any]:
    links = _links(request)
    original = links.url(request, "prediction", view.sha256)
    return {**view.to_stored_json(), "originalImageUri": original, "resizedImageUri": original,
            "thumbnailUri": links.url(request, "prediction-thumbnail", view.sha256)}


def suggestion(request: Request, view: SuggestionView) -> dict[str, Any]:
    links = _links(request)
    original = links.url(request, "image", view.image.sha256)
    return {**view.to_json(), "originalImageUri": original, "resizedImageUri": original,
            "thumbnailUri": links.url(request, "thumbnail", view.image.sha256)}


def export(request: Request, view: ExportView) -> dict[str, Any]:
    uri = _links(request).url(request, "export", view.id) if view.status == "Done" else ""
    return {**view.to_json(), "downloadUri": uri}
