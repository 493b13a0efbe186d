"""Tests of the synthetic demo dataset (datatool.demo.generator)."""

from __future__ import annotations

import csv
import dataclasses
import re
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundImageStorage,
)
from scipy import ndimage

from datatool.core.protocol import load_protocol
from datatool.demo.generator import (
    BANNER_ROWS,
    COLUMNS,
    INSTITUTION,
    PHI_TOKEN,
    PRIVATE_CREATOR,
    PRIVATE_GROUP,
    ROWS,
    parse_images_per_side,
    write_demo_dataset,
)

PATIENTS, PER_SIDE, SEED = 2, (2, 2), 0
N_IMAGES = PATIENTS * 2 * PER_SIDE[0]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    calls = []
    summary = write_demo_dataset(
        out,
        patients=PATIENTS,
        seed=SEED,
        images_per_side=PER_SIDE,
        progress=lambda done, total: calls.append((done, total)),
    )
    return out, summary, calls


@pytest.fixture(scope="module")
def images(demo):
    """(relative stem, dataset, pixel array, rater1 map, rater2 map) for every image."""
    out, _, _ = demo
    rows = []
    for f in sorted((out / "dicom").rglob("*.dcm")):
        rel = f.relative_to(out / "dicom").with_suffix("")
        ds = pydicom.dcmread(f)
        maps = [
            sitk.ReadImage(str(out / "labels" / r / f"{rel}.nii.gz")) for r in ("rater1", "rater2")
        ]
        rows.append((rel, ds, ds.pixel_array, maps[0], maps[1]))
    return rows


def _grey(arr: np.ndarray) -> np.ndarray:
    return arr[..., 0] if arr.ndim == 3 else arr


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------------------------


def test_parse_images_per_side():
    assert parse_images_per_side("4") == (4, 4)
    assert parse_images_per_side("7-8") == (7, 8)
    assert parse_images_per_side(" 7 - 8 ") == (7, 8)
    for bad in ("", "a", "8-7", "0", "0-2", "3-", "-3", "1-2-3", "2.5"):
        with pytest.raises(ValueError, match="images per side"):
            parse_images_per_side(bad)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path, patients=0)
    with pytest.raises(ValueError):
        write_demo_dataset(tmp_path, patients=1, images_per_side=(3, 2))


def test_layout_and_summary(demo):
    out, summary, calls = demo
    assert summary.patients == PATIENTS
    assert summary.images == N_IMAGES
    assert Path(summary.dicom_dir) == out / "dicom"
    assert Path(summary.labels_dir) == out / "labels"
    assert Path(summary.clinical_csv) == out / "clinical.csv"
    assert sum(summary.encodings.values()) == N_IMAGES
    assert calls == [(i, N_IMAGES) for i in range(1, N_IMAGES + 1)]

    dicoms = sorted((out / "dicom").rglob("*.dcm"))
    assert len(dicoms) == N_IMAGES
    mrns = sorted(p.name for p in (out / "dicom").iterdir())
    assert len(mrns) == PATIENTS and all(re.fullmatch(r"MRN\d{6}", m) for m in mrns)
    for mrn in mrns:
        names = sorted(p.name for p in (out / "dicom" / mrn).iterdir())
        assert names == ["L_01.dcm", "L_02.dcm", "R_01.dcm", "R_02.dcm"]
    for rater in ("rater1", "rater2"):
        maps = sorted(
            str(p.relative_to(out / "labels" / rater))
            for p in (out / "labels" / rater).rglob("*.nii.gz")
        )
        assert maps == sorted(str(p.relative_to(out / "dicom"))[:-4] + ".nii.gz" for p in dicoms)
    assert (
        out / "labels" / "itksnap_labels.txt"
    ).read_text() == load_protocol().itksnap_label_description()
    assert "FAKE" in (out / "README.txt").read_text()
    # Atomic writes leave no temporary files behind.
    assert not list(out.rglob(".*"))

    with open(out / "clinical.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0].keys()) == ["patient_id", "sex", "age", "bmi", "asa"]
    assert sorted(r["patient_id"] for r in rows) == mrns
    for r in rows:
        assert r["sex"] in ("F", "M")
        assert 18 <= int(r["age"]) <= 100
        assert re.fullmatch(r"\d{2}\.\d", r["bmi"])
        assert r["asa"] in ("1", "2", "3")
    by_id = {r["patient_id"]: r for r in rows}
    for f in dicoms:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.PatientID == f.parent.name
        assert ds.PatientSex == by_id[ds.PatientID]["sex"]
        assert int(ds.PatientAge[:3]) == int(by_id[ds.PatientID]["age"])


def test_dicom_headers(images):
    studies, series, sops = {}, {}, set()
    for rel, ds, arr, _, _ in images:
        mrn, stem = rel.parts
        side = stem[0]
        assert ds.preamble is not None and len(ds.preamble) == 128
        fm = ds.file_meta
        assert fm.MediaStorageSOPClassUID == UltrasoundImageStorage
        assert fm.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert fm.ImplementationClassUID
        assert ds.SOPClassUID == UltrasoundImageStorage
        assert ds.Modality == "US"
        assert (ds.Rows, ds.Columns) == (ROWS, COLUMNS)
        assert arr.shape in ((ROWS, COLUMNS), (ROWS, COLUMNS, 3)) and arr.dtype == np.uint8
        assert "NumberOfFrames" not in ds
        assert ds.ImageLaterality == side and ds.Laterality == side
        assert ds.SeriesDescription == f"Sciatic ant {side}"
        assert ds.BodyPartExamined == "LEG"
        assert ds.Manufacturer == "datatool-demo"
        assert ds.BurnedInAnnotation == "YES"
        assert ds.StudyDate.startswith("2025") and ds.ContentDate.startswith("2025")
        assert ds.StudyTime and ds.ContentTime
        studies.setdefault(mrn, set()).add(ds.StudyInstanceUID)
        series.setdefault((mrn, side), set()).add(ds.SeriesInstanceUID)
        sops.add(ds.SOPInstanceUID)
    assert all(len(v) == 1 for v in studies.values())
    assert len({next(iter(v)) for v in studies.values()}) == PATIENTS
    assert all(len(v) == 1 for v in series.values())
    assert len({next(iter(v)) for v in series.values()}) == 2 * PATIENTS
    assert len(sops) == N_IMAGES


def test_encodings(demo, images):
    _, summary, _ = demo
    seen = {}
    for _, ds, arr, _, _ in images:
        ts = ds.file_meta.TransferSyntaxUID
        seen.setdefault(ts, set()).add(ds.PhotometricInterpretation)
        if ds.PhotometricInterpretation == "RGB":
            assert arr.shape == (ROWS, COLUMNS, 3) and ds.SamplesPerPixel == 3
        else:
            assert ds.PhotometricInterpretation == "MONOCHROME2" and arr.shape == (ROWS, COLUMNS)
        if ts == JPEGBaseline8Bit:
            assert ds.LossyImageCompression == "01"
            assert ds.LossyImageCompressionMethod == "ISO_10918_1"
        else:
            assert ds.LossyImageCompression == "00"
        assert arr[BANNER_ROWS:].mean() > 10  # decoded to an image, not to zeros
    assert len(seen) >= 4
    assert {ExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit, JPEG2000Lossless} <= set(seen)
    assert seen[ExplicitVRLittleEndian] == {"MONOCHROME2", "RGB"}
    assert set(summary.encodings) == {uid.name for uid in seen}


def test_region_and_banner(images):
    for _, ds, arr, _, _ in images:
        regions = ds.SequenceOfUltrasoundRegions
        assert len(regions) == 1
        r = regions[0]
        assert (r.RegionSpatialFormat, r.RegionDataType, r.RegionFlags) == (1, 1, 0)
        assert (r.PhysicalUnitsXDirection, r.PhysicalUnitsYDirection) == (3, 3)
        x0, y0 = r.RegionLocationMinX0, r.RegionLocationMinY0
        x1, y1 = r.RegionLocationMaxX1, r.RegionLocationMaxY1
        assert 0 <= x0 < x1 < COLUMNS and BANNER_ROWS <= y0 < y1 < ROWS
        assert r.PhysicalDeltaX == r.PhysicalDeltaY
        # Depth from the skin line (the reference pixel, 0 cm) to the bottom of the fan.
        assert r.ReferencePixelPhysicalValueY == 0
        depth = r.PhysicalDeltaY * (y1 - (y0 + r.ReferencePixelY0))
        assert 7.2 - 0.05 <= depth <= 13.0 + 0.05
        assert x0 <= x0 + r.ReferencePixelX0 <= x1
        grey = _grey(arr).astype(np.int32)
        assert np.count_nonzero(grey[:BANNER_ROWS]) > 0.5 * BANNER_ROWS * COLUMNS  # banner
        assert (grey[:BANNER_ROWS] > 150).sum() > 300  # its text
        assert (grey[y0 : y1 + 1, :x0] > 150).sum() > 100  # vendor text left of the fan
        inside = grey[y0 : y1 + 1, x0 : x1 + 1]
        assert (inside > 0).mean() > 0.6  # the fan fills most of its box
        # Corners of the region box lie outside the convex fan: black.
        assert grey[y1, x0] == 0 and grey[y1, x1] == 0


def test_fake_phi(images):
    for rel, ds, _, _, _ in images:
        name = str(ds.PatientName)
        assert PHI_TOKEN in name and re.search(r"Patient\d{4}", name)
        assert re.fullmatch(r"MRN\d{6}", ds.PatientID) and ds.PatientID == rel.parts[0]
        assert PHI_TOKEN in ds.AccessionNumber
        assert PHI_TOKEN in str(ds.ReferringPhysicianName)
        assert PHI_TOKEN in str(ds.OperatorsName)
        assert ds.InstitutionName == INSTITUTION
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        elem = block[0x10]
        assert elem.VR == "LO" and name in elem.value and ds.PatientID in elem.value
        birth = date(
            int(ds.PatientBirthDate[:4]),
            int(ds.PatientBirthDate[4:6]),
            int(ds.PatientBirthDate[6:]),
        )
        study = date(int(ds.StudyDate[:4]), int(ds.StudyDate[4:6]), int(ds.StudyDate[6:]))
        age = study.year - birth.year - ((study.month, study.day) < (birth.month, birth.day))
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge) and int(ds.PatientAge[:3]) == age


def test_label_maps(images):
    protocol = load_protocol()
    allowed = {0, *protocol.values}
    dice = {v: [] for v in protocol.values}
    for _, ds, _, m1, m2 in images:
        delta_mm = float(ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX) * 10.0
        arrays = []
        for m in (m1, m2):
            assert m.GetDimension() == 2
            assert m.GetSize() == (COLUMNS, ROWS)
            assert m.GetSpacing() == pytest.approx((delta_mm, delta_mm), rel=1e-5)
            assert m.GetOrigin() == (0.0, 0.0)
            a = sitk.GetArrayFromImage(m)
            assert a.dtype == np.uint8
            assert set(np.unique(a)) <= allowed
            assert len(set(np.unique(a)) - {0}) >= 4  # the artery may be out of view
            arrays.append(a)
        for v in protocol.values:
            x, y = arrays[0] == v, arrays[1] == v
            if x.any() and y.any():
                dice[v].append(2 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    for v, d in dice.items():
        assert d, f"label {v} never present in both raters' maps"
        assert 0.6 <= float(np.mean(d)) <= 0.99, (protocol.by_value(v).name, np.mean(d))


def test_echogenicity(images):
    """Hyperechoic nerve, anechoic artery lumen, hypoechoic muscle between."""
    protocol = load_protocol()
    nerve = protocol.by_label("sciatic nerve").value
    artery = protocol.by_label("femoral artery").value
    muscle = protocol.by_label("adductor magnus").value
    nerve_means, lumen_means, muscle_means = [], [], []
    for _, _, arr, m1, _ in images:
        grey = _grey(arr).astype(np.float64)
        lab = sitk.GetArrayFromImage(m1)
        nerve_means.append(grey[lab == nerve].mean())
        muscle_means.append(grey[lab == muscle].mean())
        lumen = ndimage.binary_erosion(lab == artery, iterations=3)
        if lumen.any():
            lumen_means.append(grey[lumen].mean())
    assert lumen_means
    assert np.mean(nerve_means) > np.mean(lumen_means) + 20
    assert np.mean(nerve_means) > np.mean(muscle_means)
    assert np.mean(lumen_means) < np.mean(muscle_means)


def test_deterministic_and_overwrites(demo, tmp_path):
    out, summary, _ = demo
    reference = _files(out)
    again = tmp_path / "again"
    assert write_demo_dataset(
        again, patients=PATIENTS, seed=SEED, images_per_side=PER_SIDE
    ) == dataclasses.replace(
        summary,
        dicom_dir=again / "dicom",
        labels_dir=again / "labels",
        clinical_csv=again / "clinical.csv",
    )
    assert _files(again) == reference  # DICOM, label maps, CSV: byte-identical
    # Writing into an existing folder overwrites the demo files in place.
    write_demo_dataset(again, patients=PATIENTS, seed=SEED, images_per_side=PER_SIDE)
    assert _files(again) == reference

    other = tmp_path / "other"
    write_demo_dataset(other, patients=1, seed=SEED + 1, images_per_side=(1, 2))
    other_dcm = sorted((other / "dicom").rglob("*.dcm"))
    assert 2 <= len(other_dcm) <= 4
    ref_first = sorted((out / "dicom").rglob("*.dcm"))[0]
    assert other_dcm[0].read_bytes() != ref_first.read_bytes()
    assert pydicom.dcmread(other_dcm[0]).PatientID != pydicom.dcmread(ref_first).PatientID


def test_rater2_now_and_then_swaps_the_two_muscles():
    """About 2 % of rater 2's maps swap the adductor magnus and the semitendinosus (a case for
    the review queue); the other maps keep each muscle where rater 1 has it."""
    from datatool.demo.generator import (
        _image_anatomy,
        _label_maps,
        _make_patient,
        _rng,
        _side_anatomy,
    )

    protocol = load_protocol()
    am, st = protocol.by_label("adductor magnus").value, protocol.by_label("semitendinosus").value

    def dice(x, y):
        return 2 * np.logical_and(x, y).sum() / max(1, x.sum() + y.sum())

    patient = _make_patient(SEED, 0, set())
    base = _side_anatomy(_rng(SEED, 5, 0, 0), patient)
    swapped, n = 0, 300
    for k in range(n):
        anat = _image_anatomy(_rng(SEED, 6, 0, 0, k), base)
        r1, r2 = _label_maps(_rng(SEED, 7, 0, 0, k), anat, 1, patient.depth_cm, protocol)
        same, cross = dice(r1 == am, r2 == am), dice(r1 == am, r2 == st)
        if cross > same:
            swapped += 1
            assert cross > 0.6 and dice(r1 == st, r2 == am) > 0.6
        else:
            assert same > 0.6
    assert 1 <= swapped <= 15, swapped  # 2 % of 300 is 6


def test_every_fourth_patient_is_shown_with_the_other_display_convention(tmp_path):
    """The 4th patient's operator shows the lateral side on the other edge of the image (the
    femur, lateral to the nerve, on the image's right for a left leg); the others keep the
    protocol's convention. The demo's own rater errors can be left out."""
    from datatool.demo.patients import MIRRORING_OPERATOR

    write_demo_dataset(tmp_path, patients=4, seed=SEED, images_per_side=(1, 1), rater_errors=False)
    protocol = load_protocol()
    femur, nerve = protocol.by_label("femur").value, protocol.by_label("sciatic nerve").value
    seen = {}
    for f in sorted((tmp_path / "dicom").rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        rel = f.relative_to(tmp_path / "dicom").with_suffix("")
        lab = sitk.GetArrayFromImage(
            sitk.ReadImage(str(tmp_path / "labels" / "rater1" / f"{rel}.nii.gz"))
        )
        lab = lab.reshape(lab.shape[-2:])
        femur_x = np.nonzero(lab == femur)[1].mean()
        nerve_x = np.nonzero(lab == nerve)[1].mean()
        lateral = "left" if femur_x < nerve_x else "right"
        seen[(str(ds.OperatorsName) == MIRRORING_OPERATOR, ds.Laterality)] = lateral
        assert (
            protocol.lateral_image_side(ds.Laterality) == lateral
            or str(ds.OperatorsName) == MIRRORING_OPERATOR
        )
    assert seen == {
        (False, "L"): "left",
        (False, "R"): "right",
        (True, "L"): "right",
        (True, "R"): "left",
    }


def test_cines_are_multi_frame_files_with_a_label_volume_per_rater(tmp_path):
    """--cines adds loops whose frames both raters labelled (W x H x N, as ITK-SNAP saves a
    cine), the anatomy moving smoothly across frames; the stills are the same files as without."""
    import hashlib

    import pydicom
    import SimpleITK as sitk

    plain = write_demo_dataset(tmp_path / "plain", patients=1, images_per_side=(1, 1))
    looped = write_demo_dataset(
        tmp_path / "looped", patients=1, images_per_side=(1, 1), cines=2, cine_frames=4
    )
    assert (plain.images, plain.cines) == (2, 0)
    assert (looped.images, looped.cines) == (2 + 2 * 4, 2)
    cines = sorted(looped.dicom_dir.rglob("*_cine.dcm"))
    assert [c.name for c in cines] == ["L_cine.dcm", "R_cine.dcm"]
    for still in plain.dicom_dir.rglob("*.dcm"):
        twin = looped.dicom_dir / still.relative_to(plain.dicom_dir)
        assert (
            hashlib.sha256(twin.read_bytes()).digest()
            == hashlib.sha256(still.read_bytes()).digest()
        )
    nerve = load_protocol().by_label("sciatic nerve").value
    for cine in cines:
        ds = pydicom.dcmread(cine)
        assert int(ds.NumberOfFrames) == 4 and ds.pixel_array.shape == (4, ROWS, COLUMNS)
        assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
        rel = cine.relative_to(looped.dicom_dir).with_suffix("").with_suffix(".nii.gz")
        for rater in ("rater1", "rater2"):
            vol = sitk.ReadImage(str(looped.labels_dir / rater / rel))
            assert vol.GetSize() == (COLUMNS, ROWS, 4)
            labels = sitk.GetArrayFromImage(vol)
            xs = [np.nonzero(labels[k] == nerve)[1].mean() for k in range(4)]
            steps = np.diff(xs)
            # the sweep moves the nerve a few pixels per frame, all one way
            assert np.all(np.abs(steps) > 1) and np.all(np.abs(steps) < 15)
            assert len(set(np.sign(steps))) == 1
