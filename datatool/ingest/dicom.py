"""Reading DICOM files: validation, decoding to 8-bit grayscale, ultrasound calibration.

Pure functions of bytes and datasets; nothing here touches the catalogue. Every problem is a
:class:`BadDicom` whose message is the one-line reason shown to the user.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

MAX_PIXELS_PER_FRAME = 8192 * 8192
MAX_DECODED_BYTES = 4 * 1024**3  # a whole file's pixel data, decoded
CM = 3  # PhysicalUnits code for centimetres


class FrameMode(StrEnum):
    """Which frames of a multi-frame cine become images."""

    auto = "auto"  # every frame up to AUTO_ALL_FRAMES_MAX frames, else the middle one
    all = "all"
    first = "first"
    middle = "middle"


FRAME_MODES = tuple(m.value for m in FrameMode)
AUTO_ALL_FRAMES_MAX = 32  # --frames auto: cines up to this many frames give every frame


NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage: labels, not an image
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data Storage
}


class BadDicom(Exception):
    """A file that cannot be ingested; ``str()`` is the reason."""


@dataclass
class Region:
    x0: int
    y0: int
    x1: int
    y1: int
    mm_per_px_x: float | None
    mm_per_px_y: float | None
    data_type: int | None
    spatial_format: int | None

    def as_dict(self) -> dict:
        return self.__dict__.copy()

    @property
    def area(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)


def read_dataset(data: bytes) -> Dataset:
    """Parse a DICOM file's bytes, rejecting what is not a usable DICOM image file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            # No 'DICM' preamble: old files lack one. Accept only if a real dataset comes out;
            # random bytes read with force=True become a one-element dataset.
            try:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
            except Exception as exc:
                raise BadDicom(f"not a DICOM file ({type(exc).__name__})") from None
            if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                raise BadDicom(
                    "not a DICOM file (no DICM preamble, no SOP Class/Instance UID)"
                ) from None
        except Exception as exc:
            raise BadDicom(f"unreadable DICOM ({type(exc).__name__}: {_short(exc)})") from None
        if any("End of file" in str(w.message) for w in caught):
            raise BadDicom("truncated file: it ends inside the pixel data")
        if len(ds) == 0:
            raise BadDicom("no readable DICOM elements (truncated or corrupt file)")
        try:
            for keyword in ("SOPClassUID", "SOPInstanceUID"):
                if not str(ds.get(keyword, "") or "").strip():
                    raise BadDicom(f"missing {keyword} (truncated header?)")
            if str(ds.SOPClassUID) in NOT_IMAGES:
                raise BadDicom(f"not an image ({ds.SOPClassUID.name})")
            if "PixelData" not in ds:
                raise BadDicom("no pixel data (not an image, or the file is truncated)")
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
                ds.file_meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = (
                    pydicom.uid.ImplicitVRLittleEndian
                    if ds.is_implicit_VR
                    else pydicom.uid.ExplicitVRLittleEndian
                )
            _check_geometry(ds)
        except BadDicom:
            raise
        except Exception as exc:  # invalid values deep in the header
            raise BadDicom(f"invalid header ({type(exc).__name__}: {_short(exc)})") from None
    return ds


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def n_frames(ds: Dataset) -> int:
    try:
        value = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise BadDicom(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None
    return value


def _check_geometry(ds: Dataset) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise BadDicom("missing or invalid Rows/Columns/BitsAllocated") from None
    frames = n_frames(ds)
    if rows <= 0 or cols <= 0 or frames <= 0 or spp not in (1, 3) or bits not in (1, 8, 16, 32):
        raise BadDicom(f"absurd image size {rows}x{cols}x{spp}, {frames} frame(s), {bits} bits")
    if (
        rows * cols > MAX_PIXELS_PER_FRAME
        or rows * cols * spp * frames * bits // 8 > MAX_DECODED_BYTES
    ):
        raise BadDicom(
            f"absurd image size {rows}x{cols}x{spp}, {frames} frame(s) "
            f"(over the {MAX_DECODED_BYTES // 1024**3} GiB limit)"
        )
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = (
            rows * cols * spp * frames * bits // 8 if bits != 1 else (rows * cols * frames + 7) // 8
        )
        have = len(ds.PixelData)
        if have < expected:
            raise BadDicom(
                f"pixel data too short: {have} bytes for {expected} expected (truncated file?)"
            )


def frame_indices(total: int, mode: str) -> list[int]:
    if mode not in FRAME_MODES:
        raise ValueError(f"--frames must be one of {', '.join(FRAME_MODES)}")
    if mode == "first":
        return [0]
    if mode == "middle":
        return [total // 2]
    if mode == "all" or total <= AUTO_ALL_FRAMES_MAX:
        return list(range(total))
    return [total // 2]


def ultrasound_regions(ds: Dataset) -> list[Region]:
    """The SequenceOfUltrasoundRegions, clipped to the image; empty when absent."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    regions: list[Region] = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        try:
            x0 = max(0, int(item.RegionLocationMinX0))
            y0 = max(0, int(item.RegionLocationMinY0))
            x1 = min(cols - 1, int(item.RegionLocationMaxX1))
            y1 = min(rows - 1, int(item.RegionLocationMaxY1))
        except (AttributeError, TypeError, ValueError):
            continue
        if x1 < x0 or y1 < y0:
            continue  # lies wholly outside the image
        mm_x = mm_y = None
        try:
            if (
                int(item.get("PhysicalUnitsXDirection", 0)) == CM
                and int(item.get("PhysicalUnitsYDirection", 0)) == CM
            ):
                dx, dy = abs(float(item.PhysicalDeltaX)), abs(float(item.PhysicalDeltaY))
                if dx > 0 and dy > 0:
                    mm_x, mm_y = dx * 10.0, dy * 10.0
        except (AttributeError, TypeError, ValueError):
            pass
        regions.append(
            Region(
                x0,
                y0,
                x1,
                y1,
                mm_x,
                mm_y,
                _int_or_none(item.get("RegionDataType")),
                _int_or_none(item.get("RegionSpatialFormat")),
            )
        )
    return regions


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def calibration(regions: list[Region]) -> tuple[float | None, float | None]:
    """mm per pixel (x, y) from the largest calibrated 2D region; (None, None) if none."""
    usable = [r for r in regions if r.mm_per_px_x and (r.spatial_format in (None, 1))]
    if not usable:
        return None, None
    best = max(usable, key=lambda r: r.area)
    return best.mm_per_px_x, best.mm_per_px_y


def decode_frame(ds: Dataset, index: int) -> np.ndarray:
    """One frame as 8-bit grayscale (rows x cols, uint8)."""
    total = n_frames(ds)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=index if total > 1 else None)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
    except BadDicom:
        raise
    except Exception as exc:
        tsyntax = ds.file_meta.TransferSyntaxUID
        raise BadDicom(
            f"cannot decode pixel data ({tsyntax.name}): {type(exc).__name__}: {_short(exc)}"
        ) from None
    return to_gray8(arr, ds)


def to_gray8(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    rows, cols = int(ds.Rows), int(ds.Columns)
    if arr.shape[:2] != (rows, cols):
        raise BadDicom(f"decoded frame is {arr.shape[:2]}, header says {rows}x{cols}")
    if arr.ndim == 3:  # RGB (YBR is converted by the decoder, palette by its LUT)
        if arr.dtype == np.uint16 and int(arr.max()) <= 255:
            # 8-bit values in 16-bit palette entries (seen in real files, e.g. after a
            # big-endian conversion): take them as they are rather than as 1/256 of full scale
            arr = arr.astype(np.uint8)
        elif arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        elif arr.dtype != np.uint8:
            arr = _rescale(arr, 0, None)
        # ITU-R BT.601 luma in integer arithmetic: (77 R + 150 G + 29 B + 128) / 256
        luma = arr[..., 0].astype(np.uint16)
        luma *= 77
        luma += 128
        for channel, weight in ((1, 150), (2, 29)):
            part = arr[..., channel].astype(np.uint16)
            part *= weight
            luma += part
        luma >>= 8
        return luma.astype(np.uint8)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.dtype == np.uint8:
        gray = arr
    else:
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            gray = _voi_gray(arr, ds)
        else:
            bits = int(ds.get("BitsStored", ds.BitsAllocated))
            signed = int(ds.get("PixelRepresentation", 0)) == 1
            lo = -(2 ** (bits - 1)) if signed else 0
            hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
            gray = _rescale(arr, lo, hi)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return np.ascontiguousarray(gray, dtype=np.uint8)


def _voi_gray(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """The display pipeline of deeper monochrome: the modality LUT (RescaleSlope/Intercept),
    then the VOI LUT or window, whose output range (not the image's own darkest and
    brightest values) becomes 0..255."""
    values = apply_voi_lut(apply_modality_lut(arr, ds), ds)
    if "VOILUTSequence" in ds:  # pydicom prefers the table to a window, as here
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        lo, hi = 0.0, float(2**bits - 1)
    else:  # the window's own ends: what it gives far below and far above its range
        ends = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
        lo, hi = float(ends[0]), float(ends[1])
    return _rescale(values, lo, hi)


def _rescale(arr: np.ndarray, lo: float, hi: float | None) -> np.ndarray:
    hi = float(np.max(arr)) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    scaled = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
