"""tagvision's extension parameters of the classify and quick-test routes, which Azure clients never send.

* ``information`` (default true): the predicted tags carry their information (``predictions[].information``);
* ``informationThreshold`` (0 to 1, default 0): only tags at or above this probability carry it;
* ``attributes``: comma-separated attribute names to limit the information to;
* ``metadata`` (query) or the ``X-Tagvision-Metadata`` header: the caller's key/values kept with a stored
  prediction, as a JSON object (``{"claim": "C-1042"}``) or ``claim=C-1042;adjuster=kim``.

An SDK user passes the header as ``custom_headers={"X-Tagvision-Metadata": ...}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query

from tagvision.api.params import csv
from tagvision.service.knowledge import MAX_ATTRIBUTES, Extras
from tagvision.service.records import check_metadata, metadata_from_text

METADATA_HEADER = "X-Tagvision-Metadata"


def prediction_extras(
    information: Annotated[
        bool, Query(description="tagvision: the predicted tags carry their information (default true).")
    ] = True,
    information_threshold: Annotated[
        float,
        Query(
            alias="informationThreshold",
            ge=0.0,
            le=1.0,
            description="tagvision: only tags at or above this probability carry their information.",
        ),
    ] = 0.0,
    attributes: Annotated[
        str | None, Query(description="tagvision: comma-separated attribute names to limit the information to.")
    ] = None,
    metadata: Annotated[
        str | None,
        Query(
            max_length=4096,
            description='tagvision: the caller\'s metadata kept with a stored prediction: {"claim": "C-1042"} '
            "or claim=C-1042;adjuster=kim (also the X-Tagvision-Metadata header).",
        ),
    ] = None,
    metadata_header: Annotated[str | None, Header(alias=METADATA_HEADER, include_in_schema=False)] = None,
) -> Extras:
    chosen = tuple(csv(attributes, limit=MAX_ATTRIBUTES, what="attributes")) if attributes else None
    pairs = {**metadata_from_text(metadata_header), **metadata_from_text(metadata)}
    return Extras(information, information_threshold, chosen, check_metadata(pairs))  # the limits hold for both


PredictionExtras = Annotated[Extras, Depends(prediction_extras)]
