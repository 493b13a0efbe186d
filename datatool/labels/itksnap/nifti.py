"""Plain NIfTI label maps decoded without ITK, once ITK has read one with the same header.

A rater's folder holds hundreds of maps saved by the same tool for images of the same size:
their headers (the bytes before the voxel data: size, data type, spacing, qform and sform,
extensions) are byte for byte the same, and only the voxels differ. ITK works out a map's
geometry (direction, spacing, origin) and its pixel type from those bytes alone, so the
first map of a header is read by ITK as always and what ITK made of the header is kept
(:class:`Geometry`, :func:`remember`); every later map whose header is the very same bytes
has its voxels decoded here (gunzip, then the values as the header lays them out, x
fastest) and gets the geometry ITK gave the first: the same array and geometry as ITK's,
about a fifth of the time (``bench/sync.py``).

Only what ITK would read as its raw values is decoded here: one value per voxel of an
integer type, no scaling (``scl_slope`` 0 or 1, ``scl_inter`` 0), at most 3 dimensions, the
voxels after the header's 352 bytes; any other header, a file whose data does not hold
every voxel, or gzip data that is not one plain member, goes to ITK (:func:`fast_read`
returns None), which reads it or says why not.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

try:  # ISA-L's inflate: about 1.5x zlib's on a label map's long runs
    from isal import isal_zlib
    from isal.igzip_lib import IsalError

    # (isal's stubs call IsalError an instance; it is the class its inflaters raise)
    _GZIP_ERRORS: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], IsalError))

    def _inflater():
        return isal_zlib.decompressobj(31)

except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works
    _GZIP_ERRORS = (zlib.error,)

    def _inflater():
        return zlib.decompressobj(31)


# NIfTI-1 integer data types -> numpy (one value per voxel; ITK keeps them as they are)
_INTEGER_TYPES = {
    2: "u1",
    4: "i2",
    8: "i4",
    256: "i1",
    512: "u2",
    768: "u4",
    1024: "i8",
    1280: "u8",
}
_KEPT = 64  # headers remembered (a sync meets a handful: one per tool and image size)


@dataclass(frozen=True)
class Geometry:
    """What ITK made of a map's header: dimension, size (x first), direction (row-major),
    spacing and origin, and the numpy type of the array ITK returned."""

    dimension: int
    size: tuple[int, ...]
    direction: tuple[float, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    dtype: str

    @classmethod
    def of(cls, image, dtype: np.dtype | str) -> Geometry:
        """The geometry of a SimpleITK image (and the type of its array)."""
        return cls(
            image.GetDimension(),
            tuple(int(n) for n in image.GetSize()),
            tuple(float(d) for d in image.GetDirection()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            np.dtype(dtype).str,
        )


@dataclass(frozen=True)
class _Layout:
    """Where and how a plain NIfTI-1 file's voxels lie: after ``offset`` bytes, ``count``
    values of ``dtype`` (with its byte order)."""

    offset: int
    count: int
    dtype: str


_lock = threading.Lock()
_known: OrderedDict[bytes, Geometry] = OrderedDict()


def _layout(header: bytes) -> _Layout | None:
    """The voxel layout of a NIfTI-1 header that this module decodes; None for any other."""
    if len(header) < 348:
        return None
    for order in "<>":
        (size,) = struct.unpack(order + "i", header[:4])
        if size != 348 or header[344:348] != b"n+1\x00":
            continue
        dims = struct.unpack(order + "8h", header[40:56])
        (datatype,) = struct.unpack(order + "h", header[70:72])
        slope, inter = struct.unpack(order + "2f", header[112:120])
        (offset,) = struct.unpack(order + "f", header[108:112])
        kind = _INTEGER_TYPES.get(datatype)
        if kind is None or not 2 <= dims[0] <= 3 or slope not in (0.0, 1.0) or inter != 0.0:
            return None
        shape = dims[1 : dims[0] + 1]
        # an offset inside the 352 bytes of header and extender is read differently by
        # different readers: ITK's to say
        if any(d < 1 for d in shape) or offset != int(offset) or offset < 352:
            return None
        return _Layout(int(offset), int(np.prod(shape)), order + kind)
    return None


def _inflated(raw: bytes) -> bytes | None:
    """A file's bytes, gunzipped when they are gzip data; None when the gzip data is not one
    whole member (ITK reads what this does not)."""
    if raw[:2] != b"\x1f\x8b":
        return raw
    inflater = _inflater()
    try:
        data = inflater.decompress(raw)
    except _GZIP_ERRORS:
        return None
    return data if inflater.eof and not inflater.unused_data else None


def _header(path: Path) -> tuple[bytes, _Layout] | None:
    """The bytes before a plain map's voxels (its header and extensions) and its layout;
    None for any other file."""
    return _header_of(path.read_bytes())


def _header_of(raw: bytes) -> tuple[bytes, _Layout] | None:
    """:func:`_header` of a file's bytes, inflating no more of gzip data than the header."""
    if raw[:2] != b"\x1f\x8b":
        layout = _layout(raw[:348])
        return None if layout is None else (raw[: layout.offset], layout)
    inflater = _inflater()
    try:
        head = inflater.decompress(raw, 348)
        layout = _layout(head)
        if layout is None:
            return None
        head += inflater.decompress(inflater.unconsumed_tail, layout.offset - len(head))
    except _GZIP_ERRORS:
        return None
    return (head, layout) if len(head) == layout.offset else None


def fast_read(path: Path) -> tuple[np.ndarray, Geometry] | None:
    """A plain NIfTI map's array (as ITK's ``GetArrayFromImage``: slowest axis first) and
    geometry, when ITK has read a map with the very same header bytes; else None. Only the
    header is inflated to look it up: a map of a header never seen costs little more."""
    if not _known:
        return None
    raw = path.read_bytes()
    found = _header_of(raw)
    if found is None:
        return None
    head, layout = found
    with _lock:
        geometry = _known.get(head)
    if geometry is None or np.dtype(layout.dtype).newbyteorder("=") != np.dtype(geometry.dtype):
        return None
    if int(np.prod(geometry.size)) != layout.count:
        return None
    data = _inflated(raw)
    if data is None or len(data) < layout.offset + layout.count * np.dtype(layout.dtype).itemsize:
        return None  # short data, or more than one gzip member: ITK's reader says
    values = np.frombuffer(data, layout.dtype, layout.count, layout.offset)
    return values.astype(geometry.dtype).reshape(tuple(reversed(geometry.size))), geometry


def remember(path: Path, geometry: Geometry) -> None:
    """Keep what ITK made of ``path``'s header (after ITK read the whole file): a later map
    with the same header bytes is decoded by :func:`fast_read`."""
    try:
        found = _header(path)
    except OSError:
        return
    if found is None:
        return
    with _lock:
        _known[found[0]] = geometry
        _known.move_to_end(found[0])
        while len(_known) > _KEPT:
            _known.popitem(last=False)


def forget() -> None:
    """Forget every header (tests)."""
    with _lock:
        _known.clear()


__all__ = ["Geometry", "fast_read", "forget", "remember"]
