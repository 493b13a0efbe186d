"""A run's whole-image drafts, stored as annotations of rater ``model:RUN``.

``datatool score`` stores its predictions (made on the model's frame, background outside the
crop) as versions of rater ``model:RUN``; whole-image drafts (``learning.inference``) go to the
same rater, told apart by their ``source_ref``: ``draft of run RUN checkpoint DIGEST12``. A
draft is found again by that reference (any version, not only the latest), so the checks and
the review that use a run's drafts predict each image once per checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from datatool.core.catalogue import Annotation, Rater, RaterKind, audit
from datatool.labels.annotations import in_chunks


class DraftRow(NamedTuple):
    """A stored draft: its annotation's id, image, version, mask and reference."""

    id: int
    image_id: int
    version: int
    mask_hash: str
    source_ref: str


def model_rater_name(run_id: int) -> str:
    return f"model:{run_id}"


def draft_ref(run_id: int, checkpoint: str) -> str:
    """The ``source_ref`` of a whole-image draft of this run's checkpoint (store hash)."""
    return f"draft of run {run_id} checkpoint {checkpoint[:12]}"


def model_rater(session: Session, run_id: int, create: bool = True) -> Rater | None:
    """Rater ``model:RUN`` (made, and audited, when ``create`` and not there yet)."""
    name = model_rater_name(run_id)
    rater = session.scalar(select(Rater).where(Rater.name == name))
    if rater is None and create:
        rater = Rater(name=name, kind=RaterKind.model)
        session.add(rater)
        session.flush()
        audit(session, "qa", "rater", name=name, kind=RaterKind.model.value)
    return rater


def drafts_of(
    session: Session,
    run_id: int,
    image_ids: Iterable[int] | None = None,
    checkpoint: str | None = None,
) -> dict[int, DraftRow]:
    """image id -> the newest whole-image draft of the run (of this checkpoint when given,
    else of any), for the images given (default: all)."""
    rater = model_rater(session, run_id, create=False)
    if rater is None:
        return {}
    pattern = (
        draft_ref(run_id, checkpoint) if checkpoint else f"{draft_ref(run_id, '')}%"
    )  # any checkpoint: 'draft of run RUN checkpoint %'
    newest = (
        select(Annotation.image_id, func.max(Annotation.version).label("version"))
        .where(Annotation.rater_id == rater.id, Annotation.source_ref.like(pattern))
        .group_by(Annotation.image_id)
    )
    found: dict[int, DraftRow] = {}
    chunks = [None] if image_ids is None else list(in_chunks(sorted(set(image_ids))))
    for chunk in chunks:
        query = newest if chunk is None else newest.where(Annotation.image_id.in_(chunk))
        sub = query.subquery()
        for row in session.execute(
            select(
                Annotation.id,
                Annotation.image_id,
                Annotation.version,
                Annotation.mask_hash,
                Annotation.source_ref,
            ).join(
                sub,
                (Annotation.image_id == sub.c.image_id)
                & (Annotation.version == sub.c.version)
                & (Annotation.rater_id == rater.id),
            )
        ):
            found[row.image_id] = DraftRow(
                row.id, row.image_id, row.version, row.mask_hash, row.source_ref or ""
            )
    return found
