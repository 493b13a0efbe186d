"""Drafts for a rater's cine frames from their own labelled frame of the loop (``datatool
prelabel --propagate``).

A cine is one source file with several catalogued frames. For each loop among the rater's
Label Studio tasks, the frames the rater has labelled (their own latest label in the
catalogue, not empty) draft the loop's other frames by registration (``labels.propagate``:
each frame from the nearest labelled frame, by DICOM frame number). Each draft is attached to
its task as one Label Studio prediction of model version ``datatool-propagate`` (no score),
and the project is set to show that version's predictions.

Provenance: every draft is recorded as handed to the rater (``labels.handouts``, via
``labelstudio``, no run) before it is uploaded, its model version saying where it came from:
``propagated from img000123 frame 1 (rater1's label v2)``.

Blinding: a rater's labels only ever draft that same rater's frames; another rater's labels
are never read. Left alone: frames the rater has labelled (in the catalogue, or annotated on
the server), tasks that already have a ``datatool-propagate`` prediction (a re-run uploads
nothing), stills, and loops the rater has labelled no frame of (nothing to propagate from).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select

from datatool.assist.prelabel import (
    UPLOAD_BATCH,
    _has_version,
    _show_drafts,
    recorded_tasks,
    server_tasks_of,
)
from datatool.core.catalogue import Image, SourceFile, audit
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import in_chunks, labelling_rater, latest_annotations_query
from datatool.labels.handouts import record_handouts
from datatool.labels.labelstudio.connection import (
    rater_server,
)
from datatool.labels.labelstudio.formats import mask_to_results
from datatool.labels.matching import image_name
from datatool.labels.propagate import PROPAGATE_VERSION, Loop, as_grey, propagated_from


@dataclass
class PropagatedDraft:
    """One uploaded draft: the frame drafted and the labelled frame it came from (frames
    1-based, as people count them)."""

    task: int
    image: str
    frame: int
    frames: int  # the loop's frames (the DICOM's NumberOfFrames)
    source_image: str
    source_frame: int
    distance: int  # frames between them
    structures: list[str]  # drafted, by protocol name


@dataclass
class PropagateReport:
    """What a ``prelabel --propagate`` did (no URL, no token)."""

    rater: str
    model_version: str
    projects: list[int]
    tasks: int  # the rater's recorded tasks found on the server
    loops: int  # cine loops among those tasks
    loops_labelled: int  # of them, with a frame the rater has labelled
    drafted: int  # predictions uploaded now
    already: int  # tasks that had a datatool-propagate prediction
    skipped_labelled: int  # frames the rater has labelled (catalogue or server)
    no_labelled_frame: int  # frames of loops the rater has labelled no frame of
    stills: int  # tasks of stills or of loops with one catalogued frame: nothing to propagate
    missing_on_server: list[int]
    drafts: list[PropagatedDraft] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # read, registration, upload
    showing: list[int] = field(default_factory=list)


@dataclass
class _Frame:
    image_id: int
    frame_index: int
    store_hash: str


@dataclass
class _Todo:
    project_id: int
    task_id: int
    image_id: int
    source_file_id: int


def prelabel_propagate(
    ws: Workspace,
    rater: str,
    url: str | None = None,
    token: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PropagateReport:
    """Draft the rater's unlabelled cine frames in Label Studio from their own labelled frame
    of the loop (see the module docstring); returns what was done."""
    protocol = load_protocol(ws.protocol_name)
    with ws.session() as s:
        r = labelling_rater(s, rater, "'prelabel --propagate'")
        rater_id, rater = r.id, r.name
        where = rater_server(s, r, url)
        recorded = {
            pid: [_Todo(pid, tid, iid, sfid) for tid, iid, sfid in tasks]
            for pid, tasks in recorded_tasks(s, rater_id, rater, Image.source_file_id).items()
        }
        files = {t.source_file_id for tasks in recorded.values() for t in tasks}
        loops: dict[int, list[_Frame]] = {}  # source file -> its catalogued frames
        n_frames: dict[int, int] = {}  # source file -> the DICOM's NumberOfFrames
        for chunk in in_chunks(sorted(files)):
            for sfid, n, count in s.execute(
                select(SourceFile.id, SourceFile.n_frames, func.count(Image.id))
                .join(Image, Image.source_file_id == SourceFile.id)
                .where(SourceFile.id.in_(chunk))
                .group_by(SourceFile.id)
            ):
                if count > 1:
                    loops[sfid] = [
                        _Frame(i, k, h)
                        for i, k, h in s.execute(
                            select(Image.id, Image.frame_index, Image.store_hash)
                            .where(Image.source_file_id == sfid)
                            .order_by(Image.frame_index)
                        )
                    ]
                    n_frames[sfid] = max(int(n or 0), loops[sfid][-1].frame_index + 1)
        in_loops = [f.image_id for frames in loops.values() for f in frames]
        own: dict[int, tuple[str, int]] = {}  # image -> (mask hash, version): this rater's
        for chunk in in_chunks(sorted(in_loops)):
            query = latest_annotations_query([rater_id], image_ids=chunk)
            for a in s.scalars(query):
                own[a.image_id] = (a.mask_hash, a.version)
    conn = where.connect(token)
    report = PropagateReport(
        rater=rater,
        model_version=PROPAGATE_VERSION,
        projects=list(recorded),
        tasks=0,
        loops=0,
        loops_labelled=0,
        drafted=0,
        already=0,
        skipped_labelled=0,
        no_labelled_frame=0,
        stills=0,
        missing_on_server=[],
        seconds={"read": 0.0, "registration": 0.0, "upload": 0.0},
    )
    todo: dict[int, list[_Todo]] = {}  # loop -> frames to draft
    shown: set[int] = set()  # projects that hold propagated drafts
    seen_loops: set[int] = set()
    for pid, tasks in recorded.items():
        for t, task in server_tasks_of(conn, pid, rater, tasks):
            if task is None:
                report.missing_on_server.append(t.task_id)
                continue
            report.tasks += 1
            if t.source_file_id not in loops:
                report.stills += 1
                continue
            seen_loops.add(t.source_file_id)
            if _has_version(task, PROPAGATE_VERSION):
                report.already += 1
                shown.add(pid)
            elif task.get("annotations") or t.image_id in own:
                report.skipped_labelled += 1
            else:
                todo.setdefault(t.source_file_id, []).append(t)
    report.loops = len(seen_loops)
    labelled_loops = {sfid for sfid in seen_loops if any(f.image_id in own for f in loops[sfid])}
    report.loops_labelled = len(labelled_loops)
    for sfid in list(todo):
        if sfid not in labelled_loops:
            report.no_labelled_frame += len(todo.pop(sfid))
    total = sum(len(v) for v in todo.values())
    if progress:
        progress(0, total)
    pending: dict[int, list[dict]] = {}
    done = 0

    def upload(pid: int) -> None:
        nonlocal done
        items = pending.pop(pid, [])
        if not items:
            return
        t0 = time.perf_counter()
        conn.call("upload predictions", conn.client.projects.import_predictions, pid, request=items)
        report.seconds["upload"] += time.perf_counter() - t0
        report.drafted += len(items)
        done += len(items)
        if progress:
            progress(done, total)

    for sfid, wanted in todo.items():
        frames = loops[sfid]
        t0 = time.perf_counter()
        grey = np.stack([as_grey(ws.store.get_array(f.store_hash)) for f in frames])
        labels = {
            k: ws.store.get_array(own[f.image_id][0])
            for k, f in enumerate(frames)
            if f.image_id in own
        }
        labels = {k: m for k, m in labels.items() if m.any()}
        t1 = time.perf_counter()
        report.seconds["read"] += t1 - t0
        if not labels:  # only empty label maps: nothing to propagate
            report.no_labelled_frame += len(wanted)
            continue
        result = Loop(grey).propagate(labels, positions=[f.frame_index for f in frames])
        report.seconds["registration"] += time.perf_counter() - t1
        at = {f.image_id: k for k, f in enumerate(frames)}
        handouts = []
        for t in wanted:
            k = at[t.image_id]
            src = frames[result.source[k]]
            draft = result.drafts[k]
            handouts.append(
                (
                    t,
                    src,
                    draft,
                    (
                        t.image_id,
                        None,
                        propagated_from(
                            image_name(src.image_id), src.frame_index, rater, own[src.image_id][1]
                        ),
                        ws.store.put_array(draft),
                    ),
                )
            )
        with ws.session() as s:  # recorded before the rater can see them (labels.handouts)
            record_handouts(s, rater_id, "labelstudio", [h[3] for h in handouts])
        for t, src, draft, _ in handouts:
            frame = frames[at[t.image_id]]
            results = mask_to_results(draft, protocol)
            shown.add(t.project_id)
            pending.setdefault(t.project_id, []).append(
                {"task": t.task_id, "result": results, "model_version": PROPAGATE_VERSION}
            )
            report.drafts.append(
                PropagatedDraft(
                    task=t.task_id,
                    image=image_name(t.image_id),
                    frame=frame.frame_index + 1,
                    frames=n_frames[sfid],
                    source_image=image_name(src.image_id),
                    source_frame=src.frame_index + 1,
                    distance=abs(frame.frame_index - src.frame_index),
                    structures=[
                        protocol.by_label(e["value"]["brushlabels"][0]).name for e in results
                    ],
                )
            )
        for pid in list(pending):
            if len(pending[pid]) >= UPLOAD_BATCH:
                upload(pid)
    for pid in list(pending):
        upload(pid)
    report.showing = sorted(shown)
    for pid in report.showing:
        _show_drafts(conn, pid, PROPAGATE_VERSION)
    with ws.session() as s:
        audit(
            s,
            "prelabel",
            "propagated drafts",
            rater=rater,
            model_version=PROPAGATE_VERSION,
            projects=list(recorded),
            drafted=report.drafted,
            already=report.already,
            skipped_labelled=report.skipped_labelled,
            sources=sorted({(d.image, d.source_image) for d in report.drafts}),
        )
    return report
