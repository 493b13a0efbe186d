"""Agreement and overlap measures: pure functions of arrays and tables.

Conventions, stated once:
- Dice and IoU of one structure between two label maps: when both maps leave the structure
  empty, the pair is *excluded* (counted as "both absent", not as 1 and not as 0/0); when one
  map has it and the other does not, Dice = IoU = 0.
- ICC(2,1): two-way random effects, absolute agreement, single measure (Shrout & Fleiss
  ICC(2,1), McGraw & Wong ICC(A,1)), computed from the ANOVA's mean squares (the same
  figures as pingouin's, which the tests hold it to). Ratings are complete by
  construction (a structure a rater left empty has area 0, a real rating), so no target is
  dropped; duplicate (target, rater) rows are an error, never averaged.
- Descriptives: mean ± SD (sample SD, ddof=1) and median (P25, P75), linear interpolation.
  The study's convention picks one: mean ± SD for normal data, otherwise median (P25, P75);
  :func:`normality` decides (Shapiro-Wilk at alpha 0.05, scipy's figures; untested below 3
  values).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
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
    w, p = shapiro_wilk(arr)
    out.update(w=w, p=p, normal=bool(p >= alpha))
    return out


def _poly(coefficients: tuple[float, ...], x: float) -> float:
    """c0 + c1 x + c2 x^2 + ..."""
    return sum(c * x**i for i, c in enumerate(coefficients))


# Royston (1992; 1995, algorithm AS R94): the approximations of the last two coefficients and
# of the normalising transform of W (for n <= 11 and n >= 12)
_SW_AN = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_SW_AN1 = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)
_SW_SMALL_GAMMA = (-2.273, 0.459)
_SW_SMALL_MEAN = (0.5440, -0.39978, 0.025054, -6.714e-4)
_SW_SMALL_LOG_SD = (1.3822, -0.77857, 0.062767, -0.0020322)
_SW_MEAN = (-1.5861, -0.31082, -0.083751, 0.0038915)
_SW_LOG_SD = (-0.4803, -0.082676, 0.0030302)


def shapiro_wilk_coefficients(n: int) -> np.ndarray:
    """The n coefficients of Shapiro-Wilk's W (Royston's approximation, AS R94): the expected
    normal order statistics (Blom's scores), normalised, the two outermost on each side by
    Royston's polynomials in 1 / sqrt(n). Antisymmetric, their squares sum to 1."""
    if n == 3:
        return np.array([-math.sqrt(0.5), 0.0, math.sqrt(0.5)])
    unit = NormalDist()
    m = np.array([unit.inv_cdf((i - 0.375) / (n + 0.25)) for i in range(1, n + 1)])
    mm = float(m @ m)
    u = 1 / math.sqrt(n)
    a_n = m[-1] / math.sqrt(mm) + _poly(_SW_AN, u)
    if n <= 5:
        a = m / math.sqrt((mm - 2 * m[-1] ** 2) / (1 - 2 * a_n**2))
        a[[0, -1]] = -a_n, a_n
        return a
    a_n1 = m[-2] / math.sqrt(mm) + _poly(_SW_AN1, u)
    a = m / math.sqrt((mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * a_n**2 - 2 * a_n1**2))
    a[[0, 1, -2, -1]] = -a_n, -a_n1, a_n1, a_n
    return a


def shapiro_wilk(values) -> tuple[float, float]:
    """Shapiro-Wilk's W and its p-value by Royston's approximations (AS R94, what scipy's
    ``stats.shapiro`` computes: ``tests/analysis/test_stats_oracles.py`` compares them), in
    numpy and the standard library: importing scipy.stats costs a command 0.8 s. At least 3
    values, not all equal; beyond 5000 the p-value is an extrapolation (scipy warns so)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    if n < 3 or x[-1] == x[0]:
        raise ValueError("Shapiro-Wilk needs at least 3 values, not all equal")
    centred = x - x.mean()
    a = shapiro_wilk_coefficients(n)
    w = min(float(a @ x) ** 2 / float(centred @ centred), 1.0)  # above 1 by rounding only
    if n == 3:  # W's exact distribution for three values
        return w, max(6 / math.pi * (math.asin(math.sqrt(w)) - math.asin(math.sqrt(0.75))), 0.0)
    # Royston's normalising transform of log(1 - W); W = 1 (the sample shaped exactly like
    # the coefficients) is as normal as it gets: p = 1
    gap = math.log1p(-w) if w < 1 else -math.inf
    if n <= 11:  # here log(1 - W) < gamma always (W >= 0.63 for 4 values; gamma > 0 from 5)
        gamma = _poly(_SW_SMALL_GAMMA, n)
        mean, sd = _poly(_SW_SMALL_MEAN, n), math.exp(_poly(_SW_SMALL_LOG_SD, n))
        z = (-math.log(gamma - gap) - mean) / sd
    else:
        ln = math.log(n)
        z = (gap - _poly(_SW_MEAN, ln)) / math.exp(_poly(_SW_LOG_SD, ln))
    return w, 0.5 * math.erfc(z / math.sqrt(2))  # the upper tail, accurate far out


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


def icc21(
    long: pd.DataFrame, targets: str = "target", raters: str = "rater", ratings: str = "rating"
) -> ICC:
    """ICC(2,1) of a long table (one row per target and rater): the guards of a table, then
    :func:`icc21_matrix` of its (target x rater) matrix."""
    if long.duplicated([targets, raters]).any():
        dups = long[long.duplicated([targets, raters], keep=False)][[targets, raters]]
        raise ValueError(f"duplicate ratings for (target, rater): {dups.head(3).values.tolist()}")
    wide = long.pivot(index=targets, columns=raters, values=ratings)
    return icc21_matrix(wide.to_numpy())


def icc21_matrix(x: np.ndarray, alpha: float = 0.05) -> ICC:
    """ICC(2,1) of a (target x rater) matrix of ratings: two-way random effects, absolute
    agreement, single measure, from the two-way ANOVA's mean squares (Shrout & Fleiss 1979;
    McGraw & Wong 1996, ICC(A,1)), with its F test (F = BMS / EMS on n - 1 and
    (n - 1)(k - 1) degrees of freedom) and the 1 - ``alpha`` confidence interval of McGraw &
    Wong (Satterthwaite's degrees of freedom). The same figures as pingouin's
    ``intraclass_corr``, its "ICC2" / "ICC(A,1)" row (``tests/analysis/test_stats_oracles.py``),
    without importing pingouin and scipy.stats (1.5 s of a command's start). The CI is None where it
    is undefined (no residual variance: the raters agree perfectly, or differ by a constant)."""
    from scipy import special  # F distribution; 0.1 s to import, scipy.stats 0.8 s

    x = np.asarray(x, dtype=float)
    if np.isnan(x).any():
        raise ValueError("missing ratings: every target needs a rating from every rater")
    n, k = x.shape
    if n < 3 or k < 2:
        raise ValueError(f"ICC needs at least 3 targets and 2 raters, got {n} and {k}")
    grand = x.mean()
    ss_rows = k * float(((x.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((x.mean(axis=0) - grand) ** 2).sum())
    ss_err = max(float(((x - grand) ** 2).sum()) - ss_rows - ss_cols, 0.0)
    df1, df2 = n - 1, (n - 1) * (k - 1)
    bms, jms, ems = ss_rows / df1, ss_cols / (k - 1), ss_err / df2
    with np.errstate(divide="ignore", invalid="ignore"):
        icc = float(np.divide(bms - ems, bms + (k - 1) * ems + k * (jms - ems) / n))
        f = float(np.divide(bms, ems))
        p = float(special.fdtrc(df1, df2, f))
        # McGraw & Wong (1996), Table 7, case 2A: the CI of ICC(A,1)
        a = float(np.divide(k * icc, n * (1 - icc)))
        b = 1 + a * (n - 1)
        v = float(
            np.divide((a * jms + b * ems) ** 2, (a * jms) ** 2 / (k - 1) + (b * ems) ** 2 / df2)
        )
        f_low = float(special.fdtri(df1, v, 1 - alpha / 2))
        f_high = float(special.fdtri(v, df1, 1 - alpha / 2))
        spread = k * jms + (k * n - k - n) * ems
        low = n * (bms - f_low * ems) / (f_low * spread + n * bms)
        high = n * (f_high * bms - ems) / (spread + n * f_high * bms)
    defined = ems > 0 and math.isfinite(low) and math.isfinite(high)
    return ICC(
        icc=icc,
        ci_low=low if defined else None,
        ci_high=high if defined else None,
        f=f,
        df1=df1,
        df2=df2,
        p=p,
        n_targets=n,
        n_raters=k,
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
