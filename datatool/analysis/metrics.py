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
