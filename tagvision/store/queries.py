"""Queries the service needs, kept out of the use cases themselves."""

from __future__ import annotations

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tagvision.store.database import insert_or_skip
from tagvision.store.models import Embedding, Image, ImageTag, Iteration, Project, Tag, TagInformation, utcnow


def project_by_ref(session: Session, ref: str) -> Project | None:
    """A project by id or by name (id first)."""
    return session.scalars(
        select(Project).where(or_(Project.id == ref, Project.name == ref)).order_by((Project.id == ref).desc())
    ).first()


def tag_by_ref(session: Session, project_id: str, ref: str) -> Tag | None:
    return session.scalars(
        select(Tag)
        .where(Tag.project_id == project_id)
        .where(or_(Tag.id == ref, Tag.name == ref))
        .order_by((Tag.id == ref).desc())
    ).first()


def iteration_by_ref(session: Session, project_id: str, ref: str) -> Iteration | None:
    return session.scalars(
        select(Iteration)
        .where(Iteration.project_id == project_id)
        .where(or_(Iteration.id == ref, Iteration.name == ref))
        .order_by((Iteration.id == ref).desc())
    ).first()


def newest_completed_iteration(session: Session, project_id: str) -> Iteration | None:
    return session.scalars(
        select(Iteration)
        .where(Iteration.project_id == project_id, Iteration.status == "Completed")
        .order_by(Iteration.created.desc())
    ).first()


def image_counts_by_tag(session: Session, project_id: str) -> dict[str, int]:
    rows = session.execute(
        select(ImageTag.tag_id, func.count())
        .join(Tag, Tag.id == ImageTag.tag_id)
        .where(Tag.project_id == project_id)
        .group_by(ImageTag.tag_id)
    )
    return {tag_id: count for tag_id, count in rows}


def image_count(session: Session, project_id: str) -> int:
    return session.scalar(select(func.count()).select_from(Image).where(Image.project_id == project_id)) or 0


def existing_hashes(session: Session, project_id: str, hashes: list[str]) -> dict[str, str]:
    """{sha256: image id} for those of ``hashes`` already in the project."""
    found: dict[str, str] = {}
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        found.update(
            session.execute(
                select(Image.sha256, Image.id).where(Image.project_id == project_id, Image.sha256.in_(chunk))
            ).all()
        )
    return found


def tagged_images(session: Session, project_id: str) -> list[tuple[str, str, str]]:
    """(image id, sha256, tag id) for every tagging in the project, in a stable order."""
    rows = session.execute(
        select(Image.id, Image.sha256, ImageTag.tag_id)
        .join(ImageTag, ImageTag.image_id == Image.id)
        .where(Image.project_id == project_id)
        .order_by(Image.created, Image.id, ImageTag.tag_id)
    )
    return [(image_id, sha, tag_id) for image_id, sha, tag_id in rows]


def cached_embedding_hashes(session: Session, backbone: str, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        found.update(
            session.scalars(select(Embedding.sha256).where(Embedding.backbone == backbone, Embedding.sha256.in_(chunk)))
        )
    return found


def add_embeddings(session: Session, rows: list[dict]) -> None:
    """Cache embeddings (``sha256``, ``backbone``, ``plain``, ``flipped``), skipping any another writer cached first."""
    if not rows:
        return
    session.execute(insert_or_skip(session.get_bind().dialect.name, Embedding, rows))


def load_embeddings(session: Session, backbone: str, hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the images and of their mirrors, (len(hashes), dim) each, in order."""
    rows: dict[str, tuple[bytes, bytes]] = {}
    for start in range(0, len(hashes), 500):
        chunk = hashes[start : start + 500]
        for sha, plain_bytes, flipped_bytes in session.execute(
            select(Embedding.sha256, Embedding.plain, Embedding.flipped).where(
                Embedding.backbone == backbone, Embedding.sha256.in_(chunk)
            )
        ):
            rows[sha] = (plain_bytes, flipped_bytes)
    plain = np.stack([np.frombuffer(rows[h][0], dtype="<f4") for h in hashes])
    flipped = np.stack([np.frombuffer(rows[h][1], dtype="<f4") for h in hashes])
    return plain, flipped


def multi_tagged_image_count(session: Session, project_id: str) -> int:
    """How many of the project's images carry more than one tag."""
    per_image = (
        select(ImageTag.image_id)
        .join(Image, Image.id == ImageTag.image_id)
        .where(Image.project_id == project_id)
        .group_by(ImageTag.image_id)
        .having(func.count() > 1)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(per_image)) or 0


def published_iteration(session: Session, project_id: str, publish_name: str) -> Iteration | None:
    return session.scalars(
        select(Iteration).where(Iteration.project_id == project_id, Iteration.publish_name == publish_name)
    ).first()


def add_information_versions(session: Session, versions: dict[str, dict]) -> None:
    """Keep tag information versions (sha256 -> object), skipping those already kept (by anyone)."""
    if not versions:
        return
    rows = [{"sha256": sha, "information": value, "created": utcnow()} for sha, value in versions.items()]
    session.execute(insert_or_skip(session.get_bind().dialect.name, TagInformation, rows))


def information_versions(session: Session, shas: set[str]) -> dict[str, dict]:
    """{sha256: information} of kept versions."""
    found: dict[str, dict] = {}
    wanted = sorted(shas)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(
            session.execute(
                select(TagInformation.sha256, TagInformation.information).where(TagInformation.sha256.in_(chunk))
            ).all()
        )
    return found
