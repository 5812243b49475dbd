"""What a tag knows: its information (a free-form JSON object), decision rules over predictions, and catalogues.

Pure functions and values, no database and no HTTP: ``information`` validates and digests a tag's JSON object,
``rules`` checks declarative decision rules and evaluates them on a prediction, ``catalogue`` reads and writes
catalogue files (CSV, JSON, JSON Lines) with an error per bad row. ``tagvision.service.knowledge`` puts them
to work on the store.
"""

from __future__ import annotations

from tagvision.errors import InvalidInput


class FieldError(InvalidInput):
    """Bad input in one named field (``rules[1].threshold``, ``information.sizes[3]``); the message names it."""

    def __init__(self, field: str, message: str, *, code: str = "BadRequestInvalid") -> None:
        super().__init__(f"{field}: {message}" if field else message, code=code)
        self.field = field
        self.reason = message
