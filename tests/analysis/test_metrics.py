"""ICC against published values and an independent formula; Dice/IoU by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datatool.analysis import metrics

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges
SF = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float
)


def long_format(matrix: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        [(t, f"j{j}", v) for t, row in enumerate(matrix) for j, v in enumerate(row)],
        columns=["target", "rater", "rating"],
    )


def icc21_by_hand(x: np.ndarray) -> float:
    """Shrout & Fleiss ICC(2,1) from the two-way ANOVA mean squares."""
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    bms, jms, ems = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    return (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)


def test_icc21_matches_shrout_fleiss_published_value():
    result = metrics.icc21(long_format(SF))
    assert round(result.icc, 2) == 0.29
    assert result.df1 == 5 and result.df2 == 15 and result.n_targets == 6
    assert result.ci_low < 0.29 < result.ci_high
    assert result.ci_low != round(result.ci_low, 2)  # the CI is not rounded


def test_icc21_matches_an_independent_formula_on_random_data():
    rng = np.random.default_rng(3)
    truth = rng.normal(100, 20, 40)
    x = np.stack([truth + rng.normal(0, 8, 40), truth + 5 + rng.normal(0, 8, 40)], axis=1)
    assert metrics.icc21(long_format(x)).icc == pytest.approx(icc21_by_hand(x), abs=1e-9)
    assert icc21_by_hand(SF) == pytest.approx(0.2898, abs=1e-3)


def test_icc_guards():
    with pytest.raises(ValueError, match="duplicate"):
        metrics.icc21(pd.concat([long_format(SF), long_format(SF).head(1)]))
    missing = long_format(SF)
    missing.loc[3, "rating"] = np.nan
    with pytest.raises(ValueError, match="missing"):
        metrics.icc21(missing)
    with pytest.raises(ValueError, match="at least 3 targets"):
        metrics.icc21(long_format(SF[:2]))
    perfect = metrics.icc21(long_format(np.array([[1, 1], [2, 2], [5, 5], [3, 3.0]])))
    assert perfect.icc == pytest.approx(1.0)


def test_dice_iou_by_hand_and_the_empty_convention():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros((10, 10), np.uint8)
    a[0:4, 0:5] = 3  # 20 px
    b[2:6, 0:5] = 3  # 20 px, overlap rows 2-3: 10 px
    box = metrics.box_intersection((0, 0, 4, 3), (0, 2, 4, 5))
    inter = metrics.overlap(a, b, 3, box)
    assert inter == 10
    dice, iou = metrics.dice_iou(20, 20, inter)
    assert dice == pytest.approx(0.5) and iou == pytest.approx(10 / 30)
    assert metrics.dice_iou(0, 0, 0) is None  # both empty: excluded
    assert metrics.dice_iou(20, 0, 0) == (0.0, 0.0)  # one empty: 0
    assert metrics.box_intersection((0, 0, 1, 1), (5, 5, 6, 6)) is None
    assert metrics.overlap(a, b, 3, None) == 0


def test_describe_and_bland_altman():
    d = metrics.describe([1, 2, 3, 4, None, float("nan")])
    assert d["n"] == 4 and d["mean"] == 2.5 and d["median"] == 2.5
    assert d["sd"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert (d["p25"], d["p75"]) == (1.75, 3.25)
    assert metrics.describe([])["mean"] is None
    ba = metrics.bland_altman([10, 12, 14], [9, 12, 16])
    assert ba["bias"] == pytest.approx(-1 / 3)
    assert ba["loa_high"] - ba["bias"] == pytest.approx(1.96 * np.std([1, 0, -2], ddof=1))


def test_normality_decides_the_studys_descriptive_form():
    """Shapiro-Wilk as scipy computes it: normal draws pass, a skewed sample does not, and
    what cannot be tested says so (None), never a guess."""
    from scipy import stats

    rng = np.random.default_rng(3)
    normal = rng.normal(0.7, 0.1, 200)
    skewed = rng.exponential(1.0, 200)
    for values, expected in ((normal, True), (skewed, False)):
        t = metrics.normality(values)
        w, p = stats.shapiro(values)
        assert (t["w"], t["p"]) == pytest.approx((w, p))
        assert t["normal"] is expected and t["n"] == 200 and t["test"] == "Shapiro-Wilk"
    assert metrics.normality([1.0, 2.0])["normal"] is None  # n < 3
    assert metrics.normality([0.5, 0.5, 0.5, 0.5])["normal"] is None  # no spread
    assert metrics.normality([1.0, None, float("nan"), 2.0, 3.5, 4.0])["n"] == 4


# --------------------------------------------------------------------------- surface distances


def _brute_surface(a, b, spacing, tol):
    """The definitions, by brute force: every border pixel (in the mask, a 4-neighbour
    outside or off the image) to every border pixel of the other map."""

    def border_pixels(m):
        h, w = m.shape
        out = []
        for r in range(h):
            for c in range(w):
                if m[r, c] and any(
                    not (0 <= r + dr < h and 0 <= c + dc < w) or not m[r + dr, c + dc]
                    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                ):
                    out.append((r, c))
        return np.array(out, float) * np.asarray(spacing)

    pa, pb = border_pixels(a), border_pixels(b)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    d_ab, d_ba = d.min(1), d.min(0)
    both = np.concatenate([d_ab, d_ba])
    return (
        max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)),
        both.mean(),
        (both <= tol).mean(),
    )


def square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def test_surface_of_two_squares_one_pixel_apart_by_hand():
    """2x2 squares, the second one column right: of the 8 border pixels, 4 lie on the other
    border (0) and 4 one column away (the x spacing). HD95 = x spacing (the 95th percentile
    of 0, 0, sx, sx), ASSD = sx / 2, NSD = 1/2 below a tolerance of sx and 1 at it."""
    a, b = square((6, 6), 2, 1, 2), square((6, 6), 2, 2, 2)
    s = metrics.surface(a, b, spacing=(0.2, 0.5), tolerance=0.3)
    assert (s.hd95, s.assd, s.nsd, s.empty) == (pytest.approx(0.5), pytest.approx(0.25), 0.5, None)
    assert metrics.surface(a, b, spacing=(0.2, 0.5), tolerance=0.5).nsd == 1.0
    # the same shift along y is measured with the y spacing: the spacings are not mixed up
    a, b = square((6, 6), 1, 2, 2), square((6, 6), 2, 2, 2)
    s = metrics.surface(a, b, spacing=(0.2, 0.5), tolerance=0.3)
    assert (s.hd95, s.assd, s.nsd) == (pytest.approx(0.2), pytest.approx(0.1), 1.0)


def test_surface_of_two_points_is_their_distance_in_mm():
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[2, 3], b[6, 6] = True, True  # 4 rows and 3 columns apart
    s = metrics.surface(a, b, spacing=(0.3, 0.4), tolerance=2.0)
    d = np.hypot(4 * 0.3, 3 * 0.4)
    assert s.hd95 == pytest.approx(d) and s.assd == pytest.approx(d) and s.nsd == 1.0
    assert metrics.surface(a, b, spacing=(0.3, 0.4), tolerance=1.5).nsd == 0.0


def test_identical_masks_are_zero_apart():
    a = square((30, 30), 5, 7, 9)
    s = metrics.surface(a, a.copy(), spacing=(0.1, 0.1))
    assert (s.hd95, s.assd, s.nsd) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    ("shift", "spacing"), [((0, 3), (1.0, 1.0)), ((2, 5), (0.25, 0.6)), ((7, 1), (0.8, 0.3))]
)
def test_surface_matches_the_definitions_by_brute_force(shift, spacing):
    """Offset squares and an L-shape (anisotropic spacing) against the brute-force
    definitions; the image's edge counts as outside (a square touching it)."""
    a = square((24, 28), 0, 2, 10)
    a[10:14, 2:5] = True
    b = square((24, 28), shift[0], 2 + shift[1], 10)
    s = metrics.surface(a, b, spacing=spacing, tolerance=1.0)
    hd95, assd, nsd = _brute_surface(a, b, spacing, 1.0)
    assert s.hd95 == pytest.approx(hd95) and s.assd == pytest.approx(assd)
    assert s.nsd == pytest.approx(nsd)


def test_empty_structures_are_nan_with_their_reason():
    empty, some = np.zeros((8, 8), bool), square((8, 8), 1, 1, 3)
    both = metrics.surface(empty, empty)
    one = metrics.surface(some, empty)
    assert both.empty == metrics.BOTH_EMPTY and one.empty == metrics.ONE_EMPTY
    for s in (both, one, metrics.surface(empty, some)):
        assert np.isnan(s.hd95) and np.isnan(s.assd) and np.isnan(s.nsd)
    d = metrics.describe_surfaces([both, one, metrics.surface(some, some)])
    assert d["both_empty"] == 1 and d["one_empty"] == 1
    assert d["hd95"]["n"] == 1 and d["nsd"]["mean"] == 1.0  # NaN is not counted as 0


def test_surface_refuses_masks_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        metrics.surface(np.ones((3, 3)), np.ones((3, 4)))
