"""Key checks: every training route needs the Training-Key, every prediction route the Prediction-Key.

Header names match case-insensitively (Microsoft's samples send ``Training-key``), and keys
are compared in constant time. A missing or wrong key is 401 with code ``Unauthorized``.
"""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

training_header = APIKeyHeader(name="Training-Key", auto_error=False, description="The training key "
                               "(`tagvision keys`).")
prediction_header = APIKeyHeader(name="Prediction-Key", auto_error=False, description="The prediction key "
                                 "(`tagvision keys`).")


def matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _refuse(header: str, given: str | None) -> HTTPException:
    what = "is missing" if not given else "is not valid"
    return HTTPException(401, detail={"code": "Unauthorized", "message": f"Access denied: the {header} header "
                                      f"{what}. `tagvision keys` shows the keys of this server."})


def require_training_key(request: Request, key: str | None = Security(training_header)) -> None:
    if not matches(key, request.app.state.service.keys.current().training):
        raise _refuse("Training-Key", key)


def require_prediction_key(request: Request, key: str | None = Security(prediction_header)) -> None:
    if not matches(key, request.app.state.service.keys.current().prediction):
        raise _refuse("Prediction-Key", key)
