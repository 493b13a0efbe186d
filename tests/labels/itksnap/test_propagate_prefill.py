"""export itksnap --prefill propagate on the demo's real cines: a cine's frames the rater has
not labelled are drafted from the rater's own labelled frame of it, recorded as drafts (never
another rater's labels; a loop the rater has labelled no frame of stays empty), and a saved
draft syncs with its provenance."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import SimpleITK as sitk
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.cli import app as cli
from datatool.core.catalogue import DraftHandout, Image, SourceFile
from datatool.core.protocol import load_protocol
from datatool.core.store import pixel_digest
from datatool.demo.generator import write_demo_dataset
from datatool.ingest import deid
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, latest_annotation, store_annotation
from datatool.labels.itksnap.export import export_itksnap
from datatool.labels.itksnap.formats import read_label_file
from datatool.labels.itksnap.marker import EXPORT_MARKER
from datatool.labels.itksnap.sync import sync_itksnap
from datatool.labels.matching import image_name
from datatool.labels.propagate import PROPAGATE_VERSION

P = load_protocol()
FRAMES = 4


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _loops(ws, demo) -> dict[str, tuple[list[int], dict[str, np.ndarray]]]:
    """Side -> (image ids by frame, rater -> the demo's N x H x W labels of that loop)."""
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
    return loops


def _label(ws, rater: str, image_id: int, mask: np.ndarray) -> None:
    with ws.session() as s:
        store_annotation(
            s, ws.store, s.get(Image, image_id), get_rater(s, rater), mask, "itksnap", "t", P
        )


def test_prefill_propagate_drafts_a_cines_frames_from_the_raters_own_frame(ws, tmp_path):
    demo = tmp_path / "demo"
    write_demo_dataset(demo, patients=1, seed=5, images_per_side=(1, 1), cines=2, cine_frames=4)
    ingest(ws, [demo / "dicom"], workers=0)
    for r in ("rater1", "rater2"):
        add_rater(ws, r)
    loops = _loops(ws, demo)
    (left, left_labels), (right, right_labels) = loops["L"], loops["R"]
    _label(ws, "rater1", left[1], left_labels["rater1"][1])
    _label(ws, "rater2", left[0], left_labels["rater2"][0])
    _label(ws, "rater2", left[3], left_labels["rater2"][3])
    _label(ws, "rater2", right[0], right_labels["rater2"][0])

    out = tmp_path / "rater1"
    summary = export_itksnap(ws, "rater1", out, propagate=True)
    assert (summary.cines, summary.prefilled, summary.drafted) == (2, 1, 3)
    assert (summary.draft_run, summary.model_version) == (None, PROPAGATE_VERSION)
    name = image_name(left[0])
    seg_path = out / name / f"{name}_seg.nii.gz"
    seg = read_label_file(seg_path, slices=(FRAMES,)).array
    own = left_labels["rater1"]
    np.testing.assert_array_equal(seg[1], own[1])  # the rater's own label, as drawn
    rater2 = {pixel_digest(left_labels["rater2"][k]) for k in (0, 3)}
    for k in (0, 2, 3):  # the rater's frame-2 label moved onto each other frame
        assert pixel_digest(np.ascontiguousarray(seg[k])) not in rater2
        for value in (v for v in np.unique(own[k]) if v):
            assert _iou(seg[k] == value, own[k] == value) > 0.5, (k, value)
    other = image_name(right[0])  # rater1 labelled no frame of the right loop: empty
    assert not read_label_file(out / other / f"{other}_seg.nii.gz", slices=(FRAMES,)).array.any()

    provenance = f"propagated from {image_name(left[1])} frame 2 (rater1's label v1)"
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert sorted(marker["drafts"]) == sorted(image_name(left[k]) for k in (0, 2, 3))
    for k in (0, 2, 3):
        record = marker["drafts"][image_name(left[k])]
        assert (record["model_version"], record["run"]) == (provenance, None)
        np.testing.assert_array_equal(ws.store.get_array(record["mask_hash"]), seg[k])
    with ws.session() as s:
        rid = get_rater(s, "rater1").id
        handed = list(s.scalars(select(DraftHandout).where(DraftHandout.rater_id == rid)))
    assert {(h.image_id, h.model_version, h.via) for h in handed} == {
        (left[k], provenance, "itksnap") for k in (0, 2, 3)
    }

    # never saved: not labels (the 3 drafted frames counted in one note)
    untouched = sync_itksnap(ws, out, "rater1")
    assert (untouched.new_versions, untouched.unchanged, untouched.rejected) == (0, 1, [])
    assert [n for _, n in untouched.notes if "still as exported" in n] == [
        "3 model drafts are still as exported (segmentations never saved, cine frames left as "
        "drafted): not labelled yet, skipped; to accept them as they are, sync again with "
        "--accept-unchanged"
    ]
    # saved with frame 4 edited: frame by frame, the edited frame is a label with the draft
    # as origin, the two frames left as drafted are still not labels
    changed = seg.copy()
    changed[3][200:210, 300:310] = 4
    image = sitk.GetImageFromArray(np.ascontiguousarray(changed))
    reference = sitk.ReadImage(str(seg_path))
    image.CopyInformation(reference)
    sitk.WriteImage(image, str(seg_path), True)
    saved = sync_itksnap(ws, out, "rater1")
    assert (saved.new_versions, saved.unchanged, saved.rejected) == (1, 1, [])
    assert any(n.startswith("2 model drafts are still as exported") for _, n in saved.notes)
    with ws.session() as s:
        rid = get_rater(s, "rater1").id
        a = latest_annotation(s, left[3], rid)
        assert (a.draft_version, a.draft_run_id, a.draft_unchanged) == (provenance, None, False)
        assert a.draft_link is None
        assert latest_annotation(s, left[0], rid) is None
        assert latest_annotation(s, left[2], rid) is None
    # the rater accepts the frames left as drafted: stored as drafts accepted unchanged
    result = CliRunner().invoke(
        cli,
        ["sync", "itksnap", str(out), "--rater", "rater1", "--accept-unchanged", "--json",
         "--workspace", str(ws.root)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    accepted = json.loads(result.stdout)
    assert (accepted["new_versions"], accepted["unchanged"]) == (2, 2)
    assert not any("still as exported" in n["note"] for n in accepted["notes"])
    with ws.session() as s:
        for k in (0, 2):
            a = latest_annotation(s, left[k], rid)
            assert (a.draft_version, a.draft_run_id, a.draft_hash) == (
                provenance,
                None,
                marker["drafts"][image_name(left[k])]["mask_hash"],
            )
            assert (a.draft_unchanged, a.draft_link) == (True, "accepted unchanged")
            np.testing.assert_array_equal(ws.store.get_array(a.mask_hash), seg[k])
    # a re-run is a no-op, with the option or without
    for accept in (True, False):
        again = sync_itksnap(ws, out, "rater1", accept_unchanged=accept)
        assert (again.new_versions, again.unchanged, again.rejected) == (0, 4, [])
        assert not any("still as exported" in n for _, n in again.notes)


def test_cli_prefill_propagate_and_bad_values(ws, tmp_path):
    """--prefill propagate through the command line: a 4-frame cine with the rater's label on
    one frame gets the other three drafted; --no-prefill wins over it; an unknown --prefill
    value is a usage error naming propagate."""
    from tests.badfiles import long_cine

    (tmp_path / "dicom").mkdir()
    long_cine(tmp_path / "dicom" / "R_cine.dcm", FRAMES, 64, 80)
    ingest(ws, [tmp_path / "dicom"], workers=0)
    add_rater(ws, "rater1")
    with ws.session() as s:
        ids = list(s.scalars(select(Image.id).order_by(Image.frame_index)))
    mask = np.zeros((64, 80), np.uint8)
    mask[20:40, 30:50] = 3
    _label(ws, "rater1", ids[0], mask)

    def export(*args: str):
        return CliRunner().invoke(
            cli,
            ["export", "itksnap", "--out", str(tmp_path / "out"), "--rater", "rater1", *args,
             "--json", "--workspace", str(ws.root)],
        )  # fmt: skip

    ok = export("--prefill", "propagate")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert (data["drafted"], data["model_version"]) == (3, PROPAGATE_VERSION)
    off = export("--prefill", "propagate", "--no-prefill")
    assert off.exit_code == 0, off.output
    assert json.loads(off.stdout)["drafted"] == 0
    bad = export("--prefill", "spread")
    assert bad.exit_code == 2 and "propagate" in bad.output
