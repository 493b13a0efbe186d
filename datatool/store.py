"""A content-addressed store for derived images and masks.

Files are named by the SHA-256 of their bytes (``store/ab/cdef...png``), written atomically,
and never changed once written: putting the same bytes twice is a no-op, and two processes
putting the same object at once both succeed.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import write_bytes_atomic

# zlib level 1: lossless like any PNG, several times faster to write than the default 6.
PNG_COMPRESS_LEVEL = 1


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)

    def path_for(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest[2:]}.png"

    def put_bytes(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        if not path.exists():
            write_bytes_atomic(path, data)
        return digest

    def put_array(self, array: np.ndarray) -> str:
        """Store a 2D uint8 array as a lossless PNG; returns its content hash."""
        return self.put_bytes(encode_png(array))

    def get_array(self, digest: str) -> np.ndarray:
        path = self.path_for(digest)
        if not path.exists():
            raise FileNotFoundError(f"store object {digest} is missing ({path})")
        with Image.open(path) as img:
            return np.asarray(img)

    def __contains__(self, digest: str) -> bool:
        return self.path_for(digest).exists()


def encode_png(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"store holds 2D uint8 arrays, got {array.dtype} {array.shape}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()
