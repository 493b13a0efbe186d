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


# ---- written against the survivors of mutation testing (tests/mutate.py metrics)


def test_overlap_counts_only_where_both_maps_hold_the_value_inside_the_box():
    a = np.zeros((6, 8), np.uint8)
    b = np.zeros((6, 8), np.uint8)
    a[1:4, 1:6] = 2  # rows 1-3, columns 1-5: 15 px
    b[2:5, 3:8] = 2  # rows 2-4, columns 3-7: 15 px; both: rows 2-3, columns 3-5 = 6 px
    b[0, 0] = 2  # outside a's structure
    a[5, 7] = 4  # another value
    whole = (0, 0, 7, 5)
    assert metrics.overlap(a, b, 2, whole) == 6  # not the 15 + 16 - 6 = 25 of either map
    assert metrics.overlap(a, b, 2, (0, 0, 3, 5)) == 2  # columns 0-3: column 3, rows 2-3
    assert metrics.overlap(a, b, 2, (4, 3, 7, 5)) == 2  # row 3, columns 4-5
    assert metrics.overlap(a, b, 4, whole) == 0


def test_box_intersection_of_boxes_that_are_not_squares():
    # boxes are (x0, y0, x1, y1), inclusive; every coordinate differs from every other
    a, b = (1, 2, 9, 5), (4, 0, 12, 3)
    assert metrics.box_intersection(a, b) == (4, 2, 9, 3)
    assert metrics.box_intersection(b, a) == (4, 2, 9, 3)
    assert metrics.box_intersection((2, 10, 7, 30), (5, 1, 20, 12)) == (5, 10, 7, 12)
    assert metrics.box_intersection((0, 0, 3, 3), (3, 3, 5, 5)) == (3, 3, 3, 3)  # one pixel
    assert metrics.box_intersection((0, 0, 3, 3), (5, 0, 8, 3)) is None  # apart in x only
    assert metrics.box_intersection((0, 0, 3, 3), (0, 5, 3, 8)) is None  # apart in y only
    assert metrics.box_intersection(None, (0, 0, 1, 1)) is None
    assert metrics.box_intersection((0, 0, 1, 1), None) is None
    assert metrics.box_intersection(None, None) is None


def test_describe_with_nothing_and_with_one_value():
    keys = ("n", "mean", "sd", "median", "p25", "p75", "min", "max")
    assert metrics.describe([None, float("inf"), float("nan")]) == dict.fromkeys(keys) | {"n": 0}
    one = metrics.describe([0.25])
    assert one == {"n": 1, "mean": 0.25, "sd": 0.0, "median": 0.25, "p25": 0.25, "p75": 0.25,
                   "min": 0.25, "max": 0.25}  # fmt: skip
    two = metrics.describe([1, 4])
    assert two["sd"] == pytest.approx(2.1213203435596424)  # |4 - 1| / sqrt(2)
    assert (two["min"], two["max"]) == (1.0, 4.0)


def test_bland_altman_of_one_pair_and_of_two():
    one = metrics.bland_altman([5.0], [3.0])
    assert one == {"n": 1, "bias": 2.0, "sd": 0.0, "loa_low": 2.0, "loa_high": 2.0}
    # differences 3 and -1: bias 1, sample SD sqrt(((3-1)^2 + (-1-1)^2) / 1) = sqrt(8)
    two = metrics.bland_altman([4, 2], [1, 3])
    sd = 8**0.5
    assert two == pytest.approx(
        {"n": 2, "bias": 1.0, "sd": sd, "loa_low": 1 - 1.96 * sd, "loa_high": 1 + 1.96 * sd}
    )
    assert set(two) == {"n", "bias", "sd", "loa_low", "loa_high"}


def test_normality_at_its_edges():
    from scipy import stats

    untested = {"test": "Shapiro-Wilk", "n": 2, "w": None, "p": None, "normal": None}
    assert metrics.normality([1.0, 2.0]) == untested
    three = metrics.normality([1.0, 2.0, 4.0])  # three values: the smallest sample tested
    w, p = stats.shapiro([1.0, 2.0, 4.0])
    assert (three["n"], three["w"], three["p"]) == (3, pytest.approx(w), pytest.approx(p))
    assert three["normal"] is True
    # p exactly at alpha counts as normal (p >= alpha), just below it does not
    values = [0.1, 0.2, 0.25, 0.3, 1.9, 2.5]
    p = metrics.normality(values)["p"]
    assert p == pytest.approx(float(stats.shapiro(values).pvalue))
    assert metrics.normality(values, alpha=p)["normal"] is True
    assert metrics.normality(values, alpha=p * (1 + 1e-9))["normal"] is False


def test_an_icc_as_a_dict():
    icc = metrics.icc21(long_format(SF))
    d = icc.as_dict()
    assert set(d) == {"icc", "ci_low", "ci_high", "f", "df1", "df2", "p", "n_targets", "n_raters"}
    assert (d["icc"], d["n_targets"], d["n_raters"], d["df1"], d["df2"]) == (
        icc.icc, 6, 4, 5, 15)  # fmt: skip


def test_a_second_rating_of_a_target_by_a_rater_is_refused_and_named():
    """A duplicate (target, rater) with another rating (not a repeated row) is refused; the
    message names the pair as it occurs, both times."""
    again = long_format(SF).head(1).assign(rating=99.0)  # target 0, judge j0, rated 9 then 99
    with pytest.raises(ValueError) as exc:
        metrics.icc21(pd.concat([long_format(SF), again]))
    assert str(exc.value) == "duplicate ratings for (target, rater): [[0, 'j0'], [0, 'j0']]"


def test_icc_guards_word_for_word_and_at_their_edges():
    both = pd.concat([long_format(SF), long_format(SF).iloc[[0, 1]].assign(rating=99.0)])
    with pytest.raises(ValueError) as exc:  # two pairs twice: four rows, three named
        metrics.icc21(both)
    assert str(exc.value) == (
        "duplicate ratings for (target, rater): [[0, 'j0'], [0, 'j1'], [0, 'j0']]"
    )
    missing = long_format(SF)
    missing.loc[3, "rating"] = np.nan
    with pytest.raises(ValueError) as exc:
        metrics.icc21(missing)
    assert str(exc.value) == "missing ratings: every target needs a rating from every rater"
    three = metrics.icc21(long_format(SF[:3, :2]))  # 3 targets and 2 raters: enough
    assert (three.n_targets, three.n_raters) == (3, 2)


def test_the_icc_f_test_by_hand():
    """F = BMS / EMS with (n - 1, (n - 1)(k - 1)) degrees of freedom, p its upper tail."""
    from scipy import stats

    n, k = SF.shape
    grand = SF.mean()
    ss_rows = k * ((SF.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((SF.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((SF - grand) ** 2).sum() - ss_rows - ss_cols
    f = (ss_rows / (n - 1)) / (ss_err / ((n - 1) * (k - 1)))
    got = metrics.icc21(long_format(SF))
    assert got.f == pytest.approx(f, rel=1e-9) == pytest.approx(11.027, abs=5e-4)
    assert got.p == pytest.approx(stats.f.sf(f, n - 1, (n - 1) * (k - 1)), rel=1e-6)
