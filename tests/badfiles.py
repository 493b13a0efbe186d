"""Makers of bad input files, each from a real DICOM file."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_bad_files(
    good_native: Path, good_jpeg: Path, good_j2k: Path, folder: Path
) -> dict[str, Path]:
    """name -> path of files that ingest must reject (with the reason's keyword as name)."""
    native = good_native.read_bytes()
    files = {
        "not a DICOM file": write(folder / "notes.txt", b"patient notes, not an image\n" * 20),
        "random bytes": write(folder / "random.dcm", os.urandom(4096)),
        # no preamble but a plausible first element: pydicom's force=True reads it
        "forced": write(
            folder / "forced.dcm", b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100" + b"\x00" * 64
        ),
        "truncated header": write(folder / "cut_header.dcm", native[:400]),
        "truncated pixels": write(folder / "cut_pixels.dcm", native[: len(native) - 5000]),
        "truncated encapsulated": write(
            folder / "cut_jpeg.dcm", good_jpeg.read_bytes()[: len(good_jpeg.read_bytes()) // 2]
        ),
    }
    ds = pydicom.dcmread(good_native)
    del ds.PixelData
    files["no pixel data"] = _save(ds, folder / "no_pixels.dcm")

    ds = pydicom.dcmread(good_native)
    ds.Rows = int(ds.Rows) + 40
    files["wrong pixel length"] = _save(ds, folder / "wrong_length.dcm")

    ds = pydicom.dcmread(good_native)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
    files["absurd size"] = _save(ds, folder / "absurd.dcm")

    ds = pydicom.dcmread(good_j2k)
    frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    garbage = bytes(frames[0][:4]) + b"\x13" * (len(frames[0]) - 4)
    ds.PixelData = pydicom.encaps.encapsulate([garbage])
    files["undecodable compression"] = _save(ds, folder / "garbled_j2k.dcm")
    return files


def _save(ds, path: Path) -> Path:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return write(path, buf.getvalue())
