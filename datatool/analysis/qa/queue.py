"""The review queue: the flags ranked worst first, and a reviewer closing one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from datatool.core.catalogue import (
    Annotation,
    FlagReason,
    FlagStatus,
    QAFlag,
    Rater,
    audit,
    current_user,
    utcnow,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.flags import Resolution, describe
from datatool.core.workspace import Workspace
from datatool.labels.annotations import get_rater
from datatool.labels.matching import image_name

REASON_ORDER = list(FlagReason)  # ties in severity: this order (swap and model first)


@dataclass
class QueueItem:
    """One flag, as the queue lists it."""

    rank: int
    flag: int
    image: str
    image_id: int
    rater: str
    version: int
    annotation_id: int
    structure: str
    reason: FlagReason
    severity: float
    status: FlagStatus
    summary: str  # the evidence in words
    priority: int  # 0 first: see PRIORITIES
    evidence: dict[str, Any]
    run: int | None
    created: str
    resolved: str | None = None
    resolved_by: str | None = None
    note: str | None = None


@dataclass
class Queue:
    """Flags ranked worst first: by priority (what a reviewer must see first: a structure
    present for one and absent for the other, a swap, a label of another image; then the
    other disagreements, mirrored images and broken relations; shape and size oddities last),
    then by severity (how far the evidence lies past its threshold, 1 for a clear-cut case),
    ties by reason (in FlagReason order), image and structure."""

    status: str | None  # None: every status
    reasons: list[str]
    raters: list[str]
    total: int  # items matching before the limit
    items: list[QueueItem]
    by_reason: dict[str, int]  # matching items per reason


@dataclass
class Resolved:
    flag: int
    image: str
    rater: str
    structure: str
    reason: FlagReason
    status: FlagStatus
    note: str
    resolved_by: str


FIRST = (FlagReason.swap, FlagReason.wrong_image)
SHAPE = (FlagReason.size, FlagReason.components, FlagReason.holes, FlagReason.edge)
PRIORITIES = {
    0: "a structure present for one and absent for the other (or missing in one frame of a "
    "cine loop), a swap, a label of another image",
    1: "a disagreement in shape or place (also against a loop's neighbouring frames), a "
    "mirrored image, a broken relation",
    2: "a shape or size oddity of one label",
}


def priority(reason: FlagReason | str, evidence: dict[str, Any]) -> int:
    """What a reviewer must see first (0) to last (2): see :data:`PRIORITIES`."""
    reason = FlagReason(reason)
    if reason in FIRST:
        return 0
    if reason == FlagReason.temporal:  # a structure missed in one frame of a loop: first
        return 0 if evidence.get("missing") else 1
    if reason in (FlagReason.rater_disagreement, FlagReason.model_disagreement):
        other = evidence.get("model_area_px", evidence.get("other_area_px"))
        return 0 if not evidence.get("area_px") or not other else 1
    return 2 if reason in SHAPE else 1


def _rank_key(f: QAFlag) -> tuple:
    return (
        priority(f.reason, f.evidence),
        -f.severity,
        REASON_ORDER.index(FlagReason(f.reason)),
        f.image_id,
        f.structure,
        f.id,
    )


def _choices(values: Sequence[str] | None, enum, what: str) -> list[str]:
    out = []
    for v in values or ():
        try:
            out.append(enum(v).value)
        except ValueError:
            raise UsageError(
                f"{what} must be one of {', '.join(e.value for e in enum)}, got {v!r}"
            ) from None
    return out


def list_queue(
    ws: Workspace,
    status: FlagStatus | str | None = FlagStatus.open,
    reasons: Sequence[str] | None = None,
    raters: Sequence[str] | None = None,
    limit: int | None = None,
) -> Queue:
    """The flags, worst first (see :class:`Queue`); ``status`` None lists every status."""
    status_value = None if status is None else _choices([str(status)], FlagStatus, "--status")[0]
    reason_values = _choices(reasons, FlagReason, "--reason")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be 0 (no limit) or more")
    with ws.session() as s:
        names = [get_rater(s, r).name for r in raters or ()]
        query = (
            select(QAFlag, Rater.name, Annotation.version)
            .join(Annotation, Annotation.id == QAFlag.annotation_id)
            .join(Rater, Rater.id == Annotation.rater_id)
        )
        if status_value:
            query = query.where(QAFlag.status == status_value)
        if reason_values:
            query = query.where(QAFlag.reason.in_(reason_values))
        if names:
            query = query.where(Rater.name.in_(names))
        rows = sorted(s.execute(query).all(), key=lambda row: _rank_key(row[0]))
    by_reason: dict[str, int] = defaultdict(int)
    for f, _, _ in rows:
        by_reason[f.reason] += 1
    shown = rows if not limit else rows[:limit]
    items = [
        QueueItem(
            rank=k,
            flag=f.id,
            image=image_name(f.image_id),
            image_id=f.image_id,
            rater=rater,
            version=version,
            annotation_id=f.annotation_id,
            structure=f.structure,
            reason=FlagReason(f.reason),
            severity=f.severity,
            status=FlagStatus(f.status),
            summary=describe(f.reason, f.evidence),
            priority=priority(f.reason, f.evidence),
            evidence=f.evidence,
            run=f.run_id,
            created=f.created_at.isoformat(timespec="seconds"),
            resolved=f.resolved_at.isoformat(timespec="seconds") if f.resolved_at else None,
            resolved_by=f.resolved_by,
            note=f.note,
        )
        for k, (f, rater, version) in enumerate(shown, 1)
    ]
    return Queue(
        status=status_value,
        reasons=reason_values,
        raters=names,
        total=len(rows),
        items=items,
        by_reason={r.value: by_reason[r.value] for r in FlagReason if by_reason.get(r.value)},
    )


def resolve_flag(
    ws: Workspace, flag_id: int, note: str, status: Resolution | str = Resolution.fixed
) -> Resolved:
    """Close an open flag as fixed or accepted, with the reviewer's note (audited)."""
    try:
        resolution = Resolution(status)
    except ValueError:
        raise UsageError(
            f"--status must be one of {', '.join(r.value for r in Resolution)}"
        ) from None
    note = (note or "").strip()
    if not note:
        raise UsageError("a resolution needs a note: --note 'what was found'")
    with ws.session() as s:
        f = s.get(QAFlag, int(flag_id))
        if f is None:
            raise UsageError(f"no flag {flag_id}: see 'datatool qa list'")
        if f.status != FlagStatus.open:
            raise DatatoolError(
                f"flag {f.id} is {f.status} already"
                + (f" ({f.resolved_by}, {f.resolved_at:%Y-%m-%d %H:%M})" if f.resolved_at else "")
                + ": only open flags are resolved"
            )
        f.status = resolution.value
        f.resolved_at, f.resolved_by, f.note = utcnow(), current_user(), note
        rater = f.annotation.rater.name
        audit(
            s,
            "qa resolve",
            "flag",
            flag=f.id,
            status=resolution.value,
            reason=f.reason,
            structure=f.structure,
            annotation=f.annotation_id,
        )
        return Resolved(
            flag=f.id,
            image=image_name(f.image_id),
            rater=rater,
            structure=f.structure,
            reason=FlagReason(f.reason),
            status=FlagStatus(f.status),
            note=note,
            resolved_by=f.resolved_by or "",
        )
