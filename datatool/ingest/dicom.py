"""Reading DICOM files: validation, decoding to 8-bit grayscale, ultrasound calibration.

Pure functions of bytes and datasets; nothing here touches the catalogue. Every problem is a
:class:`BadDicom` whose message is the one-line reason shown to the user.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filereader import read_dataset as _read_body
from pydicom.filewriter import write_file_meta_info
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
    pixel_array,
)
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from datatool.ingest.options import FrameMode

MAX_PIXELS_PER_FRAME = 8192 * 8192
MAX_DECODED_BYTES = 4 * 1024**3  # a whole file's pixel data, decoded
CM = 3  # PhysicalUnits code for centimetres
# A deflated dataset is inflated only as far as its header declares: the pixel data it
# declares, plus this much for the header and what may follow the pixels.
INFLATE_SLACK = 1 << 20
MAX_INFLATED_HEADER = 16 << 20
_PIXEL_TAG = 0x7FE00010


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
    """Parse a DICOM file's bytes, rejecting what is not a usable DICOM image file. A
    deflated file is inflated no further than its declared image needs."""
    deflated = _is_deflated(data)
    if deflated:
        data = _inflate_bounded(data)
    ds = _parse(data)
    if deflated:  # pixels decode the same; the catalogue records the file's own syntax
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def read_dataset_from(path: Path) -> Dataset:
    """Parse a large DICOM file from disk without reading its pixel data (it stays on disk,
    deferred; frames are read one at a time by :func:`decode_frame` given the path), with
    the checks of :func:`read_dataset`. Deflated files are read with :func:`read_dataset`:
    their pixel data cannot be reached without inflating what comes before it."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
    if _is_deflated(head):
        return read_dataset(Path(path).read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds: Dataset = pydicom.dcmread(path, defer_size=1 << 16)
        except InvalidDicomError:
            ds = _read_without_preamble(path, defer_size=1 << 16)
        except Exception as exc:
            raise BadDicom(f"unreadable DICOM ({type(exc).__name__}: {_short(exc)})") from None
    _validate(ds, file_size=Path(path).stat().st_size)
    return ds


def read_header(path: Path, specific_tags: list[str] | None = None) -> Dataset:
    """A file's elements before its pixel data (only ``specific_tags`` where given), never
    its pixels. A deflated file is read and inflated no further than MAX_INFLATED_HEADER:
    pydicom would inflate it whole, however little of it is wanted. Raises what pydicom
    raises for a file that is not DICOM."""
    with open(path, "rb") as handle:
        head = handle.read(8192)
        if not _is_deflated(head):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's warnings can quote header values
                return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=specific_tags)
        handle.seek(0)
        data = handle.read(MAX_INFLATED_HEADER)
    fp = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        body = zlib.decompressobj(-zlib.MAX_WBITS).decompress(
            data[fp.tell() :], MAX_INFLATED_HEADER
        )
        return _read_body(
            io.BytesIO(body),
            False,
            True,
            stop_when=lambda tag, vr, length: tag == _PIXEL_TAG,
            specific_tags=[Tag(t) for t in specific_tags] if specific_tags else None,
        )


def _is_deflated(data: bytes) -> bool:
    if DeflatedExplicitVRLittleEndian.encode() not in data[:8192]:
        return False  # the transfer syntax is in the file meta, at the very start
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fp = io.BytesIO(data)
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
    except Exception:
        return False
    return str(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian


def declared_pixel_bytes(ds: Dataset) -> int:
    """The bytes of native pixel data the header declares (all frames)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.BitsAllocated)
    frames = n_frames(ds)
    if min(rows, cols, spp, bits, frames) <= 0:
        raise ValueError("non-positive size")
    if bits == 1:
        return (rows * cols * frames + 7) // 8
    return rows * cols * spp * frames * bits // 8


def _inflate_bounded(data: bytes) -> bytes:
    """The file with its deflated dataset inflated (as Explicit VR Little Endian), refusing
    a stream that inflates beyond what its header declares (a decompression bomb)."""
    fp = io.BytesIO(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending = data[fp.tell() :]
    body = b""
    probe = 1 << 16
    try:
        while True:  # inflate the header, a little more each round, until the pixel data
            body += inflater.decompress(pending, probe - len(body))
            pending = inflater.unconsumed_tail
            header = _header_before_pixels(body)
            if header is not None or inflater.eof or not pending:
                break
            if probe >= MAX_INFLATED_HEADER:
                raise BadDicom(
                    f"deflated header larger than {MAX_INFLATED_HEADER >> 20} MiB before "
                    "the pixel data: refused"
                )
            probe *= 4
        if header is not None:
            ds, offset = header
            try:
                expected = declared_pixel_bytes(ds)
            except (AttributeError, TypeError, ValueError):
                raise BadDicom("missing or invalid Rows/Columns/BitsAllocated") from None
            if expected > MAX_DECODED_BYTES:
                raise BadDicom(
                    f"absurd image size: {expected} bytes of pixel data declared "
                    f"(over the {MAX_DECODED_BYTES // 1024**3} GiB limit)"
                )
            bound = offset + 12 + expected + INFLATE_SLACK
            if pending:
                body += inflater.decompress(pending, bound + 1 - len(body))
            if len(body) > bound:
                raise BadDicom(
                    f"deflated data inflates beyond the {expected} bytes of pixel data its "
                    "header declares: refused (a decompression bomb?)"
                )
        # no header: the stream ended (zlib leaves no unconsumed input after its end) or
        # was cut short; what was inflated is parsed, and refused as what it is
    except zlib.error:
        raise BadDicom("deflated data does not inflate (corrupt file)") from None
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=False)
    return out.getvalue() + body


def _header_before_pixels(body: bytes) -> tuple[Dataset, int] | None:
    """The elements of an inflated dataset before its pixel data, and the pixel data's
    offset; None while ``body`` does not reach the pixel data."""
    fp = io.BytesIO(body)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = _read_body(fp, False, True, stop_when=lambda tag, vr, length: tag == _PIXEL_TAG)
    except Exception:
        return None
    at = fp.tell()
    if len(body) < at + 4 or struct.unpack("<HH", body[at : at + 4]) != (0x7FE0, 0x0010):
        return None
    return ds, at


def _read_without_preamble(source, **options) -> Dataset:
    """No 'DICM' preamble: old files lack one. Accepted only if a real dataset comes out
    (random bytes read with force=True become a one-element dataset)."""
    try:
        ds = pydicom.dcmread(source, force=True, **options)
    except Exception as exc:
        raise BadDicom(f"not a DICOM file ({type(exc).__name__})") from None
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        raise BadDicom("not a DICOM file (no DICM preamble, no SOP Class/Instance UID)")
    return ds


def _parse(data: bytes) -> Dataset:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds: Dataset = pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            ds = _read_without_preamble(io.BytesIO(data))
        except Exception as exc:
            raise BadDicom(f"unreadable DICOM ({type(exc).__name__}: {_short(exc)})") from None
        if any("End of file" in str(w.message) for w in caught):
            raise BadDicom("truncated file: it ends inside the pixel data")
        _validate(ds)
    return ds


def _validate(ds: Dataset, file_size: int | None = None) -> None:
    """Reject a dataset that is not a usable image (``file_size``: of a file read with its
    pixel data deferred, to tell a file cut inside its pixel data)."""
    if len(ds) == 0:
        raise BadDicom("no readable DICOM elements (truncated or corrupt file)")
    try:
        for keyword in ("SOPClassUID", "SOPInstanceUID"):
            if not str(ds.get(keyword) or "").strip():
                raise BadDicom(f"missing {keyword} (truncated header?)")
        if str(ds.SOPClassUID) in NOT_IMAGES:
            raise BadDicom(f"not an image ({ds.SOPClassUID.name})")
        if "PixelData" not in ds:
            raise BadDicom("no pixel data (not an image, or the file is truncated)")
        # dcmread gives every dataset a file meta, empty for a file without preamble
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian
                if ds.is_implicit_VR
                else pydicom.uid.ExplicitVRLittleEndian
            )
        _check_geometry(ds, file_size)
    except BadDicom:
        raise
    except Exception as exc:  # invalid values deep in the header
        raise BadDicom(f"invalid header ({type(exc).__name__}: {_short(exc)})") from None


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def n_frames(ds: Dataset) -> int:
    try:
        value = int(ds.get("NumberOfFrames") or 1)  # missing, empty or 0: one frame
    except (TypeError, ValueError):
        raise BadDicom(f"invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None
    return value


def _check_geometry(ds: Dataset, file_size: int | None = None) -> None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel") or 1)
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
    # keep_deferred: pydicom 3 otherwise reads a deferred value whole (a cine: every frame)
    element = ds.get_item(_PIXEL_TAG, keep_deferred=True)
    # a value left on disk (read_dataset_from) is a RawDataElement: its length and offset
    on_disk = element if isinstance(element, RawDataElement) and element.value is None else None
    if on_disk is not None and file_size is not None:
        end = on_disk.value_tell + (on_disk.length if on_disk.length != 0xFFFFFFFF else 0)
        if end > file_size:
            raise BadDicom("truncated file: it ends inside the pixel data")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        expected = (
            rows * cols * spp * frames * bits // 8 if bits != 1 else (rows * cols * frames + 7) // 8
        )
        have = on_disk.length if on_disk is not None else len(ds.PixelData)
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
    for item in ds.get("SequenceOfUltrasoundRegions") or []:
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
            if int(item.PhysicalUnitsXDirection) == CM and int(item.PhysicalUnitsYDirection) == CM:
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


# Decoders faster than pydicom's first choice for their syntax (on the demo's 640 x 480
# frames: RLE 4.4 -> 2.7 ms, JPEG baseline 2.7 -> 1.4 ms) that give the same pixels: RLE is
# lossless, and every JPEG baseline and RLE file of pydicom-data and of pydicom's own test
# files decodes equal with both (tests/ingest/test_decoders.py). Used where installed;
# pydicom's own order otherwise.
FASTER_DECODERS = {RLELossless: "pylibjpeg", JPEGBaseline8Bit: "pillow"}


@cache
def decoder_for(syntax: UID) -> str:
    """The pydicom decoding plugin datatool asks for (``""``: pydicom's own choice)."""
    name = FASTER_DECODERS.get(syntax, "")
    try:
        return name if name and name in get_decoder(syntax).available_plugins else ""
    except NotImplementedError:  # a syntax pydicom has no decoder for
        return ""


def decode_frame(ds: Dataset, index: int, source: Dataset | Path | None = None) -> np.ndarray:
    """One frame as 8-bit grayscale (rows x cols, uint8). ``source`` is where the pixels
    are read from: the dataset (default), or the file's path, which reads only that frame
    from disk (for a file parsed by :func:`read_dataset_from`)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            syntax = ds.file_meta.TransferSyntaxUID
            plugin = decoder_for(syntax)
            if source is None or isinstance(source, Dataset):
                arr = pixel_array(
                    ds if source is None else source, index=index, decoding_plugin=plugin
                )
            else:  # the file read afresh: one without preamble has no file meta to tell
                # pydicom its transfer syntax, so it is told the one the dataset was read in
                arr = pixel_array(
                    source, index=index, transfer_syntax_uid=syntax, decoding_plugin=plugin
                )
            photometric = str(ds.get("PhotometricInterpretation")).upper()
            if photometric == "PALETTE COLOR":
                arr = apply_color_lut(arr, ds)
    except BadDicom:
        raise
    except Exception as exc:
        raise BadDicom(
            f"cannot decode pixel data ({ds.file_meta.TransferSyntaxUID.name}): "
            f"{type(exc).__name__}: {_short(exc)}"
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
    photometric = str(ds.get("PhotometricInterpretation")).upper()
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
    return np.ascontiguousarray(gray)  # uint8 on every path


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
