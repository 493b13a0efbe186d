"""The clinical table and the cohort description."""

from __future__ import annotations

import os

import pydicom
import pytest
from sqlalchemy import select

from datatool.core.catalogue import Patient
from datatool.core.errors import DatatoolError
from datatool.ingest.clinical import cohort, ingest_clinical
from datatool.ingest.pipeline import ingest


def test_clinical_csv_is_keyed_by_pseudonym_and_feeds_the_cohort(ws, us_file, tmp_path):
    path = us_file("OBXXXX1A.dcm")
    pid = str(pydicom.dcmread(path, stop_before_pixels=True).PatientID)
    ingest(ws, [path], workers=1)
    csv = tmp_path / "clinical.csv"
    csv.write_text(
        "patient_id,sex,age,bmi,asa\n"
        f"{pid},F,47,22.5,II\n"
        "OTHER1,M,30,24.0,1\n"
        "BAD1,X,30,24.0,1\n"
        "BAD2,F,thirty,24,1\n"
        ",F,30,24,1\n"
    )
    report = ingest_clinical(ws, csv)
    assert (report.updated, report.created) == (1, 1)
    assert [w for w, _ in report.rejected] == ["clinical.csv:4", "clinical.csv:5", "clinical.csv:6"]
    assert report.exit_code == 1
    with ws.session() as s:
        ids = [p.pseudonym for p in s.scalars(select(Patient))]
    assert pid not in ids and "OTHER1" not in ids
    again = ingest_clinical(ws, csv)
    assert again.unchanged == 2 and again.updated == 0 and again.created == 0
    data = cohort(ws)
    assert data.patients == 1 and data.female == 1 and data.asa == {"2": 1}
    assert data.age.mean == 47 and data.bmi.min == 22.5
    assert cohort(ws, imaged_only=False).patients == 2


def test_clinical_csv_without_an_id_column_lists_the_files_own_columns(ws, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("name,sex,Patient-Nr\nX,F,1\n")
    with pytest.raises(DatatoolError, match="no patient ID column") as exc:
        ingest_clinical(ws, csv)
    assert "the file's columns: 'name', 'sex', 'Patient-Nr'" in str(exc.value)


def test_an_overflowing_number_rejects_its_row_only(ws, tmp_path):
    """3e400 reads as infinity: int() of it raised OverflowError, which refused the whole
    file as 'a number given is too large'. Now that row alone is rejected, with its reason."""
    csv = tmp_path / "c.csv"
    csv.write_text(
        "patient_id,sex,age,bmi\nA1,F,3e400,22\nA2,M,40,1e400\nA3,F,-inf,22\nA4,M,50,nan\n"
        "A5,F,41,23\n"
    )
    report = ingest_clinical(ws, csv)
    assert report.created == 1
    reasons = dict(report.rejected)
    assert reasons["c.csv:2"] == "age '3e400' is not a finite number in 0..130"
    assert reasons["c.csv:3"] == "bmi '1e400' is not a finite number in 8.0..100.0"
    assert reasons["c.csv:4"] == "age '-inf' is not a finite number in 0..130"
    assert reasons["c.csv:5"] == "bmi 'nan' is not a finite number in 8.0..100.0"


def test_an_unterminated_quote_never_makes_a_patient_of_the_rest_of_the_file(ws, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text('patient_id,sex\nA1,F\n"B2,M\nC3,F\nD4,M\n')
    report = ingest_clinical(ws, csv)
    assert report.created == 1 and report.exit_code == 1
    ((where, reason),) = report.rejected
    assert where == "c.csv:3" and "unterminated quote" in reason and "3-5" in reason
    with ws.session() as s:
        assert len(list(s.scalars(select(Patient)))) == 1


def test_a_quoted_id_spanning_lines_is_refused(ws, tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text('patient_id,sex\n"A1\nB2",F\nC3,M\n')
    report = ingest_clinical(ws, csv)
    assert report.created == 1 and [w for w, _ in report.rejected] == ["c.csv:2"]
    assert "spans lines 2-3" in report.rejected[0][1]


def test_a_csv_that_is_not_utf8_is_one_line_without_its_bytes(ws, tmp_path):
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("patient_id,sex\nMÜLLER,F\n".encode("latin-1"))
    with pytest.raises(DatatoolError) as exc:
        ingest_clinical(ws, csv)
    message = str(exc.value)
    assert "not UTF-8" in message and "line 2" in message and "\n" not in message
    assert "0xdc" not in message.lower() and "MÜLLER" not in message


def test_a_fifo_is_never_opened(ws, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(DatatoolError, match="FIFO"):
        ingest_clinical(ws, fifo)
