"""One run of an acquisition: for each tag, candidates in, images (or review pages) out.

For each tag, in the order asked: candidates set aside earlier (spares downloaded beyond a target,
doubtful ones) are judged again first, best-looking first; then each provider is asked for
candidates it has not offered before, which are downloaded, checked and de-duplicated (exact and
near-duplicates, across tags and against the project), embedded and judged by the project's
:mod:`look <tagvision.sources.look>`: a candidate that does not look like its tag (once the tag has
enough images to judge) is set aside as ``Doubtful`` rather than added. Every candidate ends as an
item with its status and, where it was not added, a reason code and its facts
(:mod:`tagvision.sources.reasons`). A run stops at the tag's ``goal``: what it wants, or in review
mode the end of the page.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, select

from tagvision import images
from tagvision.errors import TagvisionError
from tagvision.service.context import Context, Progress
from tagvision.service.images import Images, NewImage
from tagvision.service.looks import Looks
from tagvision.sources import reasons
from tagvision.sources.base import Candidate
from tagvision.sources.download import Downloaded, Downloader
from tagvision.sources.look import Look, Verdict
from tagvision.store.models import Acquisition, AcquisitionItem, Image, utcnow

NEAR_DUPLICATE_BITS = 6  # dHash distance at or under which two images count as the same picture
SEARCH_FACTOR = 3  # candidates asked for per image wanted: some links break, some are duplicates
SLACK = 2  # downloads in flight beyond what is still needed (some fail or turn out duplicates)
MAX_CANDIDATES = 3000  # at most this many candidates asked of a provider for one tag
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


@dataclass
class Seen:
    """A picture already kept by the project or this run: what a near-duplicate is a duplicate of."""

    dhash: int
    key: str | None = None  # the candidate's key (provider:id), when it came from an acquisition
    image_id: str | None = None  # the project's image, when it is one
    title: str = ""

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in {"imageId": self.image_id, "key": self.key, "title": self.title}.items() if v}

    def sentence(self) -> str:
        if self.image_id:
            named = f" ({self.title})" if self.title else ""
            return f"The same picture (or nearly) as image {self.image_id}{named}, already in the project."
        return f"The same picture (or nearly) as candidate {self.title or self.key}, found earlier."


@dataclass
class Run:
    """What one run shares while it works through the tags of an acquisition."""

    acquisition_id: str
    project_id: str
    domain: str
    review: bool
    look: Look | None
    input_side: int  # the backbone's input size: smaller images are scaled up, with a warning
    seen: list[Seen] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class Gathering:
    """Runs acquisitions: see the module docstring."""

    def __init__(self, ctx: Context, looks: Looks) -> None:
        self.ctx = ctx
        self.looks = looks
        self.images = Images(ctx)

    def tag(
        self,
        run: Run,
        tag: dict,
        state: dict,
        providers: list,
        downloader: Downloader,
        settled: set[str],
        progress: Progress,
    ) -> None:
        """Fill one tag up to its goal: judged spares and doubtful candidates first, then the providers."""
        self._reuse(run, tag, state)
        for provider in providers:
            if state["added"] >= state["goal"] or run.stop.is_set():
                break
            # _fresh stops at the goal; downloads already in flight still finish (kept as Spare).
            window = lambda state=state: state["goal"] - state["added"] + SLACK  # noqa: E731
            for done in downloader.download(self._fresh(provider, tag["name"], state, settled), run.stop, window):
                self.settle(run, tag, done, state, provider)
                progress(tag["name"], state["added"], state["goal"])
                self.save_progress(run.acquisition_id, tag["id"], state)

    def settle(
        self, run: Run, tag: dict, done: Downloaded, state: dict, provider=None, verdict: Verdict | None = None
    ) -> None:
        """Record one downloaded candidate: refused, duplicate, spare, doubtful, pending review, or added."""
        candidate = done.candidate
        item = AcquisitionItem(
            acquisition_id=run.acquisition_id,
            project_id=run.project_id,
            tag_id=tag["id"],
            key=candidate.key,
            source=candidate.source(),
            message=done.message or None,
        )
        if done.status != "OK":
            item.status, item.reason, item.detail = "Refused", done.reason, done.detail or None
            state["refused"] += 1
            state["reasons"][done.reason] = state["reasons"].get(done.reason, 0) + 1
        else:
            data, dhash = done.image()
            if (twin := self._twin(run, dhash, candidate.key)) is not None:
                # Checked before keeping a spare, so a picture and its copy always give one duplicate, whichever
                # download finishes first and whether or not the target was met by then.
                item.status, item.reason, item.message = "Duplicate", reasons.DUPLICATE, twin.sentence()
                item.detail = {"duplicateOf": twin.describe()}
                state["duplicates"] += 1
            elif state["added"] >= state["goal"] or run.stop.is_set():  # in flight when the goal was met or it stopped
                item.status, item.sha256 = "Spare", self.ctx.blobs.put(data)
                item.source = {**item.source, "dhash": f"{dhash:016x}"}
                run.seen.append(Seen(dhash, candidate.key, title=candidate.title or ""))
            else:
                verdict = verdict or self.judge(run, tag["name"], done)
                item.score, item.detail = verdict.score, _warning(done, run.input_side)
                if verdict.doubtful:
                    item.status, item.reason, item.message = "Doubtful", reasons.DOUBTFUL, verdict.message(tag["name"])
                    item.sha256 = self.ctx.blobs.put(data)
                    item.source = {**item.source, "dhash": f"{dhash:016x}"}
                    state["doubtful"] += 1
                else:
                    self._keep(run, tag, done, state, item, provider)
                run.seen.append(Seen(dhash, candidate.key, item.image_id, candidate.title or ""))
        with self.ctx.db.session() as session:
            session.add(item)

    def judge(self, run: Run, tag: str, done: Downloaded) -> Verdict:
        """What the look says about a downloaded candidate for ``tag`` (embedded first, unless it came embedded)."""
        if done.candidate.verdict is not None:  # judged by the provider among its whole pool (the library)
            return done.candidate.verdict
        if run.look is None or not run.look.scores(tag):
            return Verdict(None, False)
        if done.candidate.embedding is not None:
            plain, flipped = done.candidate.embedding
        else:
            sha = self.ctx.blobs.put(done.image()[0])
            try:
                plain, flipped = self.looks.embeddings(run.domain, [sha])
            except TagvisionError:  # validated, yet the backbone cannot decode it: let it through unjudged
                return Verdict(None, False)
            plain, flipped = plain[0], flipped[0]
        return run.look.verdicts(tag, plain[None, :], flipped[None, :])[0]

    def save_progress(self, acquisition_id: str, tag_id: str, state: dict) -> None:
        with self.ctx.db.session() as session:
            row = session.get(Acquisition, acquisition_id)
            if row is not None:
                row.progress = {**row.progress, tag_id: dict(state)}
                row.last_modified = utcnow()

    def project_pictures(self, project_id: str) -> list[Seen]:
        """Perceptual hashes of the project's images (stored with acquired ones, computed for the rest) and of
        the candidates waiting in any acquisition (pending review, spare, doubtful)."""
        with self.ctx.db.session() as session:
            rows: Sequence[Row[str, str, dict[str, Any]]] = session.execute(
                select(Image.id, Image.sha256, Image.source).where(Image.project_id == project_id)
            ).all()
            waiting: Sequence[Row[str, dict[str, Any]]] = session.execute(
                select(AcquisitionItem.key, AcquisitionItem.source).where(
                    AcquisitionItem.project_id == project_id,
                    AcquisitionItem.status.in_(("Pending", "Spare", "Doubtful")),
                )
            ).all()
        out = [Seen(int(s["dhash"], 16), key, None, str(s.get("title") or "")) for key, s in waiting if s.get("dhash")]
        for image_id, sha, source in rows:
            title = str((source or {}).get("title") or (source or {}).get("file") or "")
            if source and source.get("dhash"):
                out.append(Seen(int(source["dhash"], 16), source.get("key"), image_id, title))
                continue
            try:
                out.append(Seen(images.dhash(self.ctx.blobs.get(sha)), None, image_id, title))
            except TagvisionError:
                continue
        return out

    # ------------------------------------------------------------------ the parts

    def _keep(self, run: Run, tag: dict, done: Downloaded, state: dict, item: AcquisitionItem, provider) -> None:
        """A candidate that passed every check: pending review, or added as a training image."""
        candidate = done.candidate
        state["downloaded"] += 1
        if item.detail and item.detail.get("warning"):
            state["small"] = state.get("small", 0) + 1
        data, dhash = done.image()
        item.sha256 = self.ctx.blobs.put(data)
        if run.review:
            item.status = "Pending"
            item.source = {**item.source, "dhash": f"{dhash:016x}"}
            state["added"] += 1  # counted toward the goal; the user picks among them
            return
        source = {**candidate.source(), "dhash": f"{dhash:016x}"}
        new = NewImage(candidate.url, lambda: data, (tag["id"],), source)
        result = self.images.add(run.project_id, [new]).results[0]
        item.image_id = result.image_id
        if result.status == "OK":
            item.status = "Added"
            state["added"] += 1
            if candidate.ping_url and hasattr(provider, "kept"):
                provider.kept(candidate)  # the provider's terms ask to be told (Unsplash)
        else:
            item.status, item.reason = "Duplicate", reasons.DUPLICATE
            item.message = f"The same file as image {result.image_id}, already in the project."
            item.detail = {**(item.detail or {}), "duplicateOf": {"imageId": result.image_id}}
            state["duplicates"] += 1

    def _twin(self, run: Run, dhash: int, key: str) -> Seen | None:
        """The picture ``dhash`` nearly equals, other than the candidate ``key`` itself (a spare used again)."""
        for seen in run.seen:
            if seen.key != key and images.hamming(dhash, seen.dhash) <= NEAR_DUPLICATE_BITS:
                return seen
        return None

    def _fresh(self, provider, query: str, state: dict, settled: set[str]) -> Iterator[Candidate]:
        """The provider's candidates not seen before, until the goal is met (or as many were set aside as doubtful:
        the rest of what it offers looks no better)."""
        limit = min(MAX_CANDIDATES, state["goal"] * SEARCH_FACTOR + len(settled))
        doubtful_before = state["doubtful"]
        for candidate in provider.search(query, limit):
            if state["added"] >= state["goal"] or state["doubtful"] - doubtful_before >= max(state["goal"], 1):
                return
            state["found"] += 1
            if candidate.key in settled:
                state["skipped"] += 1
                continue
            settled.add(candidate.key)
            yield candidate

    def _reuse(self, run: Run, tag: dict, state: dict) -> None:
        """Spares (downloaded beyond an earlier target) and doubtful candidates, judged again with the current
        look, best first: used before asking any provider again. Still doubtful ones stay set aside."""
        with self.ctx.db.session() as session:
            kept = list(
                session.scalars(
                    select(AcquisitionItem)
                    .where(
                        AcquisitionItem.project_id == run.project_id,
                        AcquisitionItem.tag_id == tag["id"],
                        AcquisitionItem.status.in_(("Spare", "Doubtful")),
                        AcquisitionItem.sha256.is_not(None),
                    )
                    .order_by(AcquisitionItem.created)
                )
            )
            for item in kept:
                session.expunge(item)
        if not kept or state["added"] >= state["goal"]:
            return
        again = []
        for item in kept:
            if item.sha256 is None:  # as the query asks
                continue
            done = _downloaded(item, self.ctx.blobs.get(item.sha256))
            again.append((item, done, self.judge(run, tag["name"], done)))
        again.sort(key=lambda x: -(x[2].score if x[2].score is not None else -1.0))  # stable: spares by age
        for item, done, verdict in again:
            if state["added"] >= state["goal"] or run.stop.is_set():
                return
            if verdict.doubtful:
                continue
            with self.ctx.db.session() as session:
                row = session.get(AcquisitionItem, item.id)
                if row is None:  # its acquisition was deleted meanwhile: the spare is gone
                    continue
                row.status = "Used"
            if item.status == "Doubtful":
                state["doubtful"] = max(0, state["doubtful"] - (item.acquisition_id == run.acquisition_id))
            self.settle(run, tag, done, state, verdict=verdict)
            self.save_progress(run.acquisition_id, tag["id"], state)


def _downloaded(item: AcquisitionItem, data: bytes) -> Downloaded:
    """A stored candidate (spare or doubtful) as if just downloaded."""
    fields: dict[str, Any] = {k: item.source.get(v) for k, v in SOURCE_FIELDS.items()}  # stored JSON
    candidate = Candidate(**fields, provider_id=item.key.split(":", 1)[1])
    return Downloaded(candidate, "OK", data=data, facts=images.validate(data), dhash=int(item.source["dhash"], 16))


def _warning(done: Downloaded, input_side: int) -> dict[str, Any] | None:
    """The warning of an image smaller than the backbone's input (kept, and scaled up), else None."""
    facts = done.facts
    if facts is None or min(facts.width, facts.height) >= input_side:
        return None
    return {
        "warning": {
            "code": reasons.SMALLER_THAN_MODEL,
            "message": f"{facts.width}x{facts.height} is smaller than the model's {input_side}x{input_side} "
            "input; it is scaled up.",
        },
        "width": facts.width,
        "height": facts.height,
    }
