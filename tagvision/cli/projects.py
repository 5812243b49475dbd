"""``tagvision project``, ``tag`` and ``image``: the projects, their tags and their training images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from tagvision import domains
from tagvision.cli.acquire import print_set_aside
from tagvision.cli.common import (
    DataDir,
    JsonFlag,
    ProjectArg,
    YesFlag,
    count,
    image_files,
    out,
    print_json,
    progress_bar,
    service,
)
from tagvision.errors import InvalidInput

if TYPE_CHECKING:
    from tagvision.service import Service
    from tagvision.service.images import NewImage

# ---------------------------------------------------------------------- projects


def project_create(
    name: Annotated[str, typer.Argument(help="Project name (unique).", metavar="NAME")],
    type_: Annotated[str, typer.Option("--type", help="multiclass (one tag per image) or multilabel.")] = "multiclass",
    domain: Annotated[
        str,
        typer.Option(
            help="general-compact (EfficientNet-Lite0), general (Lite2), or a "
            "Custom Vision classification domain name or id."
        ),
    ] = "general-compact",
    description: Annotated[str, typer.Option(help="Free text.")] = "",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a project."""
    with service(data_dir, create=True) as svc:
        project = svc.projects.create(name, classification=type_, domain=domain, description=description)
    if as_json:
        print_json(project.to_json())
    else:
        out.print(
            f"Created project [bold]{project.name}[/] ({project.classification_type}, "
            f"{domains.resolve(project.domain).name}) "
            f"id {project.id}",
            highlight=False,
        )


def project_list(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List projects."""
    with service(data_dir) as svc:
        projects = svc.projects.list()
    if as_json:
        print_json([p.to_json() for p in projects])
        return
    table = Table("name", "type", "domain", "tags", "images", "id")
    for p in projects:
        table.add_row(
            p.name, p.classification_type, domains.resolve(p.domain).name, str(p.tag_count), str(p.image_count), p.id
        )
    out.print(table)


def project_delete(project: ProjectArg, yes: YesFlag = False, data_dir: DataDir = None) -> None:
    """Delete a project with its tags, images and iterations."""
    with service(data_dir) as svc:
        view = svc.projects.get(project)
        if not yes:
            typer.confirm(f"Delete project {view.name!r} and its {view.image_count} images?", abort=True)
        svc.projects.delete(view.id)
    out.print(f"Deleted project {view.name}", highlight=False)


# ---------------------------------------------------------------------- tags


def tag_create(
    project: ProjectArg,
    names: Annotated[list[str], typer.Argument(help="Tag names.", metavar="NAME")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Create tags in a project."""
    with service(data_dir) as svc:
        tags = svc.projects.create_tags(project, names)
    if as_json:
        print_json([t.to_json() for t in tags])
    else:
        out.print(f"Created {count(len(tags), 'tag')}: {', '.join(t.name for t in tags)}", highlight=False)


def tag_list(project: ProjectArg, data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """List a project's tags with their image counts."""
    with service(data_dir) as svc:
        tags = svc.projects.list_tags(project)
    if as_json:
        print_json([t.to_json() for t in tags])
        return
    table = Table("tag", "images", "id")
    for t in tags:
        table.add_row(t.name, str(t.image_count), t.id)
    out.print(table)


def tag_delete(
    project: ProjectArg,
    tag: Annotated[str, typer.Argument(help="Tag name or id.", metavar="TAG")],
    data_dir: DataDir = None,
) -> None:
    """Delete a tag (its images stay, untagged from it)."""
    with service(data_dir) as svc:
        svc.projects.delete_tag(project, tag)
    out.print(f"Deleted tag {tag}", highlight=False)


# ---------------------------------------------------------------------- images

PathsArg = Annotated[
    list[Path] | None, typer.Argument(help="Image files or folders.", show_default=False, metavar="PATH")
]
TagOpt = Annotated[
    list[str] | None,
    typer.Option("--tag", help="Tag (name or id) for every image; repeatable.", show_default=False),
]
FromFoldersOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-folders",
        help="A folder of class folders: each "
        "subfolder's name is the tag of the images in it (missing tags are created).",
        show_default=False,
    ),
]


def new_image(path: Path, tags: tuple[str, ...]) -> NewImage:
    from tagvision.service.images import NewImage

    return NewImage(name=str(path), read=path.read_bytes, tags=tags, source={"file": path.name})


def image_add(
    project: ProjectArg,
    paths: PathsArg = None,
    tag: TagOpt = None,
    from_folders: FromFoldersOpt = None,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Add training images from files and folders; bad and duplicate images are reported."""
    if not paths and from_folders is None:
        raise InvalidInput("Give image files or folders, or --from-folders DIR.", code="BadRequestNoImages")
    tags = tuple(tag or ())
    items = [new_image(f, tags) for p in paths or [] for f in image_files(p)]
    with service(data_dir) as svc:
        if from_folders is not None:
            items += _class_folders(svc, project, from_folders, tags)
        if not items:
            raise InvalidInput("No image files found.", code="BadRequestNoImages")
        with progress_bar() as update:
            summary = svc.images.add(project, items, progress=update)
    if as_json:
        print_json(summary.to_json())
        return
    refused = [r for r in summary.results if not r.ok]
    out.print(
        f"Added {count(summary.count('OK'), 'image')}, {summary.count('OKDuplicate')} already there, "
        f"{len(refused)} refused.",
        highlight=False,
    )
    for r in refused:
        out.print(f"  {r.source_url}: {r.status}: {r.message}", highlight=False)
    if refused:
        raise typer.Exit(1 if len(refused) == len(summary.results) else 0)


def _class_folders(svc: Service, project: str, root: Path, tags: tuple[str, ...]) -> list[NewImage]:
    """The images of ``--from-folders``, each tagged with its subfolder's name (a tag made when missing)."""
    folders = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not folders:
        raise InvalidInput(f"{root} has no subfolders to take tags from.", code="BadRequestNoImages")
    known = {t.name.casefold() for t in svc.projects.list_tags(project)}
    missing = [d.name for d in folders if d.name.casefold() not in known]
    if missing:
        svc.projects.create_tags(project, missing)
    return [new_image(f, (*tags, d.name)) for d in folders for f in image_files(d)]


def image_list(
    project: ProjectArg,
    tag: Annotated[str | None, typer.Option(help="Only images with this tag.", show_default=False)] = None,
    untagged: Annotated[bool, typer.Option("--untagged", help="Only images without tags.")] = False,
    refused: Annotated[
        bool,
        typer.Option(
            "--refused",
            help="Instead: the candidates acquisitions did not add (refused, duplicate, rejected, "
            "doubtful), each with its reason.",
        ),
    ] = False,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """List training images with their tags and source."""
    if refused:
        _list_set_aside(project, data_dir, as_json)
        return
    with service(data_dir) as svc:
        images = svc.images.list(project, tag=tag, untagged=untagged)
    if as_json:
        print_json([i.to_json() for i in images])
        return
    table = Table("image id", "size", "tags", "source")
    for i in images:
        table.add_row(
            i.id, f"{i.width}x{i.height}", ", ".join(name for _, name, _ in i.tags), str(i.source.get("name", ""))
        )
    out.print(table)


def _list_set_aside(project: str, data_dir: Path | None, as_json: bool) -> None:
    """``image list --refused``: the candidates acquisitions set aside, each with its reason."""
    with service(data_dir) as svc:
        set_aside = svc.acquisitions.set_aside(project)
    if as_json:
        print_json([{**c.to_json(), "tag": c.tag, "acquisitionId": c.acquisition_id} for c in set_aside])
    else:
        print_set_aside(set_aside)
