"""Label maps as arrays: validation against a protocol and per-structure statistics.

A label map is a 2D uint8 array of the image's size whose values are 0 (background) or the
protocol's label values. Pure functions, no database.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .protocol import Protocol

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class BadLabel(Exception):
    """A label map that cannot be stored; ``str()`` is the one-line reason."""


def validate_mask(mask: np.ndarray, protocol: Protocol, shape: tuple[int, int],
                  allow_empty: bool = False) -> np.ndarray:
    """Check size and values; returns the mask as 2D uint8."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and 1 in mask.shape:  # W x H x 1 as ITK-SNAP saves 2D segmentations
        mask = mask.reshape([n for n in mask.shape if n != 1] or [1])
    if mask.ndim != 2:
        raise BadLabel(f"label map is {mask.ndim}-D {mask.shape}, expected a 2D map")
    if tuple(mask.shape) != tuple(shape):
        raise BadLabel(f"size mismatch: label map is {mask.shape[1]}x{mask.shape[0]}, "
                       f"the image is {shape[1]}x{shape[0]} (width x height)")
    if mask.dtype.kind == "f":
        if not np.all(np.mod(mask, 1) == 0):
            raise BadLabel("label map holds fractional values, not labels")
    values = np.unique(mask)
    unknown = [int(v) for v in values if v != 0 and int(v) not in protocol.values]
    if unknown or (values.size and (values.min() < 0 or values.max() > 255)):
        raise BadLabel(f"unknown label value(s) {unknown or values.tolist()} "
                       f"(protocol {protocol.name} knows {list(protocol.values)})")
    if not allow_empty and not np.any(values != 0):
        raise BadLabel("label map is empty (nothing labelled); pass --allow-empty to keep it")
    return mask.astype(np.uint8, copy=False)


def structure_stats(mask: np.ndarray, protocol: Protocol, mm_per_px_x: float | None,
                    mm_per_px_y: float | None) -> list[dict]:
    """One dict per protocol structure: area in px and mm², 8-connected components, bbox."""
    px_area = mm_per_px_x * mm_per_px_y if mm_per_px_x and mm_per_px_y else None
    counts = np.bincount(mask.ravel(), minlength=256)
    out = []
    for s in protocol.structures:
        area = int(counts[s.value])
        row = {"structure": s.name, "value": s.value, "area_px": area,
               "area_mm2": None if px_area is None else area * px_area,
               "components": 0, "x0": None, "y0": None, "x1": None, "y1": None}
        if area:
            binary = mask == s.value
            _, row["components"] = ndimage.label(binary, structure=EIGHT_CONNECTED)
            ys = np.flatnonzero(binary.any(axis=1))
            xs = np.flatnonzero(binary.any(axis=0))
            row.update(x0=int(xs[0]), y0=int(ys[0]), x1=int(xs[-1]), y1=int(ys[-1]))
        out.append(row)
    return out
