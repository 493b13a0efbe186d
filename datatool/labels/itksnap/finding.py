"""ITK-SNAP sync's first step: finding the label files under a folder (the images of an
export left out), reading a manifest CSV (``label_file,dicom_file``), and finding the DICOM
file a label file's relative path mirrors under ``--dicom-root``. Nothing here opens a label
map or reads the catalogue (``itksnap.sync`` does)."""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datatool.core.errors import UsageError
from datatool.core.files import Walk, not_regular, walk
from datatool.labels.itksnap.formats import LABEL_SUFFIXES, label_suffix, strip_label_suffix
from datatool.labels.itksnap.marker import EXPORT_MARKER, LABELS_FILE
from datatool.labels.matching import NoImage

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
    files, ignored, _ = find_label_files_walk(label_dir)
    return files, ignored


def find_label_files_walk(label_dir: Path) -> tuple[list[Path], Counter, Walk]:
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
class Listed:
    dicom: Path | None  # None: listed twice with different DICOM files
    where: str


def read_manifest(path: Path) -> tuple[dict[Path, Listed], list[tuple[str, str]]]:
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
    listed: dict[Path, Listed] = {}
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
            listed[label_path] = Listed(None, before.where)
        elif before is None:
            listed[label_path] = Listed(dicom_path, where)
    return listed, problems


class DicomFinder:
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
