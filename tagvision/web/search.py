"""Search images for tags: ask a provider for photos of each tag, review the candidates, add the chosen ones.

The page starts an acquisition in review mode (``svc.jobs.acquire(..., review=True)``); it runs in
the background while the page polls :func:`state` for the progress per tag and the candidates that
arrived since the last poll (each rendered by the ``candidate`` macro, so the server and the script
show the same cell). Adding commits the ticked candidates (``svc.acquisitions.commit``); the
unticked ones are rejected and never offered again. Candidates that do not look like their tag
arrive unticked, marked doubtful; what could not be used is listed under each tag with its reason.
When the page stopped at its size before the tags had what was asked, adding starts the next page
(``svc.jobs.more``), ranked again with the answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, RedirectResponse

from tagvision.errors import InvalidInput, TagvisionError
from tagvision.service import Service
from tagvision.service.acquisitions import MAX_PER_TAG, PAGE_SIZE
from tagvision.service.views import AcquisitionView, TagProgress
from tagvision.sources import reasons
from tagvision.web import session as sessions
from tagvision.web import shape
from tagvision.web.routing import JsonRoute, PageRoute
from tagvision.web.templates import env, plural, render

pages = APIRouter(route_class=PageRoute)
data = APIRouter(route_class=JsonRoute)
routers = (pages, data)
PROVIDERS = (  # (name, label); "library" is offered only when the operator lists library folders
    ("openverse", "Openverse (openly licensed photos, no key needed)"),
    ("wikimedia", "Wikimedia Commons (no key needed)"),
    ("pexels", "Pexels (needs TAGVISION_PEXELS_KEY)"),
    ("unsplash", "Unsplash (needs TAGVISION_UNSPLASH_KEY)"),
    ("pixabay", "Pixabay (needs TAGVISION_PIXABAY_KEY)"),
    ("bing", "Bing Image Search (needs TAGVISION_BING_KEY)"),
)
LIBRARY = ("library", "Library (a folder on the server)")
DEFAULT_PER_TAG = 20
MIN_SIDE = None  # as uploads: small images are kept (scaled up by the backbone), with a warning
REVIEWABLE = ("Pending", "Doubtful")
RECENT = 5
LIBRARY_HINT = (
    "In the portal, choose “Library (a folder on the server)” as the provider and name a folder "
    "under the server's library folders."
)


def providers(svc: Service) -> list[tuple[str, str]]:
    return [*PROVIDERS, LIBRARY] if svc.acquisitions.library_roots else list(PROVIDERS)


# ---------------------------------------------------------------------- what the page shows


@dataclass(frozen=True)
class Candidate:
    """A downloaded candidate waiting for review, as its cell shows it."""

    id: str
    tag: str
    thumbnail: str
    title: str
    licence: str
    licence_url: str
    creator: str
    creator_url: str
    landing_page: str
    attribution: str
    provider: str
    doubtful: bool = False  # set aside by look: shown unticked
    note: str = ""  # why it is doubtful, or a warning (smaller than the model's input)
    look: str = ""  # "looks 83 % like hat"


def web_url(value: Any) -> str:
    """An http(s) link from a provider, or "" (never a javascript: or file: link in the page)."""
    text = str(value or "")
    return text if text.lower().startswith(("https://", "http://")) else ""


def candidate(request: Request, item: dict[str, Any], tag_names: dict[str, str]) -> Candidate:
    source, score = item.get("source") or {}, item.get("score")
    return Candidate(
        id=item["id"],
        tag=tag_names.get(item["tagId"], ""),
        thumbnail=shape.link(request, "thumbnail", item["sha256"]) if item.get("sha256") else "",
        title=str(source.get("title") or shape.image_name(source)),
        licence=str(source.get("licence") or ""),
        licence_url=web_url(source.get("licenceUrl")),
        creator=str(source.get("creator") or ""),
        creator_url=web_url(source.get("creatorUrl")),
        landing_page=web_url(source.get("landingPage")),
        attribution=str(source.get("attribution") or ""),
        provider=str(source.get("provider") or ""),
        doubtful=item["status"] == "Doubtful",
        note=str(item.get("message") or "") if item["status"] == "Doubtful" else warning_text(item),
        look=f"looks {score:.0%} like {tag_names.get(item['tagId'], '')}" if score is not None else "",
    )


def warning_text(item: dict[str, Any]) -> str:
    return str(((item.get("detail") or {}).get("warning") or {}).get("message") or "")


def reviewable(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates a user can tick: pending ones best-looking first, then the doubtful ones."""
    shown = [i for i in items if i["status"] in REVIEWABLE and i.get("sha256")]
    return sorted(shown, key=lambda i: (i["status"] == "Doubtful", -(i.get("score") or 0.0)))


def not_used(items: list[dict[str, Any]], tag_id: str) -> list[dict[str, str]]:
    """What could not be used for a tag, each with its reason: title, the reason's phrase, its sentence."""
    return [
        {
            "title": str(i["source"].get("title") or shape.image_name(i["source"])),
            "reason": reasons.phrase(i.get("reason")),
            "message": str(i.get("message") or ""),
        }
        for i in items
        if i["tagId"] == tag_id and i["status"] in ("Refused", "Duplicate", "Rejected")
    ]


def candidate_html(cell: Candidate) -> str:
    macro = env.get_template("search_candidate.html").module.candidate  # type: ignore[attr-defined]
    return str(macro(cell))


def tag_progress(view: AcquisitionView) -> list[dict[str, Any]]:
    """Per tag: the counts, a progress bar's value and maximum, and a sentence."""
    tags = view.tags
    current = next((t.tag_id for t in tags if not t.done), None)
    return [
        {
            "tagId": t.tag_id,
            "tag": t.tag,
            "wanted": t.wanted,
            "added": t.added,
            "done": t.done,
            "value": min(t.added, t.wanted) if t.wanted else 1,
            "max": t.wanted or 1,
            "text": tag_sentence(t, view.status, t.tag_id == current),
        }
        for t in tags
    ]


def tag_sentence(t: TagProgress, status: str, current: bool) -> str:
    name, wanted, added = t.tag, t.wanted, t.added
    extras = []
    if t.duplicates:
        extras.append(f"{plural(t.duplicates, 'duplicate')} of a picture already in the project or this search")
    if t.refused:
        extras.append(f"{t.refused} could not be used: {reasons.counted(t.reasons) or 'see below'}")
    if t.doubtful:
        extras.append(f"{t.doubtful} set aside as doubtful, unticked")
    tail = f" ({'; '.join(extras)})" if extras else ""
    if wanted == 0 and t.had_before:
        return (
            f"{name}: already has {plural(t.had_before, 'image')} from earlier searches, as many as "
            "asked for; nothing more to find."
        )
    if t.done:
        if added >= wanted:
            return f"{name}: done, {plural(added, 'candidate')} found{tail}."
        if t.page_limited and added >= t.goal:
            return f"{name}: a page of {plural(added, 'candidate')}{tail}; adding them shows the next page."
        return f"{name}: done, but only {added} of {wanted} usable images found{tail}."
    if status == "Running":
        if not current:
            return f"{name}: waiting for the tags before it."
        return f"{name}: searching… {added} of {wanted} candidates{tail}."
    if status == "Cancelled":
        return f"{name}: stopped at {added} of {wanted} candidates{tail}."
    if status == "Failed":
        return f"{name}: the search failed before finishing this tag ({added} of {wanted} candidates){tail}."
    return f"{name}: {added} of {wanted} candidates{tail}."


def status_sentence(view: AcquisitionView, library: bool) -> str:
    """What the search is doing or did; ``library``: the server offers the library provider."""
    counts = view.item_counts
    pending, added, rejected = counts.get("Pending", 0), counts.get("Added", 0), counts.get("Rejected", 0)
    provider = ", ".join(view.request.get("providers", []))
    tags = ", ".join(t["name"] for t in view.request.get("tags", []))
    if view.status == "Running":
        return f"Searching {provider} for {tags}: {plural(pending, 'candidate')} so far."
    if view.status == "Failed":
        message = view.error or "The server log has the reason."
        hint = f" {LIBRARY_HINT}" if view.provider_unreachable and library else ""
        return f"The search failed: {message}{hint}"
    if added or rejected:
        if pending:
            return f"Reviewed: {plural(added, 'image')} added, {rejected} discarded; {pending} still waiting."
        return f"Reviewed: {plural(added, 'image')} added to the training images, {rejected} discarded."
    stopped = "Search stopped" if view.status == "Cancelled" else "Search finished"
    doubtful = counts.get("Doubtful", 0)
    if doubtful:
        stopped += f" ({doubtful} set aside as doubtful: they do not look like their tag; tick those to keep)"
    if not pending:
        return f"{stopped} without usable images. Try other tag names, more images per tag, or another provider."
    return f"{stopped}: {plural(pending, 'candidate')}. Untick the ones that do not fit their tag, then add the rest."


def state_json(request: Request, view: AcquisitionView, after: int = 0) -> dict[str, Any]:
    """Status, progress per tag, and the pending candidates among the items from index ``after`` on."""
    names = {t["id"]: t["name"] for t in view.request.get("tags", [])}
    fresh = reviewable(view.items[after:])
    return {
        "status": view.status,
        "running": view.status == "Running",
        "message": status_sentence(view, bool(shape.service(request).acquisitions.library_roots)),
        "tags": tag_progress(view),
        "seen": len(view.items),
        "pending": view.item_counts.get("Pending", 0),
        "reviewable": sum(view.item_counts.get(s, 0) for s in REVIEWABLE),
        "candidates": [
            {"id": i["id"], "tagId": i["tagId"], "html": candidate_html(candidate(request, i, names))} for i in fresh
        ],
    }


def by_tag(request: Request, view: AcquisitionView) -> list[dict[str, Any]]:
    """The tags with their progress and their pending candidates, for the server-rendered page."""
    names = {t["id"]: t["name"] for t in view.request.get("tags", [])}
    shown = reviewable(view.items)
    return [
        {
            **row,
            "candidates": [candidate(request, i, names) for i in shown if i["tagId"] == row["tagId"]],
            "not_used": not_used(view.items, row["tagId"]),
        }
        for row in tag_progress(view)
    ]


# ---------------------------------------------------------------------- routes


def _only_root(svc: Service) -> str | None:
    """The library folder a blank field means: the server's only library root, when it has one."""
    roots = svc.acquisitions.library_roots
    return str(roots[0]) if len(roots) == 1 else None


@pages.get("/projects/{project_id}/search")
def search_page(
    request: Request,
    project_id: str,
    acquisition: str = "",
    tags: str = "",
    provider: str = "",
    per_tag: str = "",
    library: str = "",
) -> Response:
    svc = shape.service(request)
    context = shape.project_page(svc, project_id, "search")
    # The acquisition asked for, else the newest one while it runs or has candidates waiting.
    if acquisition:
        view = svc.acquisitions.get(project_id, acquisition, with_items=True)
    else:
        view = svc.acquisitions.reviewing(project_id)
    recent = [v for v in reversed(svc.acquisitions.list(project_id)) if not view or v.id != view.id][:RECENT]
    state = state_json(request, view) if view else None
    return render(
        request,
        "search.html",
        **context,
        acquisition=view,
        state=state,
        groups=by_tag(request, view) if view else [],
        recent=recent,
        providers=providers(svc),
        library_roots=[str(root) for root in svc.acquisitions.library_roots],
        max_per_tag=MAX_PER_TAG,
        page_size=PAGE_SIZE,
        form={  # the search shown above, as it was typed: after a failure, searching again is one click
            "tags": tags or (", ".join(t["name"] for t in view.request.get("tags", [])) if view else ""),
            "provider": provider or (view.request.get("providers", ["openverse"])[0] if view else "openverse"),
            "library": library,
            "per_tag": int(per_tag) if per_tag.isdigit() else DEFAULT_PER_TAG,
        },
        tags=svc.projects.list_tags(project_id),
    )


@pages.post("/projects/{project_id}/search")
async def start_search(request: Request, project_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    text, provider = shape.form_text(form, "tags"), shape.form_text(form, "provider", "openverse")
    per_tag_text, library = shape.form_text(form, "per_tag", str(DEFAULT_PER_TAG)), shape.form_text(form, "library")
    back = f"/projects/{project_id}/search?" + urlencode(
        {
            "tags": text,
            "provider": provider,
            "per_tag": per_tag_text if per_tag_text.isdigit() else DEFAULT_PER_TAG,
            "library": library,
        }
    )
    try:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise InvalidInput("Type at least one tag name; separate several with commas.", code="BadRequestTagName")
        if provider not in {name for name, _ in providers(svc)}:
            raise InvalidInput("Choose one of the providers in the list.", code="BadRequestInvalid")
        try:
            per_tag = int(per_tag_text)
        except ValueError:
            raise InvalidInput(
                f"Images per tag is a whole number from 1 to {MAX_PER_TAG}.", code="BadRequestInvalid"
            ) from None
        view = await run_in_threadpool(
            svc.jobs.acquire,
            project_id,
            names,
            per_tag=per_tag,
            providers=(provider,),
            library=(library.strip() or _only_root(svc)) if provider == "library" else None,
            review=True,
            min_side=MIN_SIDE,
        )
    except TagvisionError as exc:
        sessions.current(request).flash("error", exc.message)
        return RedirectResponse(back, status_code=303)
    return RedirectResponse(f"/projects/{project_id}/search?acquisition={view.id}", status_code=303)


@data.get("/projects/{project_id}/acquisitions/{acquisition_id}/state")
def state(request: Request, project_id: str, acquisition_id: str, after: int = 0) -> Response:
    view = shape.service(request).acquisitions.get(project_id, acquisition_id, with_items=True)
    return JSONResponse(state_json(request, view, max(0, after)))


@pages.post("/projects/{project_id}/search/{acquisition_id}/cancel")
def cancel(request: Request, project_id: str, acquisition_id: str) -> Response:
    view = shape.service(request).acquisitions.cancel(project_id, acquisition_id)
    sessions.current(request).flash(
        "ok",
        "Search stopped. The candidates found so far are below."
        if view.status == "Cancelled"
        else "The search had already finished.",
    )
    return RedirectResponse(f"/projects/{project_id}/search?acquisition={acquisition_id}", status_code=303)


@pages.post("/projects/{project_id}/search/{acquisition_id}/add")
async def add(request: Request, project_id: str, acquisition_id: str) -> Response:
    form = await request.form()
    svc = shape.service(request)
    here = f"/projects/{project_id}/search?acquisition={acquisition_id}"
    view = svc.acquisitions.get(project_id, acquisition_id)
    if view.status == "Running":
        raise InvalidInput(
            "The search is still running: wait for it to finish, or stop it, then add the candidates.",
            code="BadRequest",
        )
    discard = shape.form_text(form, "action") == "discard"
    chosen = [] if discard else shape.form_values(form, "item")
    if not chosen and not discard:
        sessions.current(request).flash("error", "Tick at least one candidate to add, or discard them all.")
        return RedirectResponse(here, status_code=303)
    summary = await run_in_threadpool(svc.acquisitions.commit, project_id, acquisition_id, chosen)
    after = svc.acquisitions.get(project_id, acquisition_id)
    if not discard and any(t.page_limited and t.added < t.wanted for t in after.tags):
        await run_in_threadpool(svc.jobs.more, project_id, acquisition_id)
        sessions.current(request).flash(
            "ok",
            f"{plural(summary.count('OK'), 'image')} added. Here is the next page, ranked again with your choices.",
        )
        return RedirectResponse(here, status_code=303)
    if discard:
        sessions.current(request).flash(
            "ok", "The candidates were discarded; later searches will not offer them again."
        )
        return RedirectResponse(f"/projects/{project_id}/search", status_code=303)
    added, duplicates = summary.count("OK"), summary.count("OKDuplicate")
    failed = len(summary.results) - added - duplicates
    message = f"{plural(added, 'image')} added to the training images."
    if duplicates:
        message += f" {plural(duplicates, 'image')} were already in the project."
    if failed:
        message += f" {plural(failed, 'image')} could not be added."
    sessions.current(request).flash("ok" if added else "error", message)
    return RedirectResponse(f"/projects/{project_id}/images", status_code=303)
