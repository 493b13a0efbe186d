"""The study report's cohort table, and ``datatool cohort``, against numbers worked out by
hand from a catalogue built by hand: four patients (one woman, three men), ages 30, 40, 50
and 62, BMI 20.0, 22.5, 25.0 and 31.5. The page is read back as HTML (no browser needed)
and compared with figures the test computes from the catalogue's raw patient rows."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from datatool.cli import app
from datatool.core.catalogue import Image, Patient, Series, Study
from datatool.ingest.clinical import cohort, ingest_clinical
from datatool.ingest.pipeline import ingest
from datatool.report.study import study_report
from tests.handmade import write_us
from tests.report.page import parse

PATIENTS = [("P1", "F", 30, 20.0), ("P2", "M", 40, 22.5), ("P3", "M", 50, 25.0),
            ("P4", "M", 62, 31.5)]  # fmt: skip
# by hand: mean age 45.5; squared deviations 240.25 + 30.25 + 20.25 + 272.25 = 563;
# sample SD sqrt(563 / 3) = 13.699 (dividing by n: sqrt(563 / 4) = 11.864)
AGE_MEAN, AGE_SD = 45.5, math.sqrt(563 / 3)
# BMI: mean 24.75; squared deviations 22.5625 + 5.0625 + 0.0625 + 45.5625 = 73.25
BMI_MEAN, BMI_SD = 24.75, math.sqrt(73.25 / 3)


@pytest.fixture()
def hand_cohort(ws, tmp_path):
    for pid, sex, _, _ in PATIENTS:
        write_us(tmp_path / "d" / f"{pid}.dcm", np.full((16, 16), 70, np.uint8),
                 patient_id=pid, sex=sex)  # fmt: skip
    ingest(ws, [tmp_path / "d"], workers=0)
    csv = tmp_path / "clinical.csv"
    csv.write_text(
        "patient_id,sex,age,bmi,asa\n"
        + "".join(f"{pid},{sex},{age},{bmi},1\n" for pid, sex, age, bmi in PATIENTS)
    )
    assert ingest_clinical(ws, csv).exit_code == 0
    return ws


def _raw_patients(ws) -> list[tuple[str | None, int | None, float | None]]:
    """(sex, age, BMI) of every patient with an image, straight from the catalogue's rows."""
    with ws.session() as s:
        return [
            tuple(row)
            for row in s.execute(
                select(Patient.sex, Patient.age_years, Patient.bmi)
                .where(
                    Patient.id.in_(
                        select(Study.patient_id)
                        .join(Series, Series.study_id == Study.id)
                        .join(Image, Image.series_id == Series.id)
                    )
                )
                .order_by(Patient.age_years)
            )
        ]


def test_the_catalogue_holds_the_hand_made_cohort(hand_cohort):
    raw = _raw_patients(hand_cohort)
    assert raw == [(sex, age, bmi) for _, sex, age, bmi in PATIENTS]
    assert statistics.stdev(age for _, age, _ in raw) == pytest.approx(AGE_SD, rel=1e-12)


def test_cohort_sd_divides_by_n_minus_1(hand_cohort):
    c = cohort(hand_cohort)
    assert (c.patients, c.female, c.male) == (4, 1, 3)
    assert c.female_pct == pytest.approx(25.0)
    assert c.age.mean == pytest.approx(AGE_MEAN) and c.age.sd == pytest.approx(13.6991, abs=5e-5)
    assert c.age.sd == pytest.approx(AGE_SD, rel=1e-12)
    assert c.bmi.sd == pytest.approx(BMI_SD, rel=1e-12)


def test_cohort_cli_shows_the_male_share_of_the_men(hand_cohort):
    result = CliRunner().invoke(app, ["cohort", "-w", str(hand_cohort.root)])
    assert result.exit_code == 0, result.output
    lines = {line.split("  ")[0].strip("│ "): line for line in result.output.splitlines()}
    male = next(line for key, line in lines.items() if key.startswith("male"))
    female = next(line for key, line in lines.items() if key.startswith("female"))
    assert "3 (75.0 %)" in male and "1 (25.0 %)" in female
    age = next(line for key, line in lines.items() if key.startswith("age"))
    assert "45.5 ± 13.7 (30-62)" in age


def test_the_reports_cohort_table_holds_the_raw_rows_numbers(hand_cohort):
    ws = hand_cohort
    page = Path(study_report(ws).out).read_text()
    rows = parse(page).texts("cohort-table", "data-key")
    raw = _raw_patients(ws)
    n = len(raw)
    men = sum(1 for sex, _, _ in raw if sex == "M")
    women = sum(1 for sex, _, _ in raw if sex == "F")
    ages = [float(age) for _, age, _ in raw]
    bmis = [bmi for _, _, bmi in raw]
    assert (n, men, women) == (4, 3, 1)
    assert rows["patients"][1] == str(n)
    assert rows["male"][1] == f"{men} ({100 * men / n:.1f} %)" == "3 (75.0 %)"
    assert rows["female"][1] == f"{women} ({100 * women / n:.1f} %)" == "1 (25.0 %)"
    # both are normal by Shapiro-Wilk (scipy, outside the code under test): mean ± SD shown
    from scipy import stats

    assert stats.shapiro(ages).pvalue >= 0.05 and stats.shapiro(bmis).pvalue >= 0.05
    mean, sd = statistics.fmean(ages), statistics.stdev(ages)
    assert (mean, sd) == pytest.approx((AGE_MEAN, AGE_SD), rel=1e-12)
    assert rows["age"][1] == f"{mean:.1f} ± {sd:.1f}" == "45.5 ± 13.7"
    assert rows["bmi"][1] == f"{statistics.fmean(bmis):.1f} ± {statistics.stdev(bmis):.1f}"
    assert rows["bmi"][1] == "24.8 ± 4.9"
    assert rows["age-range"][1] == "30-62" and rows["bmi-range"][1] == "20.0-31.5"
