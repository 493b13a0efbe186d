"""``datatool ingest``: DICOM files in, de-identified images and catalogue rows out.

The way of one file: read its bytes once (SHA-256 over them), skip it if those bytes are
already catalogued, parse and validate the header, pseudonymise, decode the chosen frames to
8-bit grayscale, blank everything outside the ultrasound regions, put the frames in the store
(atomic, content-addressed) and then write all its catalogue rows in one transaction. Workers
(processes) do everything up to the store; the parent alone writes the catalogue. An
interrupted run leaves whole files or nothing in the catalogue (store objects without rows are
harmless and reused), so a re-run completes the work.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from datatool.core.catalogue import FileStatus, Image, Patient, Series, SourceFile, Study, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.files import Walk, skip_reason, special_kind, walk
from datatool.core.processes import pool_context, worker_count
from datatool.core.store import Store
from datatool.core.workspace import Workspace
from datatool.ingest import deid
from datatool.ingest.dicom import (
    BadDicom,
    calibration,
    decode_frame,
    frame_indices,
    n_frames,
    read_dataset,
    read_dataset_from,
    ultrasound_regions,
)

US_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # retired
    "1.2.840.10008.5.1.4.1.1.3",  # retired
}
SKIPPED_NAMES = {"DICOMDIR"}  # the index of a DICOMDIR tree; its files are found by walking
BATCH_SECONDS = 1.0  # a batch is committed at the latest this long after the last commit
MAX_WORKERS = 256  # -j: more processes than this is a mistake (or a fork bomb), not speed
STREAM_BYTES = 8 << 20  # larger files are read from disk frame by frame, never held whole


@dataclass
class Options:
    frames: str = "auto"
    allow_burned_in: bool = False


@dataclass
class FileResult:
    """What a worker found out about one file (no identity leaves the worker)."""

    path: str
    kind: str  # known | rejected | quarantined | decoded | failed (the store cannot be written)
    sha256: str = ""
    size: int = 0
    reason: str = ""
    meta: dict = field(default_factory=dict)
    frames: list[dict] = field(default_factory=list)


@dataclass
class IngestReport:
    files_seen: int = 0
    ingested: int = 0  # files newly catalogued
    images_added: int = 0
    already_present: int = 0
    skipped: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    frames_mode: str = "auto"
    notes: list[tuple[str, str]] = field(default_factory=list)  # e.g. FIFOs, never opened

    @property
    def ok(self) -> bool:
        return not (self.rejected or self.quarantined or self.conflicts)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("rejected", "quarantined", "conflicts", "notes"):
            out[name] = [{"file": p, "reason": r} for p, r in out[name]]
        out["exit_code"] = self.exit_code
        return out


def shown(path: object) -> str:
    """A path for messages and JSON: bytes of a name that is not valid UTF-8 (held by Python
    as surrogate escapes, which no UTF-8 stream can print) as ``\\xff`` escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------- file discovery


@dataclass
class Discovery:
    """The files to ingest under the given paths, and what was left out with the reason."""

    files: list[str] = field(default_factory=list)
    skipped: int = 0  # DICOMDIR indexes (their files are found by walking)
    notes: list[tuple[str, str]] = field(default_factory=list)  # FIFOs, sockets, devices
    rejected: list[tuple[str, str]] = field(default_factory=list)  # unreadable folders ...


def _walk_given(paths: Iterable[Path]) -> Walk:
    """The regular files under the given files and folders. A path that does not exist
    raises FileNotFoundError; a given FIFO, socket or device is listed, never opened."""
    found = Walk()
    for given in paths:
        path = Path(given)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file or folder") from None
        except OSError as exc:
            found.unreadable.append((str(path), f"cannot read it ({exc.strerror or exc})"))
            continue
        if stat.S_ISDIR(mode):
            walk([path], found)
        elif stat.S_ISREG(mode):
            found.files.append(path)
        else:
            found.special.append((str(path), special_kind(mode) or "not a regular file"))
    return found


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under the given files and folders, sorted, without hidden files.
    A path that does not exist raises FileNotFoundError."""
    yield from _walk_given(paths).files


def discover(paths: Iterable[Path]) -> Discovery:
    """The files to ingest (see :class:`Discovery`); each DICOMDIR index is read for its
    references, and every file it lists that is missing is reported."""
    found = _walk_given(paths)
    out = Discovery(
        notes=[(p, skip_reason(kind)) for p, kind in found.special],
        rejected=list(found.unreadable),
    )
    for path in found.files:
        if path.name in SKIPPED_NAMES:
            out.skipped += 1
            missing, note = dicomdir_missing(path)
            out.rejected.extend(
                (
                    str(m),
                    f"listed in the DICOMDIR {shown(path)} but missing: restore the file, or "
                    "re-make the DICOMDIR",
                )
                for m in missing
            )
            if note:
                out.notes.append((str(path), note))
        else:
            out.files.append(str(path))
    return out


def _exists_any_case(base: Path, parts: list[str]) -> bool:
    """Whether base/parts... exists, matching each part's case loosely (DICOMDIR file IDs
    are upper case; copied media often are not)."""
    if base.joinpath(*parts).exists():
        return True
    folder = base
    for part in parts:
        try:
            names = {n.lower(): n for n in os.listdir(folder)}
        except OSError:
            return False
        name = names.get(part.lower())
        if name is None:
            return False
        folder = folder / name
    return True


def dicomdir_missing(path: Path) -> tuple[list[Path], str | None]:
    """The files a DICOMDIR lists that do not exist beside it, and a note when it cannot be
    read as a DICOMDIR (its references are then not checked)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's warnings can quote header values
            syntax = pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID")
            if syntax is not None and pydicom.uid.UID(str(syntax)).is_deflated:
                # pydicom inflates a deflated file whole: a few hundred KB named DICOMDIR
                # could take GBs. A DICOMDIR is Explicit VR Little Endian (PS3.10).
                return [], (
                    "a deflated DICOMDIR (a DICOMDIR is Explicit VR Little Endian): not "
                    "inflated, its references were not checked; the files beside it are "
                    "ingested all the same"
                )
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            records = list(ds.get("DirectoryRecordSequence") or [])
            refs = [r.get("ReferencedFileID") for r in records]
    except Exception as exc:
        return [], (
            f"not a readable DICOMDIR ({type(exc).__name__}): its references were not "
            "checked; the files beside it are ingested all the same"
        )
    missing = []
    for ref in refs:
        if not ref:
            continue
        parts = [str(ref)] if isinstance(ref, str) else [str(p) for p in ref]
        parts = [p.strip() for p in parts if p.strip()]
        if parts and not _exists_any_case(path.parent, parts):
            missing.append(path.parent.joinpath(*parts))
    return missing, None


# --------------------------------------------------------------------------- worker side

_worker: dict = {}


def _init_worker(key: bytes, store_root: str, options: Options, known: frozenset[str]) -> None:
    # pydicom's validation warnings quote header values, which may be identifying: a worker
    # never prints them (a bad file is reported by its one-line reason instead).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.simplefilter("ignore")
    _worker.update(key=key, store=Store(Path(store_root)), options=options, known=known)


def _read_source(path: str) -> tuple[bytes | None, str, int]:
    """(bytes, SHA-256, size) of a file; a file over STREAM_BYTES is hashed by streaming and
    its bytes are not kept (None): it is parsed and decoded from disk, frame by frame."""
    size = os.stat(path).st_size
    if size <= STREAM_BYTES:
        data = Path(path).read_bytes()
        return data, hashlib.sha256(data).hexdigest(), len(data)
    with open(path, "rb") as handle:
        return None, hashlib.file_digest(handle, "sha256").hexdigest(), size


def process_file(path: str) -> FileResult:
    """Read, validate, de-identify, decode and store one file (runs in a worker). Frames are
    decoded and stored one at a time, so memory holds about one frame (and, for files up to
    STREAM_BYTES, the file's bytes)."""
    key: bytes = _worker["key"]
    options: Options = _worker["options"]
    try:
        data, sha, size = _read_source(path)
    except OSError as exc:
        return FileResult(path, "rejected", reason=f"cannot read ({exc.strerror or exc})")
    if sha in _worker["known"]:
        return FileResult(path, "known", sha, size)
    try:
        ds = read_dataset(data) if data is not None else read_dataset_from(Path(path))
        meta = clean_metadata(ds, key)
        meta["path_key"] = deid.path_key(key, str(Path(path).resolve()))
        regions = ultrasound_regions(ds)
        meta["regions"] = [r.as_dict() for r in regions]
        meta["mm_per_px_x"], meta["mm_per_px_y"] = calibration(regions)
        burned = burned_in(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        if burned and not regions:
            reason = deid.QUARANTINE_NO_REGION
        elif burned and not deid.room_for_banner(meta["regions"], rows, cols):
            reason = deid.quarantine_no_room(deid.covered_share(meta["regions"], rows, cols))
        else:
            reason = ""
        quarantine = bool(reason) and not options.allow_burned_in
        if reason:
            meta["pixel_handling"] = "kept_burned_in_allowed"
        elif burned:
            meta["pixel_handling"] = "blanked_outside_regions"
        else:
            meta["pixel_handling"] = "not_burned_in"
        frames = []
        store: Store = _worker["store"]
        source = ds if data is not None else Path(path)
        # every chosen frame is decoded, also for a file to quarantine: an undecodable file
        # is rejected, never merely quarantined
        for index in frame_indices(meta["n_frames"], options.frames):
            gray = decode_frame(ds, index, source)
            if quarantine:
                continue
            if burned and regions:  # also when allowed: what lies outside goes all the same
                gray = deid.blank_outside_regions(gray, meta["regions"])
            try:
                digest = store.put_array(gray)
            except OSError as exc:
                return FileResult(path, "failed", sha, size, reason=_write_failure(store.root, exc))
            frames.append(
                {
                    "index": index,
                    "hash": digest,
                    "rows": int(gray.shape[0]),
                    "cols": int(gray.shape[1]),
                }
            )
        if quarantine:
            return FileResult(path, "quarantined", sha, size, meta=meta, reason=reason)
    except BadDicom as exc:
        return FileResult(path, "rejected", sha, size, reason=str(exc))
    return FileResult(path, "decoded", sha, size, meta=meta, frames=frames)


def _write_failure(root: Path, exc: OSError) -> str:
    """One line on a failed write to the store: where, why, and the free space there."""
    where = exc.filename or root
    try:
        free = f"{shutil.disk_usage(root).free / 1024**2:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"{where}: cannot write to the store ({exc.strerror or exc}; {free} there): ingest "
        "stopped, the catalogue holds every file ingested so far; make room and run the "
        "same command again"
    )


def burned_in(ds) -> bool:
    """Ultrasound counts as burned-in unless BurnedInAnnotation is NO; other modalities
    only when they say YES."""
    flag = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if str(ds.SOPClassUID) in US_SOP_CLASSES or str(ds.get("Modality", "")).upper() == "US":
        return flag != "NO"
    return flag == "YES"


def patient_identity(ds) -> str:
    """What makes a patient the same patient: PatientID, else name + birth date, else the
    study (one pseudonymous patient per study)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return pid
    name = str(ds.get("PatientName", "") or "").strip()
    if name:
        return f"name:{name}|{ds.get('PatientBirthDate', '')}"
    return f"study:{ds.get('StudyInstanceUID', '')}"


def clean_metadata(ds, key: bytes) -> dict:
    """The allow-listed, de-identified attributes the catalogue keeps for one file."""
    identity = patient_identity(ds)
    shift = deid.date_shift_days(key, identity)
    study_date = ds.get("StudyDate") or ds.get("ContentDate") or ds.get("AcquisitionDate")
    study_uid = str(ds.get("StudyInstanceUID", "") or f"nostudy:{identity}")
    series_uid = str(ds.get("SeriesInstanceUID", "") or f"noseries:{study_uid}")
    side = str(ds.get("ImageLaterality", "") or ds.get("Laterality", "") or "").strip().upper()
    return {
        "pseudonym": deid.pseudonym_for(key, identity),
        "sex": deid.normalise_sex(ds.get("PatientSex")),
        "age": deid.age_at_exam(ds.get("PatientAge"), ds.get("PatientBirthDate"), study_date),
        "study_uid": deid.uid_for(key, study_uid),
        "study_date": deid.shifted_date(study_date, shift),
        "series_uid": deid.uid_for(key, series_uid),
        "sop_uid": deid.uid_for(key, str(ds.SOPInstanceUID)),
        "sop_class_uid": str(ds.SOPClassUID),
        "modality": _clip(ds.get("Modality"), 16),
        "side": side if side in ("L", "R") else None,
        "manufacturer": _clip(ds.get("Manufacturer"), 64),
        "model_name": _clip(ds.get("ManufacturerModelName"), 64),
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
        "photometric": _clip(ds.get("PhotometricInterpretation"), 32),
        "bits_allocated": int(ds.BitsAllocated),
        "n_frames": n_frames(ds),
    }


def _clip(value: object, size: int) -> str | None:
    text = str(value or "").strip()
    return text[:size] or None


# --------------------------------------------------------------------------- parent side


def known_hashes(session: Session) -> frozenset[str]:
    """Files whose bytes need no second look (quarantined ones are looked at again, since
    --allow-burned-in may now let them in)."""
    # plain rows from the connection, not the ORM's: every file's hash (0.14 -> 0.06 s at
    # 34,000 files, paid by every ingest whatever its size)
    rows = session.connection().execute(
        select(SourceFile.sha256).where(SourceFile.status != FileStatus.quarantined)
    )
    return frozenset(sha for (sha,) in rows)


class CatalogueBatch:
    """Writes a batch of worker results in one transaction.

    Lookups for the whole batch are made up front (one query per kind, not per file), and
    patients, studies and series are cached for the transaction, which on SQLite holds the
    write lock (BEGIN IMMEDIATE), so nobody else can add them meanwhile. On PostgreSQL a
    concurrent ingest can still win a race on a unique key: the caller retries the batch.
    """

    def __init__(self, session: Session, results: list[FileResult]):
        self.session = session
        shas = [r.sha256 for r in results]
        uids = [r.meta["sop_uid"] for r in results if r.meta]
        self.by_sha = (
            {
                f.sha256: f
                for f in session.scalars(select(SourceFile).where(SourceFile.sha256.in_(shas)))
            }
            if shas
            else {}
        )
        # the status is checked here, not in SQL: with both in the query SQLite (which keeps
        # no statistics) walked the status index, every ingested file (13.7 ms a batch at
        # 30,000 files, 0.5 ms by the UID's index)
        self.ingested_uids = (
            {
                uid
                for uid, status in session.execute(
                    select(SourceFile.sop_uid, SourceFile.status).where(
                        SourceFile.sop_uid.in_(uids)
                    )
                )
                if status == FileStatus.ingested
            }
            if uids
            else set()
        )
        self.patients: dict[str, Patient] = {}
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}

    def record(self, result: FileResult) -> tuple[str, str]:
        """Add one result's rows; returns its outcome (``ingested``, ``already_present``,
        ``quarantined``, ``conflict``) and reason, to be counted once the batch commits."""
        meta = result.meta
        existing = self.by_sha.get(result.sha256)
        if result.kind == "quarantined":
            if existing is None:
                self._add_source(result, status=FileStatus.quarantined, reason=result.reason)
            return "quarantined", result.reason
        if existing is not None and existing.status != FileStatus.quarantined:
            return "already_present", ""  # another ingest, or this batch, got there first
        if meta["sop_uid"] in self.ingested_uids:
            reason = (
                "conflict: this SOP Instance UID is already catalogued with different "
                "bytes; the new version is kept aside, nothing was overwritten"
            )
            self._keep_aside(result, existing, reason)
            return "conflict", reason
        try:
            series = self._series_for(meta)
        except _OtherPatient as exc:
            self._keep_aside(result, existing, str(exc))
            return "conflict", str(exc)
        if existing is not None:  # a quarantined file now let in
            source = existing
            source.status, source.reason = FileStatus.ingested, None
        else:
            source = self._add_source(result, status=FileStatus.ingested)
        self.ingested_uids.add(meta["sop_uid"])
        self.session.add_all(
            Image(
                series=series,
                source_file=source,
                frame_index=f["index"],
                store_hash=f["hash"],
                rows=f["rows"],
                cols=f["cols"],
                mm_per_px_x=meta["mm_per_px_x"],
                mm_per_px_y=meta["mm_per_px_y"],
                regions=meta["regions"],
                pixel_handling=meta["pixel_handling"],
            )
            for f in result.frames
        )
        return "ingested", ""

    def _keep_aside(self, result: FileResult, existing: SourceFile | None, reason: str) -> None:
        """Record a conflicting file with its frames kept aside in the store (a file that
        was quarantined before keeps its row, now as a conflict)."""
        aside = [f["hash"] for f in result.frames]
        if existing is not None:
            existing.status, existing.reason, existing.aside = FileStatus.conflict, reason, aside
        else:
            self._add_source(result, status=FileStatus.conflict, reason=reason, aside=aside)

    def _add_source(
        self, result: FileResult, status: str, reason: str | None = None, aside: list | None = None
    ) -> SourceFile:
        meta = result.meta
        source = SourceFile(
            sha256=result.sha256,
            size=result.size,
            path_key=meta["path_key"],
            sop_uid=meta["sop_uid"],
            sop_class_uid=meta["sop_class_uid"],
            transfer_syntax=meta["transfer_syntax"],
            photometric=meta["photometric"],
            bits_allocated=meta["bits_allocated"],
            n_frames=meta["n_frames"],
            status=status,
            reason=reason,
            aside=aside,
        )
        self.session.add(source)
        self.by_sha[result.sha256] = source
        return source

    def _series_for(self, meta: dict) -> Series:
        s = self.session
        series = self.series.get(meta["series_uid"]) or s.scalar(
            select(Series).where(Series.uid == meta["series_uid"])
        )
        if series is not None:
            _same_patient(series.study, meta, "Series")
            self.series[meta["series_uid"]] = series
            return series
        study = self.studies.get(meta["study_uid"]) or s.scalar(
            select(Study).where(Study.uid == meta["study_uid"])
        )
        if study is not None:
            _same_patient(study, meta, "Study")
        else:
            patient = self.patients.get(meta["pseudonym"]) or s.scalar(
                select(Patient).where(Patient.pseudonym == meta["pseudonym"])
            )
            if patient is None:
                patient = Patient(
                    pseudonym=meta["pseudonym"], sex=meta["sex"], age_years=meta["age"]
                )
                s.add(patient)
            else:
                patient.sex = patient.sex or meta["sex"]
                if patient.age_years is None:
                    patient.age_years = meta["age"]
            self.patients[meta["pseudonym"]] = patient
            study = Study(
                patient=patient,
                uid=meta["study_uid"],
                study_date=meta["study_date"],
                age_at_exam=meta["age"],
            )
            s.add(study)
        self.studies[meta["study_uid"]] = study
        series = Series(
            study=study,
            uid=meta["series_uid"],
            modality=meta["modality"],
            side=meta["side"],
            manufacturer=meta["manufacturer"],
            model_name=meta["model_name"],
        )
        s.add(series)
        self.series[meta["series_uid"]] = series
        return series


class _OtherPatient(Exception):
    """A study or series already catalogued under another patient; ``str()`` is the reason."""


def _same_patient(study: Study, meta: dict, what: str) -> None:
    """Raise _OtherPatient when ``study`` belongs to another patient than the file's."""
    if study.patient.pseudonym != meta["pseudonym"]:
        raise _OtherPatient(
            f"conflict: this {what} Instance UID is already catalogued under another patient "
            "(the file names another PatientID); kept aside, nothing was filed: check which "
            "patient the file belongs to"
        )


def record_batch(
    ws: Workspace,
    results: list[FileResult],
    report: IngestReport,
    also: Callable[[Session, list[tuple[str, str]]], None] | None = None,
) -> None:
    """Write a batch in one transaction and count its outcomes once it has committed. On a
    unique-key race with a concurrent ingest (PostgreSQL; SQLite serialises writers) the batch
    is rolled back and written again against what the other ingest committed. ``also`` adds
    the caller's own rows to the same transaction, given the results' outcomes (the listener
    records what it received that way)."""
    for attempt in range(3):
        try:
            with ws.session() as session, session.no_autoflush:
                # no autoflush: the batch's own caches know what it has added
                batch = CatalogueBatch(session, results)
                outcomes = [batch.record(r) for r in results]
                if also is not None:
                    also(session, outcomes)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    for result, (outcome, reason) in zip(results, outcomes):
        if outcome == "ingested":
            report.ingested += 1
            report.images_added += len(result.frames)
        elif outcome == "already_present":
            report.already_present += 1
        elif outcome == "quarantined":
            report.quarantined.append((shown(result.path), reason))
        else:
            report.conflicts.append((shown(result.path), reason))


def _record(ws: Workspace, results: list[FileResult], report: IngestReport) -> None:
    """record_batch; a catalogue that cannot be written (a full disk) is one line."""
    try:
        record_batch(ws, results, report)
    except OperationalError as exc:
        detail = str(exc.orig) if exc.orig is not None else type(exc).__name__
        where = ws.meta_dir / "catalogue.sqlite"
        try:
            free = f"{shutil.disk_usage(ws.meta_dir).free / 1024**2:.1f} MiB free"
        except OSError:
            free = "free space unknown"
        raise DatatoolError(
            f"{where}: cannot write the catalogue ({detail}; {free} there): ingest stopped, "
            "the catalogue holds every file ingested so far; make room and run the same "
            "command again"
        ) from None


def ingest(
    ws: Workspace,
    paths: Iterable[Path],
    *,
    workers: int | None = None,
    frames: str = "auto",
    allow_burned_in: bool = False,
    progress: Callable[[int, int], None] | None = None,
    batch_size: int = 64,
    command: str = "ingest",
) -> IngestReport:
    """Ingest files and folders into the workspace; see the module docstring.

    ``workers`` processes decode (default: all cores) while this process writes the
    catalogue, ``batch_size`` files per transaction (or what arrived within a second);
    ``workers=0`` does everything in this process."""
    frame_indices(1, frames)  # validates the mode before any work
    if workers is not None and not 0 <= workers <= MAX_WORKERS:
        raise UsageError(
            f"--workers must be 0 .. {MAX_WORKERS} (one process each), not {workers}; "
            "leave it out for one per core"
        )
    if batch_size < 1:
        raise UsageError(f"--batch must be at least 1, not {batch_size}")
    options = Options(frames=frames, allow_burned_in=allow_burned_in)
    report = IngestReport(frames_mode=frames)
    found = discover(paths)
    files = found.files
    report.skipped = found.skipped
    report.notes = [(shown(p), r) for p, r in found.notes]
    report.rejected = [(shown(p), r) for p, r in found.rejected]
    report.files_seen = len(files)
    with ws.session() as session:
        known = known_hashes(session)
    init_args = (ws.key, str(ws.store.root), options, known)
    workers = min(worker_count(workers), len(files))

    def results() -> Iterator[FileResult]:
        if workers == 0:  # in this process: keep its warning and validation settings as found
            mode = pydicom.config.settings.reading_validation_mode
            with warnings.catch_warnings():
                _init_worker(*init_args)
                try:
                    yield from map(process_file, files)
                finally:
                    pydicom.config.settings.reading_validation_mode = mode
            return
        with pool_context().Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
            yield from pool.imap_unordered(process_file, files, chunksize=4)

    pending: list[FileResult] = []
    last_commit = time.monotonic()
    for done, result in enumerate(results(), start=1):
        if result.kind == "known":
            report.already_present += 1
        elif result.kind == "rejected":
            report.rejected.append((shown(result.path), result.reason))
        elif result.kind == "failed":  # the store cannot be written: nothing further can
            if pending:
                _record(ws, pending, report)
            raise DatatoolError(result.reason)
        else:
            pending.append(result)
        if pending and (
            len(pending) >= batch_size or time.monotonic() - last_commit > BATCH_SECONDS
        ):
            _record(ws, pending, report)
            pending, last_commit = [], time.monotonic()
        if progress:
            progress(done, len(files))
    if pending:
        _record(ws, pending, report)
    with ws.session() as session:
        audit(
            session,
            command,
            "ingest",
            files=report.files_seen,
            ingested=report.ingested,
            images_added=report.images_added,
            already_present=report.already_present,
            rejected=len(report.rejected),
            quarantined=len(report.quarantined),
            conflicts=len(report.conflicts),
            frames=frames,
            allow_burned_in=allow_burned_in,
        )
    return report
