"""Where an ITK-SNAP sync's label files are and which image each labels: the label maps under
a folder (the images of an export and other files left out), a manifest CSV
(``label_file,dicom_file``), the DICOM file a label's path mirrors under ``--dicom-root``, and
the catalogued image (or cine) each file names, asked of the catalogue in bulk. Used by
``itksnap.sync``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
import stat
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from datatool.core.catalogue import FileStatus, Image, SourceFile
from datatool.core.errors import UsageError
from datatool.core.files import Walk, not_regular, walk
from datatool.ingest import deid
from datatool.labels.annotations import in_chunks
from datatool.labels.itksnap.formats import LABEL_SUFFIXES, label_suffix, strip_label_suffix
from datatool.labels.itksnap.marker import EXPORT_MARKER, LABELS_FILE
from datatool.labels.matching import (
    Cine,
    NoImage,
    cines_of,
    image_by_id,
    image_id_from_name,
    match_dicom,
    read_sop_instance_uid,
)

_IMAGE_STEM = re.compile(r"img\d{6,}", re.IGNORECASE)
_KNOWN_OTHERS = (".itksnap", ".raw", ".zraw", ".json", ".ctbl", EXPORT_MARKER, LABELS_FILE)


def _is_export_image(name: str, suffix: str, present: set[str]) -> bool:
    """``img000123.nii.gz`` beside ``img000123_seg.*`` or ``img000123.itksnap``: the image of
    an export, not a label map."""
    stem = name[: -len(suffix)]
    if not _IMAGE_STEM.fullmatch(stem):
        return False
    stem = stem.lower()
    return f"{stem}.itksnap" in present or any(f"{stem}_seg{s}" in present for s in LABEL_SUFFIXES)


def find_label_files(label_dir: Path) -> tuple[list[Path], Counter]:
    """The label map files under ``label_dir`` (recursively, sorted, hidden files and the
    images of an export left out), and a count by extension of the other files ignored."""
    files, ignored, _ = _find_label_files(label_dir)
    return files, ignored


def _find_label_files(label_dir: Path) -> tuple[list[Path], Counter, Walk]:
    """:func:`find_label_files`, and the walk's FIFOs, sockets, devices and unreadable
    folders (never opened)."""
    found = walk([Path(label_dir)])
    files: list[Path] = []
    ignored: Counter = Counter()
    by_folder: dict[Path, list[str]] = {}
    for path in found.files:
        by_folder.setdefault(path.parent, []).append(path.name)
    for folder, names in by_folder.items():
        present = {n.lower() for n in names}
        for name in names:
            suffix = label_suffix(name)
            if suffix is None:
                if not name.lower().endswith(_KNOWN_OTHERS):
                    ignored[Path(name).suffix.lower() or "(no extension)"] += 1
            elif not _is_export_image(name, suffix, present):
                files.append(folder / name)
    return files, ignored, found


def _absolute(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


@dataclass
class _Listed:
    dicom: Path | None  # None: listed twice with different DICOM files
    where: str


def read_manifest(path: Path) -> tuple[dict[Path, _Listed], list[tuple[str, str]]]:
    """A manifest CSV (``label_file,dicom_file``; relative paths against the CSV's folder):
    label file (absolute) -> its DICOM file, and one (where, reason) per bad row."""
    path = Path(path)
    odd = not_regular(path)
    if odd is not None:
        raise UsageError(f"{path}: {odd}, not a manifest file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such manifest file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: the manifest is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
    if "label_file" not in fields or "dicom_file" not in fields:
        raise UsageError(
            f"{path}: a manifest needs the columns label_file,dicom_file "
            f"(found: {', '.join(reader.fieldnames or []) or 'nothing'})"
        )
    base = path.parent
    listed: dict[Path, _Listed] = {}
    problems: list[tuple[str, str]] = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        label = (row.get(fields["label_file"]) or "").strip()
        dicom = (row.get(fields["dicom_file"]) or "").strip()
        if not label and not dicom:
            continue
        if not label or not dicom:
            problems.append((where, "manifest row needs both label_file and dicom_file"))
            continue
        label_path, dicom_path = _absolute(base, label), _absolute(base, dicom)
        before = listed.get(label_path)
        if before is not None and before.dicom != dicom_path:
            listed[label_path] = _Listed(None, before.where)
        elif before is None:
            listed[label_path] = _Listed(dicom_path, where)
    return listed, problems


class _DicomFinder:
    """The DICOM file mirroring a label file's relative path under a root folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._listings: dict[Path, list[str]] = {}

    def _names(self, folder: Path) -> list[str]:
        if folder not in self._listings:
            try:
                with os.scandir(folder) as entries:
                    self._listings[folder] = sorted(
                        e.name for e in entries if not e.name.startswith(".") and e.is_file()
                    )
            except OSError:
                self._listings[folder] = []
        return self._listings[folder]

    def find(self, rel: Path) -> Path:
        stem = strip_label_suffix(rel.name)
        folder = self.root / rel.parent
        names = self._names(folder)
        by_lower = {n.lower(): n for n in names}
        if f"{stem}.dcm".lower() in by_lower:
            return folder / by_lower[f"{stem}.dcm".lower()]
        if stem in names:
            return folder / stem
        others = [n for n in names if n.startswith(stem + ".") and label_suffix(n) is None]
        if len(others) == 1:
            return folder / others[0]
        if others:
            raise NoImage(
                f"several files under {self.root} could be its DICOM file "
                f"({', '.join(others[:3])}); name it in a --manifest"
            )
        raise NoImage(f"no DICOM file {rel.parent / stem}[.dcm] under {self.root} to match it to")


@dataclass
class _Target:
    """The image a label file names (``image_id``), or its original DICOM file and that
    file's keyed SOP Instance UID (None when it could not be read)."""

    path: Path
    full: Path
    rel: Path
    image_id: int | None = None
    dicom: Path | None = None
    uid: str | None = None


def _keyed_sop_uid(key: bytes, dicom: Path) -> str | None:
    """The keyed replacement of a DICOM file's SOP Instance UID, reading nothing else."""
    try:
        return deid.uid_for(key, read_sop_instance_uid(dicom))
    except NoImage:  # unreadable: image_for_dicom gives the reason
        return None


def _target(
    key: bytes,
    path: Path,
    full: Path,
    rel: Path,
    listed: dict[Path, _Listed],
    finder: _DicomFinder | None,
    read_uid: bool = True,
) -> _Target:
    """Where a label file points: the manifest's DICOM file, else the image id in its name,
    else the DICOM file its path mirrors under the DICOM root (its SOP Instance UID read
    unless ``read_uid`` is False: the caller finds it, see :func:`known_sop_uids`)."""
    target = _Target(path, full, rel)
    entry = listed.get(full)
    if entry is not None:
        if entry.dicom is None:
            raise NoImage("listed twice in the manifest with different DICOM files")
        target.dicom = entry.dicom
    else:
        target.image_id = image_id_from_name(full.name)
        if target.image_id is None and len(rel.parts) > 1:
            target.image_id = image_id_from_name(rel.parent.name)
        if target.image_id is not None:
            return target
        if finder is None:
            raise NoImage(
                "cannot tell which image it labels: its name holds no image id "
                "(imgNNNNNN, as exported) and no --dicom-root or --manifest was given"
            )
        target.dicom = finder.find(rel)
    if read_uid and target.dicom.is_file():
        target.uid = _keyed_sop_uid(key, target.dicom)
    return target


HASHED_BYTES = 8 << 20  # DICOM files up to this size are matched by their hash first
HASH_THREADS = 2  # at most: hashing lets go of the GIL, so two files are hashed at a time


def _sha256_of(path: Path) -> str | None:
    """A regular file's SHA-256 when it is at most :data:`HASHED_BYTES` long; None for any
    other (or one that cannot be read: read below, which says why)."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and st.st_size <= HASHED_BYTES:
            return hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        pass
    return None


def known_sop_uids(
    session: Callable[[], AbstractContextManager[Session]], key: bytes, targets: list[_Target]
) -> None:
    """Fill in the keyed SOP Instance UID of each target's DICOM file: a file whose bytes
    are those of a file ingested before (its SHA-256 in the catalogue) has that file's UID,
    with no DICOM parsing (the same bytes hold the same UID); any other is read as always.
    Hashing a file of a few hundred kB costs a fraction of parsing its header (and is done by
    a few threads). Files are read outside the catalogue's transaction (``session``: opens
    one, for the lookup alone)."""
    todo = [(k, t.dicom) for k, t in enumerate(targets) if t.dicom is not None and t.uid is None]
    threads = min(HASH_THREADS, os.cpu_count() or 1) if len(todo) > 1 else 0
    paths = [p for _, p in todo]
    with ThreadPoolExecutor(threads) if threads else nullcontext() as pool:
        sums = pool.map(_sha256_of, paths) if pool else map(_sha256_of, paths)
        hashes = {k: sha for (k, _), sha in zip(todo, sums) if sha is not None}
    found: dict[str, str] = {}
    with session() as s:
        for chunk in in_chunks(sorted(set(hashes.values()))):
            rows = s.execute(
                select(SourceFile.sha256, SourceFile.sop_uid).where(SourceFile.sha256.in_(chunk))
            )
            found.update((sha, uid) for sha, uid in rows)
    for k, t in enumerate(targets):
        if t.dicom is None or t.uid is not None:
            continue
        known = found.get(hashes.get(k, ""))
        if known:
            t.uid = known
        elif t.dicom.is_file():
            t.uid = _keyed_sop_uid(key, t.dicom)


def _resolve(session: Session, key: bytes, targets: list[_Target]):
    """Yield (target, image row or NoImage) for every target, asking the catalogue in bulk.
    What the bulk queries do not settle (no such image, never ingested, a cine, an
    unreadable DICOM file) goes through ``matching``, which says why. A frame of a cine
    gives the whole :class:`Cine` (``named``: the frame an image id names)."""
    ids = sorted({t.image_id for t in targets if t.image_id is not None})
    uids = sorted({t.uid for t in targets if t.uid is not None})
    by_id: dict[int, Row] = {}
    by_uid: dict[str, list[Row]] = {}
    columns = (
        Image.id,
        Image.source_file_id,
        Image.frame_index,
        Image.rows,
        Image.cols,
        Image.mm_per_px_x,
        Image.mm_per_px_y,
        SourceFile.n_frames,
    )
    for id_chunk in in_chunks(ids):
        by_id.update(
            (row.id, row)
            for row in session.execute(
                select(*columns)
                .join(SourceFile, Image.source_file_id == SourceFile.id)
                .where(Image.id.in_(id_chunk))
            )
        )
    for uid_chunk in in_chunks(uids):
        for row in session.execute(
            select(SourceFile.sop_uid, SourceFile.status, *columns)
            .join(Image, Image.source_file_id == SourceFile.id)
            .where(SourceFile.sop_uid.in_(uid_chunk))  # the status below: see match_sop_uid
        ):
            if row.status == FileStatus.ingested:
                by_uid.setdefault(row.sop_uid, []).append(row)
    rows = [*by_id.values(), *(r for found in by_uid.values() for r in found)]
    cines = cines_of(session, {r.source_file_id for r in rows if (r.n_frames or 1) > 1})
    for t in targets:
        found: Row | Image | Cine | NoImage
        try:
            if t.image_id is not None:
                found = by_id.get(t.image_id) or image_by_id(session, t.image_id)
                if isinstance(found, Row) and found.source_file_id in cines:
                    found = replace(cines[found.source_file_id], named=found.frame_index)
            elif t.uid in by_uid and by_uid[t.uid][0].source_file_id in cines:
                found = replace(cines[by_uid[t.uid][0].source_file_id], named=None)
            elif t.uid is not None and len(by_uid.get(t.uid, ())) == 1:
                found = by_uid[t.uid][0]
            elif t.dicom is not None:
                found = match_dicom(session, key, t.dicom)
            else:  # _target gives every target an image id or a DICOM file
                raise AssertionError(f"no image id and no DICOM file for {t.path}")
        except NoImage as exc:
            found = exc
        yield t, found
