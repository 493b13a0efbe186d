"""The optional clinical table (``datatool ingest-clinical``) and the cohort description
(``datatool cohort``) that a study's first table reports."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from datatool.core.catalogue import Image, Patient, Series, Study, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.files import not_regular
from datatool.core.workspace import Workspace
from datatool.ingest import deid

ID_COLUMNS = ("patient_id", "PatientID", "patientid", "mrn")


@dataclass
class ClinicalReport:
    rows: int = 0
    updated: int = 0
    created: int = 0
    unchanged: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.rejected else 0

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "updated": self.updated,
            "created": self.created,
            "unchanged": self.unchanged,
            "exit_code": self.exit_code,
            "rejected": [{"where": w, "reason": r} for w, r in self.rejected],
        }


def _parse_row(row: dict) -> dict:
    """Validated clinical values of one CSV row; raises ValueError with the reason."""
    out: dict = {}
    sex = (row.get("sex") or "").strip()
    if sex:
        out["sex"] = deid.normalise_sex(sex)
        if out["sex"] is None:
            raise ValueError(f"sex {sex!r} is not F, M or O")
    for column, name, cast, lo, hi in (
        ("age", "age_years", int, 0, 130),
        ("bmi", "bmi", float, 8.0, 100.0),
        ("asa", "asa_class", int, 1, 6),
    ):
        text = (row.get(column) or "").strip()
        if not text:
            continue
        if column == "asa":
            text = text.upper().removeprefix("ASA").strip()
            text = {"I": "1", "II": "2", "III": "3", "IV": "4", "V": "5", "VI": "6"}.get(text, text)
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{column} {_excerpt(text)} is not a number") from None
        if not math.isfinite(number):  # 3e400 reads as inf: int() of it would overflow
            raise ValueError(f"{column} {_excerpt(text)} is not a finite number in {lo}..{hi}")
        value = cast(number) if cast is int else number
        if not lo <= value <= hi:
            raise ValueError(f"{column} {_excerpt(text)} is outside {lo}..{hi}")
        out[name] = min(value, deid.MAX_AGE) if column == "age" else value
    return out


def _excerpt(text: str, limit: int = 40) -> str:
    """A cell quoted in a message: escaped, and never more than ``limit`` characters."""
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


def _columns(names: Sequence[str] | None, limit: int = 20) -> str:
    """A header's column names for a message: escaped and clipped, at most ``limit``."""
    if not names:
        return "none (the file is empty)"
    shown = ", ".join(_excerpt(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _csv_reader(path: Path) -> tuple[csv.DictReader, int]:
    """A strict CSV reader over the file's text, and its number of lines. A file that is not
    UTF-8 text, or cannot be read, is one DatatoolError line (never quoting its bytes)."""
    odd = not_regular(path)
    if odd is not None:
        raise UsageError(f"{path}: {odd}, not a CSV file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as exc:
        raise DatatoolError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatatoolError(
            f"{path}: not UTF-8 text (line {line}): save it as UTF-8 (Excel: 'CSV UTF-8') "
            "and run again"
        ) from None
    if "\x00" in text:
        raise DatatoolError(f"{path}: holds NUL bytes, not a CSV text file")
    lines = text.count("\n") + (not text.endswith("\n"))
    return csv.DictReader(io.StringIO(text, newline=""), strict=True), lines


def ingest_clinical(ws: Workspace, csv_path: Path) -> ClinicalReport:
    """Add sex, age, BMI and ASA class from a CSV keyed by the original patient ID. The ID is
    turned into the pseudonym on the way in and kept nowhere."""
    report = ClinicalReport()
    reader, lines = _csv_reader(Path(csv_path))
    id_column = next((c for c in ID_COLUMNS if c in (reader.fieldnames or [])), None)
    if id_column is None:
        raise DatatoolError(
            f"{csv_path}: no patient ID column (one of {', '.join(ID_COLUMNS)}; the other "
            f"columns read are sex, age, bmi, asa); the file's columns: "
            f"{_columns(reader.fieldnames)}"
        )
    parsed = []
    rows = iter(reader)
    while True:
        start = reader.line_num + 1
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as exc:
            report.rows += 1
            report.rejected.append(
                (
                    f"{csv_path.name}:{start}",
                    f"malformed CSV ({exc}; an unterminated quote?): lines {start}-{lines} "
                    "were not read; fix the quoting and run again",
                )
            )
            break
        report.rows += 1
        pid = (row.get(id_column) or "").strip()
        where = f"{csv_path.name}:{start}"
        if not pid:
            report.rejected.append((where, "empty patient ID"))
            continue
        if reader.line_num != start or any(c in pid for c in "\r\n"):
            report.rejected.append(
                (
                    where,
                    f"the row spans lines {start}-{reader.line_num} (a stray quote?): not "
                    "read; fix the quoting",
                )
            )
            continue
        try:
            parsed.append((deid.pseudonym_for(ws.key, pid), _parse_row(row)))
        except ValueError as exc:
            report.rejected.append((where, str(exc)))
    with ws.session() as s:
        for pseudonym, values in parsed:
            patient = s.scalar(select(Patient).where(Patient.pseudonym == pseudonym))
            if patient is None:
                s.add(Patient(pseudonym=pseudonym, **values))
                report.created += 1
                continue
            changed = {k: v for k, v in values.items() if getattr(patient, k) != v}
            for k, v in changed.items():
                setattr(patient, k, v)
            report.updated += bool(changed)
            report.unchanged += not changed
        audit(
            s,
            "ingest-clinical",
            "clinical",
            rows=report.rows,
            created=report.created,
            updated=report.updated,
            rejected=len(report.rejected),
        )
    return report


@dataclass
class Summary:
    mean: float
    sd: float  # sample SD (n - 1); 0 for one value
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary | None:
        if not values:
            return None
        m = sum(values) / len(values)
        sd = (
            math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
            if len(values) > 1
            else 0.0
        )
        return cls(m, sd, min(values), max(values), len(values))


@dataclass
class Cohort:
    patients: int
    female: int
    male: int
    sex_unknown: int
    female_pct: float | None
    age: Summary | None  # years
    bmi: Summary | None  # kg/m²
    asa: dict[str, int]  # ASA class -> patients
    images: int
    images_per_patient: Summary | None


def cohort(ws: Workspace, imaged_only: bool = True) -> Cohort:
    """n, sex, age mean ± SD (range), BMI range, ASA counts, images per patient."""
    with ws.session() as s:
        query = (
            select(Patient, func.count(Image.id))
            .outerjoin(Study, Study.patient_id == Patient.id)
            .outerjoin(Series, Series.study_id == Study.id)
            .outerjoin(Image, Image.series_id == Series.id)
            .group_by(Patient.id)
        )
        rows = [(p, n) for p, n in s.execute(query).all() if n or not imaged_only]
    n = len(rows)
    sexes = [p.sex for p, _ in rows]
    asa = [p.asa_class for p, _ in rows if p.asa_class is not None]
    images = [k for _, k in rows]
    return Cohort(
        patients=n,
        female=sexes.count("F"),
        male=sexes.count("M"),
        sex_unknown=n - sexes.count("F") - sexes.count("M"),
        female_pct=100.0 * sexes.count("F") / n if n else None,
        age=Summary.of([float(p.age_years) for p, _ in rows if p.age_years is not None]),
        bmi=Summary.of([p.bmi for p, _ in rows if p.bmi is not None]),
        asa={str(k): asa.count(k) for k in sorted(set(asa))},
        images=sum(images),
        images_per_patient=Summary.of([float(k) for k in images]),
    )
