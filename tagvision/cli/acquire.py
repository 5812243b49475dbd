"""``tagvision acquire``: gather training images for tag names, with the summary by reason, review pages in
the terminal and the set-aside candidates (``tagvision image list --refused``).

The service's views and the refusal reasons are imported when a command runs: ``tagvision --help`` loads this
module and must start without numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlsplit

import typer
from rich.table import Table

from tagvision.cli.common import DataDir, JsonFlag, ProjectArg, err, out, print_json, progress_bar, service
from tagvision.errors import TagvisionError

if TYPE_CHECKING:
    from tagvision.service import Service
    from tagvision.service.views import AcquisitionView, CandidateView

TagsOpt = Annotated[str, typer.Option("--tags", help="Comma-separated tag names (created when missing).")]
PerTagOpt = Annotated[
    int,
    typer.Option(
        "--per-tag",
        help="Fill each tag until it has this many acquired images (a re-run adds only what is missing).",
    ),
]
ProviderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--provider",
        help="openverse (default), wikimedia, pexels, unsplash, pixabay, bing or library; repeat to combine.",
        show_default=False,
    ),
]
LibraryOpt = Annotated[Path | None, typer.Option(help="Folder for --provider library.", show_default=False)]
MinSideOpt = Annotated[
    int | None,
    typer.Option(
        "--min-side",
        help="Refuse images smaller than this on a side [default: none, as uploads; images smaller than the "
        "model's input are kept with a warning].",
        show_default=False,
    ),
]
ReviewFlag = Annotated[
    bool,
    typer.Option(
        "--review",
        help="Review a page of candidates per tag before they are added; each next page "
        "is ranked again with your answers.",
    ),
]
PageSizeOpt = Annotated[int, typer.Option("--page-size", min=1, help="Candidates per tag on a review page.")]
RetryRefusedFlag = Annotated[
    bool, typer.Option("--retry-refused", help="Look again at the candidates earlier acquisitions refused.")
]


def acquire(
    project: ProjectArg,
    tags: TagsOpt,
    per_tag: PerTagOpt = 50,
    provider: ProviderOpt = None,
    library: LibraryOpt = None,
    min_side: MinSideOpt = None,
    review: ReviewFlag = False,
    page_size: PageSizeOpt = 20,
    retry_refused: RetryRefusedFlag = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Gather training images for tag names from an image-search provider or a local folder, ranked and
    filtered by how they look against every tag of the project."""
    providers = tuple(provider or (["library"] if library else ["openverse"]))
    names = [t for t in (part.strip() for part in tags.split(",")) if t]
    with service(data_dir) as svc:
        started = svc.acquisitions.start(
            project,
            names,
            per_tag=per_tag,
            providers=providers,
            library=str(library) if library else None,
            min_side=min_side,
            review=review,
            page_size=page_size if review else None,
            retry_refused=retry_refused,
            library_anywhere=True,
        )
        view = _gather(svc, project, started.id, review)
    if as_json:
        print_json(view.to_json())
        return
    print_summary(view, project)
    if view.status != "Completed":
        raise TagvisionError(f"The acquisition {view.status.lower()}: {view.error or 'see above'}", code="ErrorSource")


def _gather(svc: Service, project: str, acquisition_id: str, reviewed: bool) -> AcquisitionView:
    """Run the acquisition with a progress bar (page by page with ``--review``); Ctrl-C cancels it, keeping what
    was added, and exits with status 130."""

    def run() -> AcquisitionView:
        with progress_bar() as update:
            return svc.acquisitions.run(acquisition_id, progress=update)

    try:
        return review_pages(svc, project, acquisition_id, run) if reviewed else run()
    except KeyboardInterrupt:
        svc.acquisitions.cancel(project, acquisition_id)
        err.print("Stopped; what was added stays. Run the same command again to add the rest.")
        raise typer.Exit(130) from None


def where(source: dict[str, Any]) -> str:
    """Where a candidate came from, as a user can open it: a library file's path, else its page or URL."""
    url = str(source.get("url") or "")
    if url.startswith("file://"):
        return unquote(urlsplit(url).path)
    return str(source.get("landingPage") or url)


def print_summary(view: AcquisitionView, project: str) -> None:
    """The table per tag, then what was not added and why, counted by reason."""
    from tagvision.sources import reasons

    table = Table("tag", "added", "wanted", "had before", "duplicates", "doubtful", "refused", "candidates")
    for tag in view.tags:
        table.add_row(
            tag.tag,
            str(tag.added),
            str(tag.wanted),
            str(tag.had_before),
            str(tag.duplicates),
            str(tag.doubtful),
            str(tag.refused),
            str(tag.found),
        )
    out.print(table)
    notes = False
    for tag in view.tags:
        parts = []
        if tag.refused:
            parts.append(f"refused {tag.refused}: {reasons.counted(tag.reasons)}")
        if tag.doubtful:
            parts.append(f"{tag.doubtful} set aside as doubtful (they did not look like {tag.tag!r})")
        if tag.small:
            parts.append(f"{tag.small} smaller than the model's input, kept and scaled up")
        if parts:
            notes = True
            out.print(f"{tag.tag}: " + "; ".join(parts) + ".", highlight=False)
    if notes:
        out.print(
            f"Each with its reason: tagvision image list {project} --refused. Look at them again: "
            "--retry-refused; a smaller --min-side looks again at those too small.",
            highlight=False,
        )


def print_set_aside(items: list[CandidateView]) -> None:
    """The candidates acquisitions did not add, each with its reason and where it came from."""
    from tagvision.sources import reasons

    table = Table("tag", "status", "reason", "why", "look", "source", "item id")
    for c in items:
        table.add_row(
            c.tag,
            c.status,
            reasons.phrase(c.reason),
            c.message or "",
            f"{c.score:.0%}" if c.score is not None else "",
            where(c.source),
            c.id,
        )
    out.print(table)


def parse_numbers(text: str, count: int) -> set[int]:
    """ "2, 5-7" -> {2, 5, 6, 7} (1-based, within ``count``); "all" -> every one."""
    if text.strip().lower() == "all":
        return set(range(1, count + 1))
    chosen: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(part)
        chosen.update(range(int(low), int(high or low) + 1))
    if any(not 1 <= n <= count for n in chosen):
        raise ValueError(text)
    return chosen


def review_pages(
    svc: Service,
    project: str,
    acquisition_id: str,
    run: Callable[[], AcquisitionView],
) -> AcquisitionView:
    """Review pages in the terminal: show a page, ask which to reject, keep the rest, then the next page
    (ranked again with the answers) until every tag has what it wants or the user stops."""
    view = run()
    while view.status == "Completed":
        pending = _page(svc, project, acquisition_id)
        if not pending:
            break
        _print_page(pending)
        try:
            rejected = _ask(len(pending))
        except typer.Abort:  # no answer (end of input): the page stays pending for the portal or API
            err.print("Stopped; the page stays waiting for review (the portal shows it).")
            return view
        keep = [c.id for n, c in enumerate(pending, 1) if n not in rejected]
        summary = svc.acquisitions.commit(project, acquisition_id, keep)
        out.print(f"Kept {summary.count('OK')}, rejected {len(rejected)}.", highlight=False)
        after = svc.acquisitions.get(project, acquisition_id)
        if not any(t.added < t.wanted for t in after.tags):
            return after
        try:
            if not typer.confirm("Find the next page, ranked again with your answers?", default=True):
                return after
        except typer.Abort:
            return after
        svc.acquisitions.more(project, acquisition_id)
        view = run()
    return view


def _page(svc: Service, project: str, acquisition_id: str) -> list[CandidateView]:
    """The pending candidates, by tag in the order asked, best-looking first."""
    view = svc.acquisitions.get(project, acquisition_id)
    order = {t["id"]: i for i, t in enumerate(view.request.get("tags", []))}
    pending = svc.acquisitions.candidates(project, acquisition_id, ("Pending",))
    return sorted(pending, key=lambda c: (order.get(c.tag_id, 0), -(c.score if c.score is not None else -1.0)))


def _print_page(pending: list[CandidateView]) -> None:
    table = Table("#", "tag", "look", "source", "note", title=f"Review: {len(pending)} candidates")
    for n, c in enumerate(pending, 1):
        warning = (c.warning or {}).get("message", "")
        table.add_row(str(n), c.tag, f"{c.score:.0%}" if c.score is not None else "", where(c.source), warning)
    out.print(table)


def _ask(count: int) -> set[int]:
    while True:
        text = typer.prompt("Numbers to reject (e.g. 2,5-7; 'all'; Enter keeps all)", default="", show_default=False)
        try:
            return parse_numbers(text, count)
        except ValueError:
            typer.echo(f"Type numbers from 1 to {count}, separated by commas, or a range like 5-7.")
