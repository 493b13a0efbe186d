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


def _small_header(rows: int, cols: int, frames: int = 1) -> pydicom.Dataset:
    """An 8-bit monochrome ultrasound header (no pixel data), with a region that leaves a
    banner."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "US", "BOMB-1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    region = Dataset()
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, rows // 8
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


def deflated_parts(ds, enforce_standard: bool = True) -> tuple[bytes, bytes]:
    """A dataset as a Deflated Explicit VR Little Endian file, in two parts: the preamble and
    file meta as they are written, and the dataset's bytes that are to be deflated (raw
    deflate) after them."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    head = DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, ds.file_meta, enforce_standard=enforce_standard)
    return head.getvalue(), body.getvalue()


def deflate_bomb(path: Path, pixel_bytes: int, rows: int = 64, cols: int = 64) -> Path:
    """A Deflated Explicit VR Little Endian file whose header declares a rows x cols image
    but whose deflated stream holds ``pixel_bytes`` of pixel data: a few hundred KB that
    inflate to hundreds of MB. Made by streaming, never holding the inflated bytes."""
    import struct
    import zlib

    head, body = deflated_parts(_small_header(rows, cols))
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(head)
        handle.write(packer.compress(body))
        handle.write(packer.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes)))
        zeros = bytes(1 << 22)
        for _ in range(pixel_bytes // len(zeros)):
            handle.write(packer.compress(zeros))
        handle.write(packer.compress(bytes(pixel_bytes % len(zeros))))
        handle.write(packer.flush())
    return path


def long_cine(path: Path, frames: int, rows: int, cols: int) -> Path:
    """A native (uncompressed) 8-bit cine of ``frames`` frames, each a different gradient."""
    import numpy as np

    ds = _small_header(rows, cols, frames)
    ramp = (np.arange(rows * cols, dtype=np.uint32) % 251).astype(np.uint8)
    ds.PixelData = b"".join(np.roll(ramp, k).tobytes() for k in range(frames))
    return _save(ds, path)
