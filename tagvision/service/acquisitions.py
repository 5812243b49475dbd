"""Use cases for gathering training images for tag names from providers or a local library.

An acquisition runs in the background (``Jobs.acquire``) and reports progress per tag; the work
of one run is :mod:`tagvision.service.gathering`. Candidates the project already has or that an
earlier run settled are skipped, so an interrupted acquisition, run again, fetches only what is
missing; but a refusal a setting caused (too small for ``minSide``) is looked at again when the
setting changes, and ``retryRefused`` looks at every earlier refusal again. With ``review``,
candidates wait (``Pending``) until the user picks the ones to add, a page (``pageSize`` per tag)
at a time: :meth:`Acquisitions.more` gathers the next page with the look refitted on the answers
(kept images are the tag's, rejected ones negatives).
"""

from __future__ import annotations

import builtins
import functools
import logging
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select

from tagvision import images, sources
from tagvision.config import LIBRARY_ROOTS_ENV
from tagvision.errors import InvalidInput, NotFound, TagvisionError
from tagvision.service.context import Context, Progress, get_project, no_progress
from tagvision.service.gathering import Gathering, Run
from tagvision.service.images import Images, NewImage
from tagvision.service.looks import Looks
from tagvision.service.projects import Projects, clean_name
from tagvision.service.training import Training
from tagvision.service.views import AcquisitionView, CandidateView, ImageCreateSummary
from tagvision.sources import reasons
from tagvision.sources.download import Downloader
from tagvision.sources.look import Look
from tagvision.store.models import Acquisition, AcquisitionItem, Image, ImageTag, Tag, utcnow

log = logging.getLogger("tagvision.acquisitions")

MAX_PER_TAG = 1000
MAX_TAGS = 50
PAGE_SIZE = 20  # candidates per tag on one review page, unless the request says otherwise
# Candidates in these states are never fetched again by a later run. "Spare": downloaded after the
# target was met (downloads run in parallel); "Doubtful": set aside by look. Both are judged again
# and used first by a later run.
SETTLED = ("Added", "Duplicate", "Refused", "Rejected", "Pending", "Spare", "Doubtful")
TAKEABLE = ("Pending", "Doubtful", "Rejected")  # what a commit can add (a rejection is undone so)
SET_ASIDE = ("Refused", "Duplicate", "Rejected", "Doubtful")  # what `image list --refused` shows


class Acquisitions:
    def __init__(self, ctx: Context, training: Training) -> None:
        self.ctx = ctx
        self.training = training
        self.images = Images(ctx)
        self.looks = Looks(ctx, training)
        self.gathering = Gathering(ctx, self.looks)
        self.projects = Projects(ctx)
        self._cancel: dict[str, threading.Event] = {}
        self._stopping: set[str] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ requests

    def start(
        self,
        ref: str,
        tags: list[str],
        *,
        per_tag: int = 50,
        providers: tuple[str, ...] = ("openverse",),
        library: str | None = None,
        review: bool = False,
        min_side: int | None = None,
        page_size: int | None = None,
        retry_refused: bool = False,
        library_anywhere: bool = False,
    ) -> AcquisitionView:
        """Record an acquisition (status Running); tags that do not exist yet are created.

        Each tag is filled until it has ``per_tag`` acquired images (those from earlier
        acquisitions count), so running the same request again adds only what is missing.
        ``min_side``: refuse images whose shorter side is under it (None: none, as uploads).
        ``page_size``: in review mode, the candidates per tag on one page (default 20).

        ``library_anywhere`` lets a local user (the CLI) name any folder; over the API the
        folder must lie under one of the operator's ``TAGVISION_LIBRARY_ROOTS``.
        """
        names, chosen = _checked(tags, per_tag, providers, min_side, page_size)
        page = (page_size or PAGE_SIZE) if review else None
        folder = self._library_folder(library, library_anywhere) if "library" in chosen else None
        for name in chosen:  # unknown or unconfigured providers fail now, not in the background
            if name != "library":
                _close(sources.make(name, self.ctx.settings.providers))
        existing = {t.name.casefold(): t for t in self.projects.list_tags(ref)}
        missing = [n for n in names if n.casefold() not in existing]
        if missing:
            self.projects.create_tags(ref, missing)
            existing = {t.name.casefold(): t for t in self.projects.list_tags(ref)}
        tag_list = [{"id": existing[n.casefold()].id, "name": existing[n.casefold()].name} for n in names]
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            had = _acquired_counts(session, project.id)
            row = Acquisition(
                project_id=project.id,
                review=review,
                request={
                    "tags": tag_list,
                    "perTag": per_tag,
                    "providers": list(chosen),
                    "library": str(folder) if folder else None,
                    "minSide": min_side or None,
                    "pageSize": page,
                    "retryRefused": retry_refused,
                },
                progress={t["id"]: _empty_progress(t, per_tag, had.get(t["id"], 0), page) for t in tag_list},
            )
            session.add(row)
            session.flush()
            return _view(row)

    def get(self, ref: str, acquisition_id: str, *, with_items: bool = False) -> AcquisitionView:
        with self.ctx.db.session() as session:
            row = _get(session, ref, acquisition_id)
            items = []
            if with_items:
                items = [
                    _item_json(i)
                    for i in session.scalars(
                        select(AcquisitionItem)
                        .where(AcquisitionItem.acquisition_id == row.id)
                        .order_by(AcquisitionItem.created)
                    )
                ]
            return _view(row, items)

    def get_any(self, acquisition_id: str) -> AcquisitionView:
        with self.ctx.db.session() as session:
            row = session.get(Acquisition, acquisition_id)
            if row is None:
                raise NotFound(f"No acquisition {acquisition_id!r}.", code="NotFound")
            return _view(row)

    def list(self, ref: str) -> list[AcquisitionView]:
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            return [
                _view(r)
                for r in session.scalars(
                    select(Acquisition).where(Acquisition.project_id == project.id).order_by(Acquisition.created)
                )
            ]

    def reviewing(self, ref: str) -> AcquisitionView | None:
        """The project's newest acquisition (with its items) if it is in review mode and still runs or has
        candidates waiting for the user; else None."""
        recent = self.list(ref)
        if not recent or not recent[-1].review:
            return None
        newest = self.get(ref, recent[-1].id, with_items=True)
        if newest.status == "Running" or newest.item_counts.get("Pending", 0):
            return newest
        return None

    def cancel(self, ref: str, acquisition_id: str) -> AcquisitionView:
        with self.ctx.db.session() as session:
            row = _get(session, ref, acquisition_id)
            if row.status == "Running":
                row.status, row.last_modified = "Cancelled", utcnow()
        with self._lock:
            event = self._cancel.get(acquisition_id)
        if event is not None:
            event.set()
        return self.get(ref, acquisition_id)

    def commit(self, ref: str, acquisition_id: str, item_ids: builtins.list[str]) -> ImageCreateSummary:
        """Add the chosen candidates as training images: pending ones (the other pending ones are rejected, and
        count as negatives for the look from then on), doubtful ones, or rejected ones (undoing the rejection)."""
        with self.ctx.db.session() as session:
            row = _get(session, ref, acquisition_id)
            takeable = {
                i.id: i
                for i in session.scalars(
                    select(AcquisitionItem).where(
                        AcquisitionItem.acquisition_id == row.id,
                        AcquisitionItem.status.in_(TAKEABLE),
                        AcquisitionItem.sha256.is_not(None),
                    )
                )
            }
            unknown = [i for i in item_ids if i not in takeable]
            if unknown:
                raise NotFound(f"No pending candidate {unknown[0]!r} in this acquisition.", code="NotFound")
            wanted = set(item_ids)
            chosen = [
                (i.id, i.sha256, i.tag_id, i.source)
                for i in takeable.values()
                if i.id in wanted and i.sha256 is not None  # the query took only stored ones
            ]
        items = [
            NewImage(source.get("url", item_id), functools.partial(self.ctx.blobs.get, sha), (tag_id,), source)
            for item_id, sha, tag_id, source in chosen
        ]
        summary = self.images.add(ref, items)
        with self.ctx.db.session() as session:
            for (item_id, *_), result in zip(chosen, summary.results, strict=True):
                item = session.get(AcquisitionItem, item_id)
                if item is None:  # the acquisition was deleted while its images were being added
                    continue
                item.image_id = result.image_id
                if result.status == "OK":
                    item.status, item.reason, item.message = "Added", None, None
                else:
                    item.status, item.reason = "Duplicate", reasons.DUPLICATE
                    item.message = f"The same file as image {result.image_id}, already in the project."
            for item in session.scalars(
                select(AcquisitionItem).where(
                    AcquisitionItem.acquisition_id == acquisition_id, AcquisitionItem.status == "Pending"
                )
            ):
                item.status, item.reason, item.message = "Rejected", reasons.REJECTED, "You did not keep it."
            acquisition = session.get(Acquisition, acquisition_id)
            if acquisition is not None:
                _recount(session, acquisition)
        return summary

    def more(self, ref: str, acquisition_id: str) -> AcquisitionView:
        """Review mode: gather the next page of candidates (status Running again; ``run`` does the work), the
        look refitted on the answers so far. Unchanged when every tag has what it wants."""
        with self.ctx.db.session() as session:
            row = _get(session, ref, acquisition_id)
            if not row.review:
                raise InvalidInput("Only an acquisition in review mode has pages.", code="BadRequest")
            if row.status == "Running":
                raise InvalidInput("The acquisition is still gathering this page; wait for it.", code="BadRequest")
            if _count(session, row.id, "Pending"):
                raise InvalidInput("Review the candidates waiting first: commit the ones to keep.", code="BadRequest")
            _recount(session, row)
            page = int(row.request.get("pageSize") or PAGE_SIZE)
            progress, short = {}, False
            for tag_id, state in row.progress.items():
                state = dict(state)
                if state["added"] < state["wanted"]:
                    state["goal"], state["done"], short = min(state["wanted"], state["added"] + page), False, True
                progress[tag_id] = state
            if short:
                row.progress, row.status, row.error, row.error_code = progress, "Running", None, None
                row.last_modified = utcnow()
            return _view(row)

    def candidates(
        self, ref: str, acquisition_id: str, statuses: tuple[str, ...] | None = None
    ) -> builtins.list[CandidateView]:
        """The acquisition's candidates (those in ``statuses``), in the order they were found."""
        with self.ctx.db.session() as session:
            row = _get(session, ref, acquisition_id)
            names = {t["id"]: t["name"] for t in row.request.get("tags", [])}
            query = select(AcquisitionItem).where(AcquisitionItem.acquisition_id == row.id)
            if statuses is not None:
                query = query.where(AcquisitionItem.status.in_(statuses))
            items = session.scalars(query.order_by(AcquisitionItem.created))
            return [_candidate(i, names.get(i.tag_id, "")) for i in items]

    def set_aside(self, ref: str) -> builtins.list[CandidateView]:
        """The project's candidates that were not added (refused, duplicates, rejected, doubtful), newest first,
        once each: a candidate looked at again shows its latest outcome."""
        with self.ctx.db.session() as session:
            project = get_project(session, ref)
            names = {t.id: t.name for t in session.scalars(select(Tag).where(Tag.project_id == project.id))}
            rows = session.scalars(
                select(AcquisitionItem)
                .where(AcquisitionItem.project_id == project.id, AcquisitionItem.status.not_in(("Used", "Retried")))
                .order_by(AcquisitionItem.created.desc())
            )
            latest: dict[str, CandidateView] = {}
            for item in rows:
                latest.setdefault(item.key, _candidate(item, names.get(item.tag_id, "")))
        return [c for c in latest.values() if c.status in SET_ASIDE]

    def stop(self, acquisition_id: str) -> None:
        """Stop a running acquisition without recording it as cancelled (the process is shutting down)."""
        with self._lock:
            event = self._cancel.get(acquisition_id)
            self._stopping.add(acquisition_id)
        if event is not None:
            event.set()

    def interrupted(self) -> builtins.list[str]:
        with self.ctx.db.session() as session:
            return list(session.scalars(select(Acquisition.id).where(Acquisition.status == "Running")))

    @property
    def library_roots(self) -> tuple[Path, ...]:
        """The folders the operator lets API and portal users search as a library (none: no library there)."""
        return self.ctx.settings.library_roots

    def _library_folder(self, library: str | None, anywhere: bool) -> Path:
        if not library:
            raise InvalidInput("The library provider needs a folder.", code="BadRequestInvalid")
        folder = Path(library).expanduser().resolve()
        if anywhere:
            return folder
        roots = [root.expanduser().resolve() for root in self.library_roots]
        if not any(folder == root or root in folder.parents for root in roots):
            raise InvalidInput(
                f"The server reads libraries only under the folders its operator lists in "
                f"{LIBRARY_ROOTS_ENV}; {library!r} is not under one.",
                code="BadRequestInvalid",
            )
        return folder

    # ------------------------------------------------------------------ the work

    def run(self, acquisition_id: str, progress: Progress = no_progress) -> AcquisitionView:
        """Gather the images of a recorded acquisition; Completed, Cancelled or Failed with the reason."""
        stop = threading.Event()
        with self._lock:
            self._cancel[acquisition_id] = stop
            self._stopping.discard(acquisition_id)  # stopped here before, and now run again (taken back over)
        code = None
        try:
            self._run(acquisition_id, stop, progress)
            status, error = ("Cancelled" if stop.is_set() else "Completed"), None
        except TagvisionError as exc:
            status, error, code = "Failed", exc.message, exc.code
        except Exception as exc:  # recorded on the acquisition; the job runner logs it
            log.exception("acquisition %s failed", acquisition_id)
            status, error = "Failed", f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._cancel.pop(acquisition_id, None)
                shutting_down = acquisition_id in self._stopping
                self._stopping.discard(acquisition_id)
        if shutting_down:
            return self.get_any(acquisition_id)
        with self.ctx.db.session() as session:
            row = session.get(Acquisition, acquisition_id)
            if row is None:
                raise NotFound(f"No acquisition {acquisition_id!r}.", code="NotFound")
            if row.status == "Running":
                row.status, row.error, row.error_code, row.last_modified = status, error, code, utcnow()
            return _view(row)

    def _run(self, acquisition_id: str, stop: threading.Event, progress: Progress) -> None:
        with self.ctx.db.session() as session:
            row = session.get(Acquisition, acquisition_id)
            if row is None or row.status != "Running":
                return
            request, review, project_id = dict(row.request), row.review, row.project_id
            counts = {t: _filled(p) for t, p in row.progress.items()}
            min_side = int(request.get("minSide") or 0)
            _reconsider(session, project_id, acquisition_id, min_side, bool(request.get("retryRefused")))
            settled: set[str] = set(
                session.scalars(
                    select(AcquisitionItem.key).where(
                        AcquisitionItem.project_id == project_id, AcquisitionItem.status.in_(SETTLED)
                    )
                )
            )
            image_keys: Select[str | None] = select(Image.source["key"].as_string()).where(
                Image.project_id == project_id
            )
            settled |= {k for k in session.scalars(image_keys) if k}
            domain = get_project(session, project_id).domain
        look = self.looks.fit(project_id, progress)
        run = Run(acquisition_id, project_id, domain, review, look, self.ctx.spec(domain).image_size, stop=stop)
        run.seen = self.gathering.project_pictures(project_id)
        downloader = Downloader(min_side=min_side, allow_private=self.ctx.settings.allow_private_urls)
        providers = self._providers(request, look, domain)
        try:
            for tag in request["tags"]:
                if stop.is_set():
                    return
                state = counts[tag["id"]]
                self.gathering.tag(run, tag, state, providers, downloader, settled, progress)
                state["done"] = True
                self.gathering.save_progress(acquisition_id, tag["id"], state)
        finally:
            for provider in providers:
                _close(provider)

    def _providers(self, request: dict, look: Look | None, domain: str) -> builtins.list:
        made = []
        for name in request["providers"]:
            if name == "library":
                made.append(
                    sources.make(
                        "library",
                        self.ctx.settings.providers,
                        library=Path(request["library"]),
                        look=look,
                        embedder=self.ctx.embedder(domain),
                        cache_dir=self.ctx.settings.data_dir / "library-cache",
                    )
                )
            else:
                made.append(sources.make(name, self.ctx.settings.providers))
        return made


def _checked(
    tags: list[str], per_tag: int, providers: tuple[str, ...], min_side: int | None, page_size: int | None
) -> tuple[list[str], tuple[str, ...]]:
    """The request's tag names and providers, once each; bad values are refused with their code."""
    names = list(dict.fromkeys(clean_name(t, "tag") for t in tags))
    if not names or len(names) > MAX_TAGS:
        raise InvalidInput(f"Name 1 to {MAX_TAGS} tags.", code="BadRequestTagName")
    if not 1 <= per_tag <= MAX_PER_TAG:
        raise InvalidInput(f"Ask for 1 to {MAX_PER_TAG} images per tag.", code="BadRequestInvalid")
    if min_side is not None and not 0 <= min_side <= images.MAX_SIDE:
        raise InvalidInput("minSide is 0 (no minimum) to 10240 pixels.", code="BadRequestInvalid")
    if page_size is not None and not 1 <= page_size <= MAX_PER_TAG:
        raise InvalidInput(f"pageSize is 1 to {MAX_PER_TAG} candidates per tag.", code="BadRequestInvalid")
    chosen = tuple(dict.fromkeys(providers))
    if not chosen:
        raise InvalidInput("Choose at least one provider.", code="BadRequestInvalid")
    return names, chosen


def _reconsider(session, project_id: str, acquisition_id: str, min_side: int, retry_refused: bool) -> None:
    """Earlier refusals this run looks at again (marked Retried, so no longer settled): those a setting caused
    that the current setting allows (an image too small for an earlier minSide), and with ``retry_refused``
    every other refusal and duplicate of earlier acquisitions."""
    for item in session.scalars(
        select(AcquisitionItem).where(
            AcquisitionItem.project_id == project_id,
            AcquisitionItem.acquisition_id != acquisition_id,
            AcquisitionItem.status.in_(("Refused", "Duplicate")),
        )
    ):
        detail = item.detail or {}
        allowed = item.reason == reasons.TOO_SMALL and min(detail.get("width", 0), detail.get("height", 0)) >= min_side
        if allowed or retry_refused:
            item.status = "Retried"


def _empty_progress(tag: dict, per_tag: int, had: int, page: int | None = None) -> dict[str, Any]:
    """``per_tag`` is what a tag should end with: images acquired before count toward it. ``page``: review
    pages of that many candidates per tag."""
    wanted = max(0, per_tag - had)
    return _filled(
        {
            "tagId": tag["id"],
            "tag": tag["name"],
            "wanted": wanted,
            "hadBefore": had,
            "goal": min(wanted, page or wanted),
        }
    )


def _filled(state: dict[str, Any]) -> dict[str, Any]:
    """A tag's progress with every counter (progress stored before a counter existed lacks it)."""
    zeros = ("found", "skipped", "downloaded", "added", "duplicates", "refused", "doubtful", "small")
    out = {**dict.fromkeys(zeros, 0), "done": False, "reasons": {}, **state}
    out.setdefault("goal", out.get("wanted", 0))
    out["reasons"] = dict(out["reasons"])
    return out


def _count(session, acquisition_id: str, status: str, tag_id: str | None = None) -> int:
    query = select(func.count()).where(
        AcquisitionItem.acquisition_id == acquisition_id, AcquisitionItem.status == status
    )
    if tag_id is not None:
        query = query.where(AcquisitionItem.tag_id == tag_id)
    return int(session.scalar(query) or 0)


def _recount(session, row: Acquisition) -> None:
    """After a review: each tag's added (kept or still pending) and doubtful counts, from its items."""
    progress = {}
    for tag_id, state in row.progress.items():
        state = _filled(state)
        state["added"] = _count(session, row.id, "Added", tag_id) + _count(session, row.id, "Pending", tag_id)
        state["doubtful"] = _count(session, row.id, "Doubtful", tag_id)
        progress[tag_id] = state
    row.progress, row.last_modified = progress, utcnow()


def _acquired_counts(session, project_id: str) -> dict[str, int]:
    """Per tag id, how many of the project's images came from an acquisition."""
    rows = session.execute(
        select(ImageTag.tag_id, Image.source["key"].as_string())
        .join(Image, Image.id == ImageTag.image_id)
        .where(Image.project_id == project_id)
    ).all()
    counts: dict[str, int] = {}
    for tag_id, key in rows:
        if key:
            counts[tag_id] = counts.get(tag_id, 0) + 1
    return counts


def _close(provider) -> None:
    getattr(provider, "close", lambda: None)()


def _get(session, ref: str, acquisition_id: str) -> Acquisition:
    project = get_project(session, ref)
    row = session.get(Acquisition, acquisition_id)
    if row is None or row.project_id != project.id:
        raise NotFound(f"Project {project.name!r} has no acquisition {acquisition_id!r}.", code="NotFound")
    return row


def _candidate(item: AcquisitionItem, tag: str = "") -> CandidateView:
    return CandidateView(
        item.id,
        item.acquisition_id,
        item.tag_id,
        item.status,
        dict(item.source or {}),
        item.message,
        item.reason,
        dict(item.detail or {}),
        item.score,
        item.image_id,
        item.sha256,
        item.created,
        tag,
    )


def _item_json(item: AcquisitionItem) -> dict[str, Any]:
    return _candidate(item).to_json()


def _view(row: Acquisition, items: list[dict[str, Any]] | None = None) -> AcquisitionView:
    return AcquisitionView(
        row.id,
        row.project_id,
        row.status,
        row.review,
        dict(row.request),
        dict(row.progress),
        row.error,
        row.created,
        row.last_modified,
        items or [],
        row.error_code,
    )
