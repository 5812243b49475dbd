"""``tagvision tag info``, ``catalogue``, ``rules`` and ``records``: what tags know and the records predictions
leave. The service's modules are imported when a command runs: ``tagvision --help`` starts without numpy or
SQLAlchemy."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tagvision.cli.common import SERVER_FILE, DataDir, ProjectArg, out, print_json, progress_bar, service
from tagvision.errors import InvalidInput
from tagvision.knowledge import catalogue as cat
from tagvision.knowledge import information as info

if TYPE_CHECKING:
    from tagvision.service import Service
    from tagvision.service.catalogue import ImportReport
    from tagvision.service.prediction import PredictionQuery


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
MetaOpt = Annotated[
    list[str] | None,
    typer.Option("--meta", help="Only records with this metadata, key=value; repeatable.", show_default=False),
]


def _read(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"Cannot read {path}: {exc.strerror or exc}.", code="BadRequestPathNotFound") from None


# ---------------------------------------------------------------------- tag information


def tag_info(
    project: ProjectArg,
    tag: Annotated[str, typer.Argument(help="Tag name or id.")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="key=value; the value is read as a CSV cell is (numbers, true/false, [..] and {..} JSON). Repeatable.",
            show_default=False,
        ),
    ] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", help="Remove an attribute.", show_default=False)] = None,
    from_json: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Replace the information with this JSON object file ('-': stdin).", show_default=False
        ),
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the information (the default with no change).")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show or change a tag's information (a JSON object); prints it as JSON."""
    updates: dict[str, Any] = {}
    for pair in set_ or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidInput(f"Write --set key=value, not {pair!r}.", code="BadRequestTagInformation")
        parsed = cat.infer(value, key.strip())
        updates[info.check_key(key.strip(), "--set")] = "" if parsed is cat.ABSENT else parsed
    replacement = info.loads(_read(from_json), str(from_json)) if from_json is not None else None
    with service(data_dir) as svc:
        if replacement is None and not updates and not unset:
            view = svc.knowledge.get(project, tag)
        else:
            view = svc.knowledge.set(project, tag, replacement, updates=updates, remove=tuple(unset or ()))
    print_json(view.information)


# ---------------------------------------------------------------------- catalogue


def catalogue_import(
    project: ProjectArg,
    file: Annotated[Path, typer.Argument(help="A .csv, .json or .jsonl file ('-': stdin, with --format).")],
    key: Annotated[str, typer.Option("--key", help="The column naming the tag (created when missing).")] = "tag",
    images: Annotated[
        str | None,
        typer.Option(
            "--images", help="A column of reference images: paths or URLs ('|' between several).", show_default=False
        ),
    ] = None,
    format_: Annotated[
        str | None, typer.Option("--format", help="csv, json or jsonl (default: from the suffix).", show_default=False)
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; change nothing.")] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Import tag information: one row per tag, every column but the key an attribute. Bad rows are reported
    with their line; the good ones land together."""
    fmt = cat.format_of(file.name, format_)
    data = _read(file)
    with service(data_dir) as svc, progress_bar() as update:
        report = svc.catalogue.import_(
            project,
            data,
            fmt,
            key=key,
            images_column=images,
            dry_run=dry_run,
            local_files=file.parent if str(file) != "-" else Path.cwd(),
            progress=update,
        )
    if as_json:
        print_json(report.to_json())
    else:
        _print_report(report)
    if report.errors and not report.rows:
        raise typer.Exit(1)


def _print_report(report: ImportReport) -> None:
    if report.rows:
        table = Table("line", "tag", "action", "attributes", "images", title="Would change" if report.dry_run else None)
        for r in report.rows:
            parts = [f"+{', +'.join(r.added)}" if r.added else "", f"~{', ~'.join(r.changed)}" if r.changed else ""]
            parts.append(f"-{', -'.join(r.removed)}" if r.removed else "")
            table.add_row(str(r.line), r.tag, r.action, " ".join(p for p in parts if p), str(r.images or ""))
        out.print(table)
    verb = "would be" if report.dry_run else "were"
    out.print(
        f"{report.count('create')} tags {verb} created, {report.count('update')} updated, "
        f"{report.count('unchanged')} unchanged, {len(report.errors)} rows refused"
        + ("" if report.dry_run else f", {report.images_added} images added")
        + ".",
        highlight=False,
        markup=False,
    )
    for e in sorted(report.errors, key=lambda e: e.line):
        out.print(f"  {e.sentence()}", highlight=False, markup=False)


def catalogue_export(
    project: ProjectArg,
    format_: Annotated[str, typer.Option("--format", help="csv, json or jsonl.")] = "csv",
    key: Annotated[str, typer.Option("--key", help="The name of the tag column.")] = "tag",
    out_path: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: stdout).", show_default=False)
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Export every tag's information in the format import reads."""
    with service(data_dir) as svc:
        _, data = svc.catalogue.export(project, format_, key)
    _write(out_path, [data])


def _write(out_path: Path | None, chunks: Iterable[bytes]) -> None:
    if out_path is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with tmp.open("wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
    tmp.replace(out_path)
    out.print(f"Wrote {out_path}", highlight=False, markup=False)


# ---------------------------------------------------------------------- rules


def rules_show(project: ProjectArg, data_dir: DataDir = None) -> None:
    """Print the project's decision rules as JSON."""
    with service(data_dir) as svc:
        print_json(svc.knowledge.rules(project))


def rules_set(
    project: ProjectArg,
    file: Annotated[Path, typer.Argument(help='A JSON file: a list of rules (or {"rules": [...]}); "-": stdin.')],
    data_dir: DataDir = None,
) -> None:
    """Replace the decision rules; each is checked against the catalogue and an error names its field."""
    raw = info.loads(_read(file), "rules")
    with service(data_dir) as svc:
        print_json(svc.knowledge.set_rules(project, raw))


def rules_clear(project: ProjectArg, data_dir: DataDir = None) -> None:
    """Remove every decision rule."""
    with service(data_dir) as svc:
        svc.knowledge.set_rules(project, [])
    out.print("Removed the decision rules.", highlight=False)


# ---------------------------------------------------------------------- records


def _query(meta: list[str] | None, since: datetime | None, until: datetime | None) -> PredictionQuery:
    from tagvision.service.prediction import PredictionQuery
    from tagvision.service.records import metadata_from_pairs

    return PredictionQuery(
        order_by="Oldest", start_time=since, end_time=until, metadata=tuple(metadata_from_pairs(meta or []).items())
    )


SinceOpt = Annotated[
    datetime | None, typer.Option("--since", help="Stored at or after (ISO time).", show_default=False)
]
UntilOpt = Annotated[datetime | None, typer.Option("--until", help="Stored at or before.", show_default=False)]


def records_search(
    project: ProjectArg,
    meta: MetaOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Stored predictions with the caller's metadata, oldest first."""
    with service(data_dir) as svc:
        views = list(svc.records.search(project, _query(meta, since, until)))
    if as_json:
        for v in views:
            print(json.dumps(v.to_stored_json(), ensure_ascii=False))
        return
    table = Table("stored", "top tag", "probability", "metadata", "decision", "id")
    for v in views:
        top = v.predictions[0] if v.predictions else None
        table.add_row(
            v.created.strftime("%Y-%m-%d %H:%M:%S"),
            top.tag_name if top else "",
            f"{top.probability:.1%}" if top else "",
            ", ".join(f"{k}={val}" for k, val in v.metadata.items()),
            ", ".join(f"{k}={json.dumps(d.get('value'))}" for k, d in (v.decision or {}).items()),
            v.id,
        )
    out.print(table)


def records_export(
    project: ProjectArg,
    format_: Annotated[str, typer.Option("--format", help="csv or jsonl.")] = "jsonl",
    meta: MetaOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="File to write (default: stdout).", show_default=False)
    ] = None,
    images_dir: Annotated[
        Path | None,
        typer.Option(
            "--images-dir", help="Copy each record's image here too (links expire in 24 h).", show_default=False
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Export stored predictions with image links, metadata, and the tag information and decision as they were."""
    with service(data_dir) as svc:
        base = _endpoint(svc)
        chunks = svc.records.export(
            project,
            _query(meta, since, until),
            format_,
            link=lambda sha: svc.files.url(base, "prediction", sha),
            images_dir=images_dir,
        )
        _write(out_path, chunks)


def _endpoint(svc: Service) -> str:
    """Where links should point: the public URL, else the server this data directory last served on."""
    if svc.ctx.settings.public_url:
        return svc.ctx.settings.public_url
    try:
        return json.loads((svc.ctx.settings.data_dir / SERVER_FILE).read_text())["endpoint"]
    except (OSError, ValueError, KeyError):
        return "http://127.0.0.1:8000"


def records_retention(
    project: ProjectArg,
    value: Annotated[
        str | None,
        typer.Argument(help="Days, 'never' (do not store), 'forever' or 'default' (the server's).", show_default=False),
    ] = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Show or set how long the project's stored predictions are kept; setting it purges what is past it."""
    from tagvision.service.records import describe

    with service(data_dir) as svc:
        if value is None:
            view, purged = svc.records.retention(project), None
        else:
            view, purged = svc.records.set_retention(project, value)
    if as_json:
        print_json({**view.to_json(), "purged": purged})
        return
    effective = describe(view.effective_days)
    kept = (
        f"{effective} days"
        if isinstance(effective, int)
        else {"never": "not stored", "forever": "kept forever"}[effective]
    )
    source = "the server's setting" if view.project_days is None else "the project's setting"
    out.print(f"Stored predictions: {kept} ({source})." + (f" Purged {purged} now." if purged else ""), highlight=False)


def records_purge(
    project: Annotated[
        str | None, typer.Argument(help="Project name or id (default: every project).", metavar="[PROJECT]")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Delete stored predictions past their retention now (the server also does it every 10 minutes)."""
    with service(data_dir) as svc:
        purged = svc.records.purge(project)
    out.print(f"Purged {purged} stored predictions.", highlight=False)
