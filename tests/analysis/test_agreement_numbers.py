"""Every number ``datatool agreement`` reports, checked against an independent computation.

A hand-built catalogue: five small ultrasound images (four calibrated at different mm per
pixel, one without calibration), two raters whose label maps are rectangles written in this
file. One rater leaves the femoral artery out of an image another labelled (a rating of 0,
Dice 0), both leave it out of another (no Dice), nobody labels the adductor magnus (left out
with a note). The expected values are worked out here from the raw masks: ICC(2,1) by the
Shrout & Fleiss (1979) mean squares with the McGraw & Wong (1996) confidence interval (and
pingouin, called on the same ratings, as a second reference), Bland-Altman by its definition,
Dice and IoU by counting pixels, summaries with the standard library's ``statistics``.
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from datatool.analysis.agreement import run_agreement
from datatool.cli import app
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom
from tests.handmade import box, write_us

SHAPE = (40, 50)
FEMUR, ADDUCTOR, NERVE, ST, ARTERY = 1, 2, 3, 4, 6
NAMES = {
    FEMUR: "femur",
    ADDUCTOR: "adductor magnus",
    NERVE: "sciatic nerve",
    ST: "semitendinosus",
    ARTERY: "femoral artery",
}
# image -> (mm per pixel or None, rater A's rectangles, rater B's rectangles)
IMAGES = {
    "i0": (
        0.1,
        {FEMUR: (5, 20, 5, 25), NERVE: (25, 32, 10, 18), ARTERY: (25, 30, 30, 36)},
        {FEMUR: (6, 20, 5, 24), NERVE: (24, 32, 11, 19), ARTERY: (26, 31, 30, 37)},
    ),
    "i1": (  # B leaves the artery out: a rating of 0, Dice and IoU 0
        0.2,
        {FEMUR: (4, 18, 8, 30), NERVE: (22, 30, 12, 22), ARTERY: (28, 33, 35, 41)},
        {FEMUR: (4, 19, 8, 28), NERVE: (22, 29, 12, 21)},
    ),
    "i2": (  # neither labels the artery: excluded from its Dice and IoU
        0.1,
        {FEMUR: (8, 22, 6, 20), NERVE: (26, 34, 20, 26), ST: (30, 36, 40, 48)},
        {FEMUR: (8, 21, 7, 21), NERVE: (25, 34, 19, 27), ST: (31, 37, 41, 48)},
    ),
    "i3": (
        0.15,
        {FEMUR: (3, 15, 10, 35), NERVE: (20, 28, 5, 15), ARTERY: (20, 24, 38, 44)},
        {FEMUR: (3, 16, 10, 33), NERVE: (20, 27, 6, 15), ARTERY: (21, 25, 38, 45)},
    ),
    "i4": (  # no calibration: every area falls back to pixels
        None,
        {FEMUR: (10, 25, 10, 30), NERVE: (28, 36, 25, 35), ARTERY: (30, 35, 5, 10)},
        {FEMUR: (10, 24, 11, 30), NERVE: (27, 36, 25, 34), ARTERY: (30, 36, 5, 11)},
    ),
}


# --------------------------------------------------------------------------- references


def icc21_by_hand(y: np.ndarray) -> dict:
    """ICC(2,1) of an n targets x k raters table: Shrout & Fleiss (1979) Case 2 from the
    two-way ANOVA mean squares; 95 % CI by McGraw & Wong (1996) / Shrout & Fleiss, with
    Satterthwaite's degrees of freedom."""
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_err = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    bms, jms = ss_rows / (n - 1), ss_cols / (k - 1)
    ems = ss_err / ((n - 1) * (k - 1))
    icc = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    fj = jms / ems
    vn = (k - 1) * (n - 1) * (k * icc * fj + n * (1 + (k - 1) * icc) - k * icc) ** 2
    vd = (n - 1) * k**2 * icc**2 * fj**2 + (n * (1 + (k - 1) * icc) - k * icc) ** 2
    v = vn / vd
    f_star_upper = stats.f.ppf(0.975, n - 1, v)
    f_star_lower = stats.f.ppf(0.975, v, n - 1)
    low = (
        n
        * (bms - f_star_upper * ems)
        / (f_star_upper * (k * jms + (k * n - k - n) * ems) + n * bms)
    )
    high = (
        n * (f_star_lower * bms - ems) / (k * jms + (k * n - k - n) * ems + n * f_star_lower * bms)
    )
    f = bms / ems
    df1, df2 = n - 1, (n - 1) * (k - 1)
    return {
        "icc": icc,
        "ci_low": low,
        "ci_high": high,
        "f": f,
        "df1": df1,
        "df2": df2,
        "p": stats.f.sf(f, df1, df2),
        "n_targets": n,
        "n_raters": k,
    }


def test_the_hand_icc_reproduces_shrout_and_fleiss():
    """The reference itself, on the published example: ICC(2,1) = .29 (6 targets, 4 judges)."""
    y = np.array(
        [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
        float,
    )
    assert round(icc21_by_hand(y)["icc"], 2) == 0.29


def pingouin_icc21(y: np.ndarray) -> tuple[float, float, float]:
    """The same ICC from pingouin: the two-way random, absolute agreement, single measure
    row (``ICC2`` before pingouin 0.7, McGraw & Wong's ``ICC(A,1)`` since)."""
    import pingouin

    n, k = y.shape
    long = pd.DataFrame(
        {
            "t": np.repeat(np.arange(n), k),
            "r": np.tile(np.arange(k), n),
            "y": y.ravel(),
        }
    )
    old = pingouin.options.get("round.column.CI95")
    pingouin.options["round.column.CI95"] = None
    try:
        table = pingouin.intraclass_corr(long, targets="t", raters="r", ratings="y")
    finally:
        pingouin.options["round.column.CI95"] = old
    (row,) = (r for _, r in table.iterrows() if r["Type"] in ("ICC2", "ICC(A,1)"))
    ci = row["CI95"] if "CI95" in row else row["CI95%"]
    return float(row["ICC"]), float(ci[0]), float(ci[1])


def describe_by_hand(values: list[float]) -> dict:
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "median": statistics.median(values),
        # numpy's default "linear" percentile is the "inclusive" method
        "p25": statistics.quantiles(values, n=4, method="inclusive")[0]
        if len(values) > 1
        else values[0],
        "p75": statistics.quantiles(values, n=4, method="inclusive")[2]
        if len(values) > 1
        else values[0],
        "min": min(values),
        "max": max(values),
    }


def masks_of(name: str) -> tuple[np.ndarray, np.ndarray]:
    _, a, b = IMAGES[name]
    return box(SHAPE, a), box(SHAPE, b)


def expected_report(names: list[str], unit: str) -> dict:
    """Per structure: ratings, ICC, Bland-Altman, Dice/IoU summaries and counts, from the
    raw masks; and the ICC over all (image, structure) pairs of the reported structures."""
    out: dict = {"structures": {}, "ratings": []}
    for value, structure in NAMES.items():
        ra, rb, dices, ious, both, one = [], [], [], [], 0, 0
        for name in names:
            mm = IMAGES[name][0]
            a, b = (m == value for m in masks_of(name))
            na, nb, inter = int(a.sum()), int(b.sum()), int((a & b).sum())
            scale = mm * mm if unit == "mm²" else 1.0
            ra.append(na * scale)
            rb.append(nb * scale)
            if na == 0 and nb == 0:
                both += 1
                continue
            one += (na == 0) != (nb == 0)
            dices.append(2 * inter / (na + nb))
            ious.append(inter / (na + nb - inter))
        if not any(ra) and not any(rb):
            continue  # nobody labelled it: left out
        y = np.column_stack([ra, rb])
        diff = np.subtract(ra, rb)
        bias, sd = statistics.fmean(diff), statistics.stdev(diff)
        out["structures"][structure] = {
            "icc": icc21_by_hand(y),
            "pingouin": pingouin_icc21(y),
            "dice": describe_by_hand(dices),
            "iou": describe_by_hand(ious),
            "both_absent": both,
            "one_absent": one,
            "bland_altman": {
                "n": len(diff),
                "bias": bias,
                "sd": sd,
                "loa_low": bias - 1.96 * sd,
                "loa_high": bias + 1.96 * sd,
            },
            "mean_rating": {"A": statistics.fmean(ra), "B": statistics.fmean(rb)},
        }
        out["ratings"].append(y)
    out["overall"] = icc21_by_hand(np.vstack(out["ratings"]))
    out["overall_pingouin"] = pingouin_icc21(np.vstack(out["ratings"]))
    return out


# --------------------------------------------------------------------------- the catalogue


@pytest.fixture()
def handmade(ws, tmp_path):
    """The five images ingested; ``label(names)`` stores both raters' masks of them."""
    files = {}
    for k, (name, (mm, _, _)) in enumerate(IMAGES.items()):
        pixels = np.full(SHAPE, 60 + 10 * k, np.uint8)
        files[name] = write_us(
            tmp_path / "dicom" / f"{name}.dcm", pixels, mm_per_px=mm, patient_id=f"P{k}"
        )
    report = ingest(ws, [tmp_path / "dicom"], workers=0)
    assert report.ingested == len(IMAGES)
    protocol = load_protocol(ws.protocol_name)
    add_rater(ws, "A")
    add_rater(ws, "B")

    def label(names: list[str]) -> None:
        with ws.session() as s:
            for name in names:
                image = image_for_dicom(s, ws.key, files[name])
                assert (image.mm_per_px_x is None) == (IMAGES[name][0] is None)
                for rater, mask in zip(("A", "B"), masks_of(name)):
                    store_annotation(
                        s, ws.store, image, get_rater(s, rater), mask, "itksnap", name, protocol
                    )

    return ws, label


def assert_icc(got, want: dict, pingouin_ref: tuple[float, float, float]) -> None:
    assert got is not None
    for key in ("icc", "ci_low", "ci_high", "f", "p"):
        assert getattr(got, key) == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert (got.df1, got.df2, got.n_targets, got.n_raters) == (
        want["df1"],
        want["df2"],
        want["n_targets"],
        want["n_raters"],
    )
    assert (got.icc, got.ci_low, got.ci_high) == pytest.approx(pingouin_ref, rel=1e-9)


def assert_described(got: dict, want: dict) -> None:
    assert got["n"] == want["n"]
    for key in ("mean", "sd", "median", "p25", "p75", "min", "max"):
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-15), key


def check_report(report, names: list[str], unit: str) -> None:
    want = expected_report(names, unit)
    assert report.unit == unit
    assert report.measure == ("area_mm2" if unit == "mm²" else "area_px")
    assert [r.structure for r in report.structures] == list(want["structures"])
    assert any("adductor magnus" in n and "left out" in n for n in report.notes)
    for r in report.structures:
        w = want["structures"][r.structure]
        assert_icc(r.icc, w["icc"], w["pingouin"])
        assert_described(r.dice, w["dice"])
        assert_described(r.iou, w["iou"])
        assert (r.both_absent, r.one_absent) == (w["both_absent"], w["one_absent"])
        assert r.bland_altman["n"] == w["bland_altman"]["n"]
        for key in ("bias", "sd", "loa_low", "loa_high"):
            assert r.bland_altman[key] == pytest.approx(w["bland_altman"][key], rel=1e-12)
        assert r.mean_rating == pytest.approx(w["mean_rating"], rel=1e-12)
    assert_icc(report.overall_icc, want["overall"], want["overall_pingouin"])


def test_agreement_numbers_in_mm2_then_px_with_an_uncalibrated_image(handmade, tmp_path):
    ws, label = handmade
    calibrated = ["i0", "i1", "i2", "i3"]
    label(calibrated)
    report = run_agreement(ws, out_dir=tmp_path / "mm", plots=False)
    assert report.sample.images == 4
    check_report(report, calibrated, "mm²")
    nerve = next(r for r in report.structures if r.structure == "sciatic nerve")
    # the reference's input, by hand: i0's nerve is 7 x 8 = 56 px for A, 8 x 8 = 64 px for B
    a, b = masks_of("i0")
    assert (int((a == NERVE).sum()), int((b == NERVE).sum())) == (56, 64)
    assert nerve.one_absent == 0 and nerve.both_absent == 0
    artery = next(r for r in report.structures if r.structure == "femoral artery")
    assert (artery.one_absent, artery.both_absent, artery.dice["min"]) == (1, 1, 0.0)

    label(["i4"])  # an uncalibrated image joins: every area in pixels
    everything = list(IMAGES)
    report = run_agreement(ws, out_dir=tmp_path / "px", plots=False)
    assert report.sample.images == 5 and not report.sample.reused
    check_report(report, everything, "px")
    assert any("1 of 5 images have no mm calibration" in n for n in report.notes)
    saved = json.loads((tmp_path / "px" / "agreement.json").read_text())
    assert saved["overall_icc"]["icc"] == pytest.approx(
        expected_report(everything, "px")["overall"]["icc"], rel=1e-9
    )


def test_what_the_agreement_command_prints(handmade, tmp_path):
    """The same numbers through the command: --json and the --csv table, exit code 0."""
    ws, label = handmade
    label(list(IMAGES))
    want = expected_report(list(IMAGES), "px")
    args = ["agreement", "--workspace", str(ws.root), "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["measure"] == "area_px" and data["unit"] == "px"
    for row in data["structures"]:
        w = want["structures"][row["structure"]]
        for key in ("icc", "ci_low", "ci_high", "f", "p"):
            assert row["icc"][key] == pytest.approx(w["icc"][key], rel=1e-9)
        assert row["dice"]["mean"] == pytest.approx(w["dice"]["mean"], rel=1e-12)
        assert row["iou"]["median"] == pytest.approx(w["iou"]["median"], rel=1e-12)
        assert row["bland_altman"]["loa_high"] == pytest.approx(
            w["bland_altman"]["loa_high"], rel=1e-12
        )
    assert data["overall_icc"]["icc"] == pytest.approx(want["overall"]["icc"], rel=1e-9)

    res = CliRunner().invoke(app, [*args, "--csv", str(tmp_path / "a.csv")], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = {r["structure"]: r for r in csv.DictReader((tmp_path / "a.csv").open())}
    assert set(rows) == {*want["structures"], "all structures"}
    for name, w in [*want["structures"].items(), ("all structures", {"icc": want["overall"]})]:
        icc = w["icc"]
        assert float(rows[name]["ICC(2,1)"]) == pytest.approx(icc["icc"], rel=1e-9)
        assert float(rows[name]["95 % CI (low)"]) == pytest.approx(icc["ci_low"], rel=1e-9)
        assert float(rows[name]["95 % CI (high)"]) == pytest.approx(icc["ci_high"], rel=1e-9)
        if name != "all structures":
            assert float(rows[name]["Dice mean ± SD (sd)"]) == pytest.approx(
                w["dice"]["sd"], rel=1e-12
            )
            assert int(rows[name]["one empty"]) == w["one_absent"]
    # the table people read: ICC and CI to three decimals
    nerve = want["structures"]["sciatic nerve"]["icc"]
    line = next(x for x in res.stdout.splitlines() if "sciatic nerve" in x)
    assert f"{nerve['icc']:.3f}" in line
    assert f"[{nerve['ci_low']:.3f}, {nerve['ci_high']:.3f}]" in line
    assert not math.isnan(nerve["icc"])
