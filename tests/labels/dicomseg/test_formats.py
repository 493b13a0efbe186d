"""DICOM SEG datasets from label maps (datatool/labels/dicomseg/formats.py), on real DICOM
files (the demo's, in each of its transfer syntaxes, and a vendor file from pydicom-data),
read back with highdicom and pydicom and checked by dicom3tools' dciodvfy and dcmtk's
dcmdump."""

from __future__ import annotations

import datetime as dt
import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from datatool.core.protocol import load_protocol
from datatool.labels.dicomseg.formats import (
    AUTOMATIC,
    MANUAL,
    Provenance,
    SegRefused,
    build_segmentation,
    segment_masks,
    segment_specs,
    segmentation_bytes,
)
from tests.badfiles import long_cine
from tests.ci import unavailable

SEGMENTS = segment_specs(load_protocol().structures)
MADE = dt.datetime(2026, 3, 4, 5, 6, 7)


def labels_for(ds: pydicom.Dataset) -> np.ndarray:
    """A label map over the image with every structure of the protocol, in blocks."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    labels = np.zeros((rows, cols), np.uint8)
    for k, s in enumerate(SEGMENTS):
        labels[10 + 8 * k : 16 + 8 * k, 5 + 9 * k : 30 + 9 * k] = s.value
    labels[rows - 3 :, cols - 4 :] = SEGMENTS[0].value  # touching the corner too
    return labels


def build(ds, labels, provenance=None, sop_uid=None):
    return build_segmentation(
        ds,
        labels,
        SEGMENTS,
        provenance or Provenance(MANUAL, "rater1"),
        series_uid="1.2.826.0.1.3680043.8.498.1",
        sop_uid=sop_uid or "1.2.826.0.1.3680043.8.498.2",
        software_version="datatool 0.1.0",
        content_description="rater1 labels, version 1 (datatool)",
        made=MADE,
    )


def encode(seg) -> bytes:
    return segmentation_bytes(seg)


def test_segments_follow_the_protocol_with_its_codes():
    assert [(s.number, s.value, s.label) for s in SEGMENTS] == [
        (1, 1, "femur"),
        (2, 2, "adductor magnus"),
        (3, 3, "sciatic nerve"),
        (4, 4, "semitendinosus"),
        (5, 6, "femoral artery"),
    ]
    codes = {s.label: (s.code.scheme_designator, s.code.value, s.exact) for s in SEGMENTS}
    assert codes == {
        "femur": ("SCT", "71341001", True),
        "adductor magnus": ("SCT", "102292000", False),
        "sciatic nerve": ("SCT", "84782009", False),
        "semitendinosus": ("SCT", "102292000", False),
        "femoral artery": ("SCT", "7657000", True),
    }
    # the exact codes are the ones DICOM's own code dictionary gives those structures
    from pydicom.sr.codedict import codes as dicom

    assert dicom.SCT.Femur.value == "71341001"
    assert dicom.SCT.FemoralArtery.value == "7657000"
    assert dicom.cid7167.PeripheralNerve.value == "84782009"
    assert dicom.cid4031.MuscleOfLowerLimb.value == "102292000"


def test_round_trip_on_every_demo_transfer_syntax(demo_dir, tmp_path):
    """A SEG of each demo file: read back by highdicom (segread) its masks are the label
    map's, per structure; it references the original's SOP Instance UID and carries its
    patient and study."""
    seen = set()
    for path in sorted((demo_dir / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.TransferSyntaxUID
        if syntax in seen:
            continue
        seen.add(syntax)
        labels = labels_for(ds)
        out = tmp_path / f"{len(seen)}.dcm"
        out.write_bytes(encode(build(ds, labels)))

        seg = hd.seg.segread(out)
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert seg.SegmentationType == "BINARY"
        referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert referenced.ReferencedSOPInstanceUID == ds.SOPInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
        assert (seg.StudyInstanceUID, seg.PatientID) == (ds.StudyInstanceUID, ds.PatientID)
        masks = seg.get_pixels_by_source_instance(
            [ds.SOPInstanceUID], segment_numbers=[1, 2, 3, 4, 5], combine_segments=False
        )[0]
        for k, s in enumerate(SEGMENTS):
            assert np.array_equal(masks[..., k] > 0, labels == s.value), s.label
            description = seg.get_segment_description(s.number)
            assert description.segment_label == s.label
            assert description.segmented_property_type.value == s.code.value
            assert description.segmented_property_category.value == "91723000"
            assert description.algorithm_type.value == MANUAL
            assert description.algorithm_identification is None
        # pydicom alone reads it too, and the datatool reader gives the label map back
        plain = pydicom.dcmread(out)
        assert plain.ContentCreatorName == "rater1" and plain.ContentLabel == "RATER1"
        assert np.array_equal(segment_masks(plain, SEGMENTS), labels)
    assert len(seen) >= 4  # explicit little endian, RLE, JPEG baseline, JPEG 2000


def test_a_vendor_file_from_pydicom_data(pydicom_data, tmp_path):
    ds = pydicom.dcmread(pydicom_data / "US1_UNCR.dcm")  # a vendor's RGB ultrasound image
    labels = labels_for(ds)
    out = tmp_path / "seg.dcm"
    out.write_bytes(encode(build(ds, labels)))
    seg = hd.seg.segread(out)
    assert (
        seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
        == ds.SOPInstanceUID
    )
    assert np.array_equal(segment_masks(pydicom.dcmread(out), SEGMENTS), labels)
    _valid(out)


def test_a_model_s_labels_identify_the_algorithm(demo_dir):
    ds = pydicom.dcmread(next((demo_dir / "dicom").rglob("*.dcm")))
    provenance = Provenance(
        AUTOMATIC,
        "model:3",
        algorithm_name="datatool model run 3",
        algorithm_version="0.1.0",
        parameters={"run": "3"},
    )
    seg = hd.seg.Segmentation.from_dataset(build(ds, labels_for(ds), provenance))
    description = seg.get_segment_description(1)
    assert description.algorithm_type.value == AUTOMATIC
    algorithm = description.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (
        "datatool model run 3",
        "0.1.0",
    )
    assert algorithm.AlgorithmParameters == "run=3"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert "ContentCreatorName" not in seg or not seg.ContentCreatorName


def test_the_same_labels_give_the_same_bytes(demo_dir):
    ds = pydicom.dcmread(next((demo_dir / "dicom").rglob("*.dcm")))
    labels = labels_for(ds)
    first, second = encode(build(ds, labels)), encode(build(ds, labels))
    assert first == second
    seg = pydicom.dcmread(io.BytesIO(first))
    assert (seg.ContentDate, seg.ContentTime) == ("20260304", "050607")
    assert (seg.InstanceCreationDate, seg.SeriesDate) == ("20260304", "20260304")


def test_a_cine_is_refused_because_highdicom_cannot_reference_its_frame(tmp_path):
    cine = pydicom.dcmread(long_cine(tmp_path / "cine.dcm", 4, 64, 80))
    cine.PatientName, cine.PatientBirthDate, cine.PatientSex = "", "", ""
    cine.StudyDate = cine.StudyTime = cine.AccessionNumber = cine.StudyID = ""
    cine.ReferringPhysicianName = ""
    labels = np.zeros((64, 80), np.uint8)
    labels[10:20, 10:20] = 1
    with pytest.raises(SegRefused, match="multi-frame image \\(4 frames\\)"):
        build(cine, labels)
    # what the decision rests on: highdicom 0.28 itself refuses a frame of such an image
    # (when this starts to pass, reference the frame instead of skipping the cine)
    description = hd.seg.SegmentDescription(
        1,
        "femur",
        hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        SEGMENTS[0].code,
        MANUAL,
    )
    with pytest.raises(ValueError, match="Only a single frame is supported"):
        hd.seg.Segmentation(
            [cine],
            labels[None],
            "BINARY",
            [description],
            generate_uid(),
            1,
            generate_uid(),
            1,
            "x",
            "x",
            "1",
            "0",
        )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m[:-1], "the label map is 640 x 479 px, the original 640 x 480 px"),
        (lambda m: np.where(m == 1, 5, m).astype(np.uint8), "label values \\[5\\]"),
        (lambda m: np.zeros_like(m), "the label map is empty"),
    ],
)
def test_bad_label_maps_are_refused_with_one_line(demo_dir, change, reason):
    ds = pydicom.dcmread(next((demo_dir / "dicom").rglob("*.dcm")))
    with pytest.raises(SegRefused, match=reason) as refused:
        build(ds, change(labels_for(ds)))
    assert "\n" not in str(refused.value)


def _valid(path: Path) -> None:
    """dicom3tools' IOD check and dcmtk's parser find no error in the file."""
    for tool, package in (("dciodvfy", "dicom3tools"), ("dcmdump", "dcmtk")):
        if shutil.which(tool) is None:
            unavailable(f"{tool} is not installed (apt-get install {package})")
    check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = check.stdout + check.stderr
    assert "Segmentation" in report  # it recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == []
    dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "E: " not in dump.stderr
    assert "SegmentSequence" in dump.stdout


def test_the_seg_passes_dciodvfy_and_dcmdump(demo_dir, tmp_path):
    for k, path in enumerate(sorted((demo_dir / "dicom").rglob("*.dcm"))[:5]):
        ds = pydicom.dcmread(path)
        out = tmp_path / f"{k}.dcm"
        out.write_bytes(encode(build(ds, labels_for(ds))))
        _valid(out)


def test_an_original_highdicom_cannot_take_is_refused_by_the_error_s_type_only(demo_dir):
    ds = pydicom.dcmread(next((demo_dir / "dicom").rglob("*.dcm")))
    ds.PatientID = "SECRET-4711"
    del ds.StudyInstanceUID  # highdicom copies it: it cannot do without
    with pytest.raises(SegRefused) as refused:
        build(ds, labels_for(ds))
    assert str(refused.value).startswith("highdicom cannot make a SEG of this original (")
    assert "SECRET" not in str(refused.value)
