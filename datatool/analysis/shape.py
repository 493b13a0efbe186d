"""What ``datatool qa`` measures on label maps, and the rules that turn the measures into
flags. Pure functions of arrays and numbers: no database, no store.

Every rule returns the *severity* of what it found, or None when the label passes. Severity
says how far the evidence lies past its threshold, on one scale for every reason: 0 at the
threshold, 1 for a clear-cut case (a structure missing where the other label has it, a clean
swap, a broken relation by a whole structure's size), more for worse. ``datatool qa list``
ranks by it.

Conventions:

* A structure is *present* in a label when it has at least one pixel; a comparison label (the
  model's draft) must hold at least ``min_present_px`` pixels of it to count as present there.
* Components are 8-connected (as ``labels.masks`` counts them); a hole is a 4-connected
  region of other pixels (background or another structure) enclosed by the structure.
* The view is the union of the image's ultrasound regions when the pixels outside them were
  blanked, else the whole image; a structure *touches* the edge of the view when one of its
  pixels is outside the view, 8-adjacent to a pixel outside it, or on the image's border.
* Rows grow with depth (the probe lies on the top row): superficial is a smaller row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from datatool.core.protocol import Relation

EIGHT = np.ones((3, 3), dtype=bool)
MAD_TO_SD = 0.6745  # the modified z-score (Iglewicz & Hoaglin): 0.6745 (x - median) / MAD

# Defaults of the thresholds (stated in --help)
MODEL_DICE_BELOW = 0.5
RATER_DICE_BELOW = 0.7
SIZE_Z_ABOVE = 3.5
MAX_FLAG_SHARE = 0.25  # a rule that would flag more of the labels is a note, not flags
PAIR_Z_ABOVE = 2.0  # two raters' centroids apart, or sizes different, beyond the usual pairs
SWAP_MIN_SHARE = 0.5  # at least half of the structure lies on the other's different structure
SWAP_RATIO = 3.0  # ... and at least three times as much as on the other's same structure
MIN_HOLE_PX = 4  # holes smaller than this are brush noise
MIN_PRESENT_PX = 30  # a model's draft of fewer pixels does not count as present
MIN_SIZE_SAMPLE = 10  # labels of a structure needed before its size is judged
# a cine frame whose structure moves or changes size against its neighbouring frames more than
# this many times the loop's usual frame-to-frame change, and more than the floor
TEMPORAL_RATIO = 3.0
TEMPORAL_FLOOR_MM = 1.5  # the centroid's shift, the equivalent radius's change
TEMPORAL_FLOOR_PX = 12.0  # ... in pixels, for a loop without mm calibration
TEMPORAL_MIN_FRAMES = 3  # labelled frames of a loop before the loop is checked


Box = tuple[int, int, int, int]  # x0, y0, x1, y1, inclusive


# --------------------------------------------------------------------------- measures


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return array[y0 : y1 + 1, x0 : x1 + 1]


def cross_counts(
    binary: np.ndarray,
    other: np.ndarray,
    value: int,
    ratio: float = SWAP_RATIO,
    area: int | None = None,
) -> dict[int, int]:
    """Of the pixels where ``binary`` (the structure ``value`` of a label, ``area`` pixels when
    known) is True, how many hold each value in ``other`` (cropped alike): {value in other:
    pixels}, 0 for background. When so many hold ``value`` itself that no other value can hold
    ``ratio`` times more (no swap, see :func:`swap`), only that count is taken: {value: n}."""
    if area is None:
        area = int(np.count_nonzero(binary))
    own = int(np.count_nonzero(binary & (other == value)))
    if own * (1.0 + ratio) > area:
        return {value: own}
    counts = np.bincount(other[binary])
    return {int(v): int(n) for v, n in enumerate(counts) if n}


def extra_component_px(binary: np.ndarray, allowed: int) -> tuple[int, int]:
    """(components, pixels outside the ``allowed`` largest components) of a binary map."""
    from scipy import ndimage  # on first use: the report lists flags, measures none

    labelled, n = ndimage.label(binary, structure=EIGHT)
    if n <= allowed:
        return int(n), 0
    sizes = np.sort(np.bincount(labelled.ravel())[1:])[::-1]
    return int(n), int(sizes[allowed:].sum())


def holes(binary: np.ndarray, min_px: int = MIN_HOLE_PX) -> tuple[int, int]:
    """(holes of at least ``min_px`` pixels, their pixels): 4-connected regions of other pixels
    that the structure encloses (that do not reach the border of its bounding box, which
    ``binary`` is cropped to)."""
    if min(binary.shape) < 3:  # every gap of a box under 3 pixels across reaches its border
        return 0, 0
    # a hole needs a row that enters the structure twice: convex outlines have none
    starts = (binary[:, 1:] & ~binary[:, :-1]).view(np.uint8)
    entries = starts.sum(axis=1) + binary[:, 0]
    if int(entries.max()) < 2:
        return 0, 0
    from scipy import ndimage

    labelled, _ = ndimage.label(~binary)  # such a row has a gap: one region at least
    sizes = np.bincount(labelled.ravel())
    sizes[labelled[[0, -1], :]] = 0  # regions reaching the box's border are not enclosed
    sizes[labelled[:, [0, -1]]] = 0
    sizes[0] = 0
    big = sizes[sizes >= min_px]
    return int(big.size), int(big.sum())


def inside_view(box: Box, shape: tuple[int, int], regions: Sequence[dict] | None) -> bool:
    """True when a bounding box lies inside one region (or the image) with a pixel to spare on
    every side: then nothing in it touches the view's edge (no need to look at the pixels)."""
    x0, y0, x1, y1 = box
    rows, cols = shape
    if x0 < 1 or y0 < 1 or x1 > cols - 2 or y1 > rows - 2:
        return False
    if not regions:
        return True
    return any(r["x0"] < x0 and r["y0"] < y0 and x1 < r["x1"] and y1 < r["y1"] for r in regions)


def near_outside(shape: tuple[int, int], regions: Sequence[dict] | None) -> np.ndarray:
    """True where a pixel is outside the view or on its edge: outside every region box (when
    given), 8-adjacent to such a pixel, or on the image's border. Read-only (shared by images
    of the same geometry)."""
    key = tuple((r["x0"], r["y0"], r["x1"], r["y1"]) for r in regions or ())
    return _near_outside(tuple(shape), key)


@lru_cache(maxsize=16)
def _near_outside(shape: tuple[int, int], boxes: tuple[tuple[int, int, int, int], ...]):
    rows, cols = shape
    outside = np.ones((rows + 2, cols + 2), dtype=bool)  # the border counts as outside
    if boxes:
        for x0, y0, x1, y1 in boxes:
            outside[y0 + 1 : y1 + 2, x0 + 1 : x1 + 2] = False
    else:
        outside[1:-1, 1:-1] = False
    from scipy import ndimage

    near = ndimage.binary_dilation(outside, structure=EIGHT)[1:-1, 1:-1]
    near.flags.writeable = False
    return near


def edge_contact(binary: np.ndarray, near: np.ndarray) -> tuple[int, int]:
    """(pixels of the structure touching the view's edge, pixels on the structure's boundary);
    both arrays cropped alike."""
    touching = int(np.count_nonzero(binary & near))
    if not touching:
        return 0, 0
    from scipy import ndimage

    boundary = binary & ~ndimage.binary_erosion(binary, structure=EIGHT)  # border: 0
    return touching, int(np.count_nonzero(boundary))


def centroid(binary: np.ndarray, x0: int = 0, y0: int = 0) -> tuple[float, float]:
    """(x, y) of the structure's centroid in image pixels (``binary`` cropped at x0, y0)."""
    u8 = binary.view(np.uint8)  # sums of uint8 are faster than counts of bools
    rows = u8.sum(axis=1, dtype=np.int64)  # int64, not numpy's uint64: a faster @ below
    cols = u8.sum(axis=0, dtype=np.int64)
    area = int(rows.sum())
    return (
        float(cols @ np.arange(cols.size)) / area + x0,
        float(rows @ np.arange(rows.size)) / area + y0,
    )


# --------------------------------------------------------------------------- rules


def dice(area_a: int, area_b: int, overlap: int) -> float | None:
    """Dice of two regions; None when both are empty (as ``metrics.dice_iou``)."""
    if area_a == 0 and area_b == 0:
        return None
    return 2.0 * overlap / (area_a + area_b)


def disagreement(dice_value: float | None, threshold: float) -> float | None:
    """Severity of a Dice below ``threshold``: (threshold - Dice) / threshold, so a structure
    present in one label and absent in the other (Dice 0) scores 1."""
    if dice_value is None or dice_value >= threshold:  # no Dice is below a threshold <= 0
        return None
    return (threshold - dice_value) / threshold


@dataclass(frozen=True)
class Swap:
    other_value: int  # the comparison label's structure the label's structure lies on
    share_other: float  # share of the structure's pixels on it
    share_own: float  # share on the comparison label's same structure
    severity: float


def swap(
    counts: dict[int, int],
    value: int,
    area: int,
    structure_values: Sequence[int],
    min_share: float = SWAP_MIN_SHARE,
    ratio: float = SWAP_RATIO,
) -> Swap | None:
    """A structure (``value``, ``area`` pixels) lies on another structure of the comparison
    label (``counts`` from :func:`cross_counts`) at least ``min_share`` of its area and
    ``ratio`` times more than on its own. Severity: (share - min_share) / (1 - min_share),
    1 when all of it lies there."""
    if area <= 0:
        return None
    best, other_value = 0, None
    for v, n in counts.items():
        if v != value and n > best and v in structure_values:
            best, other_value = n, v
    if other_value is None:
        return None
    share, own = best / area, counts.get(value, 0) / area
    if share < min_share or share < ratio * own:
        return None
    return Swap(other_value, share, own, (share - min_share) / (1.0 - min_share))


def components_severity(extra_px: int, area: int) -> float:
    """The share of the structure's area outside the components it may have."""
    return extra_px / area if area else 0.0


def holes_severity(hole_px: int, area: int) -> float:
    """The holes' share of the filled structure."""
    return hole_px / (area + hole_px) if area + hole_px else 0.0


def edge_severity(touching_px: int, boundary_px: int) -> float:
    """The share of the structure's boundary on the view's edge."""
    return min(1.0, touching_px / boundary_px) if boundary_px else 1.0


@dataclass(frozen=True)
class Spread:
    """A structure's usual size: median and MAD of its areas over the workspace."""

    n: int
    median: float
    mad: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread | None:
        """None when there are fewer than MIN_SIZE_SAMPLE values or they do not vary."""
        arr = np.asarray([v for v in values if v is not None and v > 0])
        if arr.size < MIN_SIZE_SAMPLE:
            return None
        median = float(np.median(arr))
        mad = float(np.median(np.abs(arr - median)))
        return cls(int(arr.size), median, mad) if mad > 0 else None

    def z(self, value: float) -> float:
        """The robust (modified) z-score: 0.6745 (value - median) / MAD."""
        return MAD_TO_SD * (value - self.median) / self.mad


def size_severity(z: float, threshold: float) -> float | None:
    """(|z| - threshold) / threshold beyond the threshold, else None."""
    if abs(z) <= threshold or threshold <= 0:
        return None
    return (abs(z) - threshold) / threshold


def equivalent_radius(area: float) -> float:
    """The radius of a disc of this area."""
    return math.sqrt(max(area, 0.0) / math.pi)


@dataclass(frozen=True)
class Broken:
    """A relation broken on centroids: by how much (pixels, mm where calibrated) and how
    badly (that distance over the two structures' equivalent radii together)."""

    wrong_by_px: float
    wrong_by_mm: float | None
    severity: float


def relation_check(
    relation: Relation,
    centre: tuple[float, float],
    other_centre: tuple[float, float],
    areas_px: tuple[int, int],
    lateral_side: str | None,
    mm_per_px: tuple[float | None, float | None] = (None, None),
) -> Broken | None:
    """Check ``relation`` on two centroids (x, y). ``lateral_side`` is the image side
    ("left" or "right") showing the patient's lateral side; a lateral/medial relation without
    it is not checked (None)."""
    (x, y), (ox, oy) = centre, other_centre
    kind = relation.relation
    if kind in ("superficial to", "deep to"):
        ahead = oy - y if kind == "superficial to" else y - oy  # > 0 when the relation holds
        mm = mm_per_px[1]
    else:
        if lateral_side not in ("left", "right"):
            return None
        lateral_dx = (ox - x) if lateral_side == "left" else (x - ox)  # > 0: x more lateral
        ahead = lateral_dx if kind == "lateral to" else -lateral_dx
        mm = mm_per_px[0]
    if ahead >= 0:
        return None
    wrong = -ahead
    scale = equivalent_radius(areas_px[0]) + equivalent_radius(areas_px[1])
    return Broken(wrong, None if mm is None else wrong * mm, wrong / scale if scale else 1.0)
