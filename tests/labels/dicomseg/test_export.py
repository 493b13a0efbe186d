"""DICOM SEG export (datatool/labels/dicomseg/export.py and the command in cli/dicomseg.py)
on the demo study: the originals found again under --dicom-root, masks read back equal to
the catalogue's, re-runs that change nothing, and the bad cases, one line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from sqlalchemy import func, select
from typer.testing import CliRunner

from datatool import __version__
from datatool.cli import app
from datatool.core.catalogue import Annotation, Image, RaterKind, SourceFile
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.ingest import deid
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.dicomseg.export import MANIFEST, export_dicom_seg
from datatool.labels.dicomseg.formats import segment_masks, segment_specs
from datatool.labels.matching import NoImage, image_for_dicom
from tests.labels_util import ingest_demo_with_labels

SEGMENTS = segment_specs(load_protocol().structures)
runner = CliRunner()


@pytest.fixture()
def study(ws, demo_dir, tmp_path):
    """The demo ingested with both raters' labels; its originals copied to ``orig`` (a
    folder the tests may change; ingest saw the demo's own folder)."""
    ingest_demo_with_labels(ws, demo_dir)
    originals = tmp_path / "orig"
    shutil.copytree(demo_dir / "dicom", originals)
    return ws, originals


def _labelled(ws, rater: str) -> dict[int, np.ndarray]:
    with ws.session() as s:
        rater_id = get_rater(s, rater).id
        rows = s.execute(
            select(Annotation.image_id, Annotation.mask_hash, Annotation.version)
            .where(Annotation.rater_id == rater_id)
            .order_by(Annotation.version)
        ).all()
    return {image_id: ws.store.get_array(mask) for image_id, mask, _ in rows}


def _original_of(ws, originals: Path, image_id: int) -> Path:
    with ws.session() as s:
        for path in sorted(originals.rglob("*.dcm")):
            try:
                if image_for_dicom(s, ws.key, path).id == image_id:
                    return path
            except NoImage:
                continue
    raise AssertionError(image_id)


def test_every_labelled_image_round_trips(study, tmp_path):
    ws, originals = study
    out = tmp_path / "seg"
    result = export_dicom_seg(ws, "rater1", originals, out)
    labelled = _labelled(ws, "rater1")
    assert result.written == len(labelled) == 12 and result.exit_code == 0
    assert not result.refused and not result.skipped
    syntaxes = set()
    with ws.session() as s:
        for path in sorted(originals.rglob("*.dcm")):
            original = pydicom.dcmread(path)
            syntaxes.add(original.file_meta.TransferSyntaxUID)
            image = image_for_dicom(s, ws.key, path)
            seg_path = out / f"img{image.id:06d}.dcm"
            seg = hd.seg.segread(seg_path)
            referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
            # the original's own UID, which the catalogue holds only keyed
            assert referenced.ReferencedSOPInstanceUID == original.SOPInstanceUID
            assert deid.uid_for(ws.key, referenced.ReferencedSOPInstanceUID) == (
                s.get(SourceFile, image.source_file_id).sop_uid
            )
            assert seg.PatientID == original.PatientID  # it belongs to the PACS, on purpose
            masks = seg.get_pixels_by_source_instance(
                [original.SOPInstanceUID],
                segment_numbers=[x.number for x in SEGMENTS],
                combine_segments=False,
            )[0]
            for k, structure in enumerate(SEGMENTS):
                assert np.array_equal(masks[..., k] > 0, labelled[image.id] == structure.value)
                assert seg.get_segment_description(k + 1).segment_label == structure.label
            assert np.array_equal(
                segment_masks(pydicom.dcmread(seg_path), SEGMENTS), labelled[image.id]
            )
            assert seg.ContentCreatorName == "rater1"
            assert seg.get_segment_description(1).algorithm_type.value == "MANUAL"
    assert len(syntaxes) >= 4
    assert {i.image.split(" ")[1][1:-1] for i in result.items} <= {
        p.name for p in originals.rglob("*.dcm")
    }  # the original's file name, never its folders (the MRN)
    assert not any("MRN" in i.image for i in result.items)


def test_a_re_run_is_a_no_op_and_new_labels_are_written(study, tmp_path):
    ws, originals = study
    out = tmp_path / "seg"
    export_dicom_seg(ws, "rater1", originals, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.dcm")}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.dcm")}
    again = export_dicom_seg(ws, "rater1", originals, out)
    assert (again.written, again.unchanged) == (0, 12)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.dcm")} == stamps

    # rater1 relabels one image: only its SEG is written again, with a new SOP Instance UID
    image_id = min(_labelled(ws, "rater1"))
    mask = _labelled(ws, "rater1")[image_id].copy()
    mask[mask == 3] = 0
    with ws.session() as s:
        store_annotation(
            s,
            ws.store,
            s.get(Image, image_id),
            get_rater(s, "rater1"),
            mask,
            "itksnap",
            None,
            load_protocol(),
        )
    third = export_dicom_seg(ws, "rater1", originals, out)
    assert (third.written, third.unchanged) == (1, 11)
    name = f"img{image_id:06d}.dcm"
    assert [i.file for i in third.items if i.status == "written"] == [name]
    new = pydicom.dcmread(out / name)
    assert np.array_equal(segment_masks(new, SEGMENTS), mask)
    assert (
        new.SOPInstanceUID
        != pydicom.dcmread(pydicom.filebase.DicomBytesIO(before[name])).SOPInstanceUID
    )
    assert all((out / n).read_bytes() == b for n, b in before.items() if n != name)
    # the same labels exported anew (the folder lost) give the same bytes
    shutil.rmtree(out)
    export_dicom_seg(ws, "rater1", originals, out)
    assert all((out / n).read_bytes() == b for n, b in before.items() if n != name)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["rater"] == "rater1" and len(manifest["files"]) == 12
    assert "MRN" not in (out / MANIFEST).read_text()  # no identity kept beside the SEGs


def test_bad_cases_one_line_each_and_the_batch_goes_on(study, tmp_path):
    ws, originals = study
    rater1 = _labelled(ws, "rater1")
    ids = sorted(rater1)
    missing, changed, retagged = ids[0], ids[1], ids[2]
    _original_of(ws, originals, missing).unlink()
    # pixels changed since ingest: refused
    path = _original_of(ws, originals, changed)
    ds = pydicom.dcmread(path)
    ds.decompress(generate_instance_uid=False)
    pixels = ds.pixel_array.copy()
    pixels[200:260, 200:260] = 255 - pixels[200:260, 200:260]
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    # only the header changed (an attribute edited, the file decompressed): the same pixels
    path = _original_of(ws, originals, retagged)
    ds = pydicom.dcmread(path)
    ds.decompress(generate_instance_uid=False)
    ds.StudyDescription = "edited"
    ds.save_as(path, enforce_file_format=True)
    # an image rater3 never labelled, and one it did
    add_rater(ws, "rater3")
    with ws.session() as s:
        image = s.get(Image, ids[3])
        store_annotation(
            s,
            ws.store,
            image,
            get_rater(s, "rater3"),
            rater1[ids[3]],
            "itksnap",
            None,
            load_protocol(),
        )
    with ws.session() as s:
        annotations = s.scalar(select(func.count()).select_from(Annotation))

    result = export_dicom_seg(ws, "rater1", originals, tmp_path / "seg")
    refused = dict(result.refused)
    assert result.exit_code == 1 and (result.written, len(refused)) == (10, 2), refused
    assert refused[f"img{missing:06d}"].startswith("its original (the DICOM file with its SOP")
    changed_key = next(k for k in refused if k.startswith(f"img{changed:06d} ("))
    assert "pixels no longer match the catalogue" in refused[changed_key]
    assert (tmp_path / "seg" / f"img{retagged:06d}.dcm").exists()
    assert all("\n" not in reason for reason in refused.values())

    other = export_dicom_seg(ws, "rater3", originals, tmp_path / "seg3", image_ids=[ids[3], ids[4]])
    assert other.written == 1 and other.exit_code == 1
    assert other.refused == [(f"img{ids[4]:06d}", "no labels of rater 'rater3' for this image")]
    with ws.session() as s:  # nothing in the catalogue changed
        assert s.scalar(select(func.count()).select_from(Annotation)) == annotations


def test_consensus_and_model_labels_say_how_they_were_made(study, tmp_path):
    from datatool.analysis.consensus import make_consensus

    ws, originals = study
    make_consensus(ws, "majority")
    consensus = export_dicom_seg(ws, "consensus:majority", originals, tmp_path / "c")
    assert consensus.written == 12
    seg = hd.seg.segread(next((tmp_path / "c").glob("*.dcm")))
    description = seg.get_segment_description(3)
    assert description.algorithm_type.value == "SEMIAUTOMATIC"
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == "datatool consensus majority"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Manual Processing"
    assert "ContentCreatorName" not in seg

    add_rater(ws, "model:7", RaterKind.model)
    rater2 = _labelled(ws, "rater2")
    ids = sorted(rater2)[:2]
    with ws.session() as s:
        for image_id in ids:
            store_annotation(
                s,
                ws.store,
                s.get(Image, image_id),
                get_rater(s, "model:7"),
                rater2[image_id],
                "model",
                None,
                load_protocol(),
            )
    model = export_dicom_seg(ws, "model:7", originals, tmp_path / "m")
    assert model.written == 2 and [i.image.split()[0] for i in model.items] == [
        f"img{i:06d}" for i in ids
    ]
    seg = hd.seg.segread(tmp_path / "m" / f"img{ids[0]:06d}.dcm")
    description = seg.get_segment_description(1)
    assert description.algorithm_type.value == "AUTOMATIC"
    algorithm = description.algorithm_identification[0]
    assert algorithm.AlgorithmName == "datatool model run 7"
    assert algorithm.AlgorithmVersion == __version__
    assert "run=7" in algorithm.AlgorithmParameters and __version__ in algorithm.AlgorithmParameters


def test_a_cine_s_frames_are_skipped_with_the_reason(ws, tmp_path):
    """The demo's cine (8 frames, every frame labelled): its frames get no SEG, the patient's
    stills do; skipping is no refusal (exit code 0)."""
    from datatool.demo.generator import write_demo_dataset

    demo = tmp_path / "demo"
    write_demo_dataset(demo, patients=1, seed=3, images_per_side=(1, 1), cines=1)
    ingest(ws, [demo / "dicom"], workers=0, frames="all")
    add_rater(ws, "rater1")
    cine = next((demo / "labels" / "rater1").rglob("*_cine.nii.gz"))
    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(cine))).astype(np.uint8)  # N x H x W
    with ws.session() as s:
        rater = get_rater(s, "rater1")
        frames = s.scalars(
            select(Image)
            .join(SourceFile, Image.source_file_id == SourceFile.id)
            .where(SourceFile.n_frames > 1)
            .order_by(Image.frame_index)
        ).all()
        assert len(frames) == volume.shape[0] == 8
        for image in frames[:2]:
            store_annotation(
                s,
                ws.store,
                image,
                rater,
                volume[image.frame_index],
                "itksnap",
                None,
                load_protocol(),
            )
        labels = demo / "labels" / "rater1"
        still_labels = next(p for p in labels.rglob("*.nii.gz") if p != cine)
        original = demo / "dicom" / still_labels.relative_to(labels).parent
        still = image_for_dicom(s, ws.key, original / still_labels.name.replace(".nii.gz", ".dcm"))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(still_labels))).astype(np.uint8)
        store_annotation(
            s,
            ws.store,
            still,
            rater,
            mask.reshape(mask.shape[-2:]),
            "itksnap",
            None,
            load_protocol(),
        )
    result = export_dicom_seg(ws, "rater1", demo / "dicom", tmp_path / "seg")
    assert result.exit_code == 0 and result.written == 1
    reason = (
        "a cine's frame: highdicom 0.28 cannot reference one frame of a multi-frame "
        "ultrasound image without a Frame of Reference (highdicom issue 284); no SEG"
    )
    assert result.skipped == [
        (f"img{f.id:06d} (cine file {f.source_file_id}, frame {f.frame_index + 1} of 8)", reason)
        for f in frames[:2]
    ]
    assert [p.name for p in (tmp_path / "seg").glob("*.dcm")] == [f"img{still.id:06d}.dcm"]


def test_another_rater_s_folder_is_refused(study, tmp_path):
    ws, originals = study
    export_dicom_seg(ws, "rater1", originals, tmp_path / "seg", image_ids=[1])
    with pytest.raises(UsageError, match="holds rater rater1's DICOM SEGs"):
        export_dicom_seg(ws, "rater2", originals, tmp_path / "seg")
    with pytest.raises(UsageError, match="no such folder"):
        export_dicom_seg(ws, "rater2", tmp_path / "nowhere", tmp_path / "seg2")


def _run(ws, *args: str):
    return runner.invoke(app, ["export", "dicom-seg", *args, "--workspace", str(ws.root)])


def test_the_command_prints_no_identity(study, demo_dir, tmp_path):
    ws, originals = study
    _original_of(ws, originals, 2).unlink()
    out = tmp_path / "seg"
    res = _run(ws, "-r", "rater1", "--dicom-root", str(originals), "--out", str(out), "--json")
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert (data["written"], data["refused"], data["exit_code"]) == (11, 1, 1)
    assert "refused: img000002: its original" in res.stderr
    table = _run(
        ws,
        "-r",
        "rater1",
        "--dicom-root",
        str(originals),
        "--out",
        str(out),
        "--csv",
        str(tmp_path / "seg.csv"),
    )
    assert table.exit_code == 1 and "0 written, 11 unchanged, 1 refused" in table.stdout
    rows = (tmp_path / "seg.csv").read_text().splitlines()
    assert rows[0] == "image,status,file,structures,reason" and len(rows) == 13
    # neither output nor the files beside the SEGs name the patients (their MRN folders,
    # names, IDs): those are only inside the SEGs, for the PACS
    identities = set()
    for path in originals.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identities |= {str(ds.PatientName), str(ds.PatientID), path.parent.name}
    said = res.stdout + res.stderr + table.stdout + table.stderr
    said += (out / MANIFEST).read_text() + (tmp_path / "seg.csv").read_text()
    assert not [x for x in identities if x and x in said]
    help_text = runner.invoke(app, ["export", "dicom-seg", "--help"]).stdout
    assert "CARRY THE ORIGINAL IDENTIFIERS" in help_text and "belong to the PACS" in help_text
    # a folder holding something else is not written into without --force
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = _run(ws, "-r", "rater1", "--dicom-root", str(originals), "--out", str(foreign))
    assert refused.exit_code == 2 and "--force" in refused.stderr


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_J2KR.dcm"])
def test_a_vendor_file_from_pydicom_data(ws, us_file, tmp_path, name):
    """A vendor's ultrasound image (pydicom-data: RGB, uncompressed or lossless JPEG 2000)
    ingested, labelled and exported: the SEG references it and holds the labels."""
    path = us_file(name)
    report = ingest(ws, [path.parent], workers=0, allow_burned_in=True)
    assert report.ingested == 1, report
    add_rater(ws, "rater1")
    with ws.session() as s:
        image = s.scalars(select(Image)).one()
        labels = np.zeros((image.rows, image.cols), np.uint8)
        labels[20:60, 30:90], labels[70:90, 100:130] = 1, 3
        store_annotation(
            s, ws.store, image, get_rater(s, "rater1"), labels, "itksnap", None, load_protocol()
        )
    result = export_dicom_seg(ws, "rater1", path.parent, tmp_path / "seg")
    assert (result.written, result.exit_code) == (1, 0)
    assert result.items[0].image == f"img{image.id:06d} ({name})"
    seg = pydicom.dcmread(tmp_path / "seg" / f"img{image.id:06d}.dcm")
    original = pydicom.dcmread(path)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(segment_masks(seg, SEGMENTS), labels)
