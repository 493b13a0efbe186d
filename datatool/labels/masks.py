"""Label maps as arrays: validation against a protocol and per-structure statistics.

A label map is a 2D uint8 array of the image's size whose values are 0 (background) or the
protocol's label values. Pure functions, no database.
"""

from __future__ import annotations

import numpy as np

from datatool.core.protocol import Protocol

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
MAX_VALUES_SHOWN = 5  # unknown label values named in a rejection


class BadLabel(Exception):
    """A label map that cannot be stored; ``str()`` is the one-line reason."""


def _unknown_runs(protocol: Protocol) -> list[tuple[int, int]]:
    """The runs lo..hi of values 1..255 that are no label of the protocol."""
    known, runs, lo = set(protocol.values), [], None
    for v in range(1, 257):
        if v <= 255 and v not in known:
            lo = v if lo is None else lo
        elif lo is not None:
            runs.append((lo, v - 1))
            lo = None
    return runs


def _unknown_error(mask: np.ndarray, protocol: Protocol) -> BadLabel:
    values = np.unique(mask)
    unknown = [int(v) for v in values if v != 0 and int(v) not in protocol.values]
    unknown = unknown or [int(v) for v in values]
    # a few values say what is wrong; all of them would echo the file's content
    shown = f"{unknown[:MAX_VALUES_SHOWN]}"
    if len(unknown) > MAX_VALUES_SHOWN:
        shown = f"{shown[:-1]}, ...] ({len(unknown)} distinct)"
    return BadLabel(
        f"unknown label value(s) {shown} (protocol {protocol.name} knows {list(protocol.values)})"
    )


def validate_mask(
    mask: np.ndarray, protocol: Protocol, shape: tuple[int, int], allow_empty: bool = False
) -> np.ndarray:
    """Check size and values; returns the mask as 2D uint8. A few comparisons over the map
    (one per run of unknown values), not a sort of its values."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and 1 in mask.shape:  # W x H x 1 as ITK-SNAP saves 2D segmentations
        mask = mask.reshape([n for n in mask.shape if n != 1] or [1])
    if mask.ndim != 2:
        raise BadLabel(f"label map is {mask.ndim}-D {mask.shape}, expected a 2D map")
    if tuple(mask.shape) != tuple(shape):
        raise BadLabel(
            f"size mismatch: label map is {mask.shape[1]}x{mask.shape[0]}, "
            f"the image is {shape[1]}x{shape[0]} (width x height)"
        )
    if mask.dtype != np.uint8:
        if mask.dtype.kind == "f" and not np.all(np.mod(mask, 1) == 0):
            raise BadLabel("label map holds fractional values, not labels")
        if mask.min(initial=0) < 0 or mask.max(initial=0) > 255:
            raise _unknown_error(mask, protocol)
        mask = mask.astype(np.uint8)
    for lo, hi in _unknown_runs(protocol):
        if ((mask == lo) if lo == hi else ((mask >= lo) & (mask <= hi))).any():
            raise _unknown_error(mask, protocol)
    if not allow_empty and not mask.any():
        raise BadLabel("label map is empty (nothing labelled); pass --allow-empty to keep it")
    return mask


def structure_stats(
    mask: np.ndarray, protocol: Protocol, mm_per_px_x: float | None, mm_per_px_y: float | None
) -> list[dict]:
    """One dict per protocol structure: area in px and mm², 8-connected components, bbox.
    Components are labelled inside the structure's bounding box only."""
    px_area = mm_per_px_x * mm_per_px_y if mm_per_px_x and mm_per_px_y else None
    out = []
    for s in protocol.structures:
        binary = mask == s.value
        rows = np.flatnonzero(binary.any(axis=1))
        row = {
            "structure": s.name,
            "value": s.value,
            "area_px": 0,
            "area_mm2": None if px_area is None else 0.0,
            "components": 0,
            "x0": None,
            "y0": None,
            "x1": None,
            "y1": None,
        }
        if rows.size:
            y0, y1 = int(rows[0]), int(rows[-1])
            band = binary[y0 : y1 + 1]
            cols = np.flatnonzero(band.any(axis=0))
            x0, x1 = int(cols[0]), int(cols[-1])
            box = band[:, x0 : x1 + 1]
            area = int(np.count_nonzero(box))
            _, row["components"] = _ndimage().label(box, structure=EIGHT_CONNECTED)
            row.update(
                area_px=area,
                area_mm2=None if px_area is None else area * px_area,
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
            )
        out.append(row)
    return out


def _ndimage():
    """scipy.ndimage, imported on first use: a command that never measures a label (status,
    split check, images) does not pay its 0.15 s import."""
    from scipy import ndimage

    return ndimage
