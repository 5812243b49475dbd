"""Request gates: the API version in the path, and the keys.

Every training route needs the Training-Key, every prediction route the Prediction-Key.

Header names match case-insensitively (Microsoft's samples send ``Training-key``), and the
service compares keys in constant time. A missing or wrong key is 401 with code ``Unauthorized``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Path, Request, Security
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

training_header = APIKeyHeader(
    name="Training-Key", auto_error=False, description="The training key (`tagvision keys`)."
)
prediction_header = APIKeyHeader(
    name="Prediction-Key", auto_error=False, description="The prediction key (`tagvision keys`)."
)


def _refuse(header: str, given: str | None) -> HTTPException:
    what = "is missing" if not given else "is not valid"
    return HTTPException(
        401,
        detail={
            "code": "Unauthorized",
            "message": f"Access denied: the {header} header {what}. `tagvision keys` shows the keys of this server.",
        },
    )


def require_training_key(request: Request, key: str | None = Security(training_header)) -> None:
    if not request.app.state.service.keys.is_training_key(key):
        raise _refuse("Training-Key", key)


def require_prediction_key(request: Request, key: str | None = Security(prediction_header)) -> None:
    if not request.app.state.service.keys.is_prediction_key(key):
        raise _refuse("Prediction-Key", key)


VersionPath = Annotated[str, Path(description="Training API: v3.0 to v3.4-preview; Prediction API: v3.0 or v3.1.")]


def version_gate(api: str, versions: tuple[str, ...]) -> Callable[[str], str]:
    """A dependency that answers 404 ``NotFound`` for a version of ``api`` this server does not speak."""

    def api_version(version: VersionPath) -> str:
        if version not in versions:
            raise HTTPException(
                404,
                detail={
                    "code": "NotFound",
                    "message": f"Unknown {api} version {version!r}; this server speaks {', '.join(versions)}.",
                },
            )
        return version

    return api_version
