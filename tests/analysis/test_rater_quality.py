"""Rater quality on gold-standard tasks (datatool/analysis/rater_quality.py, ``datatool
raters``) on handmade studies with known answers: a rater copying the reference scores 1, a
rater shifting the femur by a known amount a known IoU, and a rater who gets worse half way a
known drift (by the time labelled, not the image order)."""

from __future__ import annotations

import csv
import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from datatool.analysis.rater_quality import ALL, rater_quality
from datatool.cli import app
from datatool.labels.gold import hand_gold
from tests.gold_util import femur_shifted, label, reference_mask, study

T0 = dt.datetime(2026, 1, 5, 9, 0, 0)


def _scores(q, rater: str) -> dict:
    (r,) = [x for x in q.raters if x.rater == rater]
    return {g.structure: g for g in [*r.structures, r.overall]}, r


@pytest.fixture()
def gold_study(ws, tmp_path):
    """Six images labelled by EXP; all six handed as gold to AN1 (copies EXP), AN2 (femur 2 px
    to the right) and AN3 (exact on the three images it labels first, femur 5 px off on the
    three it labels last; it labels them in the order 5, 1, 3, 0, 4, 2)."""
    ids = study(ws, tmp_path, 6, raters=("EXP", "AN1", "AN2", "AN3"))
    for i in ids:
        label(ws, "EXP", i, reference_mask())
    for rater in ("AN1", "AN2", "AN3"):
        assert hand_gold(ws, rater, 6, "EXP", 0, "itksnap", []).gold == ids
    for i in ids:
        label(ws, "AN1", i, reference_mask())
        label(ws, "AN2", i, femur_shifted(2))
    order = [5, 1, 3, 0, 4, 2]  # image positions, by time labelled
    for k in range(6):  # stored in image order, but labelled at the times above
        when = T0 + dt.timedelta(minutes=order.index(k))
        label(ws, "AN3", ids[k], reference_mask() if k in order[:3] else femur_shifted(5), when)
    return ws, ids


def test_a_rater_copying_the_reference_scores_one(gold_study):
    ws, _ = gold_study
    scores, r = _scores(rater_quality(ws), "AN1")
    assert (r.handed, r.labelled, r.half, r.references) == (6, 6, 3, ["EXP"])
    for name in ("femur", "sciatic nerve", ALL):
        g = scores[name]
        assert g.images == 6 and g.iou["mean"] == 1.0 and g.dice["mean"] == 1.0
        assert g.drift == 0.0 and g.one_absent == 0
    # structures neither drew: left out of the means and counted
    empty = scores["femoral artery"]
    assert (empty.both_absent, empty.iou["n"], empty.drift) == (6, 0, None)
    assert scores[ALL].both_absent == 3 * 6


def test_a_shifted_femur_gives_the_iou_worked_out_by_hand(gold_study):
    """10 x 10 femur moved 2 px: overlap 10 x 8 = 80, union 120, IoU 2/3, Dice 160/200."""
    ws, _ = gold_study
    scores, _ = _scores(rater_quality(ws), "AN2")
    assert scores["femur"].iou["mean"] == pytest.approx(2 / 3)
    assert scores["femur"].dice["mean"] == pytest.approx(0.8)
    assert scores["femur"].iou["sd"] == pytest.approx(0.0)
    assert scores["sciatic nerve"].iou["mean"] == 1.0
    # all structures: the femur's and the nerve's pairs pooled
    assert scores[ALL].dice["mean"] == pytest.approx(0.9)
    assert scores[ALL].iou["mean"] == pytest.approx((2 / 3 + 1) / 2)


def test_drift_compares_the_halves_by_time_labelled(gold_study):
    """Femur 5 px off: overlap 50, Dice 100/200 = 0.5 on the second half, 1 on the first."""
    ws, _ = gold_study
    scores, r = _scores(rater_quality(ws), "AN3")
    assert (r.labelled, r.half) == (6, 3)
    femur = scores["femur"]
    assert (femur.dice_first_half, femur.dice_second_half) == (1.0, pytest.approx(0.5))
    assert femur.drift == pytest.approx(-0.5)
    assert scores["sciatic nerve"].drift == 0.0
    assert scores[ALL].drift == pytest.approx((1 + 0.5) / 2 - 1)


def test_labels_from_a_server_are_ordered_by_its_annotation_ids(ws, tmp_path):
    """All synced at once (the catalogue's times in image order), but the server's annotation
    ids say the rater labelled the last two images first: they are the first half."""
    ids = study(ws, tmp_path, 4)
    for i in ids:
        label(ws, "EXP", i, reference_mask())
    hand_gold(ws, "AN1", 4, "EXP", 0, "labelstudio", [])
    annotation_ids = [90, 91, 17, 18]  # the server's, per image
    for k, i in enumerate(ids):
        mask = reference_mask() if k >= 2 else femur_shifted(5)
        ref = f"project 3 task {40 + k} annotation {annotation_ids[k]}"
        label(ws, "AN1", i, mask, T0 + dt.timedelta(minutes=k), "labelstudio", ref)
    scores, _ = _scores(rater_quality(ws), "AN1")
    femur = scores["femur"]
    assert (femur.dice_first_half, femur.dice_second_half) == (1.0, pytest.approx(0.5))
    # one label from elsewhere (an export, ITK-SNAP): the catalogue's times order them all
    label(ws, "AN1", ids[3], femur_shifted(1), T0 + dt.timedelta(minutes=9))
    femur = _scores(rater_quality(ws), "AN1")[0]["femur"]
    assert (femur.dice_first_half, femur.dice_second_half) == (pytest.approx(0.5), 0.95)


def test_unlabelled_gold_odd_halves_and_a_newer_reference(ws, tmp_path):
    """Five of six gold images labelled: halves of two (the middle one in neither); a newer
    reference version of one image changes nothing: scores are against the version handed."""
    ids = study(ws, tmp_path, 6)
    for i in ids:
        label(ws, "EXP", i, reference_mask())
    hand_gold(ws, "AN1", 6, "EXP", 0, "labelstudio", [])
    for k, i in enumerate(ids[:5]):
        mask = femur_shifted(5) if k == 2 else reference_mask()  # the middle one is off
        label(ws, "AN1", i, mask, T0 + dt.timedelta(minutes=k))
    label(ws, "EXP", ids[0], femur_shifted(3))  # the reference changed since
    scores, r = _scores(rater_quality(ws), "AN1")
    assert (r.handed, r.labelled, r.half, r.reference_newer) == (6, 5, 2, 1)
    femur = scores["femur"]
    assert femur.images == 5 and femur.dice["mean"] == pytest.approx((4 + 0.5) / 5)
    assert (femur.dice_first_half, femur.dice_second_half, femur.drift) == (1.0, 1.0, 0.0)


def test_no_gold_yet(ws, tmp_path):
    study(ws, tmp_path, 1)
    assert rater_quality(ws).raters == []
    res = CliRunner().invoke(app, ["raters", "-w", str(ws.root)])
    assert res.exit_code == 0 and "no gold-standard tasks yet" in res.stdout


def test_the_raters_command_table_json_and_csv(gold_study, tmp_path):
    ws, _ = gold_study
    w = ["-w", str(ws.root)]
    table = CliRunner().invoke(app, ["raters", *w], env={"COLUMNS": "220"})
    assert table.exit_code == 0, table.output
    assert "AN2: 6 of 6 gold images labelled, against EXP" in table.stdout
    assert "rater quality on gold-standard tasks" in table.stdout
    data = json.loads(CliRunner().invoke(app, ["raters", "--json", "--rater", "AN3", *w]).stdout)
    assert [r["rater"] for r in data["raters"]] == ["AN3"]
    femur = next(g for g in data["raters"][0]["structures"] if g["structure"] == "femur")
    assert femur["drift"] == pytest.approx(-0.5) and femur["images"] == 6
    out = tmp_path / "q.csv"
    assert CliRunner().invoke(app, ["raters", "--csv", str(out), *w]).exit_code == 0
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [
        "rater", "structure", "gold images", "IoU mean", "Dice mean ± SD (mean)",
        "Dice mean ± SD (sd)", "both empty", "one empty", "Dice 1st half", "Dice 2nd half",
        "drift",
    ]  # fmt: skip
    femur_an2 = next(r for r in rows if r[:2] == ["AN2", "femur"])
    assert float(femur_an2[3]) == pytest.approx(2 / 3) and femur_an2[2] == "6"
    assert len(rows) == 1 + 3 * 6  # 5 structures and all of them, for each of three raters
    unknown = CliRunner().invoke(app, ["raters", "--rater", "NOBODY", *w])
    assert unknown.exit_code == 2 and "not registered" in unknown.stderr
