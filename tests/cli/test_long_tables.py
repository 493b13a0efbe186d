"""A table longer than a screen (``status``'s per-patient table of a ten-study catalogue:
thousands of patients) prints its first rows and says how many more there are; its CSV and
the JSON keep every row. Rendering 1,000 rows cost ``status`` about 0.7 s of its 1.5 s at
10,000 images (bench/scale.py)."""

from __future__ import annotations

import json

from datatool.cli import render
from datatool.cli.dataset import STATUS_PATIENTS_SHOWN, _status_view
from datatool.cli.render import Table
from datatool.ingest.inventory import PatientCounts, Status


def _status(patients: int) -> Status:
    return Status(
        workspace="/ws",
        patients=patients,
        studies=patients,
        series=2 * patients,
        images=10 * patients,
        files={"ingested": 10 * patients, "quarantined": 0, "conflict": 0},
        calibrated_images=10 * patients,
        calibration_coverage=1.0,
        pixel_handling={"not_burned_in": 10 * patients},
        per_patient=[PatientCounts(f"P-{k:05d}", "F", 40, 1, 2, 10, 2) for k in range(patients)],
    )


def test_the_terminal_gets_the_first_rows_and_a_count_of_the_rest(capsys, tmp_path):
    data = _status(STATUS_PATIENTS_SHOWN + 7)
    csv = tmp_path / "status.csv"
    render.show(data, _status_view, csv_path=csv)
    out = capsys.readouterr().out
    assert (
        f"P-{STATUS_PATIENTS_SHOWN - 1:05d}" in out and f"P-{STATUS_PATIENTS_SHOWN:05d}" not in out
    )
    assert "... and 7 more rows: --csv FILE or --json lists them all" in out
    lines = csv.read_text().splitlines()
    assert len(lines) == 1 + STATUS_PATIENTS_SHOWN + 7 and lines[-1].startswith("P-00056,")
    render.show(data, _status_view, json_out=True)
    assert len(json.loads(capsys.readouterr().out)["per_patient"]) == STATUS_PATIENTS_SHOWN + 7


def test_a_table_that_fits_says_nothing_more(capsys):
    render.show(_status(STATUS_PATIENTS_SHOWN), _status_view)
    out = capsys.readouterr().out
    assert f"P-{STATUS_PATIENTS_SHOWN - 1:05d}" in out and "more rows" not in out
    table = Table("t", ["a"], shown=2)
    for k in range(3):
        table.add(k)
    assert table.hidden == 1 and table.rich().row_count == 2
    assert Table("t", ["a"]).hidden == 0
