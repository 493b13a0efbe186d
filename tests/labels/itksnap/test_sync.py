"""ITK-SNAP export and sync (labels.itksnap.export, .sync) and their commands, on the demo study."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from datatool.assist.drafter import run_drafter
from datatool.core.catalogue import Annotation, AuditEntry, Image, Rater, StructureStats
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater
from datatool.labels.itksnap.export import export_itksnap
from datatool.labels.itksnap.formats import read_label_map, write_segmentation
from datatool.labels.itksnap.marker import EXPORT_MARKER, LABELS_FILE
from datatool.labels.itksnap.sync import sync_itksnap
from datatool.labels.matching import image_for_dicom

N = 12  # the demo fixture: 3 patients x 2 sides x 2 images


@pytest.fixture()
def study(ws, demo_dir):
    """The demo study ingested, raters rater1 and rater2 registered."""
    report = ingest(ws, [demo_dir / "dicom"], workers=0)
    assert report.images_added == N
    add_rater(ws, "rater1")
    add_rater(ws, "rater2")
    return ws


def _count(ws, model) -> int:
    with ws.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def _latest(ws, rater: str) -> dict[int, Annotation]:
    with ws.session() as s:
        rows = s.scalars(
            select(Annotation).join(Rater).where(Rater.name == rater).order_by(Annotation.version)
        )
        return {a.image_id: a for a in rows}


def _image_ids(ws) -> list[int]:
    with ws.session() as s:
        return list(s.scalars(select(Image.id).order_by(Image.id)))


def _itksnap_save(path: Path, mask: np.ndarray, like: Path) -> None:
    """Save a segmentation the way ITK-SNAP does: W x H x 1, with its image's header."""
    ref = sitk.ReadImage(str(like))
    image = sitk.GetImageFromArray(mask[None])
    image.SetSpacing((*ref.GetSpacing(), 1.0))
    sitk.WriteImage(image, str(path), True)


def test_sync_demo_raters_with_dicom_root_then_resync_is_a_no_op(study, demo_dir):
    ws = study
    for rater in ("rater1", "rater2"):
        report = sync_itksnap(ws, demo_dir / "labels" / rater, rater, dicom_root=demo_dir / "dicom")
        assert (report.seen, report.new_versions, report.unchanged, report.rejected) == (
            N,
            N,
            0,
            [],
        ), report.as_dict()
        assert report.exit_code == 0
    assert _count(ws, Annotation) == 2 * N
    assert _count(ws, StructureStats) == 2 * N * 5
    with ws.session() as s:
        present = dict(
            s.execute(
                select(StructureStats.structure, func.count())
                .where(StructureStats.area_px > 0)
                .group_by(StructureStats.structure)
            ).all()
        )
        mm = s.scalar(
            select(func.count()).select_from(StructureStats).where(StructureStats.area_mm2 > 0)
        )
    assert present["femur"] == present["sciatic nerve"] == 2 * N and mm >= 2 * N * 4
    # stored pixel for pixel as the files hold them, and nothing of the original path kept
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
    for annotation in _latest(ws, "rater1").values():
        assert annotation.source == "itksnap" and annotation.version == 1
        assert annotation.source_ref.startswith("path-key:")
        assert ws.store.get_array(annotation.mask_hash).shape == (
            images[annotation.image_id].rows,
            images[annotation.image_id].cols,
        )
    stored = sorted(
        ws.store.get_array(a.mask_hash).tobytes() for a in _latest(ws, "rater1").values()
    )
    files = sorted(
        sitk.GetArrayFromImage(sitk.ReadImage(str(f))).astype(np.uint8).tobytes()
        for f in (demo_dir / "labels" / "rater1").rglob("*.nii.gz")
    )
    assert stored == files
    mrns = {p.name for p in (demo_dir / "dicom").iterdir()}
    blobs = [p.read_bytes() for p in ws.root.rglob("*") if p.is_file()]
    assert not [m for m in mrns for b in blobs if m.encode() in b]

    again = sync_itksnap(
        ws, demo_dir / "labels" / "rater1", "rater1", dicom_root=demo_dir / "dicom"
    )
    assert (again.new_versions, again.unchanged, again.rejected) == (0, N, [])
    assert _count(ws, Annotation) == 2 * N
    with ws.session() as s:
        entry = s.scalars(
            select(AuditEntry)
            .where(AuditEntry.command == "sync itksnap")
            .order_by(AuditEntry.id.desc())
        ).first()
    assert entry.details["unchanged"] == N and entry.details["rater"] == "rater1"


def test_changed_label_becomes_version_2(study, demo_dir, tmp_path):
    ws = study
    labels = shutil.copytree(demo_dir / "labels" / "rater1", tmp_path / "r1")
    sync_itksnap(ws, labels, "rater1", dicom_root=demo_dir / "dicom")
    changed = sorted(labels.rglob("*.nii.gz"))[3]
    mask = read_label_map(changed)
    mask[10:20, 100:140] = 3
    image = sitk.ReadImage(str(changed))
    write_segmentation(changed, mask, image.GetSpacing())
    report = sync_itksnap(ws, labels, "rater1", dicom_root=demo_dir / "dicom")
    assert (report.new_versions, report.unchanged, report.rejected) == (1, N - 1, [])
    v2 = [a for a in _latest(ws, "rater1").values() if a.version == 2]
    assert len(v2) == 1
    np.testing.assert_array_equal(ws.store.get_array(v2[0].mask_hash), mask)
    assert _count(ws, Annotation) == N + 1


def test_export_edit_sync_round_trip_is_exact(study, demo_dir, tmp_path):
    ws = study
    sync_itksnap(ws, demo_dir / "labels" / "rater1", "rater1", dicom_root=demo_dir / "dicom")
    out = tmp_path / "export"
    summary = export_itksnap(ws, "rater1", out)
    assert (summary.images, summary.prefilled, summary.kept) == (N, N, 0)
    assert (out / LABELS_FILE).read_text() == (
        demo_dir / "labels" / "itksnap_labels.txt"
    ).read_text()
    latest = _latest(ws, "rater1")
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
    for image_id, annotation in latest.items():
        folder = out / f"img{image_id:06d}"
        assert sorted(p.name for p in folder.iterdir()) == [
            f"img{image_id:06d}.itksnap",
            f"img{image_id:06d}.nii.gz",
            f"img{image_id:06d}_seg.nii.gz",
        ]
        np.testing.assert_array_equal(
            read_label_map(folder / f"img{image_id:06d}_seg.nii.gz"),
            ws.store.get_array(annotation.mask_hash),
        )
        picture = sitk.ReadImage(str(folder / f"img{image_id:06d}.nii.gz"))
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(picture), ws.store.get_array(images[image_id].store_hash)
        )
        assert picture.GetSpacing() == pytest.approx(
            (images[image_id].mm_per_px_x, images[image_id].mm_per_px_y)
        )
    # the rater edits one image in ITK-SNAP and saves (Ctrl+S)
    image_id = sorted(latest)[5]
    seg = out / f"img{image_id:06d}" / f"img{image_id:06d}_seg.nii.gz"
    edited = read_label_map(seg)
    edited[edited == 2] = 0
    edited[200:230, 300:330] = 4
    _itksnap_save(seg, edited, seg)
    report = sync_itksnap(ws, out, "rater1")
    assert (report.seen, report.new_versions, report.unchanged, report.rejected) == (
        N,
        1,
        N - 1,
        [],
    )
    new = _latest(ws, "rater1")[image_id]
    assert new.version == 2 and new.source_ref == f"img{image_id:06d}/img{image_id:06d}_seg.nii.gz"
    np.testing.assert_array_equal(ws.store.get_array(new.mask_hash), edited)


def test_prefill_uses_only_the_raters_own_labels(study, demo_dir, tmp_path):
    ws = study
    sync_itksnap(ws, demo_dir / "labels" / "rater1", "rater1", dicom_root=demo_dir / "dicom")
    summary = export_itksnap(ws, "rater2", tmp_path / "r2")
    assert (summary.images, summary.prefilled) == (N, 0)
    segs = sorted((tmp_path / "r2").rglob("*_seg.nii.gz"))
    assert len(segs) == N and not any(read_label_map(p).any() for p in segs)
    assert json.loads((tmp_path / "r2" / EXPORT_MARKER).read_text())["rater"] == "rater2"
    # rater2's untouched empty segmentations are "not labelled yet", not errors
    report = sync_itksnap(ws, tmp_path / "r2", "rater2")
    assert (report.new_versions, report.unchanged, report.rejected) == (0, 0, [])
    assert "12 exported segmentations are still empty" in report.notes[0][1]
    # nor can rater1's folder be re-exported for rater2, or synced as rater2's
    export_itksnap(ws, "rater1", tmp_path / "r1", image_ids=_image_ids(ws)[:2])
    with pytest.raises(UsageError, match="rater rater1's ITK-SNAP export"):
        export_itksnap(ws, "rater2", tmp_path / "r1")
    with pytest.raises(UsageError, match="sync it with --rater rater1"):
        sync_itksnap(ws, tmp_path / "r1", "rater2")
    with pytest.raises(UsageError, match="not registered"):
        export_itksnap(ws, "nobody", tmp_path / "x")
    with pytest.raises(UsageError, match="no image img000999"):
        export_itksnap(ws, "rater1", tmp_path / "x", image_ids=[1, 999])


def test_reexport_is_idempotent_and_keeps_unsynced_edits(study, demo_dir, tmp_path):
    ws = study
    sync_itksnap(ws, demo_dir / "labels" / "rater1", "rater1", dicom_root=demo_dir / "dicom")
    out = tmp_path / "e"
    export_itksnap(ws, "rater1", out)
    first = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert export_itksnap(ws, "rater1", out).kept == 0
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    seg = sorted(out.rglob("*_seg.nii.gz"))[0]
    mask = read_label_map(seg)
    mask[:5, :5] = 1
    _itksnap_save(seg, mask, seg)
    edited = seg.read_bytes()
    summary = export_itksnap(ws, "rater1", out)
    assert summary.kept == 1 and summary.kept_files == [seg]
    assert seg.read_bytes() == edited  # the edit survived
    assert sync_itksnap(ws, out, "rater1").new_versions == 1
    assert export_itksnap(ws, "rater1", out).kept == 0
    np.testing.assert_array_equal(read_label_map(seg), mask)
    # export without prefill: empty segmentations, except where edits would be lost
    empty = export_itksnap(ws, "rater1", tmp_path / "blank", prefill=False)
    assert empty.prefilled == 0
    assert not any(read_label_map(p).any() for p in (tmp_path / "blank").rglob("*_seg.nii.gz"))


def test_manifest_matching(study, demo_dir, tmp_path):
    ws = study
    labels = demo_dir / "labels" / "rater2"
    manifest = tmp_path / "lists" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["label_file", "dicom_file"])
        for i, label in enumerate(sorted(labels.rglob("*.nii.gz"))):
            rel = label.relative_to(labels)
            dicom = demo_dir / "dicom" / rel.parent / (rel.name[: -len(".nii.gz")] + ".dcm")
            if i % 2:  # relative to the CSV's folder, or absolute
                label = os.path.relpath(label, manifest.parent)
            else:
                dicom = os.path.relpath(dicom, manifest.parent)
            w.writerow([label, dicom])
        w.writerow([tmp_path / "gone.nii.gz", demo_dir / "dicom" / "x.dcm"])
        twice = sorted(labels.rglob("*.nii.gz"))[0]
        w.writerow([twice, dicom])  # listed again, with another DICOM file
    report = sync_itksnap(ws, labels, "rater2", manifest=manifest)
    assert (report.seen, report.new_versions) == (N, N - 1)
    assert report.rejected == [
        (f"{manifest}:{N + 2}", f"label file {tmp_path / 'gone.nii.gz'} does not exist"),
        (str(twice), "listed twice in the manifest with different DICOM files"),
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("label,dicom\na,b\n")
    with pytest.raises(UsageError, match="label_file,dicom_file"):
        sync_itksnap(ws, labels, "rater2", manifest=bad)


def _never_ingested(demo_dir: Path, dest: Path) -> Path:
    ds = pydicom.dcmread(sorted((demo_dir / "dicom").rglob("*.dcm"))[0])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def test_every_bad_label_file_is_rejected_with_its_reason_and_the_rest_go_on(
    study, demo_dir, tmp_path
):
    ws = study
    ids = _image_ids(ws)
    with ws.session() as s:
        shape = {i.id: (i.rows, i.cols) for i in s.scalars(select(Image))}
    labels = tmp_path / "labels"
    orig = shutil.copytree(demo_dir / "dicom", tmp_path / "orig")
    good = read_label_map(sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[0])

    def put(name: str, mask: np.ndarray) -> Path:
        write_segmentation(labels / name, mask, (0.2, 0.2))
        return labels / name

    put(f"img{ids[0]:06d}_seg.nii.gz", good)  # the one good file
    put(f"img{ids[1]:06d}_seg.nii.gz", np.ones((100, 120), np.uint8))
    five = good.copy()
    five[:3, :3] = 5
    put(f"img{ids[2]:06d}_seg.nii.gz", five)
    (labels / f"img{ids[3]:06d}_seg.nii.gz").write_text("not a label map\n")
    from PIL import Image as PILImage

    PILImage.fromarray(good).save(labels / f"img{ids[4]:06d}_seg.nii.gz", format="PNG")
    put("img999999_seg.nii.gz", good)
    put("NEW/L_01.nii.gz", good)  # its DICOM was never ingested
    _never_ingested(demo_dir, orig / "NEW" / "L_01.dcm")
    put("NOPE/R_09.nii.gz", good)  # no DICOM at all
    with ws.session() as s:  # an image none of the files above is for
        empty_rel = next(
            rel
            for rel in (p.relative_to(orig) for p in sorted(orig.rglob("*.dcm")))
            if image_for_dicom(s, ws.key, orig / rel).id not in ids[:5]
        )
    empty_rel = empty_rel.parent / (empty_rel.stem + ".nii.gz")
    put(str(empty_rel), np.zeros_like(good))
    (labels / "notes.txt").write_text("ignored, with a note\n")
    report = sync_itksnap(ws, labels, "rater1", dicom_root=orig)
    reasons = {Path(item).name: reason for item, reason in report.rejected}
    assert (report.seen, report.new_versions, report.unchanged) == (9, 1, 0)
    assert report.exit_code == 1 and len(report.rejected) == 8
    h, w = shape[ids[1]]
    assert reasons[f"img{ids[1]:06d}_seg.nii.gz"] == (
        f"size mismatch: label map is 120x100, the image is {w}x{h} (width x height)"
    )
    assert "unknown label value(s) [5]" in reasons[f"img{ids[2]:06d}_seg.nii.gz"]
    assert "looks like a text file" in reasons[f"img{ids[3]:06d}_seg.nii.gz"]
    assert "looks like a PNG image" in reasons[f"img{ids[4]:06d}_seg.nii.gz"]
    assert reasons["img999999_seg.nii.gz"] == "image img999999 does not exist in this catalogue"
    assert "never ingested" in reasons["L_01.nii.gz"]
    assert "no DICOM file NOPE/R_09[.dcm] under" in reasons["R_09.nii.gz"]
    assert "empty" in reasons[empty_rel.name] and "--allow-empty" in reasons[empty_rel.name]
    assert all("\n" not in r for r in reasons.values())
    assert report.notes[-1] == (str(labels), "ignored 1 files that are not label maps (.txt 1)")
    # the stored file was written with 0.2 mm pixels, not its image's: said, not refused
    assert [(Path(p).name, "its spacing 0.2 x 0.2 mm" in r) for p, r in report.notes[:-1]] == [
        (f"img{ids[0]:06d}_seg.nii.gz", True)
    ]
    assert _count(ws, Annotation) == 1

    allowed = sync_itksnap(ws, labels, "rater1", dicom_root=orig, allow_empty=True)
    assert (allowed.new_versions, allowed.unchanged, len(allowed.rejected)) == (1, 1, 7)
    no_root = sync_itksnap(ws, labels, "rater1")
    assert (
        "no --dicom-root or --manifest"
        in {Path(i).name: r for i, r in no_root.rejected}["R_09.nii.gz"]
    )


def test_two_files_for_one_image_are_both_rejected(study, demo_dir, tmp_path):
    ws = study
    image_id = _image_ids(ws)[0]
    mask = read_label_map(sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[0])
    write_segmentation(tmp_path / "l" / f"img{image_id:06d}_seg.nii.gz", mask, (1.0, 1.0))
    write_segmentation(tmp_path / "l" / f"img{image_id:06d}_seg_v2.nii.gz", mask, (1.0, 1.0))
    report = sync_itksnap(ws, tmp_path / "l", "rater1")
    assert report.new_versions == 0 and len(report.rejected) == 2
    assert all("2 label files for image" in r for _, r in report.rejected)


def _cli(args, env, ws):
    return subprocess.run(
        [sys.executable, "-m", "datatool", *args, "--workspace", str(ws.root)],
        capture_output=True,
        text=True,
        env=env,
    )


def test_cli_exit_codes_json_and_one_line_rejections(study, demo_dir, tmp_path, cli_env):
    ws = study
    labels = shutil.copytree(demo_dir / "labels" / "rater1", tmp_path / "r1")
    ok = _cli(
        [
            "sync",
            "itksnap",
            str(labels),
            "--rater",
            "rater1",
            "--dicom-root",
            str(demo_dir / "dicom"),
            "--json",
        ],
        cli_env,
        ws,
    )
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert (data["seen"], data["new_versions"], data["exit_code"]) == (N, N, 0)

    bad = sorted(labels.rglob("*.nii.gz"))[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    one = _cli(
        [
            "sync",
            "itksnap",
            str(labels),
            "--rater",
            "rater1",
            "--dicom-root",
            str(demo_dir / "dicom"),
        ],
        cli_env,
        ws,
    )
    assert one.returncode == 1
    assert (
        one.stderr.strip().splitlines()[-1]
        == f"rejected: {bad}: not a NIfTI file: it looks like a PNG image"
    )
    assert "unchanged" in one.stdout and "11" in one.stdout

    unknown = _cli(["sync", "itksnap", str(labels), "--rater", "nobody"], cli_env, ws)
    assert unknown.returncode == 2 and "not registered" in unknown.stderr

    out = tmp_path / "exp"
    exp = _cli(
        [
            "export",
            "itksnap",
            "--rater",
            "rater1",
            "--out",
            str(out),
            "--images",
            "1,img000002",
            "--json",
        ],
        cli_env,
        ws,
    )
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["images"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        EXPORT_MARKER,
        "img000001",
        "img000002",
        LABELS_FILE,
        "slicer_colors.ctbl",  # the same labels for 3D Slicer
    ]
    usage = _cli(
        ["export", "itksnap", "--rater", "rater1", "--out", str(out), "--images", "one"],
        cli_env,
        ws,
    )
    assert usage.returncode == 2


def test_fifos_in_the_label_folder_are_never_opened(study, demo_dir, tmp_path):
    labels = shutil.copytree(demo_dir / "labels" / "rater1", tmp_path / "r1")
    first = sorted(labels.rglob("*.nii.gz"))[0]
    fifo = first.with_name("pipe.nii.gz")
    os.mkfifo(fifo)
    (tmp_path / "m").mkdir()
    listed = tmp_path / "m" / "listed.nii.gz"
    os.mkfifo(listed)
    dicom = sorted((demo_dir / "dicom").rglob("*.dcm"))[0]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"label_file,dicom_file\n{listed},{dicom}\n")
    report = sync_itksnap(study, labels, "rater1", dicom_root=demo_dir / "dicom")
    assert report.new_versions == N and not report.rejected
    assert [(p, r) for p, r in report.notes if p == str(fifo)] == [
        (str(fifo), "a FIFO (named pipe), not a regular file: skipped, never opened")
    ]
    fifo.unlink()
    # a FIFO the manifest names is read by nobody either, and the manifest itself as a FIFO
    report = sync_itksnap(study, tmp_path / "m", "rater1", manifest=manifest)
    assert [(p, r) for p, r in report.rejected] == [
        (str(listed), "a FIFO (named pipe): not read (only regular files are label maps)")
    ]
    os.mkfifo(tmp_path / "pipe.csv")
    with pytest.raises(UsageError, match="FIFO"):
        sync_itksnap(study, labels, "rater1", manifest=tmp_path / "pipe.csv")


def test_flipped_maps_are_stored_in_the_images_orientation_outside_data_refused(
    study, demo_dir, tmp_path
):
    ws = study
    ids = _image_ids(ws)
    with ws.session() as s:
        image = s.get(Image, ids[0])
        rows, cols, mm = image.rows, image.cols, image.mm_per_px_x
    mask = read_label_map(sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[0])
    assert mask.shape == (rows, cols)
    labels = tmp_path / "labels"
    labels.mkdir()
    flipped = sitk.GetImageFromArray(np.flip(mask, axis=1).copy())
    flipped.SetDirection((-1, 0, 0, 1))
    flipped.SetSpacing((mm, mm))
    flipped.SetOrigin(((cols - 1) * mm, 0.0))
    sitk.WriteImage(flipped, str(labels / f"img{ids[0]:06d}_seg.nrrd"), True)
    outside = tmp_path / "elsewhere.raw"
    outside.write_bytes(bytes(rows * cols))
    (labels / f"img{ids[1]:06d}_seg.mhd").write_text(
        f"ObjectType = Image\nNDims = 2\nDimSize = {cols} {rows}\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {outside}\n"
    )
    report = sync_itksnap(ws, labels, "rater1")
    assert report.new_versions == 1
    ((item, reason),) = report.rejected
    assert item.endswith(".mhd") and "outside" in reason
    assert [r for _, r in report.notes if "flipped along x" in r]
    stored = _latest(ws, "rater1")[ids[0]]
    np.testing.assert_array_equal(ws.store.get_array(stored.mask_hash), mask)


SYNC_COUNTS = {
    "annotations": "select count(*) from annotations",
    "per image and rater": "select count(distinct image_id || ':' || rater_id) from annotations",
    "highest version": "select coalesce(max(version), 0) from annotations",
    "structure stats": "select count(*) from structure_stats",
}


def test_kill_9_at_20_moments_then_a_rerun_matches_an_uninterrupted_sync(demo_dir, tmp_path):
    """sync itksnap (a transaction per 2 files) killed at 20 seeded moments; after each, a
    re-run gives exactly the counts of an uninterrupted sync: nothing lost, no version 2."""
    from datatool.core.workspace import init_workspace, open_workspace
    from tests.interrupt import kill_and_rerun

    base = init_workspace(tmp_path / "base").root
    ws = open_workspace(base)
    ingest(ws, [demo_dir / "dicom"], workers=0)
    add_rater(ws, "rater1")
    ws.close()
    labels, dicom = demo_dir / "labels" / "rater1", demo_dir / "dicom"

    def sync(root: Path):
        def work():
            opened = open_workspace(root)
            sync_itksnap(opened, labels, "rater1", dicom_root=dicom, batch_size=2)
            opened.close()

        return work

    def whole_annotations(partial: dict[str, int]) -> None:
        assert partial["structure stats"] == 5 * partial["annotations"]

    expected = kill_and_rerun(base, sync, SYNC_COUNTS, tmp_path, 20261203, whole_annotations)
    assert expected["annotations"] == N and expected["highest version"] == 1


def test_export_prefills_what_the_rater_has_not_labelled_with_the_models_draft(trained, tmp_path):
    """--prefill model:RUN: own labels win, drafts elsewhere (recorded in the marker); a draft
    never saved is not a label; saved drafts sync with their provenance; never another
    rater's labels."""
    from datatool.core.store import pixel_digest
    from datatool.labels.annotations import get_rater, store_annotation
    from datatool.labels.itksnap.export import parse_prefill
    from datatool.learning.inference import load_run_model, predict
    from tests.qa_util import clone

    source, run = trained
    ws = clone(source, tmp_path / "ws")
    ids = _image_ids(ws)
    add_rater(ws, "AN3")
    own = np.zeros((480, 640), np.uint8)
    own[100:140, 200:260] = 3
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
        store_annotation(
            s, ws.store, images[ids[0]], get_rater(s, "AN3"), own, "itksnap", None, load_protocol()
        )
    model = load_run_model(ws, run, device="cpu")
    drafts = dict(zip(ids, predict(model, [ws.store.get_array(images[i].store_hash) for i in ids])))
    others = {a.mask_hash for r in ("rater1", "rater2") for a in _latest(ws, r).values()}

    out = tmp_path / "an3"
    summary = export_itksnap(ws, "AN3", out, drafter=run_drafter(ws, run, "cpu"), batch=5)
    assert (summary.images, summary.prefilled, summary.drafted, summary.kept) == (N, 1, N - 1, 0)
    assert (summary.draft_run, summary.model_version) == (run, model.model_version)
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["rater"] == "AN3" and sorted(marker["drafts"]) == [f"img{i:06d}" for i in ids[1:]]
    for image_id in ids:
        seg = out / f"img{image_id:06d}" / f"img{image_id:06d}_seg.nii.gz"
        got = read_label_map(seg).astype(np.uint8)
        assert pixel_digest(got) not in others  # never another rater's labels
        if image_id == ids[0]:
            np.testing.assert_array_equal(got, own)  # their own labels win
            continue
        np.testing.assert_array_equal(got, drafts[image_id].labels)
        record = marker["drafts"][f"img{image_id:06d}"]
        assert record["run"] == run and record["model_version"] == model.model_version
        assert record["mask_hash"] == pixel_digest(drafts[image_id].labels)
        assert ws.store.get_array(record["mask_hash"]).shape == got.shape

    # drafts the rater never saved are not labels
    untouched = sync_itksnap(ws, out, "AN3")
    assert (untouched.new_versions, untouched.unchanged, untouched.rejected) == (0, 1, [])
    notes = [n for _, n in untouched.notes]
    assert any(n.startswith(f"{N - 1} model drafts are still as exported") for n in notes)
    # the rater saves one draft as it is, edits another: both sync, with where they started
    accepted, edited = ids[1], ids[2]
    seg_a = out / f"img{accepted:06d}" / f"img{accepted:06d}_seg.nii.gz"
    _itksnap_save(seg_a, drafts[accepted].labels, seg_a)
    seg_e = out / f"img{edited:06d}" / f"img{edited:06d}_seg.nii.gz"
    changed = drafts[edited].labels.copy()
    changed[20:60, 20:60] = 4
    _itksnap_save(seg_e, changed, seg_e)
    report = sync_itksnap(ws, out, "AN3")
    assert (report.new_versions, report.rejected) == (2, [])
    latest = _latest(ws, "AN3")
    for image_id, unchanged in ((accepted, True), (edited, False)):
        a = latest[image_id]
        assert (a.draft_version, a.draft_run_id, a.draft_unchanged) == (
            model.model_version,
            run,
            unchanged,
        )
        assert a.draft_hash == pixel_digest(drafts[image_id].labels)
    assert latest[ids[0]].draft_version is None
    # re-export: idempotent; the edited label keeps its draft's record; drafts may be
    # replaced (they are not edits): --prefill own empties them, keeping no unsynced edit
    assert export_itksnap(ws, "AN3", out, drafter=run_drafter(ws, run, "cpu")).kept == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["drafts"][f"img{edited:06d}"]["file_sha256"] is None
    plain = export_itksnap(ws, "AN3", out)
    assert (plain.kept, plain.drafted, plain.prefilled) == (0, 0, 3)
    assert not read_label_map(out / f"img{ids[5]:06d}" / f"img{ids[5]:06d}_seg.nii.gz").any()
    assert sorted(json.loads((out / EXPORT_MARKER).read_text())["drafts"]) == [
        f"img{accepted:06d}",
        f"img{edited:06d}",
    ]
    assert parse_prefill("model:7") == (True, 7) and parse_prefill("none") == (False, None)
    with pytest.raises(UsageError, match="own, none, model:RUN \\(a run id\\) or propagate"):
        parse_prefill("model:x")
    from typer.testing import CliRunner

    from datatool.cli import app as cli

    def export(*args: str):
        common = ["export", "itksnap", "--rater", "AN3", "--workspace", str(ws.root)]
        return CliRunner().invoke(cli, [*common, *args])

    shown = export("--out", str(tmp_path / "cli"), "--prefill", f"model:{run}", "--json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert (data["drafted"], data["prefilled"], data["draft_run"]) == (N - 3, 3, run)
    bad = export("--out", str(tmp_path / "bad"), "--prefill", "rater2")
    assert bad.exit_code == 2 and "own, none, model:RUN (a run id) or propagate" in bad.output


def _nifti_bomb(path: Path, width: int, height: int) -> Path:
    """A .nii.gz whose header declares width x height (uint8) of zeros: a few hundred KB
    on disk, written without ever holding the map in memory."""
    import gzip

    small = path.with_name("small.nii")
    sitk.WriteImage(sitk.Image(2, 2, sitk.sitkUInt8), str(small))
    raw = bytearray(small.read_bytes())
    small.unlink()
    offset = int(np.frombuffer(bytes(raw[108:112]), "<f4")[0])  # vox_offset
    raw[42:46] = np.array([width, height], "<i2").tobytes()  # dim[1], dim[2]
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(bytes(raw[:offset]))
        row = bytes(width)
        for _ in range(height):
            out.write(row)
    return path


def test_peak_memory_of_a_label_map_bomb_is_bounded_by_the_image(
    study, demo_dir, tmp_path, cli_env
):
    """A 400 KB .nii.gz declaring 16000 x 16000 once made sync inflate 256 MB (and copy it)
    before the size check: the header's size is now checked against the image first."""
    from tests.memory import run_measured

    rel = sorted((demo_dir / "labels" / "rater1").rglob("*.nii.gz"))[0].relative_to(
        demo_dir / "labels" / "rater1"
    )
    folders = {}
    for name in ("good", "bomb"):
        folders[name] = tmp_path / name
        (folders[name] / rel.parent).mkdir(parents=True)
    shutil.copy(demo_dir / "labels" / "rater1" / rel, folders["good"] / rel)
    _nifti_bomb(folders["bomb"] / rel, 16000, 16000)
    assert (folders["bomb"] / rel).stat().st_size < 2_000_000

    def run(folder: Path):
        cmd = [sys.executable, "-m", "datatool", "sync", "itksnap", str(folder)]
        cmd += ["--rater", "rater1", "--dicom-root", str(demo_dir / "dicom")]
        return run_measured([*cmd, "--workspace", str(study.root)], cli_env)

    baseline, res = run(folders["good"]), run(folders["bomb"])
    assert baseline.returncode == 0, baseline.stderr
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "size mismatch: label map is 16000x16000" in res.stderr
    with study.session() as s:
        image = image_for_dicom(
            s, study.key, demo_dir / "dicom" / rel.with_suffix("").with_suffix(".dcm")
        )
        pixels_mib = image.rows * image.cols / 1024**2
    # a few copies of the image's own size, not the 244 MiB the header declares
    assert res.peak_mib < baseline.peak_mib + 4 * pixels_mib + 24, (res.peak_mib, baseline.peak_mib)


def test_names_that_are_not_utf8_are_rejected_by_their_bytes_and_the_rest_go_on(
    study, demo_dir, tmp_path, cli_env
):
    """A label file, or an exported folder, whose name is not valid UTF-8 once made SimpleITK
    abort the whole sync (exit 134): now one line names it (its bytes as \\xNN), the rest are
    stored, exit 1."""
    ws = study
    labels = shutil.copytree(demo_dir / "labels" / "rater1", tmp_path / "r1")
    first = sorted(labels.rglob("*.nii.gz"))[0]
    bad_file = os.fsencode(first.parent) + b"/" + os.fsencode(first.stem)[:-4] + b"\xff.nii.gz"
    os.rename(first, bad_file)
    exported = tmp_path / "exp"
    export_itksnap(ws, "rater2", exported, image_ids=[1, 2])
    seg = exported / "img000002" / "img000002_seg.nii.gz"
    _itksnap_save(seg, read_label_map(seg) | 1, exported / "img000002" / "img000002.nii.gz")
    os.rename(os.fsencode(exported / "img000001"), os.fsencode(exported) + b"/img000001\xfe")

    res = _cli(["sync", "itksnap", str(labels), "--rater", "rater1", "--dicom-root",
                str(demo_dir / "dicom"), "--json"], cli_env, ws)  # fmt: skip
    assert res.returncode == 1, res.stderr
    shown = os.fsencode(bad_file).decode("utf-8", "backslashreplace")
    assert "\\xff.nii.gz" in shown
    assert res.stderr.strip().splitlines() == [
        f"rejected: {shown}: its name is not valid UTF-8: rename it (UTF-8), then sync again"
    ]
    data = json.loads(res.stdout)
    assert (data["seen"], data["new_versions"], len(data["rejected"])) == (N, N - 1, 1)

    res = _cli(["sync", "itksnap", str(exported), "--rater", "rater2", "--allow-empty"],
               cli_env, ws)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"rejected: {exported}/img000001\\xfe/img000001_seg.nii.gz: its name is not valid "
        "UTF-8: rename it (UTF-8), then sync again"
    ]
    assert _latest(ws, "rater2").keys() == {2}


def test_drafts_are_known_by_content_and_copies_of_another_raters_labels_are_refused(
    trained, tmp_path
):
    """Draft provenance lives in the catalogue, not only in the export's marker: with the
    marker deleted, another rater syncing the whole export stores none of its model drafts
    as their labels, and the exporting rater's own labels in it are refused as copies
    (blinding) unless --allow-copy gives a reason (audited); a draft copied out of the export
    and saved as it is keeps its provenance."""
    from datatool.core.catalogue import DraftHandout
    from datatool.core.store import pixel_digest
    from datatool.labels.annotations import get_rater, store_annotation
    from tests.qa_util import clone

    source, run = trained
    ws = clone(source, tmp_path / "ws")
    ids = _image_ids(ws)[:6]
    add_rater(ws, "A")
    add_rater(ws, "B")
    owns = {}
    with ws.session() as s:
        images = {i.id: i for i in s.scalars(select(Image))}
        for k, image_id in enumerate(ids[:2]):  # A's own labels of two images
            own = np.zeros((images[image_id].rows, images[image_id].cols), np.uint8)
            own[90 + k : 151, 205:277] = 2  # nobody else's label
            owns[image_id] = pixel_digest(own)
            store_annotation(
                s,
                ws.store,
                images[image_id],
                get_rater(s, "A"),
                own,
                "itksnap",
                None,
                load_protocol(),
            )
    out = tmp_path / "a"
    summary = export_itksnap(ws, "A", out, image_ids=ids, drafter=run_drafter(ws, run, "cpu"))
    assert (summary.prefilled, summary.drafted) == (2, 4)
    marker = json.loads((out / EXPORT_MARKER).read_text())
    with ws.session() as s:
        query = select(DraftHandout).join(Rater, Rater.id == DraftHandout.rater_id)
        handed = {h.image_id: h for h in s.scalars(query.where(Rater.name == "A"))}
    assert sorted(handed) == ids[2:]
    for image_id, h in handed.items():
        record = marker["drafts"][f"img{image_id:06d}"]
        assert (h.run_id, h.via, h.model_version) == (run, "itksnap", record["model_version"])
        assert (h.mask_hash, h.file_sha256) == (record["mask_hash"], record["file_sha256"])
    # again: the same handouts, nothing twice
    export_itksnap(ws, "A", out, image_ids=ids, drafter=run_drafter(ws, run, "cpu"))
    assert _count(ws, DraftHandout) == len(handed)

    (out / EXPORT_MARKER).unlink()
    as_b = sync_itksnap(ws, out, "B")
    assert (as_b.new_versions, as_b.unchanged) == (0, 0), as_b.as_dict()
    assert sorted(Path(i).name for i, _ in as_b.rejected) == [
        f"img{i:06d}_seg.nii.gz" for i in ids[:2]
    ]
    assert all("a copy breaks the double-blind" in r for _, r in as_b.rejected)
    assert any(n.startswith("4 model drafts are still as exported") for _, n in as_b.notes)
    assert _latest(ws, "B") == {}
    forced = sync_itksnap(ws, out, "B", allow_copy="  teaching set,\nagreed with A ")
    assert (forced.new_versions, forced.rejected) == (2, [])
    assert {a.mask_hash for a in _latest(ws, "B").values()} == set(owns.values())
    with ws.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "copy allowed")).one()
        assert entry.details["reason"] == "teaching set, agreed with A"
        assert entry.details["images"] == ids[:2] and entry.details["copied_from"] == ["A"]
    with pytest.raises(UsageError, match="--allow-copy needs a reason"):
        sync_itksnap(ws, out, "B", allow_copy="  ")

    # a draft copied out of the export and saved as it is: the draft, not a human label
    accepted = ids[2]
    seg = out / f"img{accepted:06d}" / f"img{accepted:06d}_seg.nii.gz"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(seg, elsewhere / seg.name)
    assert sync_itksnap(ws, elsewhere, "A").new_versions == 0  # never saved: not a label
    _itksnap_save(elsewhere / seg.name, read_label_map(seg).astype(np.uint8), seg)
    saved = sync_itksnap(ws, elsewhere, "A")
    assert (saved.new_versions, saved.rejected) == (1, [])
    a = _latest(ws, "A")[accepted]
    assert (a.draft_run_id, a.draft_hash, a.draft_unchanged) == (
        run, handed[accepted].mask_hash, True)  # fmt: skip
    # B saving the same draft of the same run is no copy of A (a draft is nobody's work)
    saved_b = sync_itksnap(ws, elsewhere, "B")
    assert (saved_b.new_versions, saved_b.rejected) == (1, [])
    b = _latest(ws, "B")[accepted]
    assert (b.draft_version, b.draft_unchanged) == (handed[accepted].model_version, True)
