"""Use cases for gathering training images for tag names from providers or a local library.

An acquisition runs in the background (``Jobs.acquire``) and reports progress per tag. For
each tag it asks the providers for candidates, skips those the project already has or has
already refused (so an interrupted acquisition, run again, fetches only what is missing),
downloads the rest (:class:`~tagvision.sources.download.Downloader`), drops exact and
near-duplicates (perceptual hash) across tags and against the project's images, and adds the
good ones as tagged training images with their source, licence and attribution. With
``review``, downloaded candidates wait (``Pending``) until the user picks the ones to add.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from tagvision import images, sources
from tagvision.config import LIBRARY_ROOTS_ENV
from tagvision.errors import InvalidInput, NotFound, TagvisionError
from tagvision.service.context import Context, Progress, get_project, no_progress
from tagvision.service.images import Images, NewImage
from tagvision.service.projects import Projects, clean_name
from tagvision.service.training import Training
from tagvision.service.views import AcquisitionView, ImageCreateSummary
from tagvision.sources.base import Candidate
from tagvision.sources.download import Downloaded, Downloader
from tagvision.store import queries
from tagvision.store.models import Acquisition, AcquisitionItem, Image, ImageTag, utcnow

log = logging.getLogger("tagvision.acquisitions")
# Candidate fields -> their names in Candidate.source(), to rebuild a candidate from a stored item.
SOURCE_FIELDS = {
    "provider": "provider",
    "url": "url",
    "landing_page": "landingPage",
    "title": "title",
    "creator": "creator",
    "creator_url": "creatorUrl",
    "licence": "licence",
    "licence_url": "licenceUrl",
    "attribution": "attribution",
}

MAX_PER_TAG = 1000
MAX_TAGS = 50
NEAR_DUPLICATE_BITS = 6  # dHash distance at or under which two images count as the same picture
SEARCH_FACTOR = 3  # candidates asked for per image wanted: some links break, some are duplicates
# Candidates in these states are never fetched again by a later run. "Spare": downloaded after the
# target was met (downloads run in parallel); kept as a blob and used first by a later run.
SETTLED = ("Added", "Duplicate", "Refused", "Rejected", "Pending", "Spare")
SLACK = 2  # downloads in flight beyond what is still needed (some fail or turn out duplicates)


class Acquisitions:
    def __init__(self, ctx: Context, training: Training) -> None:
        self.ctx = ctx
        self.training = training
        self.images = Images(ctx)
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
        min_side: int = 224,
        library_anywhere: bool = False,
    ) -> AcquisitionView:
        """Record an acquisition (status Running); tags that do not exist yet are created.

        Each tag is filled until it has ``per_tag`` acquired images (those from earlier
        acquisitions count), so running the same request again adds only what is missing.

        ``library_anywhere`` lets a local user (the CLI) name any folder; over the API the
        folder must lie under one of the operator's ``TAGVISION_LIBRARY_ROOTS``.
        """
        names = list(dict.fromkeys(clean_name(t, "tag") for t in tags))
        if not names or len(names) > MAX_TAGS:
            raise InvalidInput(f"Name 1 to {MAX_TAGS} tags.", code="BadRequestTagName")
        if not 1 <= per_tag <= MAX_PER_TAG:
            raise InvalidInput(f"Ask for 1 to {MAX_PER_TAG} images per tag.", code="BadRequestInvalid")
        if not 32 <= min_side <= images.MAX_SIDE:
            raise InvalidInput("minSide is 32 to 10240 pixels.", code="BadRequestInvalid")
        chosen = tuple(dict.fromkeys(providers))
        if not chosen:
            raise InvalidInput("Choose at least one provider.", code="BadRequestInvalid")
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
                    "minSide": min_side,
                },
                progress={t["id"]: _empty_progress(t, per_tag, had.get(t["id"], 0)) for t in tag_list},
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

    def commit(self, ref: str, acquisition_id: str, item_ids: list[str]) -> ImageCreateSummary:
        """Review mode: add the chosen pending candidates as training images; the other pending ones are rejected."""
        with self.ctx.db.session() as session:
            row = _get(session, ref, acquisition_id)
            pending = {
                i.id: i
                for i in session.scalars(
                    select(AcquisitionItem).where(
                        AcquisitionItem.acquisition_id == row.id, AcquisitionItem.status == "Pending"
                    )
                )
            }
            unknown = [i for i in item_ids if i not in pending]
            if unknown:
                raise NotFound(f"No pending candidate {unknown[0]!r} in this acquisition.", code="NotFound")
            chosen = [(i.id, i.sha256, i.tag_id, i.source) for i in pending.values() if i.id in item_ids]
        items = [
            NewImage(source.get("url", item_id), lambda sha=sha: self.ctx.blobs.get(sha), (tag_id,), source)
            for item_id, sha, tag_id, source in chosen
        ]
        summary = self.images.add(ref, items)
        with self.ctx.db.session() as session:
            for (item_id, *_), result in zip(chosen, summary.results, strict=True):
                item = session.get(AcquisitionItem, item_id)
                item.status = "Added" if result.status == "OK" else "Duplicate"
                item.image_id = result.image_id
            for item in session.scalars(
                select(AcquisitionItem).where(
                    AcquisitionItem.acquisition_id == acquisition_id, AcquisitionItem.status == "Pending"
                )
            ):
                item.status = "Rejected"
        return summary

    def stop(self, acquisition_id: str) -> None:
        """Stop a running acquisition without recording it as cancelled (the process is shutting down)."""
        with self._lock:
            event = self._cancel.get(acquisition_id)
            self._stopping.add(acquisition_id)
        if event is not None:
            event.set()

    def interrupted(self) -> list[str]:
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
            counts = {t: dict(p) for t, p in row.progress.items()}
            settled = set(
                session.scalars(
                    select(AcquisitionItem.key).where(
                        AcquisitionItem.project_id == project_id, AcquisitionItem.status.in_(SETTLED)
                    )
                )
            )
            settled |= {
                k
                for k in session.scalars(select(Image.source["key"].as_string()).where(Image.project_id == project_id))
                if k
            }
            domain = get_project(session, project_id).domain
        hashes = self._project_hashes(project_id)
        downloader = Downloader(
            min_side=request.get("minSide", 224), allow_private=self.ctx.settings.allow_private_urls
        )
        providers = self._providers(request, project_id, domain)
        try:
            for tag in request["tags"]:
                if stop.is_set():
                    return
                state = counts[tag["id"]]
                self._use_spares(acquisition_id, project_id, tag, review, hashes, state)
                for provider in providers:
                    if state["added"] >= state["wanted"] or stop.is_set():
                        break
                    # _fresh stops at the target; downloads already in flight still finish (kept as Spare).
                    window = lambda state=state: state["wanted"] - state["added"] + SLACK  # noqa: E731
                    for done in downloader.download(self._fresh(provider, tag["name"], state, settled), stop, window):
                        self._settle(
                            acquisition_id,
                            project_id,
                            tag,
                            done,
                            review,
                            hashes,
                            provider,
                            state,
                            stopped=stop.is_set(),
                        )
                        progress(tag["name"], state["added"], state["wanted"])
                        self._save_progress(acquisition_id, tag["id"], state)
                state["done"] = True
                self._save_progress(acquisition_id, tag["id"], state)
        finally:
            for provider in providers:
                _close(provider)

    def _fresh(self, provider, query: str, state: dict, settled: set[str]) -> Iterator[Candidate]:
        """The provider's candidates not seen before, until enough images have been added."""
        limit = min(MAX_PER_TAG * SEARCH_FACTOR, state["wanted"] * SEARCH_FACTOR + len(settled))
        for candidate in provider.search(query, limit):
            if state["added"] >= state["wanted"]:
                return
            state["found"] += 1
            if candidate.key in settled:
                state["skipped"] += 1
                continue
            settled.add(candidate.key)
            yield candidate

    def _settle(
        self,
        acquisition_id: str,
        project_id: str,
        tag: dict,
        done: Downloaded,
        review: bool,
        hashes: list[int],
        provider,
        state: dict,
        stopped: bool = False,
    ) -> None:
        """Record one downloaded candidate: refused, duplicate, pending review, or added."""
        candidate = done.candidate
        item = AcquisitionItem(
            acquisition_id=acquisition_id,
            project_id=project_id,
            tag_id=tag["id"],
            key=candidate.key,
            source=candidate.source(),
            message=done.message or None,
        )
        if done.status != "OK":
            item.status = "Refused"
            state["refused"] += 1
        elif any(images.hamming(done.dhash, h) <= NEAR_DUPLICATE_BITS for h in hashes):
            # Checked before keeping a spare, so a picture and its copy always give one duplicate, whichever
            # download finishes first and whether or not the target was met by then.
            item.status, item.message = "Duplicate", "The same picture (or nearly) is already in the project."
            state["duplicates"] += 1
        elif state["added"] >= state["wanted"] or stopped:  # in flight when the target was met or the user stopped
            item.status, item.sha256 = "Spare", self.ctx.blobs.put(done.data)
            item.source = {**item.source, "dhash": f"{done.dhash:016x}"}
            hashes.append(done.dhash)
        else:
            state["downloaded"] += 1
            item.sha256 = self.ctx.blobs.put(done.data)
            if review:
                item.status = "Pending"
                state["added"] += 1  # counted toward the target; the user picks among them
            else:
                result = self.images.add(
                    project_id,
                    [
                        NewImage(
                            candidate.url,
                            lambda: done.data,
                            (tag["id"],),
                            {**candidate.source(), "dhash": f"{done.dhash:016x}"},
                        )
                    ],
                ).results[0]
                item.status = "Added" if result.status == "OK" else "Duplicate"
                item.image_id = result.image_id
                state["added" if result.status == "OK" else "duplicates"] += 1
                if result.status == "OK" and candidate.ping_url and hasattr(provider, "kept"):
                    provider.kept(candidate)  # the provider's terms ask to be told (Unsplash)
            hashes.append(done.dhash)
        with self.ctx.db.session() as session:
            session.add(item)

    def _use_spares(
        self, acquisition_id: str, project_id: str, tag: dict, review: bool, hashes: list[int], state: dict
    ) -> None:
        """Images an earlier run downloaded beyond its target: used before asking any provider again."""
        with self.ctx.db.session() as session:
            spares = list(
                session.scalars(
                    select(AcquisitionItem)
                    .where(
                        AcquisitionItem.project_id == project_id,
                        AcquisitionItem.tag_id == tag["id"],
                        AcquisitionItem.status == "Spare",
                    )
                    .order_by(AcquisitionItem.created)
                )
            )
            for spare in spares:
                session.expunge(spare)
        for spare in spares:
            if state["added"] >= state["wanted"]:
                return
            data = self.ctx.blobs.get(spare.sha256)
            candidate = Candidate(
                **{k: spare.source.get(v) for k, v in SOURCE_FIELDS.items()}, provider_id=spare.key.split(":", 1)[1]
            )
            done = Downloaded(
                candidate, "OK", data=data, facts=images.validate(data), dhash=int(spare.source["dhash"], 16)
            )
            with self.ctx.db.session() as session:
                session.get(AcquisitionItem, spare.id).status = "Used"
            self._settle(acquisition_id, project_id, tag, done, review, hashes, None, state)
            self._save_progress(acquisition_id, tag["id"], state)

    def _save_progress(self, acquisition_id: str, tag_id: str, state: dict) -> None:
        with self.ctx.db.session() as session:
            row = session.get(Acquisition, acquisition_id)
            if row is not None:
                row.progress = {**row.progress, tag_id: dict(state)}
                row.last_modified = utcnow()

    def _project_hashes(self, project_id: str) -> list[int]:
        """Perceptual hashes of the project's images (stored with acquired ones, computed for the rest)."""
        with self.ctx.db.session() as session:
            rows = session.execute(select(Image.sha256, Image.source).where(Image.project_id == project_id)).all()
        out = []
        for sha, source in rows:
            if source and source.get("dhash"):
                out.append(int(source["dhash"], 16))
                continue
            try:
                out.append(images.dhash(self.ctx.blobs.get(sha)))
            except TagvisionError:
                continue
        return out

    def _providers(self, request: dict, project_id: str, domain: str) -> list:
        made = []
        for name in request["providers"]:
            if name == "library":
                made.append(
                    sources.make(
                        "library",
                        self.ctx.settings.providers,
                        library=Path(request["library"]),
                        seeds=self._seeds(project_id, domain, request["tags"]),
                        embedder=self.ctx.embedder(domain),
                        cache_dir=self.ctx.settings.data_dir / "library-cache",
                    )
                )
            else:
                made.append(sources.make(name, self.ctx.settings.providers))
        return made

    def _seeds(self, project_id: str, domain: str, tags: list[dict]) -> dict[str, np.ndarray]:
        """Embeddings of each tag's images in the project: "more like these" for the library."""
        with self.ctx.db.session() as session:
            rows = session.execute(
                select(Image.sha256, ImageTag.tag_id)
                .join(ImageTag, ImageTag.image_id == Image.id)
                .where(Image.project_id == project_id)
            ).all()
        seeds = {}
        for tag in tags:
            hashes = [sha for sha, tag_id in rows if tag_id == tag["id"]]
            if not hashes:
                continue
            self.training.cache_embeddings(domain, hashes)
            with self.ctx.db.session() as session:
                plain, flipped = queries.load_embeddings(session, self.ctx.backbone_key(domain), hashes)
            seeds[tag["name"]] = (plain + flipped) / 2
        return seeds


def _empty_progress(tag: dict, per_tag: int, had: int) -> dict[str, Any]:
    """``per_tag`` is what a tag should end with: images acquired before count toward it."""
    return {
        "tagId": tag["id"],
        "tag": tag["name"],
        "wanted": max(0, per_tag - had),
        "hadBefore": had,
        "found": 0,
        "skipped": 0,
        "downloaded": 0,
        "added": 0,
        "duplicates": 0,
        "refused": 0,
        "done": False,
    }


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


def _item_json(item: AcquisitionItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "tagId": item.tag_id,
        "status": item.status,
        "source": item.source,
        "message": item.message,
        "imageId": item.image_id,
        "sha256": item.sha256,
    }


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
