"""The ``tagvision`` command line. Every command calls the service layer and nothing below it.

Human-readable tables go to stdout, progress bars to stderr; ``--json`` prints the Custom Vision shapes
instead. Errors print ``error: <code>: <message>`` and exit with status 1.

This module is the table of contents: the commands live in modules by topic (``projects``, ``training``,
``predictions``, ``score``, ``acquire``, ``serving``, ``transfer``, ``knowledge``; what they share in
``common``) as plain functions, and are registered here, in the order ``--help`` lists them. Each module
imports the service's heavy parts inside its commands, so ``tagvision --help`` starts fast.
"""

from __future__ import annotations

from tagvision.cli import acquire, knowledge, predictions, projects, score, serving, training, transfer
from tagvision.cli.common import Typer, run

app = Typer(
    help="tagvision: train and run image classifiers on your own machine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
project_app = Typer(help="Create, list, delete, export and import projects.", no_args_is_help=True)
tag_app = Typer(help="Create, list and delete tags.", no_args_is_help=True)
image_app = Typer(help="Add and list training images.", no_args_is_help=True)
iteration_app = Typer(help="List and delete trained iterations.", no_args_is_help=True)
dataset_app = Typer(help="Export a project as a dataset (folders, CSV, COCO) or import one.", no_args_is_help=True)
prediction_app = Typer(help="Review stored predictions and turn them into training images.", no_args_is_help=True)
db_app = Typer(help="The database schema: upgrade it once before starting the servers, or see where it is.")
catalogue_app = Typer(help="Import and export tag information (a product or crop catalogue).", no_args_is_help=True)
rules_app = Typer(help="Decision rules over predicted tags and their information.", no_args_is_help=True)
records_app = Typer(help="Stored predictions as records: search by metadata, export, retention.", no_args_is_help=True)

app.command("migrate")(transfer.migrate)
app.command("train")(training.train)
app.command("performance")(training.performance)
app.command("predict")(predictions.predict)
app.command("export")(training.export_model)
app.command("score")(score.score)
app.command("acquire")(acquire.acquire)
app.command("serve")(serving.serve)
app.command("keys")(serving.keys)
app.command("publish")(training.publish)
app.command("unpublish")(training.unpublish)
app.command("worker")(serving.worker_command)

project_app.command("create")(projects.project_create)
project_app.command("list")(projects.project_list)
project_app.command("delete")(projects.project_delete)
project_app.command("export")(transfer.project_export)
project_app.command("import")(transfer.project_import)
tag_app.command("create")(projects.tag_create)
tag_app.command("list")(projects.tag_list)
tag_app.command("delete")(projects.tag_delete)
tag_app.command("info")(knowledge.tag_info)
image_app.command("add")(projects.image_add)
image_app.command("list")(projects.image_list)
iteration_app.command("list")(training.iteration_list)
iteration_app.command("delete")(training.iteration_delete)
dataset_app.command("export")(transfer.dataset_export)
dataset_app.command("import")(transfer.dataset_import)
prediction_app.command("list")(predictions.prediction_list)
prediction_app.command("tag")(predictions.prediction_tag)
db_app.command("upgrade")(serving.db_upgrade)
db_app.command("status")(serving.db_status)
catalogue_app.command("import")(knowledge.catalogue_import)
catalogue_app.command("export")(knowledge.catalogue_export)
rules_app.command("show")(knowledge.rules_show)
rules_app.command("set")(knowledge.rules_set)
rules_app.command("clear")(knowledge.rules_clear)
records_app.command("search")(knowledge.records_search)
records_app.command("export")(knowledge.records_export)
records_app.command("retention")(knowledge.records_retention)
records_app.command("purge")(knowledge.records_purge)

app.add_typer(project_app, name="project")
app.add_typer(tag_app, name="tag")
app.add_typer(image_app, name="image")
app.add_typer(iteration_app, name="iteration")
app.add_typer(dataset_app, name="dataset")
app.add_typer(prediction_app, name="prediction")
app.add_typer(db_app, name="db")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(rules_app, name="rules")
app.add_typer(records_app, name="records")


def main() -> None:
    """The ``tagvision`` console script (pyproject.toml) and ``python -m tagvision.cli``."""
    run(app)
