"""Pseudonyms, UIDs, dates, ages and blanking; and the workspace-wide leak test."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import numpy as np
import pydicom
import pytest

from datatool.ingest import deid

KEY = b"k" * 32


def test_pseudonym_is_stable_across_processes_and_depends_on_the_key():
    here = deid.pseudonym_for(KEY, "MRN123456")
    code = "from datatool.ingest import deid; print(deid.pseudonym_for(b'k' * 32, ' MRN123456 '))"
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert here == there and here.startswith("P-") and "123456" not in here
    assert deid.pseudonym_for(b"x" * 32, "MRN123456") != here
    assert deid.pseudonym_for(KEY, "MRN123457") != here


def test_uids_are_replaced_consistently_and_validly():
    uid = "1.2.840.113619.2.1.1.322987881.621.736170080.681"
    new = deid.uid_for(KEY, uid)
    assert new == deid.uid_for(KEY, uid) and new != uid and uid not in new
    assert pydicom.uid.UID(new).is_valid and len(new) <= 64
    assert deid.uid_for(b"z" * 32, uid) != new


def test_dates_shift_by_the_same_days_per_patient():
    shift = deid.date_shift_days(KEY, "MRN1")
    assert 1 <= shift <= 365 and shift == deid.date_shift_days(KEY, "MRN1")
    a, b = deid.shifted_date("20250110", shift), deid.shifted_date("20250120", shift)
    assert (b - a).days == 10 and a == dt.date(2025, 1, 10) - dt.timedelta(days=shift)
    assert deid.shifted_date("not a date", shift) is None


def test_age_at_exam():
    assert deid.age_at_exam("047Y", "", "") == 47
    assert deid.age_at_exam("", "19780605", "20250604") == 46
    assert deid.age_at_exam("", "19780605", "20250605") == 47
    assert deid.age_at_exam("097Y", "", "") == 90
    assert deid.age_at_exam("006M", "", "") == 0
    assert deid.age_at_exam("", "", "") is None


def test_blank_outside_regions():
    pixels = np.full((10, 12), 200, np.uint8)
    out = deid.blank_outside_regions(pixels, [{"x0": 2, "y0": 3, "x1": 5, "y1": 7}])
    assert out[3:8, 2:6].min() == 200 and out.sum() == 200 * 4 * 5
    assert pixels.min() == 200  # input untouched


def _phi_strings(dicom_dir) -> set[str]:
    """Every identifying value in the demo files: header, private tags, UIDs, folder names."""
    from pathlib import Path

    values: set[str] = set()
    for path in Path(dicom_dir).rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "InstitutionName",
            "ReferringPhysicianName",
            "OperatorsName",
            "StationName",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
        ):
            value = str(ds.get(keyword, "") or "")
            if value:
                values.add(value)
                values.update(part for part in value.split("^") if len(part) > 3)
        for element in ds:
            if element.tag.is_private and isinstance(element.value, str) and len(element.value) > 3:
                values.add(element.value)
        values.add(path.parent.name)  # the folder is named by the record number
    return values


def test_no_identity_reaches_the_workspace_or_the_output(demo_dir, tmp_path, cli_env):
    from pathlib import Path

    from datatool.core.workspace import init_workspace, open_workspace
    from datatool.demo.generator import BANNER_ROWS, PHI_TOKEN

    root = init_workspace(tmp_path / "w").root
    clinical = demo_dir / "clinical.csv"
    outputs = []
    for args in (
        ["ingest", str(demo_dir / "dicom"), "--json"],
        ["ingest-clinical", str(clinical)],
        ["status", "--json"],
        ["images", "--json"],
        ["cohort", "--json"],
    ):
        res = subprocess.run(
            [sys.executable, "-m", "datatool", *args, "--workspace", str(root)],
            capture_output=True,
            env=cli_env,
        )
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout + res.stderr)
    phi = _phi_strings(demo_dir / "dicom")
    phi.add(PHI_TOKEN)
    assert len(phi) > 20
    blobs = [
        p.read_bytes() for p in Path(root).rglob("*") if p.is_file() and p.name != "secret.key"
    ]
    blobs += outputs
    for value in phi:
        needle = value.encode()
        for blob in blobs:
            assert needle not in blob, f"{value!r} leaked"
    ws = open_workspace(root)
    with ws.session() as s:
        from sqlalchemy import select

        from datatool.core.catalogue import Image

        hashes = list(s.scalars(select(Image.store_hash)))
    assert hashes
    for digest in hashes:  # the burned-in banner is blanked in every stored image
        assert not ws.store.get_array(digest)[:BANNER_ROWS].any()
    ws.close()


def test_covered_share_agrees_with_a_mask_of_the_regions():
    import random

    from datatool.ingest.deid import covered_share, room_for_banner

    rng = random.Random(7)
    for _ in range(300):
        rows, cols = rng.randint(1, 30), rng.randint(1, 30)
        regions = []
        for _ in range(rng.randint(1, 4)):
            x0, x1 = sorted(rng.randint(0, cols - 1) for _ in range(2))
            y0, y1 = sorted(rng.randint(0, rows - 1) for _ in range(2))
            regions.append({"x0": x0, "y0": y0, "x1": x1, "y1": y1})
        mask = np.zeros((rows, cols), bool)
        for r in regions:
            mask[r["y0"] : r["y1"] + 1, r["x0"] : r["x1"] + 1] = True
        assert covered_share(regions, rows, cols) == pytest.approx(mask.mean())
    full = [{"x0": 0, "y0": 2, "x1": 99, "y1": 99}]  # 2 rows of 100 left: no banner fits
    assert not room_for_banner(full, 100, 100)
    assert room_for_banner([{"x0": 0, "y0": 10, "x1": 99, "y1": 99}], 100, 100)
