"""Pseudonyms, UIDs, dates, ages and blanking; and the workspace-wide leak test."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import numpy as np
import pydicom

from datatool import deid


KEY = b"k" * 32


def test_pseudonym_is_stable_across_processes_and_depends_on_the_key():
    here = deid.pseudonym_for(KEY, "MRN123456")
    code = ("from datatool import deid; print(deid.pseudonym_for(b'k' * 32, ' MRN123456 '))")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
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
