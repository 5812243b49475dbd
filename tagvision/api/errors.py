"""Every error leaves the API as JSON ``{"code", "message"}`` with a fitting status.

The official SDK turns exactly that body into ``CustomVisionErrorException`` (with
``e.error.code``); an error without it crashes the SDK instead. So FastAPI's own errors
(validation, unknown routes, wrong methods, oversize bodies) are reshaped here too.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tagvision.errors import Busy, TagvisionError

log = logging.getLogger("tagvision.api")

STATUS_CODES = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "BadRequestNotSupported",
    413: "BadRequestExceededBatchSize",
    415: "UnsupportedMediaType",
}
JSON_TYPES = ("application/json", "text/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(TagvisionError)
    async def tagvision_error(_request: Request, exc: TagvisionError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return error_response(exc.http_status, exc.code, exc.message, headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc.detail, dict):  # raised with an explicit code
            return error_response(exc.status_code, exc.detail["code"], exc.detail["message"], exc.headers)
        code = STATUS_CODES.get(exc.status_code, "BadRequest" if exc.status_code < 500 else "ErrorUnknown")
        message = {
            404: "No such route. The Custom Vision API lives under /customvision/v3.x/training and "
            "/customvision/v3.x/prediction; see /docs.",
            405: "This route does not take that method; see /docs.",
        }.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        errors = exc.errors()
        in_body = any(e.get("loc", ("",))[0] == "body" for e in errors)
        if in_body and content_type and content_type not in JSON_TYPES and not content_type.endswith("+json"):
            return error_response(
                415, "UnsupportedMediaType", f"This route takes a JSON body (application/json), not {content_type}."
            )
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "BadRequestInvalid", "The request body is not valid JSON.")
        parts = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        missing = all(e.get("type") == "missing" for e in errors)
        return error_response(
            400,
            "BadRequestRequiredParamIsNull" if missing else "BadRequestInvalid",
            "Invalid request: " + "; ".join(parts) + ".",
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(
            500, "ErrorUnknown", f"Internal error ({type(exc).__name__}); the server log has the details."
        )
