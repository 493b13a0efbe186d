"""What the catalogue holds: ``datatool status`` and ``datatool images``."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from sqlalchemy import Text, case, cast, func, select

from datatool.core.catalogue import (
    FileStatus,
    Image,
    Patient,
    Received,
    Series,
    SourceFile,
    Study,
)
from datatool.core.workspace import Workspace
from datatool.ingest import deid
from datatool.ingest.spoolfolders import pending_count


@dataclass
class PatientCounts:
    patient: str  # pseudonym
    sex: str | None
    age: int | None
    studies: int
    series: int
    images: int
    sides: int


@dataclass
class ReceivedFrom:
    """What ``datatool listen`` received from one calling AE title (the title only)."""

    calling_ae: str
    first: dt.datetime
    last: dt.datetime
    objects: int
    ingested: int
    already_present: int
    rejected: int  # rejected, quarantined or kept aside as a conflict


@dataclass
class Status:
    workspace: str
    patients: int
    studies: int
    series: int
    images: int
    files: dict[str, int]  # ingested, quarantined, conflict
    calibrated_images: int
    calibration_coverage: float | None  # share of images with mm calibration
    pixel_handling: dict[str, int]
    per_patient: list[PatientCounts] = field(default_factory=list)
    # quarantined files by what they are about: no ultrasound region, regions cover the image
    quarantined: dict[str, int] = field(default_factory=dict)
    # images blanked outside regions that cover (nearly) all of them: catalogued before
    # ingest quarantined such images, they may still hold burned-in text
    blanked_without_room: int = 0
    # datatool listen: per calling AE title, and objects acknowledged but not ingested yet
    received: list[ReceivedFrom] = field(default_factory=list)
    spooled: int = 0


def _received(s) -> list[ReceivedFrom]:
    rows = s.execute(
        select(
            Received.calling_ae,
            func.min(Received.received_at),
            func.max(Received.received_at),
            func.count(),
            func.sum(case((Received.outcome == "ingested", 1), else_=0)),
            func.sum(case((Received.outcome == "already_present", 1), else_=0)),
        )
        .group_by(Received.calling_ae)
        .order_by(func.max(Received.received_at).desc())
    ).all()
    return [
        ReceivedFrom(
            ae, first, last, n, int(new or 0), int(old or 0), n - int(new or 0) - int(old or 0)
        )
        for ae, first, last, n, new, old in rows
    ]


def status(ws: Workspace) -> Status:
    """Counts, calibration coverage and pixel handling, per patient and overall."""
    with ws.session() as s:
        files = dict(
            s.execute(select(SourceFile.status, func.count()).group_by(SourceFile.status)).all()
        )
        handling = dict(
            s.execute(
                select(Image.pixel_handling, func.count()).group_by(Image.pixel_handling)
            ).all()
        )
        n_images = s.scalar(select(func.count(Image.id))) or 0
        calibrated = (
            s.scalar(select(func.count(Image.id)).where(Image.mm_per_px_x.is_not(None))) or 0
        )
        per_patient = s.execute(
            select(
                Patient.pseudonym,
                Patient.sex,
                Patient.age_years,
                func.count(func.distinct(Study.id)),
                func.count(func.distinct(Series.id)),
                func.count(Image.id),
                func.count(func.distinct(Series.side)),
            )
            .join(Study, Study.patient_id == Patient.id)
            .join(Series, Series.study_id == Study.id)
            .join(Image, Image.series_id == Series.id)
            .group_by(Patient.id)
            .order_by(Patient.pseudonym)
        ).all()
        quarantined: dict[str, int] = {}
        for reason in s.scalars(
            select(SourceFile.reason).where(SourceFile.status == FileStatus.quarantined)
        ):
            kind = deid.quarantine_kind(reason)
            quarantined[kind] = quarantined.get(kind, 0) + 1
        # Images of one scanner setting share their regions: each distinct (regions, size)
        # is judged once, with the count of its images from SQL (one row per setting, not per
        # image; the regions as text, which PostgreSQL's json type can group).
        regions_text = cast(Image.regions, Text)
        blanked_without_room = sum(
            n
            for text, rows, cols, n in s.execute(
                select(regions_text, Image.rows, Image.cols, func.count())
                .where(Image.pixel_handling == "blanked_outside_regions")
                .group_by(regions_text, Image.rows, Image.cols)
            )
            if not deid.room_for_banner((json.loads(text) if text else None) or [], rows, cols)
        )
        n_patients = s.scalar(select(func.count(Patient.id))) or 0
        n_studies = s.scalar(select(func.count(Study.id))) or 0
        n_series = s.scalar(select(func.count(Series.id))) or 0
        received = _received(s)
    return Status(
        workspace=str(ws.root),
        patients=n_patients,
        studies=n_studies,
        series=n_series,
        images=n_images,
        files={str(k): files.get(k, 0) for k in FileStatus},
        calibrated_images=calibrated,
        calibration_coverage=(calibrated / n_images) if n_images else None,
        pixel_handling=handling,
        per_patient=[PatientCounts(*row) for row in per_patient],
        quarantined=dict(sorted(quarantined.items())),
        blanked_without_room=blanked_without_room,
        received=received,
        spooled=pending_count(ws),
    )


@dataclass
class ImageFilter:
    patient: str | None = None
    side: str | None = None
    calibrated: bool | None = None
    limit: int | None = None


@dataclass
class ImageRow:
    id: int
    patient: str  # pseudonym
    side: str | None
    study_date: dt.date | None  # shifted per patient
    frame: int
    rows: int
    cols: int
    mm_per_px_x: float | None
    mm_per_px_y: float | None
    pixel_handling: str
    store_hash: str


def list_images(ws: Workspace, flt: ImageFilter | None = None) -> list[ImageRow]:
    flt = flt or ImageFilter()
    query = (
        select(
            Image.id,
            Patient.pseudonym,
            Series.side,
            Study.study_date,
            Image.frame_index,
            Image.rows,
            Image.cols,
            Image.mm_per_px_x,
            Image.mm_per_px_y,
            Image.pixel_handling,
            Image.store_hash,
        )
        .join(Series, Image.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .join(Patient, Study.patient_id == Patient.id)
        .order_by(Patient.pseudonym, Series.side, Image.id)
    )
    if flt.patient:
        query = query.where(Patient.pseudonym == flt.patient)
    if flt.side:
        query = query.where(Series.side == flt.side.upper())
    if flt.calibrated is True:
        query = query.where(Image.mm_per_px_x.is_not(None))
    elif flt.calibrated is False:
        query = query.where(Image.mm_per_px_x.is_(None))
    if flt.limit:
        query = query.limit(flt.limit)
    with ws.session() as s:
        return [ImageRow(*row) for row in s.execute(query).all()]
