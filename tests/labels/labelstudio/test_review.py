"""The review project of flagged labels, round trip against a real Label Studio server."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk import LabelStudio
from sqlalchemy import select

from datatool.analysis.qa import Thresholds, run_qa
from datatool.core.catalogue import (
    Annotation,
    AuditEntry,
    FlagStatus,
    Image,
    QAFlag,
    Rater,
    RaterKind,
    ReviewProject,
    ReviewTask,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.labels.annotations import add_rater, get_rater, latest_annotation
from datatool.labels.labelstudio.formats import results_to_mask
from datatool.labels.labelstudio.push import annotate
from datatool.labels.labelstudio.review import (
    FLAGGED,
    push_review,
    review_config,
    sync_review,
)
from datatool.labels.matching import image_name
from tests.qa_util import P, V, clean, ellipse, images_of, qa_ws, relabel

__all__ = ["qa_ws"]  # the fixture counts as used


@pytest.fixture()
def ls(labelstudio_server):
    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def _server(srv) -> dict:
    return {"url": srv.url, "token": srv.token}


def _flags_of(ws, rater: str) -> dict[int, str]:
    with ws.session() as s:
        r = get_rater(s, rater)
        return {f.id: f.status for f in s.scalars(select(QAFlag)) if f.annotation.rater_id == r.id}


def test_a_review_fixes_the_raters_label_round_trip(qa_ws, labelstudio_server, ls):
    srv = labelstudio_server
    ws = qa_ws
    (image_id, side), (other_id, other_side) = images_of(ws)[:2]
    missed = clean(side, 0, 2.0)
    missed[missed == V["femoral artery"]] = 0  # B missed the artery
    relabel(ws, "B", image_id, missed)
    run_qa(ws)
    [b_flag] = _flags_of(ws, "B")
    pushed = push_review(ws, "B", local_root=srv.local_root, **_server(srv))
    [project] = pushed.projects
    assert project.created and project.store_as == "rater" and project.tasks_created == 1
    pid = project.project_id
    server = ls.projects.get(pid)
    assert server.label_config.strip() == review_config(P).strip()
    assert '<Header value="$flags"' in server.label_config
    assert server.model_version == FLAGGED and server.show_collab_predictions  # pre-loaded
    [task] = list(ls.tasks.list(project=pid, fields="all"))
    assert task.data["image_id"] == image_name(image_id)
    assert f"flag {b_flag}" in task.data["flags"] and "femoral artery" in task.data["flags"]
    predictions = {p.model_version: p.model_dump() for p in (task.predictions or [])}
    assert set(predictions) == {FLAGGED, "A v1"}  # no run: no model draft
    shape = (480, 640)
    shown = results_to_mask(predictions[FLAGGED]["result"], P, shape).mask
    np.testing.assert_array_equal(shown, missed)  # the label in question, pre-loaded
    other = results_to_mask(predictions["A v1"]["result"], P, shape).mask
    np.testing.assert_array_equal(other, clean(side, 0))
    # pushing again adds nothing; a raters' push never sees the review project
    again = push_review(ws, "B", local_root=srv.local_root, **_server(srv))
    assert (again.projects[0].tasks_created, again.projects[0].already) == (0, 1)
    # a stricter check flags more of the same label version: the task's text is updated
    # (it flags B's other labels too: each gets a task of its own)
    run_qa(ws, thresholds=Thresholds(rater_dice_below=0.999, max_flag_share=1.0))
    with ws.session() as s:
        flagged = {f.annotation_id for f in s.scalars(select(QAFlag)) if f.status == "open"}
        reviewed = s.get(QAFlag, b_flag).annotation_id
        others = {a for a in flagged if s.get(Annotation, a).rater_id == get_rater(s, "B").id}
    more = push_review(ws, "B", local_root=srv.local_root, **_server(srv))
    expected = (len(others - {reviewed}), 1)
    assert (more.projects[0].tasks_created, more.projects[0].tasks_updated) == expected
    shown = ls.tasks.get(task.id).data["flags"]
    assert shown != task.data["flags"] and f"flag {b_flag}" in shown
    run_qa(ws)  # back to the default: the extra flags are cleared
    assert set(_flags_of(ws, "B").values()) == {"open", "cleared"}
    with pytest.raises(UsageError, match="chosen when the project is made"):
        push_review(ws, "B", store_as="reviewer", local_root=srv.local_root, **_server(srv))

    # nothing submitted yet: noted, nothing stored
    report = sync_review(ws, "B", **_server(srv))
    assert report.new_versions == 0 and len(report.not_annotated) >= 1 and not report.notes
    # the reviewer draws the artery back and submits
    fixed = clean(side, 0, 2.0)
    annotate(srv.url, srv.token, pid, task.id, fixed, P)
    report = sync_review(ws, "B", **_server(srv))
    assert (report.new_versions, report.rejected, report.flags_fixed) == (1, [], [b_flag])
    with ws.session() as s:
        stored = latest_annotation(s, image_id, get_rater(s, "B").id)
        assert stored.version == 3 and stored.source == "labelstudio"  # v1 clean, v2 missed
        # the flags the task showed: b_flag, and those of the stricter check (cleared since)
        shown_flags, where = stored.source_ref.removeprefix("review of ").split(" (", 1)
        assert str(b_flag) in shown_flags.replace(",", " ").split()
        assert where.startswith(f"project {pid} task ")
        np.testing.assert_array_equal(ws.store.get_array(stored.mask_hash), fixed)
        flag = s.get(QAFlag, b_flag)
        assert flag.status == FlagStatus.fixed and "corrected in Label Studio" in flag.note
        assert s.scalar(select(AuditEntry).where(AuditEntry.command == "sync labelstudio --review"))
    # synced once: a second sync stores nothing
    assert sync_review(ws, "B", **_server(srv)).new_versions == 0
    # A's flag on the same disagreement is cleared by the next check
    assert run_qa(ws).open == 0

    # the rater changes the label after a push: the review is refused, not stored over it
    m = clean(other_side, 1, 2.0)
    ellipse(m, 240 if other_side == "L" else 400, 235, 8, 6, 0)  # a hole in B's femur
    relabel(ws, "B", other_id, m)
    run_qa(ws)
    pushed = push_review(ws, "B", local_root=srv.local_root, **_server(srv))
    assert (pushed.projects[0].tasks_created, pushed.projects[0].already) == (1, 0)
    with ws.session() as s:
        new_task = s.scalar(select(ReviewTask.task_id).where(ReviewTask.image_id == other_id))
    relabel(ws, "B", other_id, clean(other_side, 1, 2.0))  # fixed in ITK-SNAP meanwhile
    annotate(srv.url, srv.token, pid, new_task, clean(other_side, 1, 2.0), P)
    report = sync_review(ws, "B", **_server(srv))
    [(item, reason)] = report.rejected
    assert str(new_task) in item and "changed after the review push" in reason
    assert report.exit_code == 1


def test_a_review_stored_as_the_reviewers_label(qa_ws, labelstudio_server):
    srv = labelstudio_server
    ws = qa_ws
    add_rater(ws, "REV")
    image_id, side = images_of(ws)[3]
    holed = clean(side, 3)
    ellipse(holed, 240 if side == "L" else 400, 235, 8, 6, 0)
    relabel(ws, "A", image_id, holed)
    run_qa(ws)
    [a_flag] = [f for f, status in _flags_of(ws, "A").items() if status == "open"]
    with pytest.raises(UsageError, match="needs --reviewer"):
        push_review(ws, "A", store_as="reviewer", local_root=srv.local_root, **_server(srv))
    with pytest.raises(UsageError, match="own labels"):
        push_review(ws, "A", store_as="reviewer", reviewer="A", local_root=srv.local_root,
                    **_server(srv))  # fmt: skip
    pushed = push_review(
        ws, "A", store_as="reviewer", reviewer="REV", serve="upload", **_server(srv)
    )
    [project] = pushed.projects
    assert (project.store_as, project.reviewer) == ("reviewer", "REV")
    with ws.session() as s:
        row = s.scalar(select(ReviewProject).where(ReviewProject.project_id == project.project_id))
        [task_id] = s.scalars(
            select(ReviewTask.task_id).where(ReviewTask.review_project_id == row.id)
        )
    # the reviewer finds the hole real (a vessel in the bone, say) and submits it unchanged
    annotate(srv.url, srv.token, project.project_id, task_id, holed, P)
    report = sync_review(ws, "A", **_server(srv))
    assert (report.new_versions, report.flags_accepted, report.flags_fixed) == (1, [a_flag], [])
    with ws.session() as s:
        rev = latest_annotation(s, image_id, get_rater(s, "REV").id)
        assert rev.version == 1 and rev.source_ref.startswith(f"review of flag {a_flag} ")
        a = latest_annotation(s, image_id, get_rater(s, "A").id)
        assert a.version == 2  # A's label untouched (version 1 was the clean one)
        assert s.get(QAFlag, a_flag).status == FlagStatus.accepted


def test_nothing_to_review_and_no_project(qa_ws, labelstudio_server):
    srv = labelstudio_server
    report = push_review(qa_ws, local_root=srv.local_root, **_server(srv))
    assert report.projects == [] and "no open flags" in report.notes[0]
    with pytest.raises(DatatoolError, match="no review project"):
        sync_review(qa_ws, **_server(srv))


def test_a_review_task_shows_the_models_draft_beside_the_label(
    trained, tmp_path, labelstudio_server
):
    """With a run behind the flags, the review task holds, as predictions, the label in
    question, the run's whole-image draft and the other raters' latest labels."""
    from datatool.labels.annotations import store_annotations
    from datatool.labels.drafts import draft_ref, model_rater, model_rater_name
    from datatool.learning.training import run_summary
    from tests.qa_util import clone

    srv = labelstudio_server
    source, run = trained
    ws = clone(source, tmp_path / "ws")
    checkpoint = run_summary(ws, run).best_checkpoint
    add_rater(ws, "X")
    imgs = images_of(ws)
    drafts = {image_id: clean(side, k) for k, (image_id, side) in enumerate(imgs)}
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
        store_annotations(
            s, ws.store, model_rater(s, run),
            [(images[i], d, model_rater_name(run), draft_ref(run, checkpoint))
             for i, d in drafts.items()],
            P,
        )  # fmt: skip
    for k, (image_id, side) in enumerate(imgs):
        relabel(ws, "X", image_id, clean(side, k, 2.0))
    image_id, side = imgs[0]
    missed = clean(side, 0, 2.0)
    missed[missed == V["sciatic nerve"]] = 0  # X misses the nerve the model sees
    relabel(ws, "X", image_id, missed)
    run_qa(ws, run=run, raters=["X"])
    with ws.session() as s:
        x = get_rater(s, "X")
        model_flags = [
            f
            for f in s.scalars(select(QAFlag).where(QAFlag.reason == "model_disagreement"))
            if f.annotation.rater_id == x.id
        ]
        assert [(f.annotation.image_id, f.structure, f.run_id) for f in model_flags] == [
            (image_id, "sciatic nerve", run)
        ]
        humans = s.scalars(select(Rater).where(Rater.kind == RaterKind.human, Rater.id != x.id))
        others = {
            f"{r.name} v{label.version}": r.name
            for r in humans
            if (label := latest_annotation(s, image_id, r.id)) is not None
        }
        assert {"rater1", "rater2"} <= set(others.values())
    pushed = push_review(ws, "X", local_root=srv.local_root, **_server(srv))
    [project] = pushed.projects
    ls = LabelStudio(base_url=srv.url, api_key=srv.token)
    [task] = [
        t
        for t in ls.tasks.list(project=project.project_id, fields="all")
        if t.data["image_id"] == image_name(image_id)
    ]
    predictions = {p.model_version: p.model_dump() for p in (task.predictions or [])}
    draft_name = f"model draft (run {run})"
    assert set(predictions) == {FLAGGED, draft_name, *others}
    shape = drafts[image_id].shape

    def shown(name: str) -> np.ndarray:
        return results_to_mask(predictions[name]["result"], P, shape).mask

    np.testing.assert_array_equal(shown(FLAGGED), missed)
    np.testing.assert_array_equal(shown(draft_name), drafts[image_id])
    with ws.session() as s:
        for version, name in others.items():
            label = latest_annotation(s, image_id, get_rater(s, name).id)
            np.testing.assert_array_equal(shown(version), ws.store.get_array(label.mask_hash))
