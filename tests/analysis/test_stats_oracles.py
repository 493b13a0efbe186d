"""ICC(2,1) and Shapiro-Wilk are computed in numpy (``metrics.icc21_matrix``,
``metrics.shapiro_wilk``) so that a command need not import pingouin and scipy.stats (1.5 s
of its start). Here they are held to those libraries, as oracles, on many random inputs and at
their edges; and a subprocess checks that the agreement and report steps stay light."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pingouin
import pytest
from scipy import stats

from datatool.analysis import metrics


def pingouin_icc21(x: np.ndarray) -> dict:
    """pingouin's ICC(2,1) row (``ICC2``; ``ICC(A,1)`` since pingouin 0.7), CI unrounded."""
    long = pd.DataFrame(
        [(t, f"j{j}", v) for t, row in enumerate(x) for j, v in enumerate(row)],
        columns=["t", "r", "y"],
    )
    old = pingouin.options.get("round.column.CI95")
    pingouin.options["round.column.CI95"] = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = pingouin.intraclass_corr(long, targets="t", raters="r", ratings="y")
    finally:
        pingouin.options["round.column.CI95"] = old
    row = table[table["Type"].isin(["ICC2", "ICC(A,1)"])].iloc[0]
    low, high = row["CI95"]
    return {"icc": row["ICC"], "f": row["F"], "df1": row["df1"], "df2": row["df2"],
            "p": row["pval"], "low": low, "high": high}  # fmt: skip


def random_ratings(rng: np.random.Generator, rounded: bool) -> np.ndarray:
    n, k = int(rng.integers(3, 120)), int(rng.integers(2, 6))
    truth = rng.normal(0, rng.uniform(0.1, 10), n)
    noise = rng.normal(0, rng.uniform(0.1, 10), (n, k))
    bias = rng.normal(0, rng.uniform(0, 5), k)  # each rater's own offset
    x = truth[:, None] + noise + bias
    return np.round(x) if rounded else x


@pytest.mark.parametrize("seed", range(6))
def test_icc21_gives_pingouins_figures_on_random_ratings(seed):
    rng = np.random.default_rng(seed)
    for trial in range(15):
        x = random_ratings(rng, rounded=trial % 3 == 0)
        got, want = metrics.icc21_matrix(x), pingouin_icc21(x)
        assert (got.df1, got.df2, got.n_targets, got.n_raters) == (
            want["df1"], want["df2"], x.shape[0], x.shape[1])  # fmt: skip
        assert got.icc == pytest.approx(want["icc"], rel=1e-9, abs=1e-12)
        assert got.f == pytest.approx(want["f"], rel=1e-9)
        assert got.p == pytest.approx(want["p"], rel=1e-6, abs=1e-300)
        assert got.ci_low == pytest.approx(want["low"], rel=1e-9, abs=1e-12)
        assert got.ci_high == pytest.approx(want["high"], rel=1e-9, abs=1e-12)


def test_icc21_of_a_long_table_is_that_of_its_matrix_in_any_row_order():
    x = random_ratings(np.random.default_rng(7), rounded=False)
    long = pd.DataFrame(
        [(t, f"j{j}", v) for t, row in enumerate(x) for j, v in enumerate(row)],
        columns=["target", "rater", "rating"],
    ).sample(frac=1.0, random_state=1)
    assert metrics.icc21(long) == metrics.icc21_matrix(x)
    # other columns beside the three named are not ratings
    assert metrics.icc21(long.assign(structure="femur", area=1.0)) == metrics.icc21_matrix(x)
    missing = long.iloc[1:]  # one (target, rater) pair absent: refused, not dropped
    with pytest.raises(ValueError, match="missing ratings"):
        metrics.icc21(missing)
    with pytest.raises(ValueError, match="missing ratings"):  # None in a plain list, too
        metrics.icc21_matrix([[1, None], [2, 3], [4, 5]])


def test_icc21_with_no_residual_variance_has_no_ci_as_pingouin():
    """Its divisions by zero are expected there: no warning reaches the caller."""
    perfect = np.array([[1, 1], [2, 2], [5, 5], [3, 3.0]])
    offset = perfect + np.array([0.0, 1.0])  # the second rater one higher on every target
    for x in (perfect, offset, np.ones((3, 2))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            metrics.icc21_matrix(x)
    for x in (perfect, offset):
        got, want = metrics.icc21_matrix(x), pingouin_icc21(x)
        assert math.isnan(want["low"]) and got.ci_low is None and got.ci_high is None
        assert got.icc == pytest.approx(want["icc"], rel=1e-12) and got.f == math.inf
        assert got.p == want["p"] == 0.0
    assert metrics.icc21_matrix(perfect).icc == 1.0
    # BMS / (BMS + k JMS / n): BMS = 17.5 / 3 (the targets' means 1.5, 2.5, 5.5, 3.5), JMS = 2
    assert metrics.icc21_matrix(offset).icc == pytest.approx((17.5 / 3) / (17.5 / 3 + 1))
    flat = metrics.icc21_matrix(np.ones((3, 2)))  # nothing varies: no ICC, like pingouin's NaN
    assert math.isnan(flat.icc) and flat.ci_low is None


def test_icc21_confidence_level():
    x = random_ratings(np.random.default_rng(11), rounded=False)
    at95, at80 = metrics.icc21_matrix(x), metrics.icc21_matrix(x, alpha=0.2)
    assert at95.ci_low < at80.ci_low < at95.icc < at80.ci_high < at95.ci_high


SAMPLE_SIZES = [3, 4, 5, 6, 7, 11, 12, 13, 20, 50, 200, 1000]


@pytest.mark.parametrize("n", SAMPLE_SIZES)
def test_shapiro_wilk_gives_scipys_figures(n):
    """W to 1e-8 and p to 1e-6 of scipy's (its normal quantiles are accurate to about 1e-7,
    these to 1e-16), on normal, skewed, tied and uniform samples; both branches of the p-value
    (n <= 11 and n >= 12) and three values' exact distribution."""
    rng = np.random.default_rng(n)
    samples = [
        rng.normal(5, 2, n),
        rng.exponential(1.0, n),
        rng.exponential(1.0, n) ** 3,  # far from normal: p far below alpha
        rng.integers(0, 4, n).astype(float),
        rng.uniform(size=n),
    ]
    for values in samples:
        if np.ptp(values) == 0:
            continue
        w, p = metrics.shapiro_wilk(values)
        want = stats.shapiro(values)
        assert w == pytest.approx(want.statistic, rel=1e-8)
        assert p == pytest.approx(want.pvalue, rel=1e-6, abs=1e-15)
        assert 0 <= p <= 1 and 0 < w <= 1


def test_shapiro_wilk_at_its_edges():
    for values in ([0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.0] * 9 + [1.0], [1.0] * 11 + [2.0]):
        w, p = metrics.shapiro_wilk(values)
        want = stats.shapiro(values)
        assert w == pytest.approx(want.statistic, rel=1e-8)
        assert p == pytest.approx(want.pvalue, rel=1e-6, abs=1e-15)
    assert metrics.shapiro_wilk([3.0, 1.0, 2.0]) == metrics.shapiro_wilk([1.0, 2.0, 3.0])
    for bad in ([1.0, 2.0], [4.0, 4.0, 4.0]):
        with pytest.raises(ValueError) as caught:
            metrics.shapiro_wilk(bad)
        assert str(caught.value) == "Shapiro-Wilk needs at least 3 values, not all equal"


def test_a_sample_shaped_like_the_coefficients_is_perfectly_normal():
    """W = 1 and p = 1 (never above, however the rounding falls): three equally spaced values,
    and samples proportional to W's own coefficients, for both forms of the p-value."""
    assert metrics.shapiro_wilk([1.0, 2.0, 3.0]) == (1.0, 1.0)  # W rounds to 1 + 2e-16
    assert metrics.shapiro_wilk([0.001, 0.002, 0.003]) == (1.0, 1.0)
    for n in range(4, 16):
        a = metrics.shapiro_wilk_coefficients(n)
        assert a @ a == pytest.approx(1.0) and np.allclose(a, -a[::-1])
        w, p = metrics.shapiro_wilk(10 * a)
        assert 1 - 1e-15 <= w <= 1.0 and p == pytest.approx(1.0, abs=1e-12) and p <= 1.0
        assert w == pytest.approx(stats.shapiro(10 * a).statistic, rel=1e-8)


def test_agreement_and_the_report_do_not_import_pingouin_or_scipy_stats():
    """Importing pingouin, scipy.stats and pandas cost `agreement` and `report` 1.5-2 s of
    their start; the steps that compute ICC and normality must not bring them back, nor the
    QA package, whose queue the report lists, scipy.ndimage (0.3 s)."""
    code = (
        "import sys\n"
        "import datatool.analysis.agreement, datatool.report.study, datatool.analysis.qa\n"
        "from datatool.analysis import metrics\n"
        "metrics.icc21_matrix([[1.0, 2.0], [2.0, 2.5], [4.0, 3.0]])\n"
        "metrics.normality([1.0, 2.0, 4.0, 3.5])\n"
        "heavy = ('pingouin', 'scipy.stats', 'pandas', 'scipy.ndimage')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
