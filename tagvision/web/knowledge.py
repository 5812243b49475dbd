"""The portal's pages for what tags know and the records predictions leave.

**Catalogue** (every tag's information, import a catalogue file with a dry run, export it, the decision rules,
how long predictions are kept), a **tag page** (a structured key/value editor and a JSON view of the tag's
information), **Records** (stored predictions searched by the caller's metadata, exported as CSV or JSON
Lines). The quick test shows the information of the predicted tags as product cards (``product_card.html``).
Every value is shown as text: the templates escape it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, StreamingResponse
from starlette.datastructures import FormData, UploadFile

from tagvision.errors import InvalidInput, TagvisionError
from tagvision.knowledge import catalogue as cat
from tagvision.knowledge import information as info
from tagvision.service.prediction import PredictionQuery
from tagvision.service.records import describe, metadata_from_pairs
from tagvision.web import session as sessions
from tagvision.web import shape
from tagvision.web.routing import PageRoute
from tagvision.web.templates import render

pages = APIRouter(route_class=PageRoute)
routers = (pages,)
KINDS = (("text", "Text"), ("number", "Number"), ("boolean", "Yes / no"), ("list", "List"), ("json", "JSON"))
BLANK_ROWS = 3
RECORDS_SHOWN = 100
MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json", "jsonl": "application/x-ndjson"}


@dataclass(frozen=True)
class Attribute:
    """One row of the structured editor: a key, how its value is written, and the value as text."""

    key: str
    kind: str
    text: str


# ---------------------------------------------------------------------- catalogue


@pages.get("/projects/{project_id}/catalogue")
def catalogue_page(request: Request, project_id: str) -> Response:
    return _catalogue(request, project_id)


def _catalogue(request: Request, project_id: str, **extra: Any) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "catalogue")
    retention = svc.records.retention(project_id)
    rules = extra.pop("rules_text", None)
    if rules is None:
        rules = json.dumps(svc.knowledge.rules(project_id), indent=2, ensure_ascii=False)
    return render(
        request,
        "catalogue.html",
        **context,
        tags=svc.projects.list_tags(project_id),
        rules_text=rules,
        retention=retention,
        retention_value=describe(retention.project_days) if retention.project_days is not None else "default",
        server_retention=describe(retention.server_days),
        **{"report": None, "rules_error": None, **extra},
    )


@pages.post("/projects/{project_id}/catalogue/import")
async def catalogue_import(request: Request, project_id: str) -> Response:
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise InvalidInput("Choose a catalogue file (.csv, .json or .jsonl) to import.", code="BadRequestCatalogue")
    fmt = cat.format_of(upload.filename)
    data = await upload.read()
    key = shape.form_text(form, "key").strip() or "tag"
    images = shape.form_text(form, "images").strip() or None
    dry_run = bool(shape.form_text(form, "dry_run"))
    svc = shape.service(request)
    report = await run_in_threadpool(
        lambda: svc.catalogue.import_(project_id, data, fmt, key=key, images_column=images, dry_run=dry_run)
    )
    return _catalogue(request, project_id, report=report, imported=upload.filename)


@pages.get("/projects/{project_id}/catalogue/export")
def catalogue_export(request: Request, project_id: str, format: str = "csv") -> Response:  # noqa: A002
    name, data = shape.service(request).catalogue.export(project_id, format)
    media = MEDIA[cat.format_of(name)]
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@pages.post("/projects/{project_id}/rules")
async def save_rules(request: Request, project_id: str) -> Response:
    form = await request.form()
    text = shape.form_text(form, "rules")
    svc = shape.service(request)
    try:
        raw = info.loads(text.strip() or "[]", "rules")
        saved = await run_in_threadpool(svc.knowledge.set_rules, project_id, raw)
    except TagvisionError as exc:  # shown beside the text the user wrote, which stays in the box
        return _catalogue(request, project_id, rules_text=text, rules_error=exc.message)
    sessions.current(request).flash("ok", f"Saved {len(saved)} decision rule{'s' if len(saved) != 1 else ''}.")
    return RedirectResponse(f"/projects/{project_id}/catalogue#rules-heading", status_code=303)


@pages.post("/projects/{project_id}/retention")
async def save_retention(request: Request, project_id: str) -> Response:
    form = await request.form()
    choice = shape.form_text(form, "retention", "default")
    value = shape.form_text(form, "days").strip() if choice == "days" else choice
    view, purged = await run_in_threadpool(shape.service(request).records.set_retention, project_id, value)
    kept = describe(view.effective_days)
    said = f"{kept} days" if isinstance(kept, int) else {"never": "not stored", "forever": "kept forever"}[kept]
    sessions.current(request).flash(
        "ok", f"Stored predictions are now {said}." + (f" {purged} older ones were deleted." if purged else "")
    )
    return RedirectResponse(f"/projects/{project_id}/catalogue#retention-heading", status_code=303)


# ---------------------------------------------------------------------- a tag's page


@pages.get("/projects/{project_id}/tags/{tag_id}")
def tag_page(request: Request, project_id: str, tag_id: str) -> Response:
    return _tag(request, project_id, tag_id)


def _tag(request: Request, project_id: str, tag_id: str, **extra: Any) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "catalogue")
    tag = svc.knowledge.get(project_id, tag_id)
    rows = extra.pop("rows", None) or [attribute(k, v) for k, v in tag.information.items()]
    json_text = extra.pop("json_text", None) or json.dumps(tag.information, indent=2, ensure_ascii=False)
    context["title"] = f"{tag.name} · {context['project'].name}"
    return render(
        request,
        "tag.html",
        **context,
        tag=tag,
        rows=rows + [Attribute("", "text", "")] * BLANK_ROWS,
        kinds=KINDS,
        json_text=json_text,
        **{"editor_error": None, "json_error": None, **extra},
    )


@pages.post("/projects/{project_id}/tags/{tag_id}/information")
async def save_attributes(request: Request, project_id: str, tag_id: str) -> Response:
    form = await request.form()
    rows = editor_rows(form)
    svc = shape.service(request)
    try:
        data = parse_rows(rows)
        view = await run_in_threadpool(lambda: svc.knowledge.set(project_id, tag_id, data))
    except TagvisionError as exc:
        return _tag(request, project_id, tag_id, rows=[r for r in rows if r.key or r.text], editor_error=exc.message)
    sessions.current(request).flash("ok", f"Saved the information of {view.name}.")
    return RedirectResponse(f"/projects/{project_id}/tags/{view.id}", status_code=303)


@pages.post("/projects/{project_id}/tags/{tag_id}/information/json")
async def save_json(request: Request, project_id: str, tag_id: str) -> Response:
    form = await request.form()
    text = shape.form_text(form, "information")
    svc = shape.service(request)
    try:
        data = info.loads(text.strip() or "{}", "information")
        view = await run_in_threadpool(lambda: svc.knowledge.set(project_id, tag_id, data))
    except TagvisionError as exc:
        return _tag(request, project_id, tag_id, json_text=text, json_error=exc.message)
    sessions.current(request).flash("ok", f"Saved the information of {view.name}.")
    return RedirectResponse(f"/projects/{project_id}/tags/{view.id}", status_code=303)


def attribute(key: str, value: Any) -> Attribute:
    """How the editor shows a value: the simplest kind that reads back as the same value."""
    if isinstance(value, bool):
        return Attribute(key, "boolean", "true" if value else "false")
    if isinstance(value, int | float):
        return Attribute(key, "number", json.dumps(value))
    if isinstance(value, str):
        return Attribute(key, "text", value)
    if isinstance(value, list) and value and all(_plain_item(v) for v in value):
        return Attribute(key, "list", ", ".join(v if isinstance(v, str) else json.dumps(v) for v in value))
    return Attribute(key, "json", json.dumps(value, ensure_ascii=False))


def _plain_item(value: Any) -> bool:
    """A list item the list kind writes as is: text without commas that does not read as another type."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return True
    return isinstance(value, str) and "," not in value and cat.cell(value) == value


def editor_rows(form: FormData) -> list[Attribute]:
    keys, kinds, texts = form.getlist("key"), form.getlist("kind"), form.getlist("value")
    return [Attribute(str(k).strip(), str(kind), str(t)) for k, kind, t in zip(keys, kinds, texts, strict=False)]


def parse_rows(rows: list[Attribute]) -> dict[str, Any]:
    """The editor's rows as an information object; an error names the row's key."""
    out: dict[str, Any] = {}
    for n, row in enumerate(rows, start=1):
        if not row.key and not row.text.strip():
            continue
        if not row.key:
            raise InvalidInput(f"Row {n} has a value but no name.", code="BadRequestTagInformation")
        if row.key in out:
            raise InvalidInput(f"The attribute {row.key!r} appears twice.", code="BadRequestTagInformation")
        out[row.key] = _value(row)
    return out


def _value(row: Attribute) -> Any:
    text = row.text.strip()
    if row.kind == "text":
        return row.text
    if row.kind == "number":
        if not cat.NUMBER.fullmatch(text):
            raise InvalidInput(
                f"{row.key}: {text!r} is not a number (write 12 or 12.5).", code="BadRequestTagInformation"
            )
        return json.loads(text)
    if row.kind == "boolean":
        if text.lower() not in ("true", "false", "yes", "no"):
            raise InvalidInput(f"{row.key}: write true or false, not {text!r}.", code="BadRequestTagInformation")
        return text.lower() in ("true", "yes")
    if row.kind == "list":
        items = [cat.infer(part, row.key) for part in text.split(",") if part.strip()]
        return [i for i in items if i is not cat.ABSENT]
    if row.kind == "json":
        return info.loads(text, row.key)
    raise InvalidInput(f"{row.key}: unknown kind {row.kind!r}.", code="BadRequestTagInformation")


# ---------------------------------------------------------------------- records


@pages.get("/projects/{project_id}/records")
def records_page(request: Request, project_id: str, key: str = "", value: str = "") -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "records")
    query = _records_query(key, value)
    found = []
    for view in svc.records.search(project_id, query):
        found.append(view)
        if len(found) > RECORDS_SHOWN:
            break
    filters = urlencode({"key": key, "value": value}) if key else ""
    records = [
        (v, shape.link(request, "prediction-thumbnail", v.sha256), shape.link(request, "prediction", v.sha256))
        for v in found[:RECORDS_SHOWN]
    ]
    return render(
        request,
        "records.html",
        **context,
        records=records,
        more=len(found) > RECORDS_SHOWN,
        key=key,
        value=value,
        filters=filters,
    )


@pages.get("/projects/{project_id}/records/export")
def records_export(request: Request, project_id: str, format: str = "csv", key: str = "", value: str = "") -> Response:  # noqa: A002
    svc = shape.service(request)
    query = _records_query(key, value)
    svc.prediction.query(project_id, query)  # an unknown project: the error page before the download starts
    base = str(request.base_url)
    rows = svc.records.export(project_id, query, format, link=lambda sha: svc.files.url(base, "prediction", sha))
    return StreamingResponse(
        rows,
        media_type=MEDIA.get(format, "text/plain"),
        headers={"Content-Disposition": f'attachment; filename="predictions.{format}"'},
    )


def _records_query(key: str, value: str) -> PredictionQuery:
    metadata = metadata_from_pairs([f"{key}={value}"]) if key.strip() else {}
    return PredictionQuery(order_by="Newest", metadata=tuple(metadata.items()))
