"""Small DICOM files and catalogues built by hand in tests, so that every expected number can
be worked out from what the test itself put in (no demo generator, no code under test)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    UltrasoundImageStorage,
    generate_uid,
)


def us_dataset(
    pixels: np.ndarray,
    *,
    patient_id: str = "HANDMADE-1",
    study_uid: str | None = None,
    sop_uid: str | None = None,
    mm_per_px: float | None = 0.1,
    mm_per_px_y: float | None = None,
    study_date: str = "20240305",
    sex: str = "F",
    side: str | None = "L",
    burned_in: bool = False,
) -> Dataset:
    """An 8-bit MONOCHROME2 ultrasound image. ``mm_per_px``: one calibrated region over the
    whole image (PhysicalDelta in cm = mm / 10); None: no region (ingest keeps it, without
    mm). ``mm_per_px_y``: the rows' spacing where it differs from the columns' (default: the
    same, square pixels). BurnedInAnnotation NO unless ``burned_in`` (then ingest quarantines
    it: a region over the whole image leaves no room for a banner to blank)."""
    rows, cols = pixels.shape
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UltrasoundImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "US"
    ds.PatientID = patient_id
    ds.PatientName = f"Handmade^{patient_id}"
    ds.PatientSex = sex
    ds.StudyDate = study_date
    ds.ContentDate = study_date
    if side:
        ds.ImageLaterality = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.BurnedInAnnotation = "YES" if burned_in else "NO"
    if mm_per_px is not None:
        region = Dataset()
        region.RegionSpatialFormat = 1
        region.RegionDataType = 1
        region.RegionFlags = 0
        region.RegionLocationMinX0 = 0
        region.RegionLocationMinY0 = 0
        region.RegionLocationMaxX1 = cols - 1
        region.RegionLocationMaxY1 = rows - 1
        region.PhysicalUnitsXDirection = 3  # cm
        region.PhysicalUnitsYDirection = 3
        region.PhysicalDeltaX = mm_per_px / 10
        region.PhysicalDeltaY = (mm_per_px if mm_per_px_y is None else mm_per_px_y) / 10
        ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def write_us(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    return save(us_dataset(pixels, **kwargs), path)


def workspace_with_key(root: Path, key_hex: str = "5e" * 32):
    """A workspace whose pseudonym key is fixed (``init`` keeps a key it finds): pseudonyms,
    and everything ordered by them, are the same on every run. Returns it opened."""
    from datatool.core.workspace import init_workspace, open_workspace

    meta = root / ".datatool"
    meta.mkdir(parents=True)
    (meta / "secret.key").write_text(key_hex + "\n")
    (meta / "secret.key").chmod(0o600)
    init_workspace(root)
    return open_workspace(root)


def box(shape: tuple[int, int], fill: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    """A label map with ``value -> (y0, y1, x0, x1)`` rectangles (half-open), later ones on
    top."""
    mask = np.zeros(shape, np.uint8)
    for value, (y0, y1, x0, x1) in fill.items():
        mask[y0:y1, x0:x1] = value
    return mask
