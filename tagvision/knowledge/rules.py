"""Decision rules: declarative, checked when saved, evaluated on every prediction. No user code runs.

A project keeps a list of rules; each reads one attribute of the predicted tags' information:

* ``most-probable-above``: the most probable tag (among ``tags``, when given), if its probability reaches
  ``threshold``: its ``attribute`` (e.g. damage tag -> ``premiumFactor``). Otherwise ``default``.
* ``probability-weighted``: the probability-weighted mean of a numeric ``attribute`` over the tags at or above
  ``threshold`` (default 0: every tag that has the attribute).
* ``max-above``: the largest numeric ``attribute`` among the tags at or above ``threshold`` (the worst damage
  of a multilabel prediction).

A rule is ``{"rule": KIND, "attribute": NAME, "threshold": 0.5, "name": ..., "tags": [...], "default": ...}``;
``name`` (default: the attribute) keys its result in the prediction's ``decision``, which also lists the
inputs (tag, probability, value) that produced the value. Saving checks every field and the catalogue (the
attribute exists, its values are numbers where the rule computes), and each error names its field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tagvision.knowledge import FieldError
from tagvision.knowledge import information as info

KINDS = ("most-probable-above", "probability-weighted", "max-above")
NUMERIC = ("probability-weighted", "max-above")
FIELDS = ("rule", "name", "attribute", "threshold", "tags", "default")
MAX_RULES = 20
NAME = re.compile(r"[A-Za-z0-9_.\- ]{1,64}")
CODE = "BadRequestDecisionRule"


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    attribute: str
    threshold: float
    tag_ids: tuple[str, ...] | None = None  # None: every tag
    default: Any = None

    def to_json(self, names: Mapping[str, str]) -> dict[str, Any]:
        """The rule as saved, its tags by name (``names``: tag id -> name; a deleted tag is left out)."""
        body: dict[str, Any] = {
            "name": self.name,
            "rule": self.kind,
            "attribute": self.attribute,
            "threshold": self.threshold,
        }
        if self.tag_ids is not None:
            body["tags"] = [names[t] for t in self.tag_ids if t in names]
        if self.default is not None:
            body["default"] = self.default
        return body

    def stored(self) -> dict[str, Any]:
        """The rule as the store keeps it: tags by id, so renaming a tag does not break it."""
        body = {"name": self.name, "rule": self.kind, "attribute": self.attribute, "threshold": self.threshold}
        return body | ({"tagIds": list(self.tag_ids)} if self.tag_ids is not None else {}) | {"default": self.default}


@dataclass(frozen=True)
class Candidate:
    """A predicted tag as the rules see it: its probability and its current information."""

    tag_id: str
    tag_name: str
    probability: float
    information: Mapping[str, Any]


def from_stored(stored: list[dict[str, Any]]) -> list[Rule]:
    """Rules as :meth:`Rule.stored` wrote them (already checked when saved)."""
    return [
        Rule(
            r["name"],
            r["rule"],
            r["attribute"],
            float(r["threshold"]),
            tuple(r["tagIds"]) if r.get("tagIds") is not None else None,
            r.get("default"),
        )
        for r in stored
    ]


def parse(raw: Any, tags: Mapping[str, tuple[str, Mapping[str, Any]]]) -> list[Rule]:
    """Check rules as a user wrote them against the catalogue; ``tags``: tag name -> (tag id, information).

    Raises :class:`FieldError` naming the first bad field (``rules[2].attribute``).
    """
    if isinstance(raw, dict) and set(raw) == {"rules"}:
        raw = raw["rules"]
    if not isinstance(raw, list):
        raise FieldError("rules", f"must be a list of rules, not {info.kind(raw)}.", code=CODE)
    if len(raw) > MAX_RULES:
        raise FieldError("rules", f"has {len(raw)} rules; at most {MAX_RULES} are allowed.", code=CODE)
    by_folded = {name.casefold(): (name, tag_id, data) for name, (tag_id, data) in tags.items()}
    out: list[Rule] = []
    for i, item in enumerate(raw):
        rule = _parse_one(item, f"rules[{i}]", by_folded)
        if any(r.name == rule.name for r in out):
            raise FieldError(f"rules[{i}].name", f"another rule is already named {rule.name!r}.", code=CODE)
        out.append(rule)
    return out


def _parse_one(item: Any, field: str, tags: dict[str, tuple[str, str, Mapping[str, Any]]]) -> Rule:
    if not isinstance(item, dict):
        raise FieldError(field, f"must be an object, not {info.kind(item)}.", code=CODE)
    unknown = sorted(set(item) - set(FIELDS))
    if unknown:
        raise FieldError(f"{field}.{unknown[0]}", f"is not a rule field (fields: {', '.join(FIELDS)}).", code=CODE)
    kind = item.get("rule")
    if kind not in KINDS:
        raise FieldError(f"{field}.rule", f"{kind!r} is not a rule; choose one of: {', '.join(KINDS)}.", code=CODE)
    attribute = item.get("attribute")
    if not isinstance(attribute, str) or not attribute:
        raise FieldError(f"{field}.attribute", "name the attribute of the tags' information to read.", code=CODE)
    threshold = item.get("threshold", 0.0 if kind == "probability-weighted" else 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise FieldError(f"{field}.threshold", f"must be a probability from 0 to 1, not {threshold!r}.", code=CODE)
    name = item.get("name", attribute)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise FieldError(f"{field}.name", "must be 1 to 64 letters, digits, spaces, '_', '-' or '.'.", code=CODE)
    chosen = _tags(item.get("tags"), f"{field}.tags", tags)
    candidates = [tags[n.casefold()] for n in chosen] if chosen is not None else list(tags.values())
    _check_attribute(kind, attribute, candidates, f"{field}.attribute")
    default = item.get("default")
    if default is not None:
        if kind in NUMERIC and (isinstance(default, bool) or not isinstance(default, int | float)):
            raise FieldError(f"{field}.default", f"{kind} gives a number; the default must be one too.", code=CODE)
        info.validate({"default": default}, f"{field}.default")
    tag_ids = tuple(tags[n.casefold()][1] for n in chosen) if chosen is not None else None
    return Rule(name, kind, attribute, float(threshold), tag_ids, default)


def _tags(value: Any, field: str, tags: dict[str, tuple[str, str, Mapping[str, Any]]]) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise FieldError(field, "must be a non-empty list of tag names (or left out: every tag).", code=CODE)
    for j, name in enumerate(value):
        if not isinstance(name, str) or name.casefold() not in tags:
            known = ", ".join(n for n, _, _ in tags.values()) or "none yet"
            raise FieldError(f"{field}[{j}]", f"the project has no tag named {name!r} (tags: {known}).", code=CODE)
    return value


def _check_attribute(
    kind: str, attribute: str, candidates: list[tuple[str, str, Mapping[str, Any]]], field: str
) -> None:
    having = [(name, data[attribute]) for name, _, data in candidates if attribute in data]
    if not having:
        seen = sorted({k for _, _, data in candidates for k in data})
        raise FieldError(
            field,
            f"no tag's information has the attribute {attribute!r} "
            f"(attributes: {', '.join(seen) if seen else 'none yet; import a catalogue first'}).",
            code=CODE,
        )
    if kind in NUMERIC:
        for name, value in having:
            if not is_number(value):
                raise FieldError(
                    field,
                    f"{attribute!r} of tag {name!r} is {info.kind(value)} ({value!r}); {kind} needs numbers.",
                    code=CODE,
                )


def check_information(rules: list[Rule], tag_id: str, tag_name: str, data: Mapping[str, Any]) -> None:
    """Refuse new information for a tag that a numeric rule would read as something other than a number."""
    for rule in rules:
        if rule.kind not in NUMERIC or rule.attribute not in data:
            continue
        if rule.tag_ids is not None and tag_id not in rule.tag_ids:
            continue
        value = data[rule.attribute]
        if not is_number(value):
            raise FieldError(
                f"information.{rule.attribute}",
                f"the decision rule {rule.name!r} ({rule.kind}) reads it as a number, but {tag_name!r} would "
                f"have {info.kind(value)} ({value!r}).",
                code=CODE,
            )


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def evaluate(rules: list[Rule], ranked: list[Candidate]) -> dict[str, dict[str, Any]]:
    """Each rule's value and the inputs that produced it, by rule name. ``ranked``: most probable first."""
    return {rule.name: _evaluate(rule, ranked) for rule in rules}


def _evaluate(rule: Rule, ranked: list[Candidate]) -> dict[str, Any]:
    pool = [c for c in ranked if rule.tag_ids is None or c.tag_id in rule.tag_ids]
    result: dict[str, Any] = {
        "rule": rule.kind,
        "attribute": rule.attribute,
        "threshold": rule.threshold,
        "value": rule.default,
        "matched": False,
        "inputs": [],
    }
    if rule.kind == "most-probable-above":
        if pool and pool[0].probability >= rule.threshold and rule.attribute in pool[0].information:
            top = pool[0]
            result.update(value=top.information[rule.attribute], matched=True, tagId=top.tag_id, tagName=top.tag_name)
        if pool:
            result["inputs"] = [_input(pool[0], rule.attribute)]
        return result
    used = [c for c in pool if c.probability >= rule.threshold and is_number(c.information.get(rule.attribute, None))]
    result["inputs"] = [_input(c, rule.attribute) for c in used]
    if not used:
        return result
    if rule.kind == "probability-weighted":
        total = sum(c.probability for c in used)
        if total > 0:
            value = sum(c.probability * c.information[rule.attribute] for c in used) / total
            result.update(value=value, matched=True)
        return result
    best = max(used, key=lambda c: (c.information[rule.attribute], c.probability))
    result.update(value=best.information[rule.attribute], matched=True, tagId=best.tag_id, tagName=best.tag_name)
    return result


def _input(candidate: Candidate, attribute: str) -> dict[str, Any]:
    return {
        "tagId": candidate.tag_id,
        "tagName": candidate.tag_name,
        "probability": candidate.probability,
        "value": candidate.information.get(attribute),
    }
