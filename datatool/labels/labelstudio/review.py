"""Label Studio review projects: a reviewer corrects flagged labels in the tool they know.

``push_review`` makes (or updates) one review project per reviewed rater, holding the rater's
label versions that have open QA flags (``datatool qa``): one task per flagged label version,
with the flags in words above the image and, as predictions, the label in question (the one
Label Studio pre-loads when the reviewer opens the task), the run's whole-image draft and the
other raters' latest labels, to compare side by side. Review projects are recorded apart from
the raters' own projects (``qa_review_projects``, ``qa_review_tasks``), so pushing or syncing
a rater never touches them, and the raters' own projects stay blind.

``sync_review`` takes each task's latest submitted annotation and, as chosen when the project
was made (``store_as``), stores it as the reviewed rater's next label version (provenance in
``source_ref``: ``review of flag ID``; refused when the rater's label changed after the push)
or as the reviewer's own label. The flags shown in the task are closed: *fixed* when the
review changed the label, *accepted* when the reviewer kept it as it was. A review synced
once is not stored again unless the reviewer changed it. Everything is audited.

It reuses the pieces of ``sync``: the connection, serving the PNGs and picking annotations.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from datatool.core.catalogue import (
    Annotation,
    FlagStatus,
    Image,
    QAFlag,
    Rater,
    RaterKind,
    ReviewProject,
    ReviewTask,
    Run,
    audit,
    current_user,
    utcnow,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.flags import describe
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import Workspace
from datatool.labels.annotations import (
    SyncReport,
    get_rater,
    labelling_rater,
    latest_annotation,
    latest_annotations_query,
    store_annotation,
)
from datatool.labels.drafts import drafts_of
from datatool.labels.frames import frame_places
from datatool.labels.labelstudio.connection import (
    Connection,
    _server_project,
    _server_tasks,
    connect,
)
from datatool.labels.labelstudio.formats import mask_to_results, results_to_mask
from datatool.labels.labelstudio.modes import ReviewStoreAs, ServeMode
from datatool.labels.labelstudio.push import (
    IMPORT_BATCH,
    TITLE_LEN,
    _check_title,
    _local_root,
    _serve_local,
    _serve_mode,
    _serve_upload,
    import_task_batch,
)
from datatool.labels.labelstudio.sync import _pick_annotation
from datatool.labels.masks import BadLabel, validate_mask
from datatool.labels.matching import image_name

FLAGGED = "label in question"  # the prediction Label Studio pre-loads (the project's model_version)
MODEL = "model draft"
REF_LEN = 256  # Annotation.source_ref


# --------------------------------------------------------------------------- results


@dataclass
class ReviewProjectPushed:
    """One reviewed rater's review project after a push."""

    rater: str
    project_id: int
    title: str
    created: bool
    store_as: ReviewStoreAs
    reviewer: str | None
    labels: int  # flagged label versions of the rater now (open flags)
    tasks_created: int
    tasks_updated: int  # tasks whose flags changed since they were pushed (text refreshed)
    already: int  # tasks already there, unchanged
    recovered: int  # tasks of an interrupted push, recorded instead of made twice


@dataclass
class ReviewPushReport:
    projects: list[ReviewProjectPushed]
    serve: ServeMode
    notes: list[str] = field(default_factory=list)


@dataclass
class ReviewSyncReport(SyncReport):
    """A review sync: the sync counts, and the flags it closed."""

    flags_fixed: list[int] = field(default_factory=list)
    flags_accepted: list[int] = field(default_factory=list)
    projects: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return super().as_dict() | {
            "flags_fixed": self.flags_fixed,
            "flags_accepted": self.flags_accepted,
            "projects": self.projects,
        }


# --------------------------------------------------------------------------- push


@dataclass
class _Pending:
    """A flagged label version to review: the label, its flags, what to show beside it."""

    annotation_id: int
    image_id: int
    store_hash: str
    flags: list[int]
    text: str
    predictions: list[dict] = field(default_factory=list)


def review_config(protocol: Protocol) -> str:
    """The protocol's labelling config with the task's flags in words above the image."""
    view = ET.fromstring(protocol.labelstudio_config())
    view.insert(0, ET.Element("Header", value="$flags"))
    ET.indent(view, "  ")
    return ET.tostring(view, encoding="unicode") + "\n"


def _describe(flag: QAFlag) -> str:
    return (
        f"flag {flag.id}: {flag.structure}, {flag.reason.replace('_', ' ')}: "
        f"{describe(flag.reason, flag.evidence or {})}"
    )


def _prediction(name: str, mask: np.ndarray, protocol: Protocol, score: float = 1.0) -> dict:
    return {"model_version": name, "score": score, "result": mask_to_results(mask, protocol)}


def _plan(
    s: Session,
    ws: Workspace,
    rater: Rater,
    run: int | None,
    protocol: Protocol,
) -> list[_Pending]:
    """The rater's label versions with open flags, with their predictions."""
    flags_by_ann: dict[int, list[QAFlag]] = defaultdict(list)
    for f in s.scalars(
        select(QAFlag)
        .join(Annotation, Annotation.id == QAFlag.annotation_id)
        .where(QAFlag.status == FlagStatus.open, Annotation.rater_id == rater.id)
        .order_by(QAFlag.annotation_id, QAFlag.id)
    ):
        flags_by_ann[f.annotation_id].append(f)
    if not flags_by_ann:
        return []
    anns = {
        a.id: a for a in s.scalars(select(Annotation).where(Annotation.id.in_(list(flags_by_ann))))
    }
    image_ids = sorted({a.image_id for a in anns.values()})
    images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(image_ids)))}
    places = frame_places(s, image_ids)  # a cine's frame says its file and frame
    sub = latest_annotations_query().subquery()
    others: dict[int, list[tuple[str, Annotation]]] = defaultdict(list)
    for a, name in s.execute(
        select(Annotation, Rater.name)
        .join(sub, sub.c.id == Annotation.id)
        .join(Rater, Rater.id == Annotation.rater_id)
        .where(
            Annotation.image_id.in_(image_ids),
            Rater.kind == RaterKind.human,
            Rater.id != rater.id,
        )
        .order_by(Rater.name)
    ):
        others[a.image_id].append((name, a))
    pending = []
    for ann_id, flags in flags_by_ann.items():
        ann = anns[ann_id]
        runs = [f.run_id for f in flags if f.run_id is not None]
        draft_run = run if run is not None else (max(runs) if runs else None)
        draft = drafts_of(s, draft_run, [ann.image_id]).get(ann.image_id) if draft_run else None
        place = places.get(ann.image_id)
        named = image_name(ann.image_id) + (f" ({place})" if place else "")
        text = f"Review of {rater.name}'s label v{ann.version} of {named}: " + (
            "; ".join(_describe(f) for f in flags)
        )
        predictions = [_prediction(FLAGGED, ws.store.get_array(ann.mask_hash), protocol)]
        if draft is not None:
            predictions.append(
                _prediction(
                    f"{MODEL} (run {draft_run})", ws.store.get_array(draft.mask_hash), protocol
                )
            )
        for name, other in others.get(ann.image_id, []):
            predictions.append(
                _prediction(
                    f"{name} v{other.version}", ws.store.get_array(other.mask_hash), protocol
                )
            )
        pending.append(
            _Pending(
                annotation_id=ann_id,
                image_id=ann.image_id,
                store_hash=images[ann.image_id].store_hash,
                flags=[f.id for f in flags],
                text=text,
                predictions=predictions,
            )
        )
    return pending


def _task_data(url: str, p: _Pending) -> dict:
    return {
        "image": url,
        "image_id": image_name(p.image_id),
        "review_of": str(p.annotation_id),
        "flags": p.text,
    }


def _review_project(
    conn: Connection,
    ws: Workspace,
    rater: Rater,
    store_as: ReviewStoreAs | None,
    reviewer: Rater | None,
    protocol: Protocol,
    title: str | None,
) -> tuple[int, int, str, bool, ReviewStoreAs, str | None]:
    """(row id, server id, title, created, store_as, reviewer) of the rater's review project:
    the recorded one (its mode cannot change), or a new one."""
    with ws.session() as s:
        row = s.scalar(
            select(ReviewProject)
            .where(ReviewProject.rater_id == rater.id)
            .order_by(ReviewProject.id.desc())
            .limit(1)
        )
        if row is not None:
            mode = ReviewStoreAs(row.store_as)
            recorded_reviewer = row.reviewer.name if row.reviewer is not None else None
            if (store_as is not None and store_as != mode) or (
                reviewer is not None and reviewer.name != recorded_reviewer
            ):
                raise UsageError(
                    f"the review project {row.project_id} of {rater.name} stores reviews as "
                    f"{mode.value}"
                    + (f" {recorded_reviewer}" if recorded_reviewer else "")
                    + ": leave out --store-as and --reviewer (the mode is chosen when the "
                    "project is made)"
                )
            _server_project(conn, row.project_id, rater.name)
            return row.id, row.project_id, row.title, False, mode, recorded_reviewer
    mode = store_as or ReviewStoreAs.rater
    if mode is ReviewStoreAs.reviewer and reviewer is None:
        raise UsageError("--store-as reviewer needs --reviewer NAME (a registered rater)")
    if mode is ReviewStoreAs.rater and reviewer is not None:
        raise UsageError("--reviewer goes with --store-as reviewer")
    project_title = title or _check_title(
        f"review of {rater.name} ({protocol.name})"[: TITLE_LEN[1]]
    )
    made = conn.call(
        "create a review project",
        conn.client.projects.create,
        title=project_title,
        label_config=review_config(protocol),
        description=f"datatool review of rater {rater.name}'s flagged labels "
        f"({protocol.title or protocol.name}). The label in question is pre-loaded; the "
        "model's draft and the other raters' labels are predictions to compare.",
        show_collab_predictions=True,
        model_version=FLAGGED,
    )
    pid = int(made.id)
    with ws.session() as s:
        row = ReviewProject(
            project_id=pid,
            rater_id=rater.id,
            store_as=mode.value,
            reviewer_id=reviewer.id if reviewer is not None else None,
            title=project_title,
        )
        s.add(row)
        s.flush()
        audit(
            s,
            "labelstudio push --review",
            "project create",
            project_id=pid,
            rater=rater.name,
            store_as=mode.value,
            reviewer=reviewer.name if reviewer is not None else None,
        )
        return row.id, pid, project_title, True, mode, reviewer.name if reviewer else None


def push_review(
    ws: Workspace,
    rater: str | None = None,
    url: str | None = None,
    token: str | None = None,
    store_as: ReviewStoreAs | str | None = None,
    reviewer: str | None = None,
    run: int | None = None,
    serve: ServeMode | str = ServeMode.local,
    local_root: Path | str | None = None,
    title: str | None = None,
) -> ReviewPushReport:
    """Make or update the review project of ``rater`` (default: of every rater with open
    flags) with one task per flagged label version not yet there."""
    serve = _serve_mode(serve)
    root = _local_root(local_root) if serve is ServeMode.local else None
    mode = None if store_as is None else _store_as(store_as)
    protocol = load_protocol(ws.protocol_name)
    if title is not None:
        title = _check_title(title)
    with ws.session() as s:
        if run is not None and s.get(Run, run) is None:
            raise UsageError(f"no run {run}: 'datatool runs' lists them")
        who = labelling_rater(s, reviewer, "a review") if reviewer else None
        if rater:
            raters = [get_rater(s, rater)]
        else:
            raters = list(
                s.scalars(
                    select(Rater)
                    .join(Annotation, Annotation.rater_id == Rater.id)
                    .join(QAFlag, QAFlag.annotation_id == Annotation.id)
                    .where(QAFlag.status == FlagStatus.open)
                    .distinct()
                    .order_by(Rater.name)
                )
            )
        if who is not None and any(r.id == who.id for r in raters):
            raise UsageError(f"reviewer {who.name} cannot review their own labels")
        if title is not None and len(raters) > 1:
            raise UsageError("--title names one project: give --rater too")
    report = ReviewPushReport(projects=[], serve=serve)
    if not raters:
        report.notes.append("no open flags to review: run 'datatool qa' first")
        return report
    conn = connect(url, token)
    for r in raters:
        with ws.session() as s:
            pending = _plan(s, ws, r, run, protocol)
        if not pending:
            report.notes.append(f"rater {r.name}: no open flags to review")
            continue
        report.projects.append(
            _push_one(conn, ws, r, pending, mode, who, protocol, title, root, serve)
        )
    return report


def _store_as(value: ReviewStoreAs | str) -> ReviewStoreAs:
    try:
        return ReviewStoreAs(value)
    except ValueError:
        raise UsageError(
            f"--store-as must be one of {', '.join(m.value for m in ReviewStoreAs)}"
        ) from None


def _push_one(
    conn: Connection,
    ws: Workspace,
    rater: Rater,
    pending: list[_Pending],
    mode: ReviewStoreAs | None,
    reviewer: Rater | None,
    protocol: Protocol,
    title: str | None,
    root: Path | None,
    serve: ServeMode,
) -> ReviewProjectPushed:
    row_id, pid, project_title, created, mode, reviewer_name = _review_project(
        conn, ws, rater, mode, reviewer, protocol, title
    )
    with ws.session() as s:
        recorded = {
            t.annotation_id: (t.id, t.task_id, list(t.flags))
            for t in s.scalars(select(ReviewTask).where(ReviewTask.review_project_id == row_id))
        }
    server = {int(t["id"]): t.get("data") or {} for t in _server_tasks(conn, pid, False)}
    # tasks of an interrupted push: on the server, not recorded
    adopted: dict[int, int] = {}
    wanted = {p.annotation_id: p for p in pending}
    for tid, data in server.items():
        try:
            ann_id = int(str(data.get("review_of", "")))
        except ValueError:
            continue
        if ann_id in wanted and ann_id not in recorded and tid not in adopted.values():
            adopted[ann_id] = tid
    updated = already = 0
    todo = []
    for p in pending:
        if p.annotation_id in adopted:
            continue
        if p.annotation_id not in recorded:
            todo.append(p)
            continue
        _, tid, shown = recorded[p.annotation_id]
        if sorted(shown) != sorted(p.flags) and tid in server:
            data = dict(server[tid]) | {"flags": p.text}
            conn.call("update a review task", conn.client.tasks.update, tid, data=data)
            with ws.session() as s:
                t = s.scalar(
                    select(ReviewTask).where(
                        ReviewTask.review_project_id == row_id, ReviewTask.task_id == tid
                    )
                )
                assert t is not None
                t.flags = p.flags
            updated += 1
        else:
            already += 1
    if adopted:
        with ws.session() as s:
            s.add_all(
                ReviewTask(
                    review_project_id=row_id,
                    task_id=tid,
                    image_id=wanted[ann_id].image_id,
                    annotation_id=ann_id,
                    flags=wanted[ann_id].flags,
                )
                for ann_id, tid in adopted.items()
            )
    created_tasks = 0
    if todo:
        images = sorted({(p.image_id, p.store_hash) for p in todo})
        urls = (
            _serve_local(conn, ws, pid, root, images)
            if root is not None
            else _serve_upload(conn, ws, pid, images)
        )
        for start in range(0, len(todo), IMPORT_BATCH):
            batch = todo[start : start + IMPORT_BATCH]
            request = [
                {"data": _task_data(urls[p.image_id], p), "predictions": p.predictions}
                for p in batch
            ]
            task_ids = import_task_batch(conn, pid, request, "flagged labels", "push --review")
            with ws.session() as s:
                s.add_all(
                    ReviewTask(
                        review_project_id=row_id,
                        task_id=int(tid),
                        image_id=p.image_id,
                        annotation_id=p.annotation_id,
                        flags=p.flags,
                    )
                    for p, tid in zip(batch, task_ids)
                )
            created_tasks += len(batch)
    with ws.session() as s:
        audit(
            s,
            "labelstudio push --review",
            "tasks import",
            project_id=pid,
            rater=rater.name,
            created=created_tasks,
            updated=updated,
            adopted=len(adopted),
            already=already,
            serve=serve.value,
        )
    return ReviewProjectPushed(
        rater=rater.name,
        project_id=pid,
        title=project_title,
        created=created,
        store_as=mode,
        reviewer=reviewer_name,
        labels=len(pending),
        tasks_created=created_tasks,
        tasks_updated=updated,
        already=already,
        recovered=len(adopted),
    )


# --------------------------------------------------------------------------- sync


def _close(s: Session, flag_ids: Sequence[int], status: FlagStatus, note: str) -> list[int]:
    closed = []
    now, who = utcnow(), current_user()
    for f in s.scalars(select(QAFlag).where(QAFlag.id.in_(list(flag_ids)))):
        if f.status == FlagStatus.open:
            f.status, f.resolved_at, f.resolved_by, f.note = status.value, now, who, note
            closed.append(f.id)
    return closed


def _ref(flags: Sequence[int], where: str) -> str:
    ids = ", ".join(str(i) for i in flags)
    text = f"review of flag{'s' if len(flags) > 1 else ''} {ids} ({where})"
    return text if len(text) <= REF_LEN else text[: REF_LEN - 1] + "…"


def sync_review(
    ws: Workspace,
    rater: str | None = None,
    url: str | None = None,
    token: str | None = None,
    allow_empty: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReviewSyncReport:
    """Bring the reviews in from the review project of ``rater`` (default: every review
    project), stored as each project's mode says; the flags shown are closed."""
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        query = select(ReviewProject).order_by(ReviewProject.id)
        if rater:
            query = query.where(ReviewProject.rater_id == get_rater(s, rater).id)
        projects = [
            (p.id, p.project_id, p.rater.name, ReviewStoreAs(p.store_as), p.reviewer_id)
            for p in s.scalars(query)
        ]
        tasks = {
            row_id: {
                t.task_id: t.id
                for t in s.scalars(select(ReviewTask).where(ReviewTask.review_project_id == row_id))
            }
            for row_id, *_ in projects
        }
    report = ReviewSyncReport(source="labelstudio review", rater=rater or "all")
    if not projects:
        raise DatatoolError(
            "no review project"
            + (f" for rater {rater}" if rater else "")
            + ": run 'datatool labelstudio push --review' first"
        )
    conn = connect(url, token)
    fetched = []
    for row_id, pid, name, mode, reviewer_id in projects:
        _server_project(conn, pid, name)
        fetched.append((row_id, pid, name, mode, reviewer_id, _server_tasks(conn, pid, True)))
    total = sum(len(f[-1]) for f in fetched)
    done = 0
    with ws.session() as s:
        for row_id, pid, name, mode, reviewer_id, server_tasks in fetched:
            report.projects.append(pid)
            reviewed = get_rater(s, name)
            reviewer = s.get(Rater, reviewer_id) if reviewer_id else None
            for task in sorted(server_tasks, key=lambda t: int(t["id"])):
                tid = int(task["id"])
                report.seen += 1
                item = f"review project {pid} task {tid}"
                row_pk = tasks[row_id].get(tid)
                if row_pk is None:
                    report.rejected.append(
                        (item, "not a task datatool pushed for review: not stored")
                    )
                else:
                    _sync_task(
                        s, ws, protocol, s.get_one(ReviewTask, row_pk), task, item, pid, reviewed,
                        mode, reviewer, allow_empty, report,
                    )  # fmt: skip
                done += 1
                if progress:
                    progress(done, total)
        audit(
            s,
            "sync labelstudio --review",
            "server",
            projects=report.projects,
            seen=report.seen,
            new_versions=report.new_versions,
            unchanged=report.unchanged,
            rejected=len(report.rejected),
            flags_fixed=report.flags_fixed,
            flags_accepted=report.flags_accepted,
        )
    return report


def _sync_task(
    s: Session,
    ws: Workspace,
    protocol: Protocol,
    rt: ReviewTask,
    task: dict,
    item: str,
    pid: int,
    reviewed: Rater,
    mode: ReviewStoreAs,
    reviewer: Rater | None,
    allow_empty: bool,
    report: ReviewSyncReport,
) -> None:
    data = task.get("data") or {}
    if str(data.get("review_of")) != str(rt.annotation_id):
        report.rejected.append(
            (item, f"its data does not name the label datatool pushed ({rt.annotation_id})")
        )
        return
    item = f"{item} ({image_name(rt.image_id)})"
    picked = _pick_annotation(task, item, report)
    if picked is None:
        return
    ls_id = int(picked.get("id") or 0)
    stamp = str(picked.get("updated_at") or picked.get("created_at") or "")[:40]
    if rt.ls_annotation_id == ls_id and rt.ls_updated == stamp:
        report.unchanged += 1  # synced before, not changed since
        return
    image = s.get(Image, rt.image_id)
    assert image is not None
    shape = (image.rows, image.cols)
    try:
        converted = results_to_mask(picked.get("result") or [], protocol, shape)
        mask = validate_mask(converted.mask, protocol, shape, allow_empty=allow_empty)
    except BadLabel as exc:
        report.rejected.append((item, str(exc)))
        return
    for note in converted.notes:
        report.notes.append((item, note))
    flagged = s.get(Annotation, rt.annotation_id)
    assert flagged is not None
    where = f"project {pid} task {rt.task_id} annotation {ls_id}"
    ref = _ref(rt.flags, where)
    if mode is ReviewStoreAs.rater:
        base = rt.stored_annotation_id or rt.annotation_id
        latest = latest_annotation(s, rt.image_id, reviewed.id)
        if latest is None or latest.id != base:
            report.rejected.append(
                (
                    item,
                    f"{reviewed.name}'s label changed after the review push (now version "
                    f"{latest.version if latest else '-'}): not stored; push --review again",
                )
            )
            return
        target = reviewed
    else:
        assert reviewer is not None
        target = reviewer
    # the flags shown are closed first: a new version of the label would supersede them
    if pixel_digest(mask) == flagged.mask_hash:
        report.flags_accepted += _close(
            s, rt.flags, FlagStatus.accepted, f"reviewed in Label Studio ({where}): kept as it is"
        )
    else:
        whose = "" if target.id == reviewed.id else f" as the reviewer {target.name}'s label"
        report.flags_fixed += _close(
            s, rt.flags, FlagStatus.fixed, f"corrected in Label Studio ({where}){whose}"
        )
    stored = store_annotation(s, ws.store, image, target, mask, "labelstudio", ref, protocol)
    if stored.created:
        report.new_versions += 1
    else:
        report.unchanged += 1
    rt.stored_annotation_id = stored.annotation_id
    rt.ls_annotation_id, rt.ls_updated = ls_id, stamp
