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


def link(request: Request, kind: str, ident: str) -> str:
    """A signed link to a file (``tagvision.service.files``) under the address the request came to."""
    return request.app.state.service.files.url(str(request.base_url), kind, ident)


def _with_links(request: Request, body: dict[str, Any], sha256: str, kind: str = "image") -> dict[str, Any]:
    """``body`` with signed links to the original (also standing for the resized image) and its thumbnail."""
    original = link(request, kind, sha256)
    return {
        **body,
        "originalImageUri": original,
        "resizedImageUri": original,
        "thumbnailUri": link(request, f"{kind}-thumbnail" if kind != "image" else "thumbnail", sha256),
    }


def image(request: Request, view: ImageView) -> dict[str, Any]:
    return _with_links(request, view.to_json(), view.sha256)


def create_summary(request: Request, summary: ImageCreateSummary) -> dict[str, Any]:
    body = summary.to_json()
    for result, entry in zip(summary.results, body["images"], strict=True):
        if result.image is not None:
            entry["image"] = image(request, result.image)
    return body


def image_performance(request: Request, view: ImagePerformanceView) -> dict[str, Any]:
    body = _with_links(request, view.to_json(), view.image.sha256)
    body["imageUri"] = body.pop("originalImageUri")
    del body["resizedImageUri"]
    return body


def stored_prediction(request: Request, view: PredictionView) -> dict[str, Any]:
    return _with_links(request, view.to_stored_json(), view.sha256, "prediction")


def suggestion(request: Request, view: SuggestionView) -> dict[str, Any]:
    return _with_links(request, view.to_json(), view.image.sha256)


def export(request: Request, view: ExportView) -> dict[str, Any]:
    uri = link(request, "export", view.id) if view.status == "Done" else ""
    return {**view.to_json(), "downloadUri": uri}
