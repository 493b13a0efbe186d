"""Pseudonyms, UIDs, dates, ages and blanking; and the workspace-wide leak test."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
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


# ---------------------------------------------------------------- by hand (issue 28)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def test_pseudonyms_and_path_keys_are_the_keyed_hashes_the_docs_describe():
    """HMAC-SHA256 with the workspace key over "purpose", 0x1F and the value: a pseudonym is
    "P-" and the first ten base32 characters; a path key the hex digest of the path's bytes."""
    digest = _hmac(KEY, b"patient\x1fMRN123456")
    assert deid.keyed_digest(KEY, "patient", "MRN123456") == digest
    assert deid.pseudonym_for(KEY, " MRN123456\t") == "P-" + base64.b32encode(digest).decode()[:10]
    assert (
        deid.path_key(KEY, "/in/a b.dcm")
        == hmac.new(KEY, b"path\x1f/in/a b.dcm", hashlib.sha256).hexdigest()
    )
    odd = os.fsdecode(b"/in/\xff.dcm")  # not UTF-8: hashed as its bytes on disk
    assert (
        deid.path_key(KEY, odd)
        == hmac.new(KEY, b"path\x1f/in/\xff.dcm", hashlib.sha256).hexdigest()
    )
    assert deid.uid_for(KEY, "1.2.3").startswith(pydicom.uid.PYDICOM_ROOT_UID)


def test_date_shifts_cover_1_to_365_days():
    """1 + (the first four bytes of HMAC(key, "date-shift" 0x1F id), big-endian) mod 365:
    a remainder of 0 moves the dates by 1 day, 364 by 365."""
    seen = {}
    for i in range(5000):
        pid = f"ID{i}"
        word = int.from_bytes(_hmac(KEY, f"date-shift\x1f{pid}".encode())[:4], "big")
        shift = deid.date_shift_days(KEY, f" {pid} ")
        assert shift == 1 + word % 365
        seen.setdefault(word % 365, shift)
        if 0 in seen and 364 in seen:
            break
    assert (seen[0], seen[364]) == (1, 365)


def test_dates_parse_only_as_eight_digits_of_a_real_day():
    assert deid.parse_da(" 20250110 ") == dt.date(2025, 1, 10)
    assert deid.parse_da(b"20240229".decode()) == dt.date(2024, 2, 29)
    for bad in ("20250229", "20251301", "2025011", "202501101", "2025-01-10", "", None, 0):
        assert deid.parse_da(bad) is None, bad
    assert deid.shifted_date("20250301", 1) == dt.date(2025, 2, 28)
    assert deid.shifted_date("20250301", 365) == dt.date(2024, 3, 1)
    assert deid.shifted_date("20250230", 3) is None


def test_ages_in_every_unit_and_from_the_dates():
    assert deid.age_at_exam(" 047y ", "", "") == 47
    assert deid.age_at_exam("47Y", "", "") == 47
    assert deid.age_at_exam("011M", "", "") == 0
    assert deid.age_at_exam("024M", "", "") == 2
    assert deid.age_at_exam("104W", "", "") == 2
    assert deid.age_at_exam("103W", "", "") == 1
    assert deid.age_at_exam("730D", "", "") == 2
    assert deid.age_at_exam("364D", "", "") == 0
    assert deid.age_at_exam("090Y", "", "") == 90
    assert deid.age_at_exam("091Y", "", "") == 90
    # not an age string: the dates decide (a birthday not yet reached takes a year off)
    assert deid.age_at_exam("1000Y", "19800310", "20250309") == 44
    assert deid.age_at_exam("", "19800310", "20250310") == 45
    assert deid.age_at_exam(None, "19800310", "20250409") == 45  # a later month
    assert deid.age_at_exam("", "19800310", "20250211") == 44  # an earlier month
    assert deid.age_at_exam("", "20250310", "20250310") == 0
    assert deid.age_at_exam("", "20250311", "20250310") is None  # born after the exam
    assert deid.age_at_exam("", "18900101", "20250101") == 90
    assert deid.age_at_exam("", "19800310", "") is None
    assert deid.age_at_exam("", "", "20250310") is None


def test_sex_is_m_f_o_or_nothing():
    cases = [("m", "M"), (" female ", "F"), ("O", "O"), ("MALE", "M"),
             ("F", "F"), ("X", None), ("", None), (None, None), ("U", None)]  # fmt: skip
    for value, want in cases:
        assert deid.normalise_sex(value) == want, value


def test_quarantine_reasons_word_for_word():
    reason = deid.quarantine_no_room(0.98765)
    assert reason == (
        "pixels may hold burned-in identity and the ultrasound regions cover 98.8 % of the "
        "image, leaving no room for a banner to blank: quarantined (check the image, then "
        "re-run with --allow-burned-in)"
    )
    assert deid.QUARANTINE_NO_REGION == (
        "pixels may hold burned-in identity and there is no ultrasound region to keep: "
        "quarantined (check the image, then re-run with --allow-burned-in)"
    )
    assert deid.quarantine_kind(reason) == "regions cover the image"
    assert deid.quarantine_kind(deid.QUARANTINE_NO_REGION) == "no ultrasound region"
    assert deid.quarantine_kind(None) == "other"
    assert deid.quarantine_kind("unreadable") == "other"


def test_covered_shares_by_hand():
    """10 x 10 unless said: the boxes are inclusive and clipped to the image."""
    share = deid.covered_share
    assert share([], 10, 10) == 0.0
    assert share([{"x0": 0, "y0": 0, "x1": 9, "y1": 9}], 0, 10) == 0.0
    assert share([{"x0": 0, "y0": 0, "x1": 9, "y1": 9}], 10, 0) == 0.0
    assert share([{"x0": 0, "y0": 0, "x1": 3, "y1": 3}], 10, 10) == 0.16
    # wider than tall: 5 rows x 10 columns, the top two rows (clipped from x -4..50, y -3..1)
    assert share([{"x0": -4, "y0": -3, "x1": 50, "y1": 1}], 5, 10) == 0.4
    # from row 3 down past the bottom (y1 50 of 5 rows): rows 3 and 4 only
    assert share([{"x0": 0, "y0": 3, "x1": 9, "y1": 50}], 5, 10) == 0.4
    # a column of 3 at x 7, rows 1..4: rows and columns not swapped
    assert share([{"x0": 7, "y0": 1, "x1": 7, "y1": 4}], 5, 10) == 4 / 50
    # two apart: 16 + 16; two overlapping on 2 x 2: 25 + 16 - 4
    a, b = {"x0": 0, "y0": 0, "x1": 3, "y1": 3}, {"x0": 6, "y0": 6, "x1": 9, "y1": 9}
    assert share([a, b], 10, 10) == 0.32
    a5, b4 = {"x0": 0, "y0": 0, "x1": 4, "y1": 4}, {"x0": 3, "y0": 3, "x1": 6, "y1": 6}
    assert share([a5, b4], 10, 10) == 0.37
    # side by side in x only (same rows): 2 x 10 + 3 x 10, no overlap
    left, right = {"x0": 0, "y0": 0, "x1": 1, "y1": 9}, {"x0": 5, "y0": 0, "x1": 7, "y1": 9}
    assert share([left, right], 10, 10) == 0.5
    # a box wholly outside counts nothing; three boxes (the mask's way): 16 + 16 + 1
    outside = {"x0": 20, "y0": 0, "x1": 30, "y1": 9}
    assert share([a, outside], 10, 10) == 0.16
    dot = {"x0": 5, "y0": 5, "x1": 5, "y1": 5}
    assert share([a, b, dot], 10, 10) == 0.33
    # room for a banner: 5 % or more of the image outside the regions
    assert deid.room_for_banner([{"x0": 0, "y0": 0, "x1": 9, "y1": 8}], 10, 10)  # 10 %
    assert not deid.room_for_banner([{"x0": 0, "y0": 0, "x1": 9, "y1": 9}], 10, 10)  # 0 %
    assert not deid.room_for_banner([{"x0": 0, "y0": 0, "x1": 99, "y1": 95}], 100, 100)  # 4 %
    assert deid.room_for_banner([], 10, 10)


def test_blanking_keeps_every_region_inclusive_on_colour_pixels():
    pixels = np.full((6, 8, 3), 9, np.uint8)
    regions = [{"x0": 0, "y0": 0, "x1": 1, "y1": 0}, {"x0": 6, "y0": 4, "x1": 7, "y1": 5}]
    out = deid.blank_outside_regions(pixels, regions)
    kept = np.zeros((6, 8), bool)
    kept[0, 0:2] = True
    kept[4:6, 6:8] = True
    assert (out[kept] == 9).all() and (out[~kept] == 0).all()
    assert out.shape == (6, 8, 3) and (pixels == 9).all()
