"""Every number ``datatool score`` reports, checked against an independent computation:
per-image IoU, Dice, precision, recall and F1 from confusion counts written out by hand; the
pooled IoU and Dice and the per-structure summaries from pixel counts and ``statistics``; the
ANOVA against ``scipy.stats.f_oneway`` and the Bonferroni pairs against ``scipy.stats``'
t-tests with three structures (three pairs: a factor of 3); and a scored run against the same
measures computed here from the model's own predictions and the frozen reference labels."""

from __future__ import annotations

import itertools
import json
import statistics
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from datatool.analysis import metrics
from datatool.learning.scoring import (
    _anova,
    _mean_iou_per_image,
    _metric_rows,
    _metric_table,
    _per_structure,
    per_image_metrics,
)
from tests.scoring_util import confusion, expected_scores


def test_per_image_measures_from_hand_counted_confusions():
    """Class 1: 4 true positives, 2 false positives, 1 false negative; class 2 only
    predicted; class 3 nowhere; class 4 only in the reference."""
    ref = np.zeros((6, 6), np.uint8)
    pred = np.zeros((6, 6), np.uint8)
    ref[0, 0:5] = 1  # 5 reference pixels of class 1 ...
    pred[0, 0:4] = 1  # ... 4 of them predicted (tp 4, fn 1)
    pred[1, 0:2] = 1  # and 2 predicted where the reference has background (fp 2)
    pred[3, 0:3] = 2  # class 2: predicted only (fp 3)
    ref[5, 0:2] = 4  # class 4: reference only (fn 2)
    got = per_image_metrics(pred, ref, 5)
    one = got[0]
    assert (one.tp, one.fp, one.fn) == (4, 2, 1)
    # IoU = tp/(tp+fp+fn) = 4/7; Dice = 2tp/(2tp+fp+fn) = 8/11; precision 4/6; recall 4/5;
    # F1 = 2PR/(P+R) = 2*(2/3)*(4/5)/(2/3+4/5) = 8/11
    want = {"iou": Fraction(4, 7), "dice": Fraction(8, 11), "precision": Fraction(2, 3),
            "recall": Fraction(4, 5), "f1": Fraction(8, 11)}  # fmt: skip
    for key, value in want.items():
        assert getattr(one, key) == pytest.approx(float(value), rel=1e-15), key
    two = got[1]
    assert (two.tp, two.fp, two.fn) == (0, 3, 0)
    assert (two.iou, two.dice, two.precision, two.recall, two.f1) == (0.0, 0.0, 0.0, None, 0.0)
    assert got[2] is None  # in neither map: excluded
    four = got[3]
    assert (four.tp, four.fp, four.fn) == (0, 0, 2)
    assert (four.iou, four.dice, four.precision, four.recall, four.f1) == (0.0, 0.0, None, 0.0, 0.0)


NAMES = ["a", "b", "c"]


def _hand_made_set(n: int = 7, size: int = 24):
    """Predictions and references of three structures over n images: rectangles whose
    positions come from a seeded generator (the expected values are counted below); the
    further a structure's class, the further its prediction strays."""
    rng = np.random.default_rng(11)
    preds, refs = [], []
    for i in range(n):
        pred = np.zeros((size, size), np.uint8)
        ref = np.zeros((size, size), np.uint8)
        for c, row in zip((1, 2, 3), (0, 8, 16)):
            if c == 3 and i % 3 == 0:
                continue  # structure c is absent from both maps in some images
            x0, w = int(rng.integers(0, 8)), int(rng.integers(6, 12))
            # a is found well, b less so, c worst: the structures' mean IoUs differ
            shift, grow = int(rng.integers(-2 * c, 2 * c + 1)), int(rng.integers(-c, c + 1))
            ref[row : row + 6, x0 : x0 + w] = c
            px0 = max(0, x0 + shift)
            pred[row + 1 : row + 7, px0 : px0 + max(1, w + grow)] = c
        preds.append(pred)
        refs.append(ref)
    return preds, refs


def test_pooled_and_summarised_measures_and_the_anova_with_three_structures():
    preds, refs = _hand_made_set()
    table = _metric_table(list(range(len(preds))), preds, refs, NAMES)
    per = _per_structure(table, NAMES)
    groups = {}
    for c, name in enumerate(NAMES, start=1):
        counts = [confusion(p, r, c) for p, r in zip(preds, refs)]
        counts = [t for t in counts if sum(t)]  # absent from both: excluded
        ious = [tp / (tp + fp + fn) for tp, fp, fn in counts]
        dices = [2 * tp / (2 * tp + fp + fn) for tp, fp, fn in counts]
        groups[name] = ious
        st = next(s for s in per if s.structure == name)
        assert st.images == len(counts)
        tp, fp, fn = (sum(t[j] for t in counts) for j in range(3))
        assert st.pooled_iou == pytest.approx(tp / (tp + fp + fn), rel=1e-15)
        assert st.pooled_dice == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-15)
        q = statistics.quantiles(ious, n=4, method="inclusive")
        assert st.iou["mean"] == pytest.approx(statistics.fmean(ious), rel=1e-12)
        assert st.iou["sd"] == pytest.approx(statistics.stdev(ious), rel=1e-12)
        assert st.iou["median"] == pytest.approx(statistics.median(ious), rel=1e-12)
        assert (st.iou["p25"], st.iou["p75"]) == pytest.approx((q[0], q[2]), rel=1e-12)
        assert st.dice["mean"] == pytest.approx(statistics.fmean(dices), rel=1e-12)
    assert len(groups["c"]) < len(groups["a"])  # unequal groups: Welch's test for those pairs
    assert len({round(v, 9) for g in groups.values() for v in g}) > 3  # the IoUs vary

    anova = _anova(table)
    assert anova is not None
    f, p = stats.f_oneway(*groups.values())
    n = sum(len(g) for g in groups.values())
    assert (anova.F, anova.p) == pytest.approx((f, p), rel=1e-9)
    assert (anova.df_between, anova.df_within) == (len(groups) - 1, n - len(groups))
    pairs = {frozenset((x.a, x.b)): x for x in anova.pairwise_bonferroni}
    assert set(pairs) == {frozenset(pair) for pair in itertools.combinations(NAMES, 2)}
    for pair in pairs.values():
        x, y = groups[pair.a], groups[pair.b]
        t, p_unc = stats.ttest_ind(x, y, equal_var=len(x) == len(y))
        assert (pair.t, pair.p_unc) == pytest.approx((t, p_unc), rel=1e-9)
        assert pair.p_bonf == pytest.approx(min(1.0, 3 * p_unc), rel=1e-12)  # three pairs
    assert any(pair.p_bonf < 1.0 for pair in pairs.values())  # the factor shows somewhere


def test_the_mean_iou_per_image_weighs_every_image_and_structure_alike():
    """Over every (image, structure) row, from hand counts: structure c is absent from both
    maps in three of the seven images, so the mean of the structures' means (which weighs
    c's four images like a's seven) is another number."""
    preds, refs = _hand_made_set()
    table = _metric_table(list(range(len(preds))), preds, refs, NAMES)
    ious = {name: [] for name in NAMES}
    for c, name in enumerate(NAMES, start=1):
        for pred, ref in zip(preds, refs):
            tp, fp, fn = confusion(pred, ref, c)
            if tp + fp + fn:
                ious[name].append(tp / (tp + fp + fn))
    assert [len(v) for v in ious.values()] == [7, 7, 4]
    every_row = statistics.fmean([v for values in ious.values() for v in values])
    means_of_means = statistics.fmean([statistics.fmean(v) for v in ious.values()])
    assert abs(every_row - means_of_means) > 1e-3  # the two readings differ on this set
    assert _mean_iou_per_image(table) == pytest.approx(every_row, rel=1e-12)
    assert _mean_iou_per_image(table.iloc[0:0]) is None


def test_a_pair_without_variance_has_no_t_test():
    """Two structures with IoU 0 everywhere: their t-test is undefined (None, not NaN in
    score.json); the pairs that are defined still count three comparisons."""
    table = pd.DataFrame(
        {"structure": ["a"] * 3 + ["b"] * 3 + ["c"] * 3,
         "iou": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.6, 0.8]}
    )  # fmt: skip
    anova = _anova(table)
    pairs = {(x.a, x.b): x for x in anova.pairwise_bonferroni}
    assert (pairs["a", "b"].t, pairs["a", "b"].p_unc, pairs["a", "b"].p_bonf) == (None,) * 3
    t, p = stats.ttest_ind([0.0] * 3, [0.5, 0.6, 0.8])
    assert (pairs["a", "c"].t, pairs["a", "c"].p_unc) == pytest.approx((t, p), rel=1e-9)
    assert pairs["a", "c"].p_bonf == pytest.approx(3 * p, rel=1e-12)


def test_an_anova_of_two_structures_with_two_images_each():
    """The smallest case that has a test: two structures, two images each."""
    two = pd.DataFrame({"structure": ["a", "a", "b", "b"], "iou": [0.1, 0.2, 0.5, 0.7]})
    anova = _anova(two)
    f, p = stats.f_oneway([0.1, 0.2], [0.5, 0.7])
    assert anova is not None and (anova.F, anova.p) == pytest.approx((f, p), rel=1e-9)
    assert (anova.df_between, anova.df_within) == (1, 2)


def test_no_anova_without_two_structures_with_two_images():
    one = pd.DataFrame({"structure": ["a", "a", "b"], "iou": [0.1, 0.2, 0.3]})
    assert _anova(one) is None


def _pingouin_changed(monkeypatch, anova=lambda t: t, pairs=lambda t: t):
    """pingouin's real ANOVA and pairwise tables, changed as another pingouin version might
    write them (pingouin 0.7 names both p columns ``p_unc``; older ones ``p-unc``)."""
    import pingouin

    real_anova, real_pairs = pingouin.anova, pingouin.pairwise_tests
    monkeypatch.setattr(pingouin, "anova", lambda **kwargs: anova(real_anova(**kwargs)))
    monkeypatch.setattr(pingouin, "pairwise_tests", lambda **kwargs: pairs(real_pairs(**kwargs)))


TWO = pd.DataFrame({"structure": ["a", "a", "b", "b"], "iou": [0.1, 0.2, 0.5, 0.7]})


@pytest.mark.parametrize("p_name", ["p-unc", "p-val"])
def test_the_anova_under_pingouins_older_column_names(monkeypatch, p_name):
    """Two structures, two images each: F and p as scipy's f_oneway has them, the one pair's
    t and p as scipy's t-test (one pair: a Bonferroni factor of 1), whatever the p columns
    are called."""
    _pingouin_changed(
        monkeypatch,
        anova=lambda t: t.rename(columns={"p_unc": p_name}),
        pairs=lambda t: t.rename(columns={"p_unc": "p-unc"}),
    )
    anova = _anova(TWO)
    f, p = stats.f_oneway([0.1, 0.2], [0.5, 0.7])
    assert anova is not None and (anova.F, anova.p) == pytest.approx((f, p), rel=1e-9)
    (pair,) = anova.pairwise_bonferroni
    t, p_unc = stats.ttest_ind([0.1, 0.2], [0.5, 0.7])
    assert (pair.a, pair.b) == ("a", "b")
    assert (pair.t, pair.p_unc, pair.p_bonf) == pytest.approx((t, p_unc, p_unc), rel=1e-9)


@pytest.mark.parametrize("column", ["F", "p_unc"])
def test_no_anova_when_pingouins_table_lacks_f_or_p(monkeypatch, column):
    _pingouin_changed(monkeypatch, anova=lambda t: t.drop(columns=[column]))
    assert _anova(TWO) is None


def test_no_anova_when_no_iou_varies():
    """Every IoU 0 (an untrained model): pingouin's table has neither F nor p; no test."""
    zero = pd.DataFrame({"structure": ["a", "a", "b", "b"], "iou": [0.0] * 4})
    assert _anova(zero) is None


def _refuse(constant: str):
    raise ValueError(f"{constant} is not JSON")


def test_a_scored_run_matches_measures_computed_from_its_predictions(trained, tmp_path):
    from datatool.learning.scoring import score_run

    ws, run_id = trained
    result = score_run(ws, run_id, store_predictions=False, figures=False, out_dir=tmp_path)
    # score.json is JSON (an undefined precision is null, not a bare NaN)
    json.loads((tmp_path / "score.json").read_text(), parse_constant=_refuse)
    image_ids, preds, refs = expected_scores(ws, run_id)
    assert result.images == len(image_ids) > 0
    names = ["femur", "adductor magnus", "sciatic nerve", "semitendinosus", "femoral artery"]
    got = {(r.image_id, r.structure): r for r in result.per_image}
    groups: dict[str, list[float]] = {}
    expected_rows = 0
    for c, name in enumerate(names, start=1):
        tp_all = fp_all = fn_all = 0
        for image_id, pred, ref in zip(image_ids, preds, refs):
            tp, fp, fn = confusion(pred, ref, c)
            if tp + fp + fn == 0:
                assert (image_id, name) not in got
                continue
            expected_rows += 1
            tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
            row = got[(image_id, name)]
            assert row.iou == pytest.approx(tp / (tp + fp + fn), abs=1e-12)
            assert row.dice == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
            assert row.precision == (pytest.approx(tp / (tp + fp)) if tp + fp else None)
            assert row.recall == (pytest.approx(tp / (tp + fn)) if tp + fn else None)
            groups.setdefault(name, []).append(tp / (tp + fp + fn))
        st = next(s for s in result.structures if s.structure == name)
        union = tp_all + fp_all + fn_all
        assert st.pooled_iou == (pytest.approx(tp_all / union) if union else None)
    assert len(result.per_image) == expected_rows
    # the whole image's surface distances: every image where a structure is in either map is
    # measured or counted as one empty; the rest of the set is both empty
    assert result.surface_unit == "mm" and result.nsd_tolerance == 2.0
    for st in result.whole_image:
        assert st.surface is not None
        assert st.surface["hd95"]["n"] + st.surface["one_empty"] == st.images
        assert st.surface["both_empty"] == result.images - st.images
        assert st.surface["assd"]["n"] == st.surface["nsd"]["n"] == st.surface["hd95"]["n"]
    assert all(st.surface is None for st in result.structures)  # not in the resized frame
    ious = [v for g in groups.values() for v in g]
    assert result.mean_iou_per_image == pytest.approx(statistics.fmean(ious))
    # the ANOVA needs two structures, each in two images or more, and some variation
    if len(groups) >= 2 and min(map(len, groups.values())) >= 2 and len(set(ious)) > 1:
        f, p = stats.f_oneway(*groups.values())
        assert result.anova_iou is not None
        assert (result.anova_iou.F, result.anova_iou.p) == pytest.approx((f, p), rel=1e-9)
    else:  # no test is possible: none may be reported
        assert result.anova_iou is None


def test_surface_distances_of_the_whole_image_by_hand():
    """Three images, x spacing 0.5 mm and y 0.2 mm: structure a predicted one column right of
    its 2 x 2 reference (HD95 0.5, ASSD 0.25, NSD at 0.3 mm 1/2), then exactly (0, 0, 1);
    in the third image only predicted (one empty: no distance, not 0). Structure b only in
    the first image, one row down (HD95 0.2); c nowhere (both empty in all three)."""
    spacing, tol = (0.2, 0.5), 0.3
    pred, ref = np.zeros((3, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8)
    ref[0, 1:3, 1:3], pred[0, 1:3, 2:4] = 1, 1
    ref[0, 5:7, 5:7], pred[0, 6:8, 5:7] = 2, 2
    ref[1, 1:3, 1:3], pred[1, 1:3, 1:3] = 1, 1
    pred[2, 4:6, 4:6] = 1
    rows = [r for i in range(3) for r in _metric_rows(i, pred[i], ref[i], NAMES, (spacing, tol))]
    a, b, c = _per_structure(pd.DataFrame(rows), NAMES, 3)
    assert a.images == 3 and a.surface["one_empty"] == 1 and a.surface["both_empty"] == 0
    assert a.surface["hd95"]["n"] == 2 and a.surface["hd95"]["max"] == pytest.approx(0.5)
    assert a.surface["assd"]["mean"] == pytest.approx(0.125)
    assert a.surface["nsd"]["mean"] == pytest.approx(0.75)
    assert b.surface["hd95"]["median"] == pytest.approx(0.2) and b.surface["both_empty"] == 2
    assert c.surface["hd95"]["n"] == 0 and c.surface["both_empty"] == 3
    assert metrics.ONE_EMPTY in {r["empty"] for r in rows}
    # the study's frame has no surface distances (its resized pixels have no exact size)
    assert _per_structure(pd.DataFrame(rows), NAMES)[0].surface is None


def test_the_model_beside_the_raters_by_hand():
    """Mean per-image IoU on the raters' images only (image 3 is not one), in the frame and
    on the whole image, and the ratio; no ratio where the raters' IoU is 0 or missing."""
    from datatool.learning.scoring import VersusRaters, versus_raters

    def table(rows):
        return pd.DataFrame(rows, columns=["image_id", "structure", "iou"])

    model = table([(1, "a", 0.5), (2, "a", 0.7), (3, "a", 0.9), (1, "b", 0.2)])
    raters = table([(1, "a", 0.8), (2, "a", 0.6), (3, "a", 0.1), (1, "b", 0.0)])
    whole_model = table([(1, "a", 0.4), (3, "a", 1.0)])
    got = versus_raters((model, raters), (whole_model, table([])), ["a", "b", "c"], [1, 2])
    a, b, c = got
    assert a.structure == "a" and a.model_iou == pytest.approx(0.6, rel=1e-15)
    assert a.raters_iou == pytest.approx(0.7, rel=1e-15)
    assert a.ratio == pytest.approx(0.6 / 0.7, rel=1e-12)
    assert (a.whole_model_iou, a.whole_raters_iou, a.whole_ratio) == (0.4, None, None)
    # on the whole image too: the raters' 0.8 and 0.6 (not image 3's 0.1): 0.7, ratio 4/7
    whole_raters = table([(1, "a", 0.8), (2, "a", 0.6), (3, "a", 0.1)])
    a = versus_raters((model, raters), (whole_model, whole_raters), ["a"], [1, 2])[0]
    assert a.whole_raters_iou == pytest.approx(0.7, rel=1e-15)
    assert a.whole_ratio == pytest.approx(0.4 / 0.7, rel=1e-12)
    assert b == VersusRaters("b", 0.2, 0.0, None, None, None, None)
    assert c == VersusRaters("c", None, None, None, None, None, None)


def test_per_image_scores_keep_no_nan():
    """The long table's rows as scores: counts dropped, an undefined precision None."""
    from datatool.learning.scoring import ImageScore, _finite, _image_scores

    rows = _metric_table([7], [np.array([[0, 2]], np.uint8)], [np.array([[1, 2]], np.uint8)],
                         NAMES)  # fmt: skip
    assert _image_scores(rows) == [
        ImageScore(7, "a", 0.0, 0.0, None, 0.0, 0.0),
        ImageScore(7, "b", 1.0, 1.0, 1.0, 1.0, 1.0),
    ]
    assert _image_scores(rows.iloc[0:0]) == []
    assert _finite(np.float64("nan")) is None and _finite(np.int64(3)) == 3.0


def test_pooled_measures_where_the_counts_balance_by_hand():
    """One row of eight pixels. Structure a: predicted at columns 0-1, in the reference at 0,
    2 and 3: tp 1, fp 1, fn 2 (tp + fp equals fn). Structure b: predicted at 4-6, in the
    reference at 4 and 7: tp 1, fp 2, fn 1 (fp equals tp + fn). Both: IoU 1/(1+1+2) = 1/4,
    Dice 2/(2+1+2) = 2/5, F1 = 2/5; a's precision 1/2 and recall 1/3, b's the other way
    round. Structure c is in neither map: no pooled IoU or Dice, no row."""
    pred = np.array([[1, 1, 0, 0, 2, 2, 2, 0]], np.uint8)
    ref = np.array([[1, 0, 1, 1, 2, 0, 0, 2]], np.uint8)
    got = per_image_metrics(pred, ref, 4)
    assert [(m.tp, m.fp, m.fn) for m in got[:2]] == [(1, 1, 2), (1, 2, 1)] and got[2] is None
    a, b = got[0], got[1]
    assert (a.iou, a.dice, a.precision, a.recall) == pytest.approx((1 / 4, 2 / 5, 1 / 2, 1 / 3))
    assert (b.iou, b.dice, b.precision, b.recall) == pytest.approx((1 / 4, 2 / 5, 1 / 3, 1 / 2))
    assert a.f1 == pytest.approx(2 / 5) and b.f1 == pytest.approx(2 / 5)
    rows = _metric_rows(0, pred, ref, NAMES, ((1.0, 1.0), 1.0))
    pa, pb, pc = _per_structure(pd.DataFrame(rows), NAMES, 1)
    assert (pa.pooled_iou, pa.pooled_dice) == pytest.approx((1 / 4, 2 / 5), rel=1e-15)
    assert (pb.pooled_iou, pb.pooled_dice) == pytest.approx((1 / 4, 2 / 5), rel=1e-15)
    assert (pc.images, pc.pooled_iou, pc.pooled_dice) == (0, None, None)
    # c is in no image: not one empty, both empty in the set's one image
    assert (pc.surface["one_empty"], pc.surface["both_empty"]) == (0, 1)
    assert pc.surface["hd95"]["n"] == 0 and pc.iou["n"] == 0
    # a structure in neither map ahead of the others leaves their rows be: a absent, b found
    # (IoU 1), c only predicted (IoU 0)
    rows = _metric_rows(5, np.array([[0, 2, 3]], np.uint8), np.array([[0, 2, 0]], np.uint8), NAMES)
    assert [(r["image_id"], r["structure"], r["iou"]) for r in rows] == [
        (5, "b", 1.0),
        (5, "c", 0.0),
    ]


NOTHING = {"n": 0, "mean": None, "sd": None, "median": None, "p25": None, "p75": None,
           "min": None, "max": None}  # fmt: skip


def test_a_set_where_no_structure_is_in_any_map():
    """Every prediction and reference all background: the long table has no row and no
    column; each structure is in no image, has no pooled measure, nothing to describe, and
    is both empty in each of the set's three images."""
    table = _metric_table([1, 2, 3], [np.zeros((2, 2), np.uint8)] * 3,
                          [np.zeros((2, 2), np.uint8)] * 3, NAMES)  # fmt: skip
    assert len(table) == 0 and list(table.columns) == []
    for with_surfaces in (True, False):
        got = _per_structure(table, NAMES, 3 if with_surfaces else None)
        assert [s.structure for s in got] == NAMES
        for s in got:
            assert (s.images, s.pooled_iou, s.pooled_dice) == (0, None, None)
            assert s.iou == s.dice == s.precision == s.recall == s.f1 == NOTHING
            if with_surfaces:
                want = {"hd95": NOTHING, "assd": NOTHING, "nsd": NOTHING,
                        "one_empty": 0, "both_empty": 3}  # fmt: skip
                assert s.surface == want
            else:
                assert s.surface is None


# ---------------------------------------------------------------- a model that segments
#
# The trained fixture's network, three epochs on the CPU, hardly segments anything (IoU
# 0.02-0.07, some structures at 0), so its per-structure figures are mostly zero. Here the
# demo's images are replaced by their first rater's label map painted in grey levels (label
# value v -> LEVELS[v]), and the network is a fixed function of the input: it reads the grey
# level back and picks the class whose level is nearest. Its predictions are thus the
# painted map after the score path's own resize and crop, and against the STAPLE consensus
# of both raters every structure scores well above zero, not 1 (the second rater differs).

LEVELS = {0: 0, 1: 40, 2: 80, 3: 120, 4: 160, 6: 200}  # label value -> grey level
CLASSES = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 6: 5}  # label value -> class (the protocol's order)
# a grey level u is class c when it lies past c of these thresholds: halfway between two
# levels, off the whole numbers (a resized uint8 image never sits on one)
THRESHOLDS = [40 * c - 19.5 for c in range(1, 6)]


def _banded(u: np.ndarray) -> np.ndarray:
    """The class of each grey level, counted here with numpy: how many thresholds lie below."""
    return (u[..., None] > np.array(THRESHOLDS)).sum(-1).astype(np.uint8)


def _level_reader():
    """A network whose logits are a known function of the input: class c's logit is
    c * u - (t_1 + ... + t_c), u the grey level (0-255) recovered from the normalised input,
    so logit c minus logit c-1 is u - t_c and the largest logit is the class of u's band."""
    import torch
    from torch import nn

    from datatool.learning.data import GRAY_MEAN, GRAY_STD

    class LevelReader(nn.Module):
        def __init__(self):
            super().__init__()
            slope = torch.arange(6, dtype=torch.float64)
            offset = -torch.tensor([0.0, *np.cumsum(THRESHOLDS).tolist()], dtype=torch.float64)
            self.register_buffer("slope", slope.view(1, 6, 1, 1))
            self.register_buffer("offset", offset.view(1, 6, 1, 1))

        def forward(self, x):
            u = (x[:, :1].double() * GRAY_STD + GRAY_MEAN) * 255.0
            return (self.slope * u + self.offset).float()

    return LevelReader()


def _paint_demo(demo_dir, out):
    """A copy of the demo dataset whose every image is rater1's label map in grey levels
    (uncompressed MONOCHROME2), the label files unchanged."""
    import shutil

    import pydicom
    import SimpleITK as sitk
    from pydicom.uid import ExplicitVRLittleEndian

    shutil.copytree(demo_dir, out)
    lut = np.zeros(256, np.uint8)
    for value, level in LEVELS.items():
        lut[value] = level
    for path in sorted((out / "dicom").rglob("*.dcm")):
        rel = path.relative_to(out / "dicom")
        label = out / "labels" / "rater1" / str(rel).replace(".dcm", ".nii.gz")
        ds = pydicom.dcmread(path)
        if not label.is_file() or "NumberOfFrames" in ds:
            path.unlink()  # no first rater's map to paint (or a cine): left out
            continue
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(label))).astype(np.uint8)
        painted = lut[mask.reshape(ds.Rows, ds.Columns)]
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        if "PlanarConfiguration" in ds:
            del ds.PlanarConfiguration
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = painted.tobytes()
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def segmenting(tmp_path_factory, demo_dir):
    """A workspace of painted demo images with both raters' labels, a STAPLE consensus, a
    split ``s`` and a run whose best checkpoint is the level reader's state: (ws, run id)."""
    import io

    import torch

    from datatool.analysis.consensus import make_consensus
    from datatool.core.catalogue import Run, RunStatus, Split
    from datatool.core.workspace import init_workspace, open_workspace
    from datatool.learning.splits import create_split
    from datatool.learning.training import TrainConfig
    from tests.labels_util import ingest_demo_with_labels

    base = tmp_path_factory.mktemp("segmenting")
    _paint_demo(demo_dir, base / "demo")
    ws = open_workspace(init_workspace(base / "ws").root)
    ingest_demo_with_labels(ws, base / "demo")
    make_consensus(ws, "staple")
    create_split(ws, "s", ratios="1:1:1", folds=0, seed=1)
    buf = io.BytesIO()
    torch.save({"model": _level_reader().state_dict()}, buf)
    digest = ws.store.put_blob(buf.getvalue())
    config = TrainConfig(preset="tiny", device="cpu").resolved()
    with ws.session() as s:
        split = s.query(Split).filter_by(name="s").one()
        run = Run(
            split_id=split.id, split_hash=split.content_hash, preset="tiny", config=config,
            seed=0, code_version="test", device="cpu", status=RunStatus.done,
            epochs_done=1, best_epoch=0, best_checkpoint=digest, last_checkpoint=digest,
        )  # fmt: skip
        s.add(run)
        s.flush()
        run_id = run.id
    yield ws, run_id
    ws.close()


def test_a_model_that_segments_scores_every_structure_as_counted_here(
    segmenting, tmp_path, monkeypatch
):
    """score_run on the level reader: its network comes from the run's config (here the
    level reader in place of the Triplet Attention Net) and its weights from the stored
    checkpoint, as for any run. Every structure is found (pooled IoU above 0.5, not 1), and
    each figure equals one counted here from the stored images and the frozen reference:
    PIL's resize, the centre crop and the bands worked out with numpy."""
    from PIL import Image as PILImage
    from sqlalchemy import select

    from datatool.core.catalogue import Annotation, Image, Run, SplitMember
    from datatool.learning import scoring

    ws, run_id = segmenting
    monkeypatch.setattr(scoring, "build_for", lambda config, k: _level_reader())
    result = scoring.score_run(ws, run_id, store_predictions=False, figures=False, out_dir=tmp_path)
    with ws.session() as s:
        run = s.get(Run, run_id)
        rows = s.execute(
            select(SplitMember.image_id, Image.store_hash, Annotation.mask_hash)
            .join(Image, Image.id == SplitMember.image_id)
            .join(Annotation, Annotation.id == SplitMember.annotation_id)
            .where(SplitMember.split_id == run.split_id, SplitMember.subset == "test")
            .order_by(SplitMember.image_id)
        ).all()
        h, w = run.config["resize"]
        crop = run.config["crop"]
    top, left = (h - crop) // 2, (w - crop) // 2
    classes = np.zeros(256, np.uint8)
    for value, c in CLASSES.items():
        classes[value] = c
    names = ["femur", "adductor magnus", "sciatic nerve", "semitendinosus", "femoral artery"]
    counts = {name: [] for name in names}
    for _, image_hash, mask_hash in rows:
        image = PILImage.fromarray(ws.store.get_array(image_hash)).resize((w, h), PILImage.BILINEAR)
        ref = PILImage.fromarray(classes[ws.store.get_array(mask_hash)])
        ref = np.asarray(ref.resize((w, h), PILImage.NEAREST))[top : top + crop, left : left + crop]
        pred = _banded(np.asarray(image, np.float64))[top : top + crop, left : left + crop]
        for c, name in enumerate(names, start=1):
            tp, fp, fn = confusion(pred, ref, c)
            if tp + fp + fn:
                counts[name].append((tp, fp, fn))
    assert result.images == len(rows) >= 3
    ious_all = []
    for name in names:
        st = next(x for x in result.structures if x.structure == name)
        tp, fp, fn = (sum(t[j] for t in counts[name]) for j in range(3))
        ious = [a / (a + b + d) for a, b, d in counts[name]]
        ious_all += ious
        assert st.images == len(counts[name]) > 0, name
        assert st.pooled_iou == pytest.approx(tp / (tp + fp + fn), rel=1e-12), name
        assert st.pooled_dice == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12), name
        assert st.iou["mean"] == pytest.approx(statistics.fmean(ious), rel=1e-12), name
        assert 0.5 < st.pooled_iou < 1.0, name  # found, and not by the reference itself
    assert result.mean_iou_per_image == pytest.approx(statistics.fmean(ious_all), rel=1e-12)
    groups = [[a / (a + b + d) for a, b, d in counts[name]] for name in names]
    f, p = stats.f_oneway(*[g for g in groups if len(g) >= 2])
    assert (result.anova_iou.F, result.anova_iou.p) == pytest.approx((f, p), rel=1e-9)
