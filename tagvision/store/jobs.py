"""The job queue's queries: enqueue, claim (one worker per job), renew a lease, finish, release.

A claim is one transaction that picks the oldest job a worker may run, a Queued one or a Running one whose
lease has lapsed, and writes the worker's name, a new attempt number and a lease into it. Two workers never
claim the same job: on PostgreSQL the pick locks the row and skips rows other claims have locked
(``FOR UPDATE SKIP LOCKED``); on SQLite the transaction holds the database's write lock from its start
(``BEGIN IMMEDIATE``). Every later write of the job names the worker and attempt it expects, so a worker
that lost its job (its lease lapsed and another took it over) learns so and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update

from tagvision.store.database import Database, insert_or_skip
from tagvision.store.models import Job, new_id


@dataclass(frozen=True)
class Claim:
    """A job as its worker holds it: the worker's name and the attempt are its proof of ownership."""

    job_id: str
    kind: str
    target_id: str
    worker: str
    attempt: int
    lease_expires: float


def enqueue(db: Database, kind: str, target_id: str, again: bool = False) -> None:
    """Queue work on ``target_id``; nothing happens if a job for it exists already (whoever queued it), unless
    ``again`` and that job has finished: it is then queued once more (an acquisition's next review page)."""
    row = {"id": new_id(), "kind": kind, "target_id": target_id, "status": "Queued", "attempt": 0}
    with db.engine.begin() as connection:
        connection.execute(insert_or_skip(db.dialect, Job, row, index_elements=["kind", "target_id"]))
        if again:
            connection.execute(
                update(Job)
                .where(Job.kind == kind, Job.target_id == target_id, Job.status.in_(("Done", "Failed")))
                .values(status="Queued", worker=None, lease_expires=None)
            )


def _claimable(kinds: Iterable[str], now: float, targets: Iterable[str] | None = None):
    kinds = list(kinds)
    lapsed = and_(Job.status == "Running", Job.lease_expires < now)
    condition = and_(or_(Job.status == "Queued", lapsed), Job.kind.in_(kinds))
    if targets is not None:
        condition = and_(condition, Job.target_id.in_(list(targets)))
    return condition


def any_claimable(db: Database, kinds: Iterable[str], now: float) -> bool:
    """Whether a claim could find something (a cheap read, so an idle worker does not take write locks)."""
    with db.engine.connect() as connection:
        return connection.execute(select(Job.id).where(_claimable(kinds, now)).limit(1)).first() is not None


def claim(
    db: Database, worker: str, kinds: Iterable[str], now: float, lease: float, targets: Iterable[str] | None = None
) -> Claim | None:
    """The oldest job of ``kinds`` (for ``targets`` only, if given) that no live worker holds, now held by
    ``worker`` until ``now + lease``; None when there is none."""
    kinds = list(kinds)
    pick = (
        select(Job.id, Job.kind, Job.target_id, Job.attempt)
        .where(_claimable(kinds, now, targets))
        .order_by(Job.created, Job.id)
        .limit(1)
    )
    if db.dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    with db.immediate() as connection:
        row = connection.execute(pick).first()
        if row is None:
            return None
        attempt = row.attempt + 1
        taken = connection.execute(
            update(Job)
            .where(Job.id == row.id, Job.attempt == row.attempt, _claimable(kinds, now))  # still as it was read
            .values(
                status="Running", worker=worker, attempt=attempt, lease_expires=now + lease, started=now, error=None
            )
        )
        if taken.rowcount != 1:
            return None
    return Claim(row.id, row.kind, row.target_id, worker, attempt, now + lease)


def _held(claim: Claim):
    return and_(
        Job.id == claim.job_id, Job.worker == claim.worker, Job.attempt == claim.attempt, Job.status == "Running"
    )


def renew(db: Database, claim: Claim, now: float, lease: float) -> Claim | None:
    """The claim with its lease moved on to ``now + lease``; None if the job is no longer this claim's."""
    with db.engine.begin() as connection:
        result = connection.execute(update(Job).where(_held(claim)).values(lease_expires=now + lease))
    if result.rowcount != 1:
        return None
    return Claim(claim.job_id, claim.kind, claim.target_id, claim.worker, claim.attempt, now + lease)


def finish(db: Database, claim: Claim, now: float, error: str | None = None) -> bool:
    """Record the job Done (or Failed with ``error``); False, changing nothing, if it is no longer this claim's."""
    with db.engine.begin() as connection:
        result = connection.execute(
            update(Job)
            .where(_held(claim))
            .values(status="Failed" if error else "Done", error=error, finished=now, lease_expires=None)
        )
    return result.rowcount == 1


def release(db: Database, claim: Claim) -> bool:
    """Give the job back (Queued, for any worker at once): its worker is stopping before it could finish."""
    with db.engine.begin() as connection:
        result = connection.execute(update(Job).where(_held(claim)).values(status="Queued", lease_expires=None))
    return result.rowcount == 1


def holders(db: Database, prefix: str) -> list[tuple[str, str]]:
    """(job id, worker) of the Running jobs held by workers whose names start with ``prefix``."""
    with db.engine.connect() as connection:
        rows = connection.execute(
            select(Job.id, Job.worker).where(Job.status == "Running", Job.worker.startswith(prefix, autoescape=True))
        )
        return [(job_id, worker) for job_id, worker in rows if worker is not None]  # LIKE never matches NULL


def expire(db: Database, job_id: str, worker: str) -> None:
    """End ``worker``'s lease on a job at once (the worker is known to be dead), so the next claim takes it."""
    with db.engine.begin() as connection:
        connection.execute(
            update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "Running").values(lease_expires=0.0)
        )


def unfinished(db: Database, job_ids: Iterable[str]) -> set[str]:
    """Those of ``job_ids`` not Done or Failed yet."""
    ids = list(job_ids)
    if not ids:
        return set()
    with db.engine.connect() as connection:
        return set(connection.scalars(select(Job.id).where(Job.id.in_(ids), Job.status.in_(("Queued", "Running")))))


def job_id(db: Database, kind: str, target_id: str) -> str | None:
    with db.engine.connect() as connection:
        return connection.scalar(select(Job.id).where(Job.kind == kind, Job.target_id == target_id))
