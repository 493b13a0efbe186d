"""De-identification, measured on the catalogue: every study date moved back by one offset
per patient (1-365 days, the same for all of a patient's studies, different between
patients), and no identity, date or time of the real pydicom-data ultrasound files anywhere
in the workspace or in what the commands print."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil

import numpy as np
import pydicom
from sqlalchemy import DateTime, inspect, select, text
from typer.testing import CliRunner

from datatool.cli import app
from datatool.core.catalogue import Base, Patient, Study
from datatool.core.workspace import init_workspace, open_workspace
from tests.conftest import PYDICOM_DATA_US
from tests.handmade import workspace_with_key, write_us


def _offsets(ws, original: dict[str, dt.date]) -> dict[str, list[int]]:
    """Per patient pseudonym, the days each of its studies was moved back by, from the
    catalogue's dates and the original dates keyed by (keyed) study UID."""
    from datatool.ingest.deid import uid_for

    by_uid = {uid_for(ws.key, uid): day for uid, day in original.items()}
    out: dict[str, list[int]] = {}
    with ws.session() as s:
        for study, pseudonym in s.execute(
            select(Study, Patient.pseudonym).join(Patient, Patient.id == Study.patient_id)
        ):
            out.setdefault(pseudonym, []).append((by_uid[study.uid] - study.study_date).days)
    return out


def test_study_dates_move_by_one_offset_per_patient(tmp_path):
    ws = workspace_with_key(tmp_path / "ws")  # a fixed key: the same offsets every run
    original = {}
    # patient A: three studies on different days; patients B and C: one study each, on
    # one of A's days
    for pid, days in (("A", ["20240305", "20240410", "20250101"]), ("B", ["20240305"]),
                      ("C", ["20240410"])):  # fmt: skip
        for k, day in enumerate(days):
            uid = pydicom.uid.generate_uid()
            original[uid] = dt.datetime.strptime(day, "%Y%m%d").date()
            write_us(
                tmp_path / "d" / f"{pid}{k}.dcm",
                np.full((8, 8), 10 * k, np.uint8),
                patient_id=pid,
                study_uid=uid,
                study_date=day,
            )
    from datatool.ingest.pipeline import ingest

    assert ingest(ws, [tmp_path / "d"], workers=0).ingested == 5
    offsets = _offsets(ws, original)
    assert sorted(map(len, offsets.values())) == [1, 1, 3]
    for days in offsets.values():
        assert len(set(days)) == 1 and 1 <= days[0] <= 365  # one offset per patient
    assert len({days[0] for days in offsets.values()}) == 3  # a different one for each
    with ws.session() as s:  # the intervals between a patient's studies are kept
        (a,) = (p for p, d in offsets.items() if len(d) == 3)
        dates = sorted(
            s.scalars(select(Study.study_date).join(Patient).where(Patient.pseudonym == a))
        )
    assert [(b - dates[0]).days for b in dates] == [0, 36, 302]
    ws.close()


def _dates_and_times(ds) -> set[str]:
    """Every DA, DT and TM value of a dataset (sequences too), as written in the file and
    as the catalogue or a report would write it (YYYY-MM-DD, HH:MM:SS)."""
    found: set[str] = set()

    def walk(d) -> None:
        for e in d:
            if e.VR == "SQ":
                for item in e.value:
                    walk(item)
            elif e.VR in ("DA", "DT", "TM") and e.value not in (None, ""):
                for value in e.value if e.VM > 1 else [e.value]:
                    raw = str(value).strip()
                    found.add(raw)
                    found.add(raw.split(".")[0])  # without the fraction of a second
                    if e.VR in ("DA", "DT") and len(raw) >= 8:
                        found.add(f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}")
                    if e.VR == "TM" and len(raw) >= 6:
                        found.add(f"{raw[:2]}:{raw[2:4]}:{raw[4:6]}")
                    if e.VR == "DT" and len(raw) >= 14:
                        found.add(raw[8:14])  # its time of day
                        found.add(f"{raw[8:10]}:{raw[10:12]}:{raw[12:14]}")

    walk(ds)
    return found


def _identities(ds) -> set[str]:
    found = set()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                    "InstitutionName", "ReferringPhysicianName", "OperatorsName",
                    "StationName", "StudyInstanceUID", "SeriesInstanceUID",
                    "SOPInstanceUID", "StudyID"):  # fmt: skip
        value = str(ds.get(keyword, "") or "").strip()
        if len(value) > 2:
            found.add(value)
            if keyword.endswith("Name") and "^" in value:  # a person's name, part by part
                found.update(p for p in value.split("^") if len(p) > 3)
    return found


def _catalogue_text(ws) -> str:
    """Every value of every table, as text; datatool's own clock columns (when a row was
    written: today's date and time, not the exam's) left out of the time check."""
    lines = []
    with ws.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            clocks = {c.name for c in table.columns if isinstance(c.type, DateTime)}
            names = [c["name"] for c in inspect(conn).get_columns(table.name)]
            for row in conn.execute(text(f"SELECT * FROM {table.name}")):
                lines.append(" ".join(str(v) for n, v in zip(names, row) if n not in clocks))
    return "\n".join(lines)


def test_nothing_of_the_real_ultrasound_files_leaks(pydicom_data, tmp_path):
    folder = tmp_path / "exams"
    folder.mkdir()
    for name in PYDICOM_DATA_US:
        shutil.copy(pydicom_data / name, folder / name)
    root = init_workspace(tmp_path / "ws").root
    ws_args = ["--workspace", str(root)]
    outputs, stdouts = [], []
    runner = CliRunner()
    for args in (["ingest", str(folder), "--allow-burned-in", "--json"], ["status", "--json"],
                 ["images", "--json"], ["cohort", "--json"], ["status"], ["images"]):  # fmt: skip
        res = runner.invoke(app, [*args, *ws_args], env={"COLUMNS": "200"})
        assert res.exit_code in (0, 1), res.output  # 1: conflicts (variants of one UID)
        outputs.append(res.output)  # stdout and stderr
        stdouts.append(res.stdout)
    ingested = json.loads(stdouts[0])
    # variants of one SOP Instance UID are conflicts: their frames kept aside in the store
    assert (ingested["ingested"], len(ingested["conflicts"])) == (7, 4)
    identities, when = set(), set()
    for name in PYDICOM_DATA_US:
        ds = pydicom.dcmread(folder / name, stop_before_pixels=True)
        identities |= _identities(ds)
        when |= _dates_and_times(ds)
    assert {"20040826", "20110525", "20110525145628.350000", "2011-05-25", "145628",
            "185838", "11:19:58", "CompressedSamples"} <= when | identities  # fmt: skip

    # long strings: nowhere in any file of the workspace (bar the key) nor in any output
    files = [p for p in root.rglob("*") if p.is_file() and p.name != "secret.key"]
    blobs = [p.read_bytes() for p in files] + [o.encode() for o in outputs]
    dates = {v for v in when if len(v) >= 8}
    long = {v for v in identities if len(v) >= 6} | dates
    for value in long:
        needle = value.encode()
        assert not any(needle in blob for blob in blobs), f"{value!r} leaked"
    # times of day (six digits) and short IDs (such as "204"), which binary data may hold
    # by chance: as whole words in the catalogue's values, the reports and the outputs
    ws = open_workspace(root)
    texts = [_catalogue_text(ws), *outputs]
    texts += [p.read_text() for p in files if p.suffix in (".json", ".csv", ".txt")]
    ws.close()
    for value in (when | identities) - long:
        word = re.compile(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])")
        assert not any(word.search(t) for t in texts), f"{value!r} leaked"
    # and the dates that are kept are moved: every study date earlier than the original
    rows = json.loads(stdouts[2])
    assert rows and all(r["study_date"] is None or r["study_date"] < "2021" for r in rows)
