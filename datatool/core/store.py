"""A content-addressed store for derived images and masks.

Objects are 2D uint8 arrays saved as lossless PNG files named by the SHA-256 of their
*pixels* (with their shape), not of the encoded file: the address of an image is the same on
every machine whatever zlib version wrote it. Files are written atomically and never changed
once written: putting the same pixels twice is a no-op, and two processes putting the same
object at once both succeed.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from datatool.core.atomic import PRIVATE_FILE, make_private_dirs, write_bytes_atomic
from datatool.core.errors import StoreObjectMissing

try:  # Intel ISA-L's deflate: a zlib stream, four times faster than zlib at level 1
    from isal import isal_zlib as _deflate

    def _compress(data) -> bytes:
        return _deflate.compress(data, 1)

    _decompress = _deflate.decompress
except ImportError:  # pragma: no cover - isal is a dependency; plain zlib still works

    def _compress(data) -> bytes:
        packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        return packer.compress(data) + packer.flush()

    _decompress = zlib.decompress

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._folders: set[str] = set()  # fan-out folders known to exist

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest[2:]}.png"

    def put_array(self, array: np.ndarray, digest: str | None = None) -> str:
        """Store a 2D uint8 array as a lossless PNG; returns its content hash (``digest``:
        the array's :func:`pixel_digest` where the caller has it already)."""
        if digest is None:
            digest = pixel_digest(array)
        else:
            _check(array)
        path = self.path_for(digest)
        if not path.exists():
            if digest[:2] not in self._folders:
                make_private_dirs(path.parent)
                self._folders.add(digest[:2])
            write_bytes_atomic(path, encode_png(array), mode=PRIVATE_FILE, make_parents=False)
        return digest

    def get_array(self, digest: str) -> np.ndarray:
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreObjectMissing(_missing(f"store object {digest}", path)) from None
        return decode_png(data)

    def put_blob(self, data: bytes) -> str:
        """Store any bytes (a model checkpoint) by their SHA-256; returns the hash."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            make_private_dirs(path.parent)
            write_bytes_atomic(path, data, mode=PRIVATE_FILE, make_parents=False)
        return digest

    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / f"{digest[2:]}.bin"

    def get_blob(self, digest: str) -> bytes:
        path = self.blob_path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise StoreObjectMissing(_missing(f"store blob {digest}", path)) from None

    def verify(self, digest: str) -> bool:
        """True when the object's pixels still hash to its name."""
        return pixel_digest(self.get_array(digest)) == digest

    def __contains__(self, digest: str) -> bool:
        return self.path_for(digest).exists()


def _missing(what: str, path: Path) -> str:
    return (
        f"the workspace is damaged: {what} is missing ({path}); restore the workspace's "
        ".datatool/store from your backup"
    )


def pixel_digest(array: np.ndarray) -> str:
    _check(array)
    h = hashlib.sha256(f"u8:{array.shape[0]}x{array.shape[1]}:".encode())
    h.update(np.ascontiguousarray(array).data)
    return h.hexdigest()


def _check(array: np.ndarray) -> None:
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"the store holds 2D uint8 arrays, got {array.dtype} {array.shape}")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(array: np.ndarray) -> bytes:
    """8-bit grayscale PNG, rows unfiltered, deflate level 1 (ISA-L): several times faster than
    Pillow's fastest setting, and ultrasound's black background still packs well. Any PNG
    reader opens it."""
    _check(array)
    rows, cols = array.shape
    raw = np.zeros((rows, cols + 1), np.uint8)  # a 0 (no filter) byte before each row
    raw[:, 1:] = array
    idat = _compress(raw.data)
    header = struct.pack(">IIBBBBB", cols, rows, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def decode_png_fast(data: bytes) -> np.ndarray | None:
    """The layout ``encode_png`` writes (8-bit gray, one IDAT, unfiltered rows, IEND right
    after), read directly; None for any other PNG."""
    if data[:8] != _SIGNATURE or data[12:16] != b"IHDR" or data[37:41] != b"IDAT":
        return None
    cols, rows, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    (size,) = struct.unpack(">I", data[33:37])
    iend = 41 + size + 4  # the IEND chunk starts after the IDAT data and its CRC
    if depth != 8 or colour != 0 or interlace != 0 or data[iend + 4 : iend + 8] != b"IEND":
        return None
    raw = np.frombuffer(_decompress(data[41 : 41 + size]), np.uint8)
    if raw.size != rows * (cols + 1):
        return None
    raw = raw.reshape(rows, cols + 1)
    if raw[:, 0].any():  # a filtered row
        return None
    return raw[:, 1:].copy()


def decode_png(data: bytes) -> np.ndarray:
    """Read a PNG as a 2D uint8 array: the layout ``encode_png`` writes directly (about twice
    as fast), any other through Pillow."""
    fast = decode_png_fast(data)
    if fast is not None:
        return fast
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L") if img.mode not in ("L", "P") else img)
