"""Writing the flags the rules found into the catalogue, in one transaction."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import select

from datatool.analysis.qa.inputs import _Inputs
from datatool.analysis.qa.rules import _Found
from datatool.core.catalogue import FlagReason, FlagStatus, QAFlag, audit, current_user, utcnow
from datatool.core.workspace import Workspace
from datatool.labels.annotations import in_chunks, latest_annotations_query


def _record(
    ws: Workspace,
    inputs: _Inputs,
    found: list[_Found],
    checked: set[tuple[int, FlagReason, str | None]],
) -> tuple[dict[FlagReason, dict[str, int]], int, int]:
    """Write the flags in one transaction: new ones added, open ones refreshed, cleared ones
    reopened, open ones no longer found cleared, flags of replaced versions superseded."""
    counts: dict[FlagReason, dict[str, int]] = {
        r: defaultdict(int) for r in FlagReason
    }  # found, new, reopened, kept_closed, cleared
    now, who = utcnow(), current_user()
    ids = sorted({lab.annotation_id for lab in inputs.checked})
    with ws.session() as s:
        existing: dict[tuple[int, str, str], QAFlag] = {}
        for chunk in in_chunks(ids):
            for flag in s.scalars(select(QAFlag).where(QAFlag.annotation_id.in_(chunk))):
                existing[(flag.annotation_id, flag.structure, flag.reason)] = flag
        added: list[QAFlag] = []
        changed: dict[str, list[int]] = defaultdict(list)
        seen = set()
        for f in found:
            key = (f.annotation_id, f.structure, f.reason.value)
            seen.add(key)
            c = counts[f.reason]
            c["found"] += 1
            old = existing.get(key)
            severity = round(float(f.severity), 4)
            if old is None:
                row = QAFlag(
                    image_id=f.image_id,
                    annotation_id=f.annotation_id,
                    structure=f.structure,
                    reason=f.reason.value,
                    severity=severity,
                    evidence=f.evidence,
                    run_id=f.run,
                    status=FlagStatus.open.value,
                    created_at=now,
                    updated_at=now,
                )
                s.add(row)
                added.append(row)
                c["new"] += 1
                continue
            if old.status == FlagStatus.cleared:
                old.status = FlagStatus.open.value
                old.resolved_at = old.resolved_by = old.note = None
                changed["reopened"].append(old.id)
                c["reopened"] += 1
            elif old.status != FlagStatus.open:
                c["kept_closed"] += 1
                continue
            if old.evidence != f.evidence or old.severity != severity or old.run_id != f.run:
                old.evidence, old.severity, old.run_id, old.updated_at = (
                    f.evidence,
                    severity,
                    f.run,
                    now,
                )
                changed["refreshed"].append(old.id)
        for key, old in existing.items():
            annotation_id, structure, reason = key
            if old.status != FlagStatus.open or key in seen:
                continue
            reason_enum = FlagReason(reason)
            if (annotation_id, reason_enum, None) in checked or (
                annotation_id,
                reason_enum,
                structure,
            ) in checked:
                old.status = FlagStatus.cleared.value
                old.resolved_at, old.resolved_by = now, who
                old.note = "a later check of the same label version no longer finds it"
                changed["cleared"].append(old.id)
                counts[reason_enum]["cleared"] += 1
        superseded = _sweep_superseded(s, now, who)
        s.flush()
        audit(
            s,
            "qa",
            "check",
            labels=len(ids),
            new=[row.id for row in added],
            reopened=changed["reopened"],
            cleared=changed["cleared"],
            refreshed=len(changed["refreshed"]),
            superseded=superseded,
        )
        open_by_reason: dict[str, int] = defaultdict(int)
        for (reason,) in s.execute(select(QAFlag.reason).where(QAFlag.status == FlagStatus.open)):
            open_by_reason[reason] += 1
    for r in FlagReason:
        counts[r]["open"] = open_by_reason.get(r.value, 0)
    return counts, len(superseded), sum(open_by_reason.values())


def _sweep_superseded(s, now, who) -> list[int]:
    """Open flags of label versions that are no longer the latest: superseded."""
    latest = latest_annotations_query().subquery()
    stale = list(
        s.scalars(
            select(QAFlag)
            .outerjoin(latest, latest.c.id == QAFlag.annotation_id)
            .where(QAFlag.status == FlagStatus.open, latest.c.id.is_(None))
        )
    )
    for f in stale:
        f.status = FlagStatus.superseded.value
        f.resolved_at, f.resolved_by = now, who
        f.note = "closed by a new version of the label"
    return [f.id for f in stale]
