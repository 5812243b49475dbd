"""One exception hierarchy with stable codes.

Codes follow Azure Custom Vision's where one exists (``ErrorImageFormat``,
``BadRequestTrainingNotNeeded``, ...), so the REST layer can hand them to clients
unchanged. Every interface maps :class:`TagvisionError` to its own form: the CLI
prints ``code: message`` and exits non-zero, the API answers ``{"code", "message"}``.
"""

from __future__ import annotations


class TagvisionError(Exception):
    """Base class: ``code`` is stable and machine-readable, ``message`` is for people."""

    code: str = "Error"
    http_status: int = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidInput(TagvisionError):
    """The request itself is malformed (bad name, bad option, bad value)."""

    code = "BadRequest"


class NotFound(TagvisionError):
    """A named project, tag, image or iteration does not exist."""

    code = "NotFound"
    http_status = 404


class Conflict(TagvisionError):
    """The request clashes with existing state (duplicate name, iteration in use)."""

    code = "Conflict"
    http_status = 400  # Custom Vision answers these (BadRequest...NotUnique, ...AlreadyInProgress) with 400


class ImageError(TagvisionError):
    """An image was refused. ``code`` is a Custom Vision ImageCreateStatus value."""

    code = "ErrorImageFormat"


class TrainingError(TagvisionError):
    """Training cannot start or did not finish."""

    code = "BadRequestTrainingValidationFailed"


class Busy(TagvisionError):
    """The server is at a limit it keeps (memory for decoding, concurrent fetches): try again later."""

    code = "TooManyRequests"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int = 2, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class StorageError(TagvisionError):
    """The store could not complete a write; nothing was half-written."""

    code = "ErrorStorage"
    http_status = 500
