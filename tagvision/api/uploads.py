"""Reading image uploads the way the Custom Vision SDK sends them.

The SDK posts ``multipart/form-data`` with parts named ``imageData`` that have no file name
when the user passes bytes (FastAPI's ``UploadFile`` refuses those, and ``request.form()``
caps parts at 1 MB), and the REST spec also allows a raw ``application/octet-stream`` body.
So the body is read whole (the size middleware has already bounded it) and split here.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from tagvision.errors import InvalidInput, TagvisionError

IMAGE_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"imageData": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
    "required": True,
}


@dataclass(frozen=True)
class Part:
    name: str | None  # the part's file name, when the client gave one
    data: bytes


class UnsupportedMediaType(TagvisionError):
    code = "UnsupportedMediaType"
    http_status = 415


async def image_parts(request: Request) -> list[Part]:
    """The images of a request: every multipart part, or the whole body for other content types."""
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    kind = content_type.split(";")[0].strip().lower()
    if kind.startswith("multipart/"):
        parts = _parse_multipart(content_type, body)
        if not parts:
            raise InvalidInput(
                "The multipart body has no parts; send the image as a part named imageData.",
                code="BadRequestImageBatch",
            )
        return parts
    if kind in ("application/json", "text/json", "application/x-www-form-urlencoded") or kind.startswith("text/"):
        raise UnsupportedMediaType(f"Send the image as multipart/form-data or application/octet-stream, not {kind}.")
    if not body:
        raise InvalidInput("The request has no image.", code="BadRequestImageStream")
    return [Part(None, body)]


async def one_image(request: Request) -> bytes:
    """The single image of a prediction or quick-test request."""
    parts = await image_parts(request)
    if len(parts) != 1:
        raise InvalidInput("Send exactly one image.", code="BadRequestImageBatch")
    return parts[0].data


def _parse_multipart(content_type: str, body: bytes) -> list[Part]:
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("The multipart Content-Type has no boundary.", code="BadRequestImageStream")
    parts: list[Part] = []
    current: dict = {}

    def on_part_begin() -> None:
        current.clear()
        current.update(data=bytearray(), headers={}, field=bytearray(), value=bytearray())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["value"] += data[start:end]

    def on_header_end() -> None:
        current["headers"][bytes(current["field"]).lower()] = bytes(current["value"])
        current["field"], current["value"] = bytearray(), bytearray()

    def on_part_end() -> None:
        _, options = parse_options_header(current["headers"].get(b"content-disposition", b""))
        filename = options.get(b"filename")
        parts.append(Part(filename.decode("utf-8", "replace") if filename else None, bytes(current["data"])))

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own error types
        raise InvalidInput(f"The multipart body cannot be read: {exc}.", code="BadRequestImageStream") from None
    return parts
