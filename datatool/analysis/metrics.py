"""Agreement and overlap measures: pure functions of arrays and tables.

Conventions, stated once:
- Dice and IoU of one structure between two label maps: when both maps leave the structure
  empty, the pair is *excluded* (counted as "both absent", not as 1 and not as 0/0); when one
  map has it and the other does not, Dice = IoU = 0.
- ICC(2,1): two-way random effects, absolute agreement, single measure (Shrout & Fleiss
  ICC(2,1), McGraw & Wong ICC(A,1)), computed by pingouin. Ratings are complete by
  construction (a structure a rater left empty has area 0, a real rating), so no target is
  dropped; duplicate (target, rater) rows are an error, never averaged.
- Descriptives: mean ± SD (sample SD, ddof=1) and median (P25, P75), linear interpolation.
  The study's convention picks one: mean ± SD for normal data, otherwise median (P25, P75);
  :func:`normality` decides (Shapiro-Wilk at alpha 0.05; untested below 3 values).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd


def overlap(a: np.ndarray, b: np.ndarray, value: int, box: tuple[int, int, int, int] | None) -> int:
    """Pixels where both maps hold ``value``; ``box`` (x0, y0, x1, y1, inclusive) limits the
    count to where the two structures' bounding boxes meet (None: nowhere, so 0)."""
    if box is None:
        return 0
    x0, y0, x1, y1 = box
    sa = a[y0 : y1 + 1, x0 : x1 + 1]
    sb = b[y0 : y1 + 1, x0 : x1 + 1]
    return int(np.count_nonzero((sa == value) & (sb == value)))


def box_intersection(a: tuple | None, b: tuple | None) -> tuple[int, int, int, int] | None:
    if a is None or b is None:
        return None
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x0 <= x1 and y0 <= y1 else None


def dice_iou(area_a: int, area_b: int, inter: int) -> tuple[float, float] | None:
    """(Dice, IoU) of two regions, or None when both are empty (excluded by convention)."""
    if area_a == 0 and area_b == 0:
        return None
    union = area_a + area_b - inter
    return 2.0 * inter / (area_a + area_b), inter / union


def describe(values) -> dict:
    """n, mean, SD, median, P25, P75, min, max of the finite values (None when n == 0)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {
            "n": 0,
            "mean": None,
            "sd": None,
            "median": None,
            "p25": None,
            "p75": None,
            "min": None,
            "max": None,
        }
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "sd": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "median": float(np.median(arr)),
        "p25": float(np.percentile(arr, 25)),
        "p75": float(np.percentile(arr, 75)),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }


NORMAL_ALPHA = 0.05


def normality(values, alpha: float = NORMAL_ALPHA) -> dict:
    """Shapiro-Wilk test of the finite values: ``test``, ``n``, ``w``, ``p`` and ``normal``
    (p >= alpha). ``normal`` is None, and w and p too, when it cannot be tested: fewer than 3
    values, or all equal."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    out: dict = {"test": "Shapiro-Wilk", "n": int(arr.size), "w": None, "p": None, "normal": None}
    if arr.size < 3 or float(np.ptp(arr)) == 0.0:
        return out
    from scipy import stats

    with warnings.catch_warnings():  # n > 5000: p may be inaccurate (said by scipy)
        warnings.simplefilter("ignore")
        w, p = stats.shapiro(arr)
    out.update(w=float(w), p=float(p), normal=bool(p >= alpha))
    return out


@dataclass
class ICC:
    icc: float
    ci_low: float | None
    ci_high: float | None
    f: float
    df1: int
    df2: int
    p: float
    n_targets: int
    n_raters: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


ICC21_LABELS = ("ICC2", "ICC(A,1)")  # pingouin < 0.7 and >= 0.7


def icc21(
    long: pd.DataFrame, targets: str = "target", raters: str = "rater", ratings: str = "rating"
) -> ICC:
    """ICC(2,1) with 95 % CI, F, df and p from pingouin, guarded against its pitfalls."""
    import pingouin

    if long.duplicated([targets, raters]).any():
        dups = long[long.duplicated([targets, raters], keep=False)][[targets, raters]]
        raise ValueError(f"duplicate ratings for (target, rater): {dups.head(3).values.tolist()}")
    if long[ratings].isna().any():
        raise ValueError("missing ratings: every target needs a rating from every rater")
    n_t, n_r = long[targets].nunique(), long[raters].nunique()
    if n_t < 3 or n_r < 2:
        raise ValueError(f"ICC needs at least 3 targets and 2 raters, got {n_t} and {n_r}")
    old = pingouin.options.get("round.column.CI95")
    pingouin.options["round.column.CI95"] = None  # the CI unrounded
    try:
        with warnings.catch_warnings():  # perfect agreement divides by zero inside; handled
            warnings.simplefilter("ignore")
            table = pingouin.intraclass_corr(
                data=long, targets=targets, raters=raters, ratings=ratings
            )
    finally:
        pingouin.options["round.column.CI95"] = old
    row = table[table["Type"].isin(ICC21_LABELS)]
    if row.empty and "Description" in table:
        row = table[table["Description"].str.contains("Single random raters", case=False)]
    if len(row) != 1:
        raise RuntimeError(f"pingouin's ICC table has no ICC(2,1) row: {table['Type'].tolist()}")
    row = row.iloc[0]
    ci = row.get("CI95", row.get("CI95%"))
    low, high = (float(ci[0]), float(ci[1])) if ci is not None else (math.nan, math.nan)
    value = float(row["ICC"])
    return ICC(
        icc=value,
        ci_low=None if math.isnan(low) else low,
        ci_high=None if math.isnan(high) else high,
        f=float(row["F"]),
        df1=int(row["df1"]),
        df2=int(row["df2"]),
        p=float(row["pval"]),
        n_targets=int(n_t),
        n_raters=int(n_r),
    )


def bland_altman(a, b) -> dict:
    """Bias (mean of a - b) and 95 % limits of agreement (bias ± 1.96 SD)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = a - b
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    return {
        "n": int(diff.size),
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
    }


# --------------------------------------------------------------------------- surface distances

NSD_TOLERANCE_MM = 2.0  # the default tolerance of the normalised surface distance
SURFACE_MEASURES = ("hd95", "assd", "nsd")
BOTH_EMPTY = "both empty: no surface to compare"
ONE_EMPTY = "one empty: no distance to an absent surface"


@dataclass(frozen=True)
class Surface:
    """Boundary agreement of one structure in two label maps, in the spacing's unit (mm).

    ``hd95``: the 95th-percentile Hausdorff distance, the larger of the two directed 95th
    percentiles (each border pixel of one map to the nearest border pixel of the other;
    Metrics Reloaded, MONAI). ``assd``: the average symmetric surface distance, the mean of
    all those distances in both directions pooled. ``nsd``: the normalised surface distance at
    ``tolerance``: the share of both borders' pixels within ``tolerance`` of the other border
    (1: every boundary pixel within tolerance). All three are NaN with ``empty`` saying why
    when either map leaves the structure empty (Metrics Reloaded's stated NaN cases)."""

    hd95: float
    assd: float
    nsd: float
    tolerance: float
    empty: str | None = None  # None, BOTH_EMPTY or ONE_EMPTY


def border(mask: np.ndarray) -> np.ndarray:
    """The mask's border pixels: in the mask, with a 4-neighbour outside it (the image's edge
    counts as outside)."""
    mask = np.asarray(mask, bool)
    p = np.pad(mask, 1)  # the image's edge: outside
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~inner


def surface(
    a: np.ndarray,
    b: np.ndarray,
    spacing: tuple[float, float] = (1.0, 1.0),
    tolerance: float = NSD_TOLERANCE_MM,
) -> Surface:
    """HD95, ASSD and NSD between two binary masks (2D, same shape); ``spacing`` is (row,
    column) size of a pixel, e.g. (mm per pixel in y, mm per pixel in x), which may differ.
    Distances are Euclidean between border pixels' centres (a k-d tree of scipy's finds each
    border pixel's nearest on the other border)."""
    from scipy.spatial import cKDTree

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"two 2D masks of one shape are needed, got {a.shape} and {b.shape}")
    nan = math.nan
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a or not has_b:
        why = BOTH_EMPTY if not has_a and not has_b else ONE_EMPTY
        return Surface(nan, nan, nan, tolerance, why)
    # only the union's bounding box matters; one background pixel round it (or the image's
    # edge, which counts as outside) keeps the borders as they are in the whole image
    rows, cols = np.nonzero(a | b)
    r0, r1 = max(int(rows.min()) - 1, 0), int(rows.max()) + 2
    c0, c1 = max(int(cols.min()) - 1, 0), int(cols.max()) + 2
    scale = np.array([float(spacing[0]), float(spacing[1])])
    pa = np.argwhere(border(a[r0:r1, c0:c1])) * scale
    pb = np.argwhere(border(b[r0:r1, c0:c1])) * scale
    d_ab = cKDTree(pb).query(pa)[0]
    d_ba = cKDTree(pa).query(pb)[0]
    both = np.concatenate([d_ab, d_ba])
    return Surface(
        hd95=float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))),
        assd=float(both.mean()),
        nsd=float(np.count_nonzero(both <= tolerance) / both.size),
        tolerance=tolerance,
    )


def describe_surfaces(values: list[Surface]) -> dict:
    """Per measure, ``describe`` of the defined values; and how many were both or one empty."""
    out: dict = {
        m: describe([getattr(v, m) for v in values if v.empty is None]) for m in SURFACE_MEASURES
    }
    out["both_empty"] = sum(v.empty == BOTH_EMPTY for v in values)
    out["one_empty"] = sum(v.empty == ONE_EMPTY for v in values)
    return out
