"""Cines in ITK-SNAP (labels.itksnap.cine, and the cine parts of .sync and .export): a
W x H x N label map dealt out to a cine's frames, one-slice maps with --cine-frame, frames
ingest did not take, and a cine exported as one volume that syncs back to the same labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sqlalchemy import func, select

from datatool.assist.drafter import run_drafter
from datatool.core.catalogue import Annotation, Image, Rater, SourceFile
from datatool.core.errors import UsageError
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.export import export_itksnap
from datatool.labels.itksnap.formats import read_label_file
from datatool.labels.itksnap.marker import EXPORT_MARKER
from datatool.labels.itksnap.sync import sync_itksnap
from tests.badfiles import long_cine

ROWS, COLS, FRAMES = 64, 80, 8


@pytest.fixture()
def cines(ws, tmp_path):
    """``dicom/P1/R_cine.dcm`` (8 frames, all ingested), ``dicom/P2/L_cine.dcm`` (8 frames,
    only the middle one, index 4, ingested) and a still ``dicom/P3/R_01.dcm``; rater1."""
    dicom = tmp_path / "dicom"
    for folder in ("P1", "P2", "P3"):
        (dicom / folder).mkdir(parents=True)
    long_cine(dicom / "P1" / "R_cine.dcm", FRAMES, ROWS, COLS)
    long_cine(dicom / "P3" / "R_01.dcm", 1, ROWS, COLS)
    ingest(ws, [dicom / "P1", dicom / "P3"], workers=0)
    long_cine(dicom / "P2" / "L_cine.dcm", FRAMES, ROWS, COLS)
    ingest(ws, [dicom / "P2"], workers=0, frames="middle")
    add_rater(ws, "rater1")
    return ws, dicom


def _frames(ws) -> dict[str, dict[int, int]]:
    """Per cine (by its number of catalogued frames: "full", "middle"), frame -> image id;
    and the still under "still"."""
    with ws.session() as s:
        rows = s.execute(
            select(Image.id, Image.source_file_id, Image.frame_index, SourceFile.n_frames).join(
                SourceFile, Image.source_file_id == SourceFile.id
            )
        ).all()
    by_file: dict[int, dict[int, int]] = {}
    stills = {}
    for row in rows:
        if row.n_frames == 1:
            stills[row.frame_index] = row.id
        else:
            by_file.setdefault(row.source_file_id, {})[row.frame_index] = row.id
    out = {"still": stills}
    for frames in by_file.values():
        out["full" if len(frames) == FRAMES else "middle"] = frames
    return out


def _labels(ws, rater="rater1") -> dict[int, Annotation]:
    with ws.session() as s:
        rows = s.scalars(
            select(Annotation).join(Rater).where(Rater.name == rater).order_by(Annotation.version)
        )
        return {a.image_id: a for a in rows}


def _count(ws) -> int:
    with ws.session() as s:
        return s.scalar(select(func.count()).select_from(Annotation))


def _mask(seed: int, value: int = 3) -> np.ndarray:
    mask = np.zeros((ROWS, COLS), np.uint8)
    mask[10 + seed : 30 + seed, 20 : 40 + seed] = value
    mask[40:50, 5 + seed : 15 + seed] = 1
    return mask


def _save(path: Path, stack: np.ndarray, spacing=(1.0, 1.0)) -> Path:
    """A label map as ITK-SNAP saves a cine's segmentation: W x H x K (K = len(stack))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(stack, np.uint8))
    image.SetSpacing((*spacing, 1.0))
    sitk.WriteImage(image, str(path), True)
    return path


def _stack(labelled: dict[int, np.ndarray], slices: int = FRAMES) -> np.ndarray:
    stack = np.zeros((slices, ROWS, COLS), np.uint8)
    for k, mask in labelled.items():
        stack[k] = mask
    return stack


def test_an_n_slice_map_labels_each_frame_and_empty_slices_are_no_labels(cines, tmp_path):
    ws, dicom = cines
    frames = _frames(ws)["full"]
    labelled = {0: _mask(0), 2: _mask(2), 5: _mask(5)}
    _save(tmp_path / "labels" / "P1" / "R_cine.nii.gz", _stack(labelled))
    report = sync_itksnap(ws, tmp_path / "labels", "rater1", dicom_root=dicom)
    assert (report.seen, report.new_versions, report.rejected) == (1, 3, []), report.as_dict()
    assert report.exit_code == 0
    stored = _labels(ws)
    assert sorted(stored) == sorted(frames[k] for k in labelled)  # empty slices: nothing
    for k, mask in labelled.items():
        a = stored[frames[k]]
        np.testing.assert_array_equal(ws.store.get_array(a.mask_hash), mask)
        assert a.source_ref.startswith("path-key:") and a.source_ref.endswith(
            f" frame {k + 1} of {FRAMES}"
        )
        assert "P1" not in a.source_ref  # the folder (an MRN in real data) is never kept
    again = sync_itksnap(ws, tmp_path / "labels", "rater1", dicom_root=dicom)
    assert (again.new_versions, again.unchanged, again.rejected) == (0, 3, [])
    # an edited slice becomes that frame's version 2, the others are unchanged
    labelled[2] = _mask(7, value=4)
    _save(tmp_path / "labels" / "P1" / "R_cine.nii.gz", _stack(labelled))
    edited = sync_itksnap(ws, tmp_path / "labels", "rater1", dicom_root=dicom)
    assert (edited.new_versions, edited.unchanged) == (1, 2)
    assert _labels(ws)[frames[2]].version == 2


def test_labels_on_frames_that_were_not_ingested_are_noted_not_stored(cines, tmp_path):
    ws, dicom = cines
    middle = _frames(ws)["middle"]
    assert list(middle) == [4]
    _save(tmp_path / "labels" / "P2" / "L_cine.nii.gz", _stack({1: _mask(1), 4: _mask(4)}))
    report = sync_itksnap(ws, tmp_path / "labels", "rater1", dicom_root=dicom)
    assert (report.new_versions, report.rejected) == (1, [])
    assert list(_labels(ws)) == [middle[4]]
    notes = [n for path, n in report.notes if path.endswith("L_cine.nii.gz")]
    assert notes == [
        f"frame 2 of {FRAMES} (L_cine.dcm) holds labels but was not ingested (ingest took "
        "some of the cine's frames): not stored"
    ]


@pytest.mark.parametrize(
    ("cine_frame", "frame"),
    [("first", 0), ("middle", FRAMES // 2), ("3", 2), (" 8 ", 7)],
)
def test_a_one_slice_map_goes_to_the_frame_cine_frame_names(cines, tmp_path, cine_frame, frame):
    ws, dicom = cines
    frames = _frames(ws)["full"]
    _save(tmp_path / "labels" / "P1" / "R_cine.nii.gz", _mask(3)[None])
    report = sync_itksnap(
        ws, tmp_path / "labels", "rater1", dicom_root=dicom, cine_frame=cine_frame
    )
    assert (report.new_versions, report.rejected) == (1, []), report.as_dict()
    assert list(_labels(ws)) == [frames[frame]]


def test_one_slice_maps_without_cine_frame_or_out_of_range_are_one_line_rejections(cines, tmp_path):
    ws, dicom = cines
    labels = tmp_path / "labels"
    _save(labels / "P1" / "R_cine.nii.gz", _mask(3)[None])
    _save(labels / "P3" / "R_01.nii.gz", _mask(1)[None])  # a still: the batch goes on
    report = sync_itksnap(ws, labels, "rater1", dicom_root=dicom)
    assert report.exit_code == 1 and report.new_versions == 1
    assert [(Path(p).name, r) for p, r in report.rejected] == [
        (
            "R_cine.nii.gz",
            f"a one-slice label map for a cine of {FRAMES} frames (R_cine.dcm): say which "
            "frame it labels with --cine-frame (first, middle, or a frame number counted "
            "from 1)",
        )
    ]
    assert list(_labels(ws)) == [_frames(ws)["still"][0]]
    before = _count(ws)

    past = sync_itksnap(ws, labels, "rater1", dicom_root=dicom, cine_frame="9")
    assert past.exit_code == 1 and _count(ws) == before
    assert [r for p, r in past.rejected if p.endswith("R_cine.nii.gz")] == [
        f"--cine-frame 9 is past the end of the cine: it has {FRAMES} frames (1 to {FRAMES})"
    ]
    # the frame named was not ingested (only the middle one of L_cine was)
    _save(labels / "P2" / "L_cine.nii.gz", _mask(2)[None])
    first = sync_itksnap(ws, labels, "rater1", dicom_root=dicom, cine_frame="first")
    assert [r for p, r in first.rejected if p.endswith("L_cine.nii.gz")] == [
        f"L_cine.dcm, frame 1 of {FRAMES} was not ingested (ingest took some of the cine's "
        "frames): nothing stored; ingest it with --frames all, or name an ingested frame "
        "with --cine-frame"
    ]
    assert first.new_versions == 1  # R_cine's frame 1 went on
    for bad in ("0", "last", "-2", "2.5"):
        with pytest.raises(UsageError, match="--cine-frame must be first, middle"):
            sync_itksnap(ws, labels, "rater1", dicom_root=dicom, cine_frame=bad)


def test_a_slice_count_that_fits_neither_is_rejected_and_the_batch_goes_on(cines, tmp_path):
    ws, dicom = cines
    labels = tmp_path / "labels"
    _save(labels / "P1" / "R_cine.nii.gz", _stack({0: _mask(0)}, slices=5))
    _save(labels / "P2" / "L_cine.nii.gz", _stack({4: _mask(4)}))
    bad_value = _stack({FRAMES // 2: _mask(1, value=250)})
    _save(labels / "P3" / "R_01.nii.gz", _mask(1)[None])
    report = sync_itksnap(ws, labels, "rater1", dicom_root=dicom)
    assert report.exit_code == 1 and report.new_versions == 2
    assert [(Path(p).name, r) for p, r in report.rejected] == [
        (
            "R_cine.nii.gz",
            f"label map has 5 slices, the cine (R_cine.dcm) has {FRAMES} frames: expected "
            f"{FRAMES} (a slice a frame), or 1 with --cine-frame",
        )
    ]
    assert not set(_frames(ws)["full"].values()) & set(_labels(ws))
    # an unknown label value in one slice: the whole file stores nothing, one line
    _save(labels / "P1" / "R_cine.nii.gz", bad_value)
    bad = sync_itksnap(ws, labels, "rater1", dicom_root=dicom)
    (reason,) = [r for p, r in bad.rejected if p.endswith("R_cine.nii.gz")]
    fifth = _frames(ws)["full"][4]
    assert reason.startswith(f"slice 5, img{fifth:06d} (R_cine.dcm, frame 5 of {FRAMES}): ")
    assert "\n" not in reason
    assert not set(_frames(ws)["full"].values()) & set(_labels(ws))


def test_export_writes_a_cine_as_one_volume_and_syncs_back_to_the_same_labels(cines, tmp_path):
    ws, dicom = cines
    frames = _frames(ws)
    labelled = {1: _mask(1), 6: _mask(6, value=4)}
    _save(tmp_path / "labels" / "P1" / "R_cine.nii.gz", _stack(labelled))
    _save(tmp_path / "labels" / "P2" / "L_cine.nii.gz", _stack({4: _mask(4)}))
    assert sync_itksnap(ws, tmp_path / "labels", "rater1", dicom_root=dicom).new_versions == 3

    out = tmp_path / "out"
    summary = export_itksnap(ws, "rater1", out)
    assert (summary.images, summary.cines, summary.prefilled, summary.kept) == (
        FRAMES + 1 + 1,
        2,
        3,
        0,
    )
    full, middle = frames["full"], frames["middle"]
    name = f"img{full[0]:06d}"
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert folders == sorted(
        [name, f"img{middle[4]:06d}", f"img{frames['still'][0]:06d}"]
    )  # one folder a cine, named by its first catalogued frame
    image = sitk.ReadImage(str(out / name / f"{name}.nii.gz"))
    assert image.GetSize() == (COLS, ROWS, FRAMES) and image.GetSpacing()[2] == 1.0
    pixels = sitk.GetArrayFromImage(image)
    with ws.session() as s:
        stored = {i.id: ws.store.get_array(i.store_hash) for i in s.scalars(select(Image))}
    for k in range(FRAMES):
        np.testing.assert_array_equal(pixels[k], stored[full[k]])  # the frames, in order
    seg = read_label_file(out / name / f"{name}_seg.nii.gz", slices=(FRAMES,)).array
    np.testing.assert_array_equal(seg, _stack(labelled))
    workspace = (out / name / f"{name}.itksnap").read_text()
    assert f'value="{COLS} {ROWS} {FRAMES}"' in workspace
    # frames ingest did not take are blank slices: the N-slice layout of the DICOM file
    other = f"img{middle[4]:06d}"
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / other / f"{other}.nii.gz")))
    assert pixels.shape == (FRAMES, ROWS, COLS)
    np.testing.assert_array_equal(pixels[4], stored[middle[4]])
    assert not np.delete(pixels, 4, axis=0).any()

    # exported -> sync: the same labels (a no-op); the rater edits one frame, labels another
    unchanged = sync_itksnap(ws, out, "rater1")
    assert (unchanged.new_versions, unchanged.unchanged, unchanged.rejected) == (0, 3, [])
    labelled[3] = _mask(3)
    labelled[6] = _mask(2, value=2)
    _save(out / name / f"{name}_seg.nii.gz", _stack(labelled))
    edited = sync_itksnap(ws, out, "rater1")
    assert (edited.new_versions, edited.unchanged, edited.rejected) == (2, 2, [])
    latest = _labels(ws)
    for k, mask in labelled.items():
        np.testing.assert_array_equal(ws.store.get_array(latest[full[k]].mask_hash), mask)
        if k in (3, 6):  # the new versions name the exported file and the frame
            ref = f"{name}/{name}_seg.nii.gz frame {k + 1} of {FRAMES}"
            assert latest[full[k]].source_ref == ref
    # re-export: the same bytes (the synced edits are the rater's labels now)
    seg_bytes = (out / name / f"{name}_seg.nii.gz").read_bytes()
    again = export_itksnap(ws, "rater1", out)
    assert again.kept == 0 and (out / name / f"{name}_seg.nii.gz").read_bytes() == seg_bytes
    # an edit not synced yet is never overwritten
    labelled[0] = _mask(5)
    _save(out / name / f"{name}_seg.nii.gz", _stack(labelled))
    assert export_itksnap(ws, "rater1", out).kept_files == [out / name / f"{name}_seg.nii.gz"]
    # --images with one frame of a cine exports the whole cine
    part = export_itksnap(ws, "rater1", tmp_path / "part", image_ids=[full[3]])
    assert (part.images, part.cines) == (FRAMES, 1)


def test_cli_cine_frame_rejections_exit_1_and_bad_values_exit_2(cines, tmp_path):
    from typer.testing import CliRunner

    from datatool.cli import app as cli

    ws, dicom = cines
    labels = tmp_path / "labels"
    _save(labels / "P1" / "R_cine.nii.gz", _mask(3)[None])

    def sync(*args: str):
        common = ["sync", "itksnap", str(labels), "--rater", "rater1"]
        where = ["--dicom-root", str(dicom), "--workspace", str(ws.root)]
        return CliRunner().invoke(cli, [*common, *where, *args])

    missing = sync()
    assert missing.exit_code == 1, missing.output
    assert "--cine-frame" in missing.output and _count(ws) == 0
    bad = sync("--cine-frame", "0")
    assert bad.exit_code == 2 and "--cine-frame must be first, middle" in bad.output
    good = sync("--cine-frame", "middle", "--json")
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["new_versions"] == 1
    shown = CliRunner().invoke(cli, ["sync", "itksnap", "--help"], env={"COLUMNS": "200"})
    assert "counted from 1" in shown.output
    out = tmp_path / "out"
    exported = CliRunner().invoke(
        cli,
        ["export", "itksnap", "--rater", "rater1", "--out", str(out), "--workspace", str(ws.root)],
    )
    assert exported.exit_code == 0, exported.output
    assert f"exported {FRAMES + 2} images (2 cines among them, one W x H x N volume each)" in (
        " ".join(exported.output.split())
    )


def test_prefill_drafts_every_frame_of_a_cine(trained, tmp_path):
    """--prefill model:RUN: each frame of a cine without the rater's labels gets the model's
    draft, in its slice; the drafts never saved are not labels; a saved one keeps its
    provenance."""
    from datatool.core.protocol import load_protocol
    from datatool.labels.annotations import get_rater, store_annotation
    from datatool.learning.inference import load_run_model, predict
    from tests.qa_util import clone

    source, run = trained
    ws = clone(source, tmp_path / "ws")
    dicom = tmp_path / "dicom" / "P9"
    dicom.mkdir(parents=True)
    long_cine(dicom / "R_cine.dcm", 4, ROWS, COLS)
    ingest(ws, [dicom], workers=0)
    add_rater(ws, "AN4")
    frames = _frames(ws)
    cine = next(f for key, f in frames.items() if key != "still" and len(f) == 4)
    own = _mask(2)
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(cine.values())))}
        store_annotation(
            s, ws.store, images[cine[1]], get_rater(s, "AN4"), own, "itksnap", None, load_protocol()
        )
    model = load_run_model(ws, run, device="cpu")
    ids = [cine[k] for k in range(4)]
    drafts = predict(model, [ws.store.get_array(images[i].store_hash) for i in ids])

    out = tmp_path / "an4"
    summary = export_itksnap(
        ws, "AN4", out, image_ids=[cine[0]], drafter=run_drafter(ws, run, "cpu"), batch=2
    )
    assert (summary.images, summary.cines, summary.prefilled, summary.drafted) == (4, 1, 1, 3)
    name = f"img{cine[0]:06d}"
    seg_path = out / name / f"{name}_seg.nii.gz"
    seg = read_label_file(seg_path, slices=(4,)).array
    for k in range(4):
        expected = own if k == 1 else drafts[k].labels
        np.testing.assert_array_equal(seg[k], expected)
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert sorted(marker["drafts"]) == sorted(f"img{cine[k]:06d}" for k in (0, 2, 3))
    assert {r["file_sha256"] for r in marker["drafts"].values()} == {
        __import__("hashlib").sha256(seg_path.read_bytes()).hexdigest()
    }
    untouched = sync_itksnap(ws, out, "AN4")
    assert (untouched.new_versions, untouched.rejected) == (0, [])
    assert any("model drafts are still as exported" in n for _, n in untouched.notes)
    # the rater saves it (ITK-SNAP rewrites the file), changing frame 4 only
    changed = seg.copy()
    changed[3][:8, :8] = 4
    _save(seg_path, changed)
    saved = sync_itksnap(ws, out, "AN4")
    assert saved.rejected == []
    latest = _labels(ws, "AN4")
    a = latest[cine[3]]
    assert (a.draft_run_id, a.draft_unchanged, a.draft_link) == (run, False, None)
    assert cine[0] not in latest and cine[2] not in latest  # frame by frame: still drafts
    # --accept-unchanged: the frames left as drafted are drafts accepted as they are
    accepted = sync_itksnap(ws, out, "AN4", accept_unchanged=True)
    assert accepted.rejected == []
    latest = _labels(ws, "AN4")
    for k in (0, 2):
        if drafts[k].labels.any():  # an empty slice is no label
            a = latest[cine[k]]
            assert (a.draft_run_id, a.draft_unchanged) == (run, True)
            assert a.draft_link == "accepted unchanged"


def test_the_demos_cines_sync_frame_by_frame_for_both_raters(ws, tmp_path):
    """The demo's loops (``demo-data --cines``): each rater's W x H x N volume gives every
    frame its label, slice k to frame k, as ITK-SNAP saved them; a re-sync is a no-op."""
    from datatool.demo.generator import write_demo_dataset
    from datatool.labels.matching import match_dicom

    demo = write_demo_dataset(
        tmp_path / "demo", patients=1, seed=5, images_per_side=(1, 1), cines=2, cine_frames=4
    )
    ingest(ws, [demo.dicom_dir], workers=0)
    for rater in ("rater1", "rater2"):
        add_rater(ws, rater)
        labels = tmp_path / "demo" / "labels" / rater
        report = sync_itksnap(ws, labels, rater, dicom_root=demo.dicom_dir)
        assert (report.seen, report.new_versions, report.rejected) == (4, 2 + 2 * 4, [])
        latest = _labels(ws, rater)
        for volume in sorted(labels.rglob("*_cine.nii.gz")):
            dcm = demo.dicom_dir / volume.parent.name / volume.name.replace(".nii.gz", ".dcm")
            with ws.session() as s:
                cine = match_dicom(s, ws.key, dcm)
            slices = sitk.GetArrayFromImage(sitk.ReadImage(str(volume)))
            assert slices.shape[0] == cine.n_frames == 4
            for k in range(4):
                got = ws.store.get_array(latest[cine.frames[k].id].mask_hash)
                np.testing.assert_array_equal(got, slices[k])
        again = sync_itksnap(ws, labels, rater, dicom_root=demo.dicom_dir)
        assert (again.new_versions, again.unchanged) == (0, 10)


def test_a_cine_map_with_every_slice_empty(cines, tmp_path):
    """Rejected like an empty still; with --allow-empty noted (an empty slice is never a
    label); exported and never labelled: not labelled yet, skipped."""
    ws, dicom = cines
    labels = tmp_path / "labels"
    _save(labels / "P1" / "R_cine.nii.gz", _stack({}))
    report = sync_itksnap(ws, labels, "rater1", dicom_root=dicom)
    assert [r for _, r in report.rejected] == [
        "every slice of the label map is empty (nothing labelled) (R_cine.dcm): an empty "
        "slice of a cine is no label"
    ]
    allowed = sync_itksnap(ws, labels, "rater1", dicom_root=dicom, allow_empty=True)
    assert (allowed.rejected, allowed.new_versions) == ([], 0)
    assert ("every slice is empty: nothing stored (an empty slice is no label)") in [
        n for _, n in allowed.notes
    ]
    out = tmp_path / "out"
    assert export_itksnap(ws, "rater1", out).cines == 2
    fresh = sync_itksnap(ws, out, "rater1")
    assert (fresh.rejected, fresh.new_versions, _count(ws)) == ([], 0, 0)
    assert any("3 exported segmentations are still empty" in n for _, n in fresh.notes)


def test_a_3d_slicer_segmentation_of_a_cine_labels_each_frame_by_segment_name(cines, tmp_path):
    """A cine's .seg.nrrd (W x H x N, segments named, not in the protocol's order) is read by
    segment name into the protocol's values and dealt out to the frames like a NIfTI stack."""
    import slicerio

    ws, dicom = cines
    frames = _frames(ws)["full"]
    nerve, muscle = np.zeros((COLS, ROWS, FRAMES), bool), np.zeros((COLS, ROWS, FRAMES), bool)
    nerve[20:30, 10:18, 0] = nerve[24:34, 12:20, 5] = True
    muscle[40:60, 30:50, 5] = True
    seg = slicerio.create_segmentation((COLS, ROWS, FRAMES), np.eye(4))
    slicerio.add_segment(seg, muscle, {"name": "Semitendinosus muscle"})
    slicerio.add_segment(seg, nerve, {"name": "Sciatic_Nerve"})
    (tmp_path / "labels" / "P1").mkdir(parents=True)
    slicerio.write_segmentation(str(tmp_path / "labels" / "P1" / "R_cine.seg.nrrd"), seg)
    report = sync_itksnap(ws, tmp_path / "labels", "rater1", dicom_root=dicom)
    assert (report.new_versions, report.rejected) == (2, []), report.as_dict()
    stored = _labels(ws)
    assert sorted(stored) == sorted([frames[0], frames[5]])
    nerve_value = 3
    semitendinosus = 4
    first = ws.store.get_array(stored[frames[0]].mask_hash)
    sixth = ws.store.get_array(stored[frames[5]].mask_hash)
    np.testing.assert_array_equal(first == nerve_value, nerve[:, :, 0].T)
    np.testing.assert_array_equal(sixth == nerve_value, nerve[:, :, 5].T)
    np.testing.assert_array_equal(sixth == semitendinosus, muscle[:, :, 5].T)
    assert not (first == semitendinosus).any()
