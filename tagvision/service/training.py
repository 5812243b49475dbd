"""Use cases for training: starting an iteration, training it, and managing iterations (rename, delete, publish).

:class:`Training` is one object for its callers, made of three parts: starting an iteration and managing
iterations (here), running a started iteration (:mod:`tagvision.service.training_run`) and reporting an
iteration's performance (:mod:`tagvision.service.training_reports`). What a request must pass is in
:mod:`tagvision.service.training_checks`; what an iteration is trained on and judged by is in
:mod:`tagvision.service.training_set`.
"""

from __future__ import annotations

from tagvision.errors import Conflict, InvalidInput, TrainingError
from tagvision.service.context import Context, Progress, get_iteration, get_project, get_tag, no_progress
from tagvision.service.details import IterationDetails, iteration_view
from tagvision.service.projects import clean_name
from tagvision.service.training_checks import (
    budget_seconds,
    check_budget,
    check_changed,
    check_project,
    check_trainable,
)
from tagvision.service.training_reports import TrainingReports
from tagvision.service.training_run import TrainingRun
from tagvision.service.training_set import TrainingSet, read_training_set
from tagvision.service.views import IterationView
from tagvision.store import queries
from tagvision.store.models import Iteration, Project, utcnow


class Training(TrainingRun, TrainingReports):
    """One object for the interfaces: start and manage iterations (here), run a started one (:class:`TrainingRun`)
    and report its performance (:class:`TrainingReports`)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ training

    def start(
        self,
        ref: str,
        *,
        force: bool = False,
        training_type: str = "Regular",
        selected_tags: list[str] | None = None,
        reserved_budget_hours: int = 0,
        budget_minutes: float | None = None,
    ) -> IterationView:
        """Check the project can be trained and create its next iteration (status Training).

        ``selected_tags`` (ids or names) trains on those tags only. Refused while another
        iteration of the project is training, and when nothing changed since the newest
        completed iteration (unless ``force``).
        """
        budget = budget_seconds(training_type, reserved_budget_hours, budget_minutes)
        busy = TrainingError(
            "Another training of this project started first.", code="BadRequestTrainingAlreadyInProgress"
        )
        with self.ctx.db.session(not_unique=busy) as session:
            project = get_project(session, ref)
            check_project(project)
            selected = sorted({get_tag(session, project, t).id for t in selected_tags}) if selected_tags else None
            snapshot = read_training_set(session, project, selected)
            check_trainable(snapshot)
            if training_type == "Advanced":
                check_budget(self.ctx.spec(project.domain), len(snapshot.image_ids), budget)
            if not force:
                newest = queries.newest_completed_iteration(session, project.id)
                check_changed(newest, project, training_type, snapshot.fingerprint)
            iteration = _new_iteration(project, snapshot, selected, training_type, reserved_budget_hours, budget)
            session.add(iteration)
            session.flush()
            return iteration_view(iteration)

    def train(self, ref: str, *, force: bool = False, progress: Progress = no_progress, **options) -> IterationView:
        """Training start to finish (quick, or ``training_type="Advanced"`` within ``budget_minutes``)."""
        return self.run(ref, self.start(ref, force=force, **options).id, progress)

    # ------------------------------------------------------------------ iterations

    def iterations(self, ref: str) -> list[IterationView]:
        with self.ctx.db.session() as session:
            return [iteration_view(i) for i in get_project(session, ref).iterations]

    def iteration(self, ref: str, iteration_ref: str | None = None) -> IterationView:
        with self.ctx.db.session() as session:
            return iteration_view(get_iteration(session, get_project(session, ref), iteration_ref))

    def delete_iteration(self, ref: str, iteration_ref: str) -> None:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if iteration.publish_name:
                raise InvalidInput(
                    f"{iteration.name} is published as {iteration.publish_name!r}; unpublish it first.",
                    code="BadRequestIterationIsPublished",
                )
            if iteration.status == "Training":
                raise TrainingError(
                    f"{iteration.name} is training; delete it when it has finished.",
                    code="BadRequestTrainingAlreadyInProgress",
                )
            session.delete(iteration)

    def rename_iteration(self, ref: str, iteration_ref: str, name: str) -> IterationView:
        name = clean_name(name, "iteration")
        taken = Conflict(f"Another iteration is named {name!r}.", code="BadRequestIterationNameNotUnique")
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_ref)
            if any(i.name == name and i.id != iteration.id for i in project.iterations):
                raise Conflict(f"Another iteration is named {name!r}.", code="BadRequestIterationNameNotUnique")
            iteration.name, iteration.last_modified = name, utcnow()
            session.flush()
            return iteration_view(iteration)

    def publish(
        self, ref: str, iteration_ref: str, publish_name: str, resource_id: str = "", overwrite: bool = False
    ) -> IterationView:
        """Make a completed iteration answer the Prediction API as ``publish_name``."""
        try:
            publish_name = clean_name(publish_name, "publish")
        except InvalidInput as exc:
            raise InvalidInput(exc.message, code="BadRequestInvalidPublishName") from None
        if "/" in publish_name:
            raise InvalidInput("A publish name may not contain '/'.", code="BadRequestInvalidPublishName")
        taken = Conflict(
            f"Another iteration was published as {publish_name!r} at the same moment.",
            code="BadRequestInvalidPublishName",
        )
        with self.ctx.db.session(not_unique=taken) as session:
            project = get_project(session, ref)
            iteration = get_iteration(session, project, iteration_ref)
            if iteration.status != "Completed":
                raise TrainingError(
                    f"{iteration.name} is {iteration.status}; only a completed iteration can be published.",
                    code="BadRequestIterationIsNotTrained",
                )
            holder = queries.published_iteration(session, project.id, publish_name)
            if holder is not None and holder.id != iteration.id:
                if not overwrite:
                    raise Conflict(
                        f"{holder.name} is already published as {publish_name!r}; unpublish it or "
                        "publish with overwrite.",
                        code="BadRequestInvalidPublishName",
                    )
                holder.publish_name = holder.publish_resource_id = None
                session.flush()
            iteration.publish_name, iteration.publish_resource_id = publish_name, resource_id
            iteration.last_modified = utcnow()
            session.flush()
            return iteration_view(iteration)

    def unpublish(self, ref: str, iteration_ref: str) -> None:
        with self.ctx.db.session() as session:
            iteration = get_iteration(session, get_project(session, ref), iteration_ref)
            if not iteration.publish_name:
                raise InvalidInput(f"{iteration.name} is not published.", code="BadRequestIterationNotPublished")
            iteration.publish_name = iteration.publish_resource_id = None
            iteration.last_modified = utcnow()


def _new_iteration(
    project: Project,
    snapshot: TrainingSet,
    selected: list[str] | None,
    training_type: str,
    reserved_budget_hours: int,
    budget_seconds: float,
) -> Iteration:
    """The project's next iteration, waiting to train; its details name the tags and images now, so a training
    iteration shows its counts."""
    return Iteration(
        project_id=project.id,
        name=_next_name(project),
        classification_type=project.classification_type,
        domain=project.domain,
        reserved_budget_hours=reserved_budget_hours,
        training_type=training_type,
        details=IterationDetails(
            snapshot.fingerprint,
            selected,
            budget_seconds if training_type == "Advanced" else None,
            tags=list(snapshot.tags),
            image_ids=list(snapshot.image_ids),
        ).to_json(),
    )


def _next_name(project: Project) -> str:
    taken = {i.name for i in project.iterations}
    number = len(project.iterations) + 1
    while f"Iteration {number}" in taken:
        number += 1
    return f"Iteration {number}"
