"""QA's rules (``datatool.analysis.qa.rules``) on hand-built inputs: thresholds refused word
for word, the rater pairs' spread, and every flag's severity and evidence worked out by hand
from label maps and measures built in the test (no workspace, no training: the whole-workspace
behaviour is in test_qa.py)."""

from __future__ import annotations

import math

import pytest

from datatool.analysis import shape
from datatool.analysis.qa.inputs import _ImageInfo, _Inputs, _Label
from datatool.analysis.qa.rules import (
    IMAGE,
    Thresholds,
    _beyond_pairs,
    _evaluate,
    _r,
    model_agreement,
)
from datatool.core.catalogue import FlagReason as R
from datatool.core.errors import UsageError
from datatool.core.protocol import Protocol, Relation, Structure

# (imported here, not in the tests: mutmut's workers fork from a process that has collected
# the tests, so each mutant then runs without importing the QA package again)


def test_thresholds_refused_word_for_word():
    Thresholds().check()
    Thresholds(model_dice_below=1.0, rater_dice_below=1.0, max_flag_share=1.0).check()
    # any value above 0 will do, 1 or under too
    Thresholds(
        size_z_above=1.0, pair_z_above=0.5, temporal_ratio=0.1, temporal_floor_mm=1.0
    ).check()
    cases = [
        ({"model_dice_below": 0.0}, "--model-dice-below must lie in (0, 1], got 0.0"),
        ({"rater_dice_below": 1.5}, "--rater-dice-below must lie in (0, 1], got 1.5"),
        ({"max_flag_share": 0.0}, "--max-flag-share must lie in (0, 1], got 0.0"),
        ({"max_flag_share": 1.01}, "--max-flag-share must lie in (0, 1], got 1.01"),
        ({"size_z_above": 0.0}, "--size-z-above must be above 0, got 0.0"),
        ({"pair_z_above": -1.0}, "--pair-z-above must be above 0, got -1.0"),
        ({"temporal_ratio": 0.0}, "--temporal-ratio must be above 0, got 0.0"),
        ({"temporal_floor_mm": 0.0}, "--temporal-floor-mm must be above 0, got 0.0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsageError) as caught:
            Thresholds(**kwargs).check()
        assert str(caught.value) == message


def test_beyond_the_rater_pairs_by_hand():
    """Spread of 1..10 (median 5.5, MAD 2.5): 10.5 has z 1.349, 15.5 z 2.698; beyond 2 the
    severity is (2.698 - 2) / 2; only a value above the pairs' usual counts."""

    spread = shape.Spread.of(list(range(1, 11)))
    assert _beyond_pairs(None, 100.0, 2.0) is None
    assert _beyond_pairs(spread, 10.5, 2.0) is None
    z, severity = _beyond_pairs(spread, 15.5, 2.0)
    assert z == pytest.approx(2.698, rel=1e-12) and severity == pytest.approx(0.349, rel=1e-9)
    assert _beyond_pairs(spread, -4.5, 2.0) is None  # far below: not a disagreement
    # under a threshold below 1: 8.0 is one MAD above, z = 0.6745, severity 0.1745 / 0.5
    z, severity = _beyond_pairs(spread, 8.0, 0.5)
    assert z == pytest.approx(0.6745) and severity == pytest.approx(0.349)
    assert _r(None) is None and _r(0.123456) == 0.1235 and _r(2.71828, 2) == 2.72


# ------------------------------------------------- the rules on hand-built inputs (issue 28)
#
# A protocol of three structures and label measures written out by hand (areas, centroids,
# and for each comparison label how many of a structure's pixels lie on each of its values,
# as ``qa.measure`` records them): every severity and every piece of evidence below is
# worked out from those numbers in the comments, never read from the code under test.

NERVE, VESSEL, ARTERY = 3, 6, 5
HUMAN, MODEL, CONSENSUS = "human", "model", "consensus"


def protocol(*relations, lateral=()):
    return Protocol(
        "hand",
        "by hand",
        structures=(
            Structure("nerve", NERVE, (255, 255, 0), max_components=1, holes=False, in_view=True),
            Structure("vessel", VESSEL, (255, 0, 0), holes=False),
            Structure("artery", ARTERY, (0, 0, 255)),
        ),
        relations=relations,
        lateral_side=lateral,
    )


class Case:
    """The inputs of the rules, built label by label."""

    def __init__(self):
        self.checked, self.humans, self.images, self.drafts = [], {}, {}, {}
        self.stats, self.measures, self.spreads = {}, {}, {}

    def image(self, image_id, mm=(None, None), side=None, regions=None, series=0, device=None):
        device = device or (None, None)
        self.images[image_id] = _ImageInfo(480, 640, mm, regions, side, series, device)

    def label(self, ann, image_id, rater, areas, kind=HUMAN, checked=True, mm2=None):
        """``areas``: {value: pixels} (the others 0); ``mm2``: {value: mm²}."""

        lab = _Label(ann, image_id, rater, kind, 1, f"hash{ann}")
        mm2 = mm2 or {}
        self.stats[ann] = {
            v: (areas.get(v, 0), mm2.get(v), 1 if areas.get(v) else 0, None)
            for v in (NERVE, VESSEL, ARTERY)
        }
        if kind == MODEL:
            self.drafts[image_id] = lab
        elif kind == HUMAN:
            self.humans.setdefault(image_id, []).append(lab)
        if checked:
            self.checked.append(lab)
        return lab

    def measure(self, ann, value, centroid, vs=None, **extra):
        """A structure's record: its centroid (x, y), ``vs`` {other annotation: {value:
        pixels}}, and components, holes or edge."""
        self.measures.setdefault(ann, {})[value] = {"centroid": centroid, "vs": vs or {}, **extra}

    def inputs(self):
        raters = sorted({lab.rater for labs in self.humans.values() for lab in labs})
        return _Inputs(self.checked, self.humans, self.images, self.stats, self.spreads,
                       self.drafts, raters)  # fmt: skip

    def evaluate(self, p=None, t=None, trusted=("nerve", "vessel", "artery"), run=7):
        """(annotation, structure, reason, severity, evidence, run) of each flag, the checks
        that ran, the notes."""

        notes: list[str] = []
        found, checked = _evaluate(p or protocol(), self.inputs(), self.measures,
                                   t or Thresholds(), run, set(trusted), notes)  # fmt: skip
        rows = [(f.annotation_id, f.image_id, f.structure, str(f.reason), f.severity,
                 f.evidence, f.run) for f in found]  # fmt: skip
        return rows, checked, notes


def everything_checked(ann, others=True, draft=True):
    want = {(ann, r, None) for r in (R.components, R.holes, R.edge, R.anatomy, R.mirrored)}
    if others:
        want.add((ann, R.rater_disagreement, None))
    if draft:
        want.add((ann, R.model_disagreement, None))
    if others or draft:
        want.add((ann, R.swap, None))
    return want


def approx(x):
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def agreement_case() -> Case:
    """One image, raters A (11) and B (12) and the run's draft (13).

    nerve: 100 px in each; A and B share 40 (Dice 2*40/200 = 0.4), A and the draft 90
    (Dice 0.9), B and the draft 30 (Dice 0.3). vessel: 50 px in A and B, all shared (Dice
    1); the draft has none (Dice 0 with each). artery: in nobody's label, 20 px in the
    draft (under the 30 px a draft needs to count as present)."""
    c = Case()
    c.image(1)
    c.label(11, 1, "A", {NERVE: 100, VESSEL: 50})
    c.label(12, 1, "B", {NERVE: 100, VESSEL: 50})
    c.label(13, 1, "model:7", {NERVE: 100, ARTERY: 20}, kind=MODEL, checked=False)
    c.measure(11, NERVE, (100.0, 20.0), {12: {NERVE: 40, 0: 60}, 13: {NERVE: 90, 0: 10}})
    c.measure(11, VESSEL, (100.0, 60.0), {12: {VESSEL: 50}, 13: {0: 50}})
    c.measure(12, NERVE, (101.0, 20.0), {11: {NERVE: 40, 0: 60}, 13: {NERVE: 30, 0: 70}})
    c.measure(12, VESSEL, (100.0, 61.0), {11: {VESSEL: 50}, 13: {0: 50}})
    return c


def test_disagreements_with_the_model_and_the_other_rater_by_hand():
    """A's nerve: the draft backs it (Dice 0.9 >= 0.5), so its rater disagreement (Dice 0.4
    under 0.7: (0.7 - 0.4) / 0.7 = 3/7) counts half, 3/14. B's nerve: the draft disagrees
    (Dice 0.3: (0.5 - 0.3) / 0.5 = 0.4) and A does not back it (0.4 < 0.7): 0.4 whole; its
    rater disagreement 3/7 whole. Both vessels: absent in the draft (Dice 0, severity 1)
    while the other rater backs them (Dice 1): 0.5. The artery, in neither rater's label and
    under 30 px in the draft, is absent in both: no flag."""
    rows, checked, notes = agreement_case().evaluate()
    model_vessel = {"dice": 0.0, "threshold": 0.5, "area_px": 50, "run": 7,
                    "model_annotation": 13, "model_area_px": 0}  # fmt: skip
    assert rows == [
        (11, 1, "nerve", "rater_disagreement", approx(3 / 14),
         {"dice": 0.4, "threshold": 0.7, "area_px": 100, "other_rater": "B",
          "other_annotation": 12, "other_area_px": 100, "model_backs": True,
          "model_dice": 0.9}, None),
        (11, 1, "vessel", "model_disagreement", approx(0.5),
         {**model_vessel, "raters_back": ["B"]}, 7),
        (12, 1, "nerve", "model_disagreement", approx(0.4),
         {"dice": 0.3, "threshold": 0.5, "area_px": 100, "run": 7, "model_annotation": 13,
          "model_area_px": 100}, 7),
        (12, 1, "nerve", "rater_disagreement", approx(3 / 7),
         {"dice": 0.4, "threshold": 0.7, "area_px": 100, "other_rater": "A",
          "other_annotation": 11, "other_area_px": 100}, None),
        (12, 1, "vessel", "model_disagreement", approx(0.5),
         {**model_vessel, "raters_back": ["A"]}, 7),
    ]  # fmt: skip
    assert checked == everything_checked(11) | everything_checked(12)
    assert notes == []


def test_the_model_is_compared_only_where_it_is_trusted_and_its_median_dice():
    """Without the vessel among the trusted structures its model flags go (the check still
    counts as run). The model's agreement: nerve Dice 0.9 (A) and 0.3 (B), median 0.6 of 2;
    vessel 0 and 0; the artery is absent in both labels and under 30 px in the draft: none."""

    c = agreement_case()
    rows, checked, _ = c.evaluate(trusted=("nerve", "artery"))
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (11, "nerve", "rater_disagreement"),
        (12, "nerve", "model_disagreement"),
        (12, "nerve", "rater_disagreement"),
    ]
    assert checked == everything_checked(11) | everything_checked(12)
    # a label of an image without a draft, checked first, changes none of it
    c.image(0)
    c.label(10, 0, "A", {NERVE: 50})
    c.measure(10, NERVE, (80.0, 20.0))
    c.checked.insert(0, c.checked.pop())
    agreement = model_agreement(protocol(), c.inputs(), c.measures, Thresholds())
    assert agreement == {"nerve": (approx(0.6), 2), "vessel": (0.0, 2), "artery": (None, 0)}
    # a label with the vessel alone and its draft likewise (Dice 1): the nerve, absent in
    # both, is skipped (the structures after it still count); a label with nothing measured
    # (no record at all) whose draft holds 40 px of artery: Dice 0
    d = Case()
    d.image(400)
    d.image(401)
    d.label(4001, 400, "A", {VESSEL: 50})
    d.label(4002, 400, "model:7", {VESSEL: 50}, kind=MODEL, checked=False)
    d.measure(4001, VESSEL, (50.0, 60.0), {4002: {VESSEL: 50}})
    d.label(4011, 401, "A", {})
    d.label(4012, 401, "model:7", {ARTERY: 40}, kind=MODEL, checked=False)
    assert model_agreement(protocol(), d.inputs(), d.measures, Thresholds()) == {
        "nerve": (None, 0), "vessel": (1.0, 1), "artery": (0.0, 1)}  # fmt: skip
    # a draft of the artery of exactly 30 px is present: Dice 0 with each label (severity
    # 1), which the other rater, who has no artery either, backs: 0.5
    c.stats[13][ARTERY] = (30, None, 1, None)
    agreement = model_agreement(protocol(), c.inputs(), c.measures, Thresholds())
    assert agreement["artery"] == (0.0, 2)
    rows, _, _ = c.evaluate()
    assert [(r[0], r[2], r[3], r[4], r[5]["raters_back"]) for r in rows if r[2] == "artery"] == [
        (11, "artery", "model_disagreement", 0.5, ["B"]),
        (12, "artery", "model_disagreement", 0.5, ["A"]),
    ]


def test_a_swap_against_a_rater_the_model_backs_counts_half():
    """A's nerve (100 px): 80 px on B's vessel, 10 on B's nerve: share 0.8 >= 0.5 and >= 3 x
    0.1, severity (0.8 - 0.5) / (1 - 0.5) = 0.6; the draft backs A (nerve Dice 0.9), so 0.3.
    The swap explains the low nerve Dice with B (2 * 10 / 200): no rater disagreement on it.
    A has no vessel, B has 80 px of it: Dice 0, severity 1, halved (the draft has no vessel
    either: absent in both, it backs A)."""
    c = Case()
    c.image(2)
    c.label(21, 2, "A", {NERVE: 100})
    c.label(22, 2, "B", {NERVE: 100, VESSEL: 80}, checked=False)
    c.label(23, 2, "model:7", {NERVE: 100}, kind=MODEL, checked=False)
    c.measure(21, NERVE, (50.0, 20.0), {22: {VESSEL: 80, NERVE: 10, 0: 10}, 23: {NERVE: 90, 0: 10}})
    rows, checked, _ = c.evaluate()
    assert rows == [
        (21, 2, "nerve", "swap", approx(0.3),
         {"lies_on": "vessel", "source": "B", "source_annotation": 22, "share_on_other": 0.8,
          "share_on_own": 0.1, "area_px": 100, "model_backs": True, "model_dice": 0.9}, None),
        (21, 2, "vessel", "rater_disagreement", approx(0.5),
         {"dice": 0.0, "threshold": 0.7, "area_px": 0, "other_rater": "B",
          "other_annotation": 22, "other_area_px": 80, "model_backs": True,
          "model_dice": 1.0}, None),
    ]  # fmt: skip
    assert checked == everything_checked(21)
    # the thresholds of a swap are the ones given: at least 0.9 of the nerve, or 10 times
    # its share on B's nerve (0.8 < 10 x 0.1), and it is no swap
    for t in (Thresholds(swap_min_share=0.9), Thresholds(swap_ratio=10.0)):
        rows, _, _ = c.evaluate(t=t)
        assert [r[3] for r in rows if r[2] == "nerve"] == ["rater_disagreement"]


def test_a_swap_with_the_draft_that_backs_the_label_counts_whole():
    """Under a model threshold of 0.3, A's nerve (100 px) lies 75 px on the draft's vessel and
    25 on its nerve (25 px): share 0.75 >= 0.5 and >= 3 x 0.25, severity 0.5; the draft's
    nerve Dice, 50 / 125 = 0.4, backs A, but a swap with the draft itself is not halved and
    carries no backing. A has no vessel, the draft 75 px: Dice 0, severity 1."""
    c = Case()
    c.image(5)
    c.label(51, 5, "A", {NERVE: 100})
    c.label(53, 5, "model:7", {NERVE: 25, VESSEL: 75}, kind=MODEL, checked=False)
    c.measure(51, NERVE, (50.0, 20.0), {53: {VESSEL: 75, NERVE: 25}})
    rows, checked, _ = c.evaluate(t=Thresholds(model_dice_below=0.3))
    assert rows == [
        (51, 5, "nerve", "swap", 0.5,
         {"lies_on": "vessel", "source": "model:7", "source_annotation": 53,
          "share_on_other": 0.75, "share_on_own": 0.25, "area_px": 100}, 7),
        (51, 5, "vessel", "model_disagreement", 1.0,
         {"dice": 0.0, "threshold": 0.3, "area_px": 0, "run": 7, "model_annotation": 53,
          "model_area_px": 75}, 7),
    ]  # fmt: skip
    assert checked == everything_checked(51, others=False)


def test_the_worst_swap_wins_and_a_swap_with_the_model_counts_whole():
    """A's nerve (100 px) lies 70 px on B's vessel (severity (0.7 - 0.5) / 0.5 = 0.4) and all
    100 on the draft's vessel (severity 1): the draft's swap is reported, whole, with the
    run; both the draft's and B's low nerve Dice are explained by swaps, so no disagreement
    flag on the nerve. A has no vessel where B (70 px) and the draft (100 px) have one: Dice
    0 with each, severity 1, and nobody backs A."""
    c = Case()
    c.image(3)
    c.label(31, 3, "A", {NERVE: 100})
    c.label(32, 3, "B", {NERVE: 30, VESSEL: 70}, checked=False)
    c.label(33, 3, "model:7", {VESSEL: 100}, kind=MODEL, checked=False)
    c.measure(31, NERVE, (50.0, 20.0), {32: {VESSEL: 70, 0: 30}, 33: {VESSEL: 100}})
    rows, _, _ = c.evaluate()
    assert rows == [
        (31, 3, "nerve", "swap", 1.0,
         {"lies_on": "vessel", "source": "model:7", "source_annotation": 33,
          "share_on_other": 1.0, "share_on_own": 0.0, "area_px": 100}, 7),
        (31, 3, "vessel", "model_disagreement", 1.0,
         {"dice": 0.0, "threshold": 0.5, "area_px": 0, "run": 7, "model_annotation": 33,
          "model_area_px": 100}, 7),
        (31, 3, "vessel", "rater_disagreement", 1.0,
         {"dice": 0.0, "threshold": 0.7, "area_px": 0, "other_rater": "B",
          "other_annotation": 32, "other_area_px": 70}, None),
    ]  # fmt: skip
    # the same against B alone (no draft): B's swap, whole (nothing backs A)
    del c.drafts[3]
    c.measures[31][NERVE]["vs"].pop(33)
    rows, checked, _ = c.evaluate()
    assert rows == [
        (31, 3, "nerve", "swap", approx(0.4),
         {"lies_on": "vessel", "source": "B", "source_annotation": 32, "share_on_other": 0.7,
          "share_on_own": 0.0, "area_px": 100}, None),
        (31, 3, "vessel", "rater_disagreement", 1.0,
         {"dice": 0.0, "threshold": 0.7, "area_px": 0, "other_rater": "B",
          "other_annotation": 32, "other_area_px": 70}, None),
    ]  # fmt: skip
    assert checked == everything_checked(31, draft=False)


def test_shape_flags_by_hand():
    """The nerve (100 px, at most 1 component, no holes, in the view): 3 components with 12
    px outside the largest (12 / 100), 2 holes of 9 px (9 / 109), 5 of its 20 outline pixels
    on the view's edge (0.25). Holes of fewer than 4 px together are brush noise; a record
    without holes, edge or components says nothing. A label with no other label and no
    draft: only the checks of its own shape run."""
    c = Case()
    c.image(4, regions=[{"x0": 0, "y0": 0, "x1": 600, "y1": 400}])
    c.image(5)
    c.label(41, 4, "A", {NERVE: 100, VESSEL: 40})
    c.label(51, 5, "A", {NERVE: 100, VESSEL: 40})
    c.measure(41, NERVE, (50.0, 20.0), components=(3, 12), holes=(2, 9), edge=(5, 20))
    c.measure(41, VESSEL, (50.0, 60.0), holes=(1, 3))
    c.measure(51, NERVE, (50.0, 20.0), holes=(1, 4), edge=(30, 20))
    c.measure(51, VESSEL, (50.0, 60.0), holes=(0, 6))
    # no nerve, a vessel (solid too) with a hole of 5 px: 5 / (40 + 5), and an artery
    c.image(10)
    c.label(101, 10, "A", {VESSEL: 40, ARTERY: 30})
    c.measure(101, VESSEL, (50.0, 60.0), holes=(1, 5))
    c.measure(101, ARTERY, (90.0, 60.0))
    rows, checked, _ = c.evaluate()
    assert rows == [
        (41, 4, "nerve", "components", approx(0.12),
         {"components": 3, "max_components": 1, "outside_largest_px": 12, "area_px": 100},
         None),
        (41, 4, "nerve", "holes", approx(9 / 109), {"holes": 2, "hole_px": 9, "area_px": 100},
         None),
        (41, 4, "nerve", "edge", approx(0.25),
         {"touching_px": 5, "outline_px": 20, "view": "ultrasound region"}, None),
        # exactly 4 px of holes count; 30 of 20 outline pixels (as measured) is at most 1
        (51, 5, "nerve", "holes", approx(4 / 104), {"holes": 1, "hole_px": 4, "area_px": 100},
         None),
        (51, 5, "nerve", "edge", 1.0, {"touching_px": 30, "outline_px": 20, "view": "image"},
         None),
        (101, 10, "vessel", "holes", approx(5 / 45), {"holes": 1, "hole_px": 5, "area_px": 40},
         None),
    ]  # fmt: skip
    # a record without holes (a structure that may have them) is no hole, even counting
    # holes of any size
    rows, _, _ = c.evaluate(t=Thresholds(min_hole_px=0))
    assert [r for r in rows if r[3] == "holes" and r[2] == "artery"] == []
    assert checked == everything_checked(41, False, False) | everything_checked(
        51, False, False) | everything_checked(101, False, False)  # fmt: skip


def test_sizes_against_the_workspaces_spread_by_hand():
    """Robust z = 0.6745 (value - median) / MAD, flagged beyond 3.5 with severity
    (|z| - 3.5) / 3.5; area, median and MAD shown to 2 decimals. A calibrated image's nerve
    of 80.126 mm² (shown 80.13) against median 50.124, MAD 5.126 (shown 50.12 and 5.13):
    z = 0.6745 * 30.002 / 5.126 = 3.948, severity 0.448 / 3.5. Its vessel has no mm² (px
    then): 200 px against median 100, MAD 10: z = 6.745, severity 3.245 / 3.5. A nerve of 10
    mm² lies below: z = 0.6745 * -40.124 / 5.126 = -5.280, severity 1.780 / 3.5. 60 mm²
    (z 1.300) is usual. The artery,
    absent from every label (no mm² either, so judged in pixels, where a spread is known), is
    checked and not flagged; an uncalibrated image's nerve is judged in pixels, where no
    spread is known: not checked, though the label has its mm²."""

    c = Case()
    c.spreads = {
        ("nerve", "mm2"): shape.Spread(12, 50.124, 5.126),
        ("vessel", "px"): shape.Spread(11, 100.0, 10.0),
        ("artery", "px"): shape.Spread(10, 40.0, 4.0),
    }
    c.image(6, mm=(0.5, 0.4))
    c.image(7, mm=(0.5, 0.4))
    c.image(8, mm=(0.5, 0.4))
    c.image(9, mm=(None, 0.4))
    c.label(61, 6, "A", {NERVE: 400, VESSEL: 200}, mm2={NERVE: 80.126})
    c.label(71, 7, "A", {NERVE: 50}, mm2={NERVE: 10.0})
    c.label(81, 8, "A", {NERVE: 300}, mm2={NERVE: 60.0})
    c.label(91, 9, "A", {NERVE: 300}, mm2={NERVE: 80.0})
    rows, checked, _ = c.evaluate()
    assert rows == [
        (61, 6, "nerve", "size", approx((0.6745 * 30.002 / 5.126 - 3.5) / 3.5),
         {"area": 80.13, "unit": "mm2", "median": 50.12, "mad": 5.13, "robust_z": 3.95,
          "threshold": 3.5, "labels": 12}, None),
        (61, 6, "vessel", "size", approx((6.745 - 3.5) / 3.5),
         {"area": 200, "unit": "px", "median": 100.0, "mad": 10.0, "robust_z": 6.75,
          "threshold": 3.5, "labels": 11}, None),
        (71, 7, "nerve", "size", approx((0.6745 * 40.124 / 5.126 - 3.5) / 3.5),
         {"area": 10.0, "unit": "mm2", "median": 50.12, "mad": 5.13, "robust_z": -5.28,
          "threshold": 3.5, "labels": 12}, None),
    ]  # fmt: skip
    sizes = {(a, s) for a, r, s in checked if r == R.size}
    assert sizes == {(a, s) for a in (61, 71, 81, 91) for s in ("vessel", "artery")} | {
        (61, "nerve"), (71, "nerve"), (81, "nerve")}  # fmt: skip


def test_rater_pairs_further_apart_than_the_workspaces_pairs_by_hand():
    """Eleven images, each labelled by A (1000 + image) and B (2000 + image), uncalibrated
    (pixels). The nerve (2000 px each, 1700 shared: Dice 0.85) has B's centroid 1, 2, ..., 10
    px right of A's, and 20.123 px on the last image: offsets 1..10 and 20.123, median 6,
    deviations 5 4 3 2 1 0 1 2 3 4 14.123, MAD 3 (above the 2 px floor). z(20.123) =
    0.6745 * 14.123 / 3 = 3.175 (shown 3.18; the offset 20.12) > 2: severity (3.175 - 2) /
    2. z(10) = 0.899, and below the median z < 0: no flag.

    The vessel: 400 px in both everywhere (radius difference 0: MAD 0, floored to 1 px) but
    on the last image, where B's holds 700 (the 400 of A's inside: Dice 800 / 1100): radius
    difference (sqrt(700) - sqrt(400)) / sqrt(pi) = 3.643, z = 0.6745 * 3.643 = 2.457.

    The artery: 400 px, the same place, but on the last image B's is 700 px and 16 px right:
    offset z = 0.6745 * 16 / 2 (floor) = 5.396 and radius z 2.457; the worse counts, and the
    evidence holds both."""

    c = Case()
    for k in range(1, 12):
        d = 20.123 if k == 11 else float(k)
        last = k == 11
        i = 100 + k
        c.image(i)
        b_area = 700 if last else 400
        c.label(1000 + i, i, "A", {NERVE: 2000, VESSEL: 400, ARTERY: 400})
        c.label(2000 + i, i, "B", {NERVE: 2000, VESSEL: b_area, ARTERY: b_area})
        for me, other in ((1000 + i, 2000 + i), (2000 + i, 1000 + i)):
            shift = d if me > 2000 else 0.0
            c.measure(me, NERVE, (100.0 + shift, 20.0), {other: {NERVE: 1700, 0: 300}})
            own = 400 if me < 2000 else b_area
            c.measure(me, VESSEL, (100.0, 60.0), {other: {VESSEL: 400, 0: own - 400}})
            at = 16.0 if last and me > 2000 else 0.0
            c.measure(me, ARTERY, (300.0 + at, 60.0), {other: {ARTERY: 400, 0: own - 400}})
    # on the last image a third rater, C (3111, not checked), drew just what B drew: A's
    # pairs with B and with C are alike, and the first (B) is reported; B and C agree
    c.label(3111, 111, "C", {NERVE: 2000, VESSEL: 700, ARTERY: 700}, checked=False)
    for value, area in ((NERVE, 2000), (VESSEL, 700), (ARTERY, 700)):
        c.measures[3111] = c.measures.get(3111, {})
        c.measures[3111][value] = {**c.measures[2111][value], "vs": {}}
        c.measures[1111][value]["vs"][3111] = c.measures[1111][value]["vs"][2111]
        c.measures[2111][value]["vs"][3111] = {value: area}
    rows, _, _ = c.evaluate()
    rd = (math.sqrt(700) - math.sqrt(400)) / math.sqrt(math.pi)
    assert rd == pytest.approx(3.6433, abs=1e-4)
    nerve = (0.6745 * 14.123 / 3 - 2) / 2
    vessel = (0.6745 * rd - 2) / 2
    artery = (0.6745 * 8 - 2) / 2
    want = []
    for me, other, ratio, area, other_area in ((1111, 2111, 0.571, 400, 700),
                                               (2111, 1111, 1.75, 700, 400)):  # fmt: skip
        rater = "B" if other > 2000 else "A"
        pair = {"threshold": 2.0, "other_rater": rater, "other_annotation": other}
        sized = {"area_ratio": ratio, "radius_diff": 3.64, "area_z": 2.46, "offset_unit": "px"}
        want += [
            (me, 111, "nerve", "rater_disagreement", approx(nerve),
             {"offset": 20.12, "offset_unit": "px", "offset_z": 3.18, "dice": 0.85,
              "area_px": 2000, "other_area_px": 2000, **pair}, None),
            (me, 111, "vessel", "rater_disagreement", approx(vessel),
             {**sized, "dice": 0.7273, "area_px": area, "other_area_px": other_area, **pair},
             None),
            (me, 111, "artery", "rater_disagreement", approx(artery),
             {"offset": 16.0, "offset_z": 5.4, **sized, "dice": 0.7273, "area_px": area,
              "other_area_px": other_area, **pair}, None),
        ]  # fmt: skip
    assert rows == want
    # A's nerve on the last image sharing 1300 px with B's (Dice 2600 / 4000 = 0.65 < 0.7):
    # a rater disagreement, (0.7 - 0.65) / 0.7, and no pair flag on it besides
    c.measures[1111][NERVE]["vs"] = {2111: {NERVE: 1300, 0: 700}, 3111: {NERVE: 1300, 0: 700}}
    rows, _, _ = c.evaluate()
    assert [r for r in rows if r[0] == 1111 and r[2] == "nerve"] == [
        (1111, 111, "nerve", "rater_disagreement", approx(0.05 / 0.7),
         {"dice": 0.65, "threshold": 0.7, "area_px": 2000, "other_rater": "B",
          "other_annotation": 2111, "other_area_px": 2000}, None),
    ]  # fmt: skip


def test_relations_broken_on_centroids_by_hand():
    """Nerve superficial to vessel (up in the image): a nerve centred at row 50.34 under a
    vessel at row 30 is wrong by 20.34 px (shown 20.3), 20.34 x 0.25 mm (the rows' spacing)
    = 5.085 mm (shown 5.08 or 5.09: 2 decimals); severity 20.34 over the equivalent radii
    sqrt(100 / pi) + sqrt(50 / pi). Nerve deep to vessel holds there; a relation of a
    structure the label lacks (the artery, listed first) is not checked."""
    p = protocol(
        Relation("artery", "deep to", "nerve"),
        Relation("nerve", "superficial to", "vessel"),
        Relation("nerve", "deep to", "vessel"),
    )
    c = Case()
    c.image(120, mm=(0.5, 0.25), side="L")
    c.label(1201, 120, "A", {NERVE: 100, VESSEL: 50})
    c.measure(1201, NERVE, (10.04, 50.34))
    c.measure(1201, VESSEL, (9.86, 30.0))
    rows, _, _ = c.evaluate(p)
    (row,) = rows
    assert row[:4] == (1201, 120, "nerve", "anatomy") and row[6] is None
    assert row[4] == approx(20.34 / (math.sqrt(100 / math.pi) + math.sqrt(50 / math.pi)))
    evidence = row[5]
    assert evidence.pop("wrong_by_mm") in (5.08, 5.09)
    assert evidence == {"relation": "nerve superficial to vessel", "other": "vessel",
                        "wrong_by_px": 20.3, "centroid": [10.0, 50.3],
                        "other_centroid": [9.9, 30.0], "leg": "L"}  # fmt: skip


def test_lateral_relations_and_a_mirrored_image_by_hand():
    """Nerve lateral to vessel; the protocol shows a left leg's lateral side on the image's
    left, a right leg's on its right (few labels: the protocol's convention stands).
    Image 130 (left leg): nerve at x 20, vessel at x 60: as it should be. Image 131 (left
    leg): both raters put the nerve right of the vessel: the image looks mirrored, one flag
    on its first label, and its lateral relations are not checked again. Image 132 (right
    leg): nerve right of the vessel, as it should be. Image 134 (left leg): A right, but its
    consensus label puts the nerve at x 60, the vessel at x 20: not all labels disagree, so
    the consensus label breaks the relation by 40 px, 40 x 0.5 mm (the columns' spacing),
    severity 40 / (sqrt(100 / pi) + sqrt(50 / pi)). Image 135 (no leg): not checked."""

    p = protocol(Relation("nerve", "lateral to", "vessel"), lateral=(("L", "left"), ("R", "right")))
    c = Case()
    cases = [
        (130, "L", [(1301, HUMAN, 20)]),
        (131, "L", [(1311, HUMAN, 60), (1312, HUMAN, 60)]),
        (132, "R", [(1321, HUMAN, 60)]),
        (134, "L", [(1341, HUMAN, 20), (1342, CONSENSUS, 60)]),
        (135, None, [(1351, HUMAN, 60)]),
    ]
    for image, leg, labels in cases:
        c.image(image, mm=(0.5, 0.25), side=leg, series=image)
        for ann, kind, nerve_x in labels:
            c.label(ann, image, f"r{ann}", {NERVE: 100, VESSEL: 50}, kind=kind)
            same = [o for o, k, _ in labels if o != ann]
            c.measure(ann, NERVE, (nerve_x, 40.0), {o: {NERVE: 100} for o in same})
            c.measure(ann, VESSEL, (80.0 - nerve_x, 40.0), {o: {VESSEL: 50} for o in same})
    rows, _, notes = c.evaluate(p)
    assert rows == [
        (1311, 131, IMAGE, "mirrored", 1.0,
         {"relations": ["nerve lateral to vessel"], "labels": 2, "labels_show": "right",
          "lateral_side": "left", "convention": "protocol", "votes": 0, "share": None,
          "leg": "L"}, None),
        (1342, 134, "nerve", "anatomy",
         approx(40 / (math.sqrt(100 / math.pi) + math.sqrt(50 / math.pi))),
         {"relation": "nerve lateral to vessel", "other": "vessel", "wrong_by_px": 40.0,
          "wrong_by_mm": 20.0, "centroid": [60.0, 40.0], "other_centroid": [20.0, 40.0],
          "leg": "L", "lateral_side": "left", "convention": "protocol"}, None),
    ]  # fmt: skip
    assert notes == []
    # a mirrored image's relations that are not lateral are still checked, without the
    # lateral convention: nerve superficial to vessel, the nerve 20 rows under it (20 x 0.25
    # = 5 mm)
    p = protocol(
        Relation("nerve", "lateral to", "vessel"),
        Relation("nerve", "superficial to", "vessel"),
        lateral=(("L", "left"), ("R", "right")),
    )
    m = Case()
    m.image(136, mm=(0.5, 0.25), side="L")
    m.label(1361, 136, "A", {NERVE: 100, VESSEL: 50})
    m.measure(1361, NERVE, (60.0, 50.0))
    m.measure(1361, VESSEL, (20.0, 30.0))
    rows, _, _ = m.evaluate(p)
    assert rows == [
        (1361, 136, IMAGE, "mirrored", 1.0,
         {"relations": ["nerve lateral to vessel"], "labels": 1, "labels_show": "right",
          "lateral_side": "left", "convention": "protocol", "votes": 0, "share": None,
          "leg": "L"}, None),
        (1361, 136, "nerve", "anatomy",
         approx(20 / (math.sqrt(100 / math.pi) + math.sqrt(50 / math.pi))),
         {"relation": "nerve superficial to vessel", "other": "vessel", "wrong_by_px": 20.0,
          "wrong_by_mm": 5.0, "centroid": [60.0, 50.0], "other_centroid": [20.0, 30.0],
          "leg": "L"}, None),
    ]  # fmt: skip


def test_ties_go_to_the_first_label_and_backing_at_the_threshold():
    """Image 200: A (2001, checked), raters B (2002) and C (2003), the draft (2004).
    nerve (100 px in A): 80 px on B's vessel and 10 on its nerve, the same on the draft's:
    two swaps of severity (0.8 - 0.5) / 0.5 = 0.6; the first compared (B) is reported, whole
    (the draft, Dice 2 * 10 / 110 with A, does not back A), and both low Dice are explained.
    vessel (100 px in A, B, C and the draft): 50 shared with B and with C (Dice 0.5 each,
    severity 0.2 / 0.7), B reported; the draft (Dice 1) backs A: halved, 1/7.
    artery (100 px in each): the draft shares 20 (Dice 0.2, severity 0.3 / 0.5 = 0.6), B 70
    (Dice exactly 0.7: B backs A, halved to 0.3), C none (Dice 0: severity 1, whole).
    Image 201: D's label with the draft alone, which agrees: no flag, and no rater check."""
    c = Case()
    c.image(200)
    c.image(201)
    c.label(2001, 200, "A", {NERVE: 100, VESSEL: 100, ARTERY: 100})
    c.label(2002, 200, "B", {NERVE: 10, VESSEL: 100, ARTERY: 100}, checked=False)
    c.label(2003, 200, "C", {NERVE: 100, VESSEL: 100, ARTERY: 100}, checked=False)
    c.label(2004, 200, "model:7", {NERVE: 10, VESSEL: 100, ARTERY: 100}, kind=MODEL,
            checked=False)  # fmt: skip
    on_vessel = {VESSEL: 80, NERVE: 10, 0: 10}
    c.measure(2001, NERVE, (50.0, 20.0), {2002: on_vessel, 2003: {NERVE: 100}, 2004: on_vessel})
    half = {VESSEL: 50, 0: 50}
    c.measure(2001, VESSEL, (50.0, 60.0), {2002: half, 2003: half, 2004: {VESSEL: 100}})
    c.measure(2001, ARTERY, (90.0, 60.0),
              {2002: {ARTERY: 70, 0: 30}, 2003: {0: 100}, 2004: {ARTERY: 20, 0: 80}})  # fmt: skip
    c.label(2011, 201, "D", {NERVE: 100})
    c.label(2014, 201, "model:7", {NERVE: 100}, kind=MODEL, checked=False)
    c.measure(2011, NERVE, (50.0, 20.0), {2014: {NERVE: 100}})
    rows, checked, _ = c.evaluate()
    assert rows == [
        (2001, 200, "nerve", "swap", approx(0.6),
         {"lies_on": "vessel", "source": "B", "source_annotation": 2002, "share_on_other": 0.8,
          "share_on_own": 0.1, "area_px": 100}, None),
        (2001, 200, "vessel", "rater_disagreement", approx(1 / 7),
         {"dice": 0.5, "threshold": 0.7, "area_px": 100, "other_rater": "B",
          "other_annotation": 2002, "other_area_px": 100, "model_backs": True,
          "model_dice": 1.0}, None),
        (2001, 200, "artery", "model_disagreement", approx(0.3),
         {"dice": 0.2, "threshold": 0.5, "area_px": 100, "run": 7, "model_annotation": 2004,
          "model_area_px": 100, "raters_back": ["B"]}, 7),
        (2001, 200, "artery", "rater_disagreement", 1.0,
         {"dice": 0.0, "threshold": 0.7, "area_px": 100, "other_rater": "C",
          "other_annotation": 2003, "other_area_px": 100}, None),
    ]  # fmt: skip
    assert checked == everything_checked(2001) | everything_checked(2011, others=False)
    # the worse of two disagreements: E's nerve shares 10 px with F's (Dice 0.1, severity
    # 0.6 / 0.7) and 20 with G's (Dice 0.2, severity 0.5 / 0.7): F's is reported
    e = Case()
    e.image(202)
    e.label(2021, 202, "E", {NERVE: 100})
    e.label(2022, 202, "F", {NERVE: 100}, checked=False)
    e.label(2023, 202, "G", {NERVE: 100}, checked=False)
    e.measure(2021, NERVE, (50.0, 20.0), {2022: {NERVE: 10, 0: 90}, 2023: {NERVE: 20, 0: 80}})
    rows, _, _ = e.evaluate()
    assert rows == [
        (2021, 202, "nerve", "rater_disagreement", approx(0.6 / 0.7),
         {"dice": 0.1, "threshold": 0.7, "area_px": 100, "other_rater": "F",
          "other_annotation": 2022, "other_area_px": 100}, None),
    ]  # fmt: skip


def test_a_workspace_whose_labels_show_the_other_side_is_one_note_and_no_flags():
    """20 labels of left legs (the least that counts) all put the nerve right of the vessel,
    against the protocol's left: the workspace's own convention is learned (no mirrored or
    anatomy flag), and the note says so."""

    p = protocol(Relation("nerve", "lateral to", "vessel"), lateral=(("L", "left"), ("R", "right")))
    c = Case()
    for k in range(20):
        c.image(300 + k, side="L")
        c.label(3000 + k, 300 + k, "A", {NERVE: 100, VESSEL: 50})
        c.measure(3000 + k, NERVE, (60.0, 40.0))
        c.measure(3000 + k, VESSEL, (20.0, 40.0))
    rows, _, notes = c.evaluate(p)
    assert rows == []
    assert notes == [
        "'nerve lateral to vessel': 100 % of 20 labels of L legs show it on the image's right, "
        "not the left, so the labels were checked against their own convention (no flags for "
        "it): if that is the study's display, set lateral_side: {L: right, R: right} in "
        "protocol hand"
    ]


def test_each_device_keeps_its_own_convention():
    """Left legs on two devices, 20 labels each (one image and series apiece, too few for a
    series' own convention): device X's all show the nerve right of the vessel, device Y's
    left of it. Each device's 20 votes are its convention, so no label is mirrored and there
    is no note (the leg's 40 votes are split evenly: no workspace-wide side)."""
    p = protocol(Relation("nerve", "lateral to", "vessel"), lateral=(("L", "left"), ("R", "right")))
    c = Case()
    for k in range(40):
        device, nerve_x = (("X", "1"), 60.0) if k < 20 else (("Y", "2"), 20.0)
        c.image(500 + k, side="L", series=500 + k, device=device)
        c.label(5000 + k, 500 + k, "A", {NERVE: 100, VESSEL: 50})
        c.measure(5000 + k, NERVE, (nerve_x, 40.0))
        c.measure(5000 + k, VESSEL, (80.0 - nerve_x, 40.0))
    rows, _, notes = c.evaluate(p)
    assert rows == [] and notes == []
