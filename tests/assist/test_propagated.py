"""prelabel --propagate against the real Label Studio server of the session, on a catalogue
with the demo's real cine DICOMs: a rater's unlabelled frames drafted from their own labelled
frame of the loop, with provenance; never from another rater's labels; a loop the rater has
labelled no frame of gets nothing."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from label_studio_sdk import LabelStudio
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.assist.propagated import prelabel_propagate
from datatool.cli import app as cli
from datatool.core.catalogue import DraftHandout, Image, SourceFile
from datatool.core.protocol import load_protocol
from datatool.core.store import pixel_digest
from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.generator import write_demo_dataset
from datatool.ingest import deid
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, latest_annotation, store_annotation
from datatool.labels.labelstudio.formats import results_to_mask
from datatool.labels.labelstudio.push import push
from datatool.labels.labelstudio.sync import sync_from_server
from datatool.labels.matching import image_id_from_name, image_name
from datatool.labels.propagate import PROPAGATE_VERSION

P = load_protocol()
FRAMES = 4


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def cines(tmp_path_factory):
    """One patient with a still and a 4-frame cine per side, ingested; the raters' label maps
    of every cine frame kept aside (not in the catalogue): ``(ws, demo, loops)`` where loops
    maps ``L``/``R`` to (image ids by frame, {rater: N x H x W labels})."""
    base = tmp_path_factory.mktemp("propagated")
    demo = base / "demo"
    write_demo_dataset(demo, patients=1, seed=5, images_per_side=(1, 1), cines=2, cine_frames=4)
    ws = open_workspace(init_workspace(base / "ws").root)
    ingest(ws, [demo / "dicom"], workers=0)
    loops = {}
    with ws.session() as s:
        for path in sorted((demo / "dicom").rglob("*_cine.dcm")):
            keyed = deid.uid_for(ws.key, str(pydicom.dcmread(path).SOPInstanceUID))
            ids = list(
                s.scalars(
                    select(Image.id)
                    .join(SourceFile, SourceFile.id == Image.source_file_id)
                    .where(SourceFile.sop_uid == keyed)
                    .order_by(Image.frame_index)
                )
            )
            rel = path.relative_to(demo / "dicom").with_suffix("")
            labels = {
                r: sitk.GetArrayFromImage(
                    sitk.ReadImage(str(demo / "labels" / r / f"{rel}.nii.gz"))
                ).astype(np.uint8)
                for r in ("rater1", "rater2")
            }
            loops[path.name[0]] = (ids, labels)
    for r in ("rater1", "rater2"):
        add_rater(ws, r)
    yield ws, loops
    ws.close()


def _label(ws, rater: str, image_id: int, mask: np.ndarray) -> None:
    with ws.session() as s:
        store_annotation(
            s, ws.store, s.get(Image, image_id), get_rater(s, rater), mask, "itksnap", "t", P
        )


def test_prelabel_propagate_drafts_a_raters_frames_from_their_own_labelled_frame(
    cines, labelstudio_server
):
    ws, loops = cines
    srv = labelstudio_server
    server = {"url": srv.url, "token": srv.token}
    (left, left_labels), (right, right_labels) = loops["L"], loops["R"]
    assert len(left) == len(right) == FRAMES
    # rater1 labelled frame 2 of the left loop only; rater2 labelled other frames of both
    _label(ws, "rater1", left[1], left_labels["rater1"][1])
    _label(ws, "rater2", left[0], left_labels["rater2"][0])
    _label(ws, "rater2", left[3], left_labels["rater2"][3])
    _label(ws, "rater2", right[0], right_labels["rater2"][0])
    pid = push(ws, "rater1", local_root=srv.local_root, **server).project_id

    report = prelabel_propagate(ws, "rater1", **server)
    assert (report.loops, report.loops_labelled) == (2, 1)
    assert report.drafted == 3  # frames 1, 3 and 4 of the left loop
    assert report.skipped_labelled == 1 and report.no_labelled_frame == FRAMES
    assert report.stills == 2 and report.showing == [pid]
    assert {(d.image, d.frame, d.frames, d.source_image, d.source_frame, d.distance)
            for d in report.drafts} == {
        (image_name(left[k]), k + 1, FRAMES, image_name(left[1]), 2, abs(k - 1))
        for k in (0, 2, 3)
    }  # fmt: skip

    ls = LabelStudio(base_url=srv.url, api_key=srv.token)
    tasks = {image_id_from_name(t.data["image_id"]): t for t in ls.tasks.list(project=pid)}
    with ws.session() as s:
        rid = get_rater(s, "rater1").id
        handed = {
            h.image_id: h
            for h in s.scalars(select(DraftHandout).where(DraftHandout.rater_id == rid))
        }
    assert set(handed) == {left[0], left[2], left[3]}
    rater2 = {pixel_digest(left_labels["rater2"][k]) for k in (0, 3)}
    for k in (0, 2, 3):
        task = tasks[left[k]]
        (prediction,) = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions]
        assert prediction["model_version"] == PROPAGATE_VERSION
        mask = results_to_mask(prediction["result"], P, left_labels["rater1"].shape[1:]).mask
        h = handed[left[k]]
        assert (h.run_id, h.via) == (None, "labelstudio")
        assert h.model_version == (
            f"propagated from {image_name(left[1])} frame 2 (rater1's label v1)"
        )
        np.testing.assert_array_equal(ws.store.get_array(h.mask_hash), mask)
        assert pixel_digest(mask) not in rater2  # never another rater's label
        # the draft is the rater's own frame-2 label moved to this frame: every structure
        # overlaps the rater's own label of this frame better than the frame-2 label does
        own = left_labels["rater1"]
        for value in (v for v in np.unique(own[k]) if v):
            drafted = _iou(mask == value, own[k] == value)
            assert drafted > 0.5, (k, value, drafted)
    for image_id in right:  # rater1 labelled no frame of the right loop: nothing there
        assert not tasks[image_id].predictions
    assert not tasks[left[1]].predictions  # the labelled frame itself

    # a re-run uploads nothing (through the command line)
    again = CliRunner().invoke(
        cli,
        ["prelabel", "--propagate", "--rater", "rater1", "--json", "--workspace", str(ws.root),
         "--url", srv.url, "--token", srv.token],
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert (data["drafted"], data["already"]) == (0, 3)

    # an annotation the rater makes from a propagated draft syncs with that draft as origin,
    # naming the frame it was propagated from
    task = tasks[left[2]]
    (prediction,) = [p if isinstance(p, dict) else p.model_dump() for p in task.predictions]
    ls.annotations.create(
        task.id, result=prediction["result"], parent_prediction=prediction["id"], project=pid
    )
    assert sync_from_server(ws, "rater1", **server).new_versions == 1
    with ws.session() as s:
        a = latest_annotation(s, left[2], get_rater(s, "rater1").id)
        provenance = handed[left[2]].model_version  # the image it was propagated from
        assert (a.draft_version, a.draft_run_id) == (provenance, None)
        assert a.draft_unchanged is True and a.draft_hash == handed[left[2]].mask_hash


def test_prelabel_takes_a_run_or_propagate_not_both(cines):
    ws, _ = cines
    for args in (["1", "--propagate"], []):
        result = CliRunner().invoke(
            cli, ["prelabel", *args, "--rater", "rater1", "--workspace", str(ws.root)]
        )
        assert result.exit_code == 2, result.output
        assert "--propagate" in result.output
