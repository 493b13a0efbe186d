"""The demo's fake patients: identifiers, body, the exam's date and settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta

import numpy as np

from datatool.demo.probe import _rng

#: Carried by every fake person name and identifier (names, accession number, station).
PHI_TOKEN = "PHIDEMO"
#: Every fourth patient (the 4th, 8th, ...) is scanned by this operator, whose probe marker
#: points to the other side: the lateral side shows on the other edge of the image (a second
#: display convention in the same study, as between sites and operators).
MIRRORING_OPERATOR = f"{PHI_TOKEN}OP^Sono99"
MIRRORING_EVERY = 4


@dataclass(frozen=True)
class _Patient:
    index: int
    mrn: str
    name: str
    sex: str
    age: int
    birth_date: date
    bmi: float
    height_m: float
    weight_kg: float
    asa: int
    study_dt: datetime
    accession: str
    referrer: str
    operator: str
    station: str
    depth_cm: float
    fat_cm: float
    gain: float


_GIVEN_F = ("Alice", "Berit", "Clara", "Dana", "Eva", "Frida", "Greta", "Hanna", "Ines", "Jana")
_GIVEN_M = ("Anton", "Bruno", "Carl", "David", "Emil", "Felix", "Gustav", "Hugo", "Ivan", "Jonas")


def _make_patient(seed: int, index: int, used_mrns: set[str]) -> _Patient:
    rng = _rng(seed, 1, index)
    mrn = f"MRN{int(rng.integers(100000, 1000000)):06d}"
    bump = 0
    while mrn in used_mrns:  # deterministic, prefix-stable collision resolution
        bump += 1
        mrn = f"MRN{int(_rng(seed, 2, index, bump).integers(100000, 1000000)):06d}"
    used_mrns.add(mrn)
    # The reference study's cohort: 56 % female, age 18-69 (47.2 +- 16.8), BMI 18.5-25.9
    # (BMI >= 26 was an exclusion criterion), ASA I-III.
    sex = "F" if rng.random() < 0.56 else "M"
    age = int(np.clip(round(rng.normal(47.2, 16.8)), 18, 69))
    bmi = round(float(np.clip(rng.normal(22.5, 1.9), 18.5, 25.9)), 1)
    height = float(np.clip(rng.normal(1.64 if sex == "F" else 1.78, 0.07), 1.45, 2.05))
    weight = bmi * height * height
    score = (age - 45) / 20 + (bmi - 22) / 3 + rng.normal(0, 0.8)
    asa = 1 if score < -0.6 else (2 if score < 1.0 else 3)
    day = date(2025, 1, 2) + timedelta(days=int(rng.integers(0, 360)))
    minute = int(rng.integers(7 * 60 + 30, 17 * 60 + 30))
    study_dt = datetime(
        day.year, day.month, day.day, minute // 60, minute % 60, int(rng.integers(0, 60))
    )
    # Birth date consistent with the age on the study date.
    birth = date(day.year - age, day.month, day.day) - timedelta(days=int(rng.integers(0, 365)))
    fat = float(
        np.clip(
            0.7 + 0.1 * (bmi - 20) + (0.3 if sex == "F" else 0.0) + rng.normal(0, 0.3), 0.5, 4.0
        )
    )
    nerve_depth = fat + 4.3  # the sides' anatomy varies around this
    depth = float(np.clip(round(nerve_depth + rng.uniform(2.0, 5.0), 1), 7.2, 13.0))
    given = (_GIVEN_F if sex == "F" else _GIVEN_M)[int(rng.integers(0, 10))]
    patient = _Patient(
        index=index,
        mrn=mrn,
        name=f"{PHI_TOKEN}^Patient{index + 1:04d}^{given}",
        sex=sex,
        age=age,
        birth_date=birth,
        bmi=bmi,
        height_m=height,
        weight_kg=weight,
        asa=asa,
        study_dt=study_dt,
        accession=f"{PHI_TOKEN}{int(rng.integers(0, 10**8)):08d}",
        referrer=f"{PHI_TOKEN}REF^Doctor{int(rng.integers(1, 40)):02d}",
        operator=f"{PHI_TOKEN}OP^Sono{int(rng.integers(1, 25)):02d}",
        station=f"{PHI_TOKEN}US{int(rng.integers(1, 9)):02d}",
        depth_cm=depth,
        fat_cm=fat,
        gain=float(rng.uniform(-2.0, 2.0)),
    )
    if index % MIRRORING_EVERY == MIRRORING_EVERY - 1:
        patient = replace(patient, operator=MIRRORING_OPERATOR)
    return patient
