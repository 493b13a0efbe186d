"""Cine loops in Label Studio: every frame of a cine is an image like a still: one task each,
named by its file and frame, and its annotation synced back to that frame. Checked on the
demo's data made with a 3-frame cine (and two stills), with the demo rater's own label map of
each frame, at the payload level and against the suite's real Label Studio server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from label_studio_sdk import LabelStudio
from sqlalchemy import select

from datatool.core.catalogue import (
    FlagReason,
    FlagStatus,
    Image,
    LabelStudioProject,
    LabelStudioTask,
    QAFlag,
    SourceFile,
)
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, latest_annotation
from datatool.labels.frames import frame_names, frame_places
from datatool.labels.labelstudio.formats import mask_to_results, results_to_mask
from datatool.labels.labelstudio.push import _is_our_task_data, _task_data, annotate, push
from datatool.labels.labelstudio.review import push_review
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.labels.matching import image_name

P = load_protocol()


@pytest.fixture(scope="module")
def cine_demo(tmp_path_factory) -> Path:
    """One demo patient: a still on each side and a 3-frame cine (480 x 640) on one."""
    from datatool.demo.generator import write_demo_dataset

    out = tmp_path_factory.mktemp("cine-demo")
    made = write_demo_dataset(
        out, patients=1, seed=7, images_per_side=(1, 1), cines=1, cine_frames=3
    )
    assert made.cines == 1 and len(list(out.rglob("*_cine.dcm"))) == 1
    return out


@pytest.fixture()
def cine_ws(ws, cine_demo):
    report = ingest(ws, [cine_demo / "dicom"], workers=0)
    assert report.ingested == 3 and report.images_added == 5, report.rejected
    return ws


def _rater1(cine_demo: Path) -> np.ndarray:
    """The demo rater 1's label maps of the cine's frames (N x H x W, frame k at k)."""
    (path,) = (cine_demo / "labels" / "rater1").rglob("*_cine.nii.gz")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.uint8)


def _cine(ws) -> tuple[list[Image], list[Image], int]:
    """(the cine's frames in order, the stills, the cine's source file id)."""
    with ws.session() as s:
        images = list(s.scalars(select(Image).order_by(Image.id)))
        cine_file = s.scalar(select(SourceFile.id).where(SourceFile.n_frames == 3))
    frames = sorted(
        (i for i in images if i.source_file_id == cine_file), key=lambda i: i.frame_index
    )
    return frames, [i for i in images if i.source_file_id != cine_file], cine_file


def test_frames_are_named_by_file_and_frame_and_stills_are_not(cine_ws):
    frames, stills, cine_file = _cine(cine_ws)
    with cine_ws.session() as s:
        names = frame_names(s, [i.id for i in frames + stills])
        places = frame_places(s, [i.id for i in stills])
    assert places == {}
    assert names == {
        f.id: f"{image_name(f.id)} (cine file {cine_file}, frame {k} of 3)"
        for k, f in enumerate(frames, 1)
    }
    for name in names.values():  # never the original folders (the demo's are MRNs)
        assert "/" not in name and "MRN" not in name and "dicom" not in name


def test_a_frames_task_payload_round_trips_without_a_server(cine_ws, cine_demo):
    """What push sends for a frame, and what sync reads back, at the frame's own size."""
    frames, _, cine_file = _cine(cine_ws)
    truth = _rater1(cine_demo)
    assert truth.shape == (3, frames[0].rows, frames[0].cols)
    frame = frames[2]
    with cine_ws.session() as s:
        name = frame_names(s, [frame.id])[frame.id]
    url = f"/data/local-files/?d=datatool/9/{image_name(frame.id)}.png"
    data = _task_data(url, image_name(frame.id), name)
    assert data == {
        "image": url,
        "image_id": image_name(frame.id),
        "name": f"{image_name(frame.id)} (cine file {cine_file}, frame 3 of 3)",
    }
    # an interrupted push recognises its frame task by the whole of its data
    assert _is_our_task_data(data, 9, image_name(frame.id), name)
    assert not _is_our_task_data(data, 9, image_name(frame.id))  # a still has no name
    assert not _is_our_task_data({**data, "name": "other"}, 9, image_name(frame.id), name)
    still = {"image": url, "image_id": image_name(frame.id)}
    assert _is_our_task_data(still, 9, image_name(frame.id))
    results = mask_to_results(truth[2], P)
    assert {(r["original_width"], r["original_height"]) for r in results} == {(640, 480)}
    back = results_to_mask(results, P, (frame.rows, frame.cols)).mask
    np.testing.assert_array_equal(back, truth[2])


@pytest.fixture()
def ls(labelstudio_server):
    return LabelStudio(base_url=labelstudio_server.url, api_key=labelstudio_server.token)


def _task_for(ws, project_id: int) -> dict[int, int]:
    with ws.session() as s:
        row = s.scalar(
            select(LabelStudioProject).where(LabelStudioProject.project_id == project_id)
        )
        return dict(
            s.execute(
                select(LabelStudioTask.image_id, LabelStudioTask.task_id).where(
                    LabelStudioTask.project_id == row.id
                )
            ).all()
        )


def test_push_makes_a_task_per_frame_and_sync_brings_each_back_to_its_frame(
    cine_ws, cine_demo, labelstudio_server, ls
):
    srv = labelstudio_server
    frames, stills, cine_file = _cine(cine_ws)
    truth = _rater1(cine_demo)
    assert all(truth[k].any() for k in range(3)) and not np.array_equal(truth[0], truth[2])
    still_mask = np.zeros((stills[0].rows, stills[0].cols), np.uint8)
    still_mask[100:160, 200:300] = 3
    add_rater(cine_ws, "AN1")
    result = push(cine_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    assert result.tasks_created == 5 == result.images
    pid = result.project_id
    tasks = _task_for(cine_ws, pid)
    assert set(tasks) == {i.id for i in frames + stills}
    data = {t.id: t.data for t in ls.tasks.list(project=pid, fields="all")}
    for k, frame in enumerate(frames, 1):
        assert data[tasks[frame.id]]["name"] == (
            f"{image_name(frame.id)} (cine file {cine_file}, frame {k} of 3)"
        )
        assert data[tasks[frame.id]]["image_id"] == image_name(frame.id)
    for still in stills:
        assert set(data[tasks[still.id]]) == {"image", "image_id"}
    # each frame's own pixels are served for its task
    for frame in frames:
        served = srv.local_root / "datatool" / str(pid) / f"{image_name(frame.id)}.png"
        assert served.read_bytes() == cine_ws.store.path_for(frame.store_hash).read_bytes()
    assert len({f.store_hash for f in frames}) == 3

    # the rater labels frames 1 and 3 and a still; frame 2 is left for later
    for k in (0, 2):
        annotate(srv.url, srv.token, pid, tasks[frames[k].id], truth[k], P)
    annotate(srv.url, srv.token, pid, tasks[stills[0].id], still_mask, P)
    report = sync_from_server(cine_ws, "AN1", url=srv.url, token=srv.token)
    assert (report.seen, report.new_versions, report.rejected) == (5, 3, [])
    second = f"project {pid} task {tasks[frames[1].id]} ({image_name(frames[1].id)}, "
    second += f"cine file {cine_file}, frame 2 of 3)"
    assert second in report.not_annotated and len(report.not_annotated) == 2  # and a still
    with cine_ws.session() as s:
        rater = s.scalar(select(LabelStudioProject.rater_id))
        for k in (0, 2):
            stored = latest_annotation(s, frames[k].id, rater)
            np.testing.assert_array_equal(cine_ws.store.get_array(stored.mask_hash), truth[k])
        assert latest_annotation(s, frames[1].id, rater) is None
        still = latest_annotation(s, stills[0].id, rater)
        np.testing.assert_array_equal(cine_ws.store.get_array(still.mask_hash), still_mask)

    # frame 2 labelled later: only it is new; a re-push adds nothing
    annotate(srv.url, srv.token, pid, tasks[frames[1].id], truth[1], P)
    again = sync_from_server(cine_ws, "AN1", url=srv.url, token=srv.token)
    assert (again.new_versions, again.unchanged) == (1, 3)
    with cine_ws.session() as s:
        stored = latest_annotation(s, frames[1].id, rater)
        np.testing.assert_array_equal(cine_ws.store.get_array(stored.mask_hash), truth[1])
    repush = push(cine_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    assert (repush.tasks_created, repush.already_pushed) == (0, 5)

    # a push cut between the server and the catalogue: the frames' tasks are recognised
    with cine_ws.session() as s:
        s.query(LabelStudioTask).filter(
            LabelStudioTask.image_id.in_([f.id for f in frames])
        ).delete()
    healed = push(cine_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    assert (healed.tasks_created, healed.recovered) == (0, 3)
    assert _task_for(cine_ws, pid) == tasks

    # a flagged label of frame 3 goes to review saying which file and frame it is
    with cine_ws.session() as s:
        flagged = latest_annotation(s, frames[2].id, rater)
        s.add(
            QAFlag(
                image_id=frames[2].id,
                annotation_id=flagged.id,
                structure="sciatic nerve",
                reason=FlagReason.holes,
                severity=1.0,
                evidence={"holes": 1, "hole_px": 12},
                status=FlagStatus.open,
            )
        )
    review = push_review(cine_ws, "AN1", url=srv.url, token=srv.token, local_root=srv.local_root)
    (task,) = ls.tasks.list(project=review.projects[0].project_id, fields="all")
    assert task.data["image_id"] == image_name(frames[2].id)
    assert (
        f"of {image_name(frames[2].id)} (cine file {cine_file}, frame 3 of 3): "
        in (task.data["flags"])
    )


def test_push_of_some_frames_by_id(cine_ws, labelstudio_server, ls):
    """Frames are chosen by image id as stills are: one frame of a cine alone is a task."""
    srv = labelstudio_server
    frames, _, cine_file = _cine(cine_ws)
    add_rater(cine_ws, "AN2")
    result = push(
        cine_ws,
        "AN2",
        url=srv.url,
        token=srv.token,
        local_root=srv.local_root,
        image_ids=[image_name(frames[1].id)],
    )
    assert result.tasks_created == 1
    (task,) = ls.tasks.list(project=result.project_id, fields="all")
    assert task.data["name"] == f"{image_name(frames[1].id)} (cine file {cine_file}, frame 2 of 3)"
