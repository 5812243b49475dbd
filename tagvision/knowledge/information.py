"""A tag's information: a free-form JSON object (strings, numbers, booleans, null, lists, nested objects).

It is data, never markup or code: every surface shows its strings escaped. The limits keep one tag's object
small enough to return with every prediction and to snapshot with every stored one: at most
:data:`MAX_BYTES` of canonical JSON, :data:`MAX_DEPTH` levels, :data:`MAX_KEYS` keys per object,
:data:`MAX_ITEMS` items per list, keys of at most :data:`MAX_KEY` characters without control characters.
The canonical form (sorted keys, no spaces, UTF-8) names a version by its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from typing import Any

from tagvision.knowledge import FieldError

MAX_BYTES = 32 * 1024
MAX_DEPTH = 6
MAX_KEYS = 200
MAX_ITEMS = 500
MAX_KEY = 128
MAX_STRING = 8000
MAX_INT = 2**53  # integers past this lose precision in JavaScript clients
CODE = "BadRequestTagInformation"


def validate(value: Any, field: str = "information") -> dict[str, Any]:
    """``value`` if it is a JSON object within the limits, else a :class:`FieldError` naming the first bad field."""
    if not isinstance(value, dict):
        raise FieldError(field, f"must be a JSON object, not {_kind(value)}.", code=CODE)
    _check(value, field, 1)
    size = len(canonical(value))
    if size > MAX_BYTES:
        raise FieldError(
            field, f"is {size:,} bytes of JSON; at most {MAX_BYTES:,} bytes are allowed per tag.", code=CODE
        )
    return value


def _check(value: Any, field: str, depth: int) -> None:
    if value is None or isinstance(value, bool | str):
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise FieldError(field, f"has {len(value):,} characters; at most {MAX_STRING:,} are allowed.", code=CODE)
        return
    if isinstance(value, int):
        if abs(value) > MAX_INT:
            raise FieldError(field, f"{value} is too large a whole number (at most 2^53).", code=CODE)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FieldError(field, f"{value} is not a finite number.", code=CODE)
        return
    if depth > MAX_DEPTH:
        raise FieldError(field, f"nests deeper than {MAX_DEPTH} levels.", code=CODE)
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise FieldError(field, f"has {len(value)} items; at most {MAX_ITEMS} are allowed.", code=CODE)
        for i, item in enumerate(value):
            _check(item, f"{field}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        if len(value) > MAX_KEYS:
            raise FieldError(field, f"has {len(value)} keys; at most {MAX_KEYS} are allowed.", code=CODE)
        for key, item in value.items():
            check_key(key, field)
            _check(item, f"{field}.{key}", depth + 1)
        return
    raise FieldError(field, f"{_kind(value)} is not a JSON value.", code=CODE)


def check_key(key: Any, field: str = "information") -> str:
    """An attribute name: a non-empty string of at most :data:`MAX_KEY` characters, no control characters."""
    if not isinstance(key, str) or not key.strip():
        raise FieldError(field, "an attribute name is empty.", code=CODE)
    if len(key) > MAX_KEY:
        raise FieldError(field, f"the attribute name {key[:40]!r}... is longer than {MAX_KEY} characters.", code=CODE)
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") and ch not in "\u200c\u200d" for ch in key):
        raise FieldError(field, f"the attribute name {key!r} contains control characters.", code=CODE)
    return key


def canonical(value: dict[str, Any]) -> bytes:
    """Sorted keys, no spaces, UTF-8: the same object always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def digest(value: dict[str, Any]) -> str | None:
    """The SHA-256 of the canonical JSON; None for an empty object (a tag without information)."""
    return hashlib.sha256(canonical(value)).hexdigest() if value else None


def select(value: dict[str, Any], attributes: tuple[str, ...] | None) -> dict[str, Any]:
    """Only the named top-level attributes (all of them when ``attributes`` is None), in the object's order."""
    if attributes is None:
        return value
    return {k: v for k, v in value.items() if k in attributes}


def loads(text: str | bytes, field: str = "information") -> Any:
    """Parse JSON text strictly: duplicate keys, NaN/Infinity and over-deep nesting are errors naming ``field``."""
    if len(text) > 4 * MAX_BYTES + 1024:
        raise FieldError(field, f"is {len(text):,} bytes; at most {MAX_BYTES:,} bytes of JSON are allowed.", code=CODE)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except FieldError as exc:
        raise FieldError(field, exc.reason, code=CODE) from None
    except RecursionError:
        raise FieldError(field, "nests too deeply.", code=CODE) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FieldError(field, f"is not valid JSON ({_short(exc)}).", code=CODE) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FieldError("", f"the key {key!r} appears twice in one object.", code=CODE)
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise FieldError("", f"{name} is not a finite number.", code=CODE)


def _short(exc: Exception) -> str:
    return str(exc)[:160]


def _kind(value: Any) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def kind(value: Any) -> str:
    """How a value reads in an error message: ``text``, ``a number``, ``a list``..."""
    return _kind(value)
