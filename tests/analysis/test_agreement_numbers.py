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
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pingouin  # at the top: mutmut's fork server imports it once for every mutant
import pytest
from scipy import stats
from typer.testing import CliRunner

from datatool.analysis import metrics
from datatool.analysis.agreement import (
    POOL_FROM,
    SampleInfo,
    _choose_measure,
    _cine_notes,
    _icc_or_note,
    _matrix,
    _overlap_one,
    _overlaps,
    _prelabelled_notes,
    _ratings,
    _Sample,
    _slug,
    _structure_agreement,
    _wanted_structures,
    run_agreement,
)
from datatool.cli import app
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.store import Store
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.masks import structure_stats
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


def assert_structure(r, w: dict) -> None:
    """One structure's figures against the independent reference's: ICC, Dice, IoU, the
    absent counts, Bland-Altman and the mean rating."""
    assert_icc(r.icc, w["icc"], w["pingouin"])
    assert_described(r.dice, w["dice"])
    assert_described(r.iou, w["iou"])
    assert (r.both_absent, r.one_absent) == (w["both_absent"], w["one_absent"])
    assert r.bland_altman["n"] == w["bland_altman"]["n"]
    for key in ("bias", "sd", "loa_low", "loa_high"):
        assert r.bland_altman[key] == pytest.approx(w["bland_altman"][key], rel=1e-12)
    assert r.mean_rating == pytest.approx(w["mean_rating"], rel=1e-12)


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
        assert_structure(r, w)
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


# --------------------------------------------------------------------------- without a catalogue
# The measures run_agreement puts together, on the same hand-built masks: a sample built here
# (what _load_sample reads from the catalogue), the masks in a store of their own. Fast enough
# to run against every mutant (tests/mutate.py); the tests above go through the catalogue.


@dataclass
class StatsRow:
    """A StructureStats row as _load_sample selects it."""

    annotation_id: int
    structure: str
    value: int
    area_px: int
    area_mm2: float | None
    x0: int | None
    y0: int | None
    x1: int | None
    y1: int | None


def hand_sample(names: list[str], store: Store) -> _Sample:
    """Image k's annotations are 2k + 1 (A) and 2k + 2 (B); spacing (y, x) per image."""
    protocol = load_protocol("anterior_sciatic")
    items, stats, masks, spacing = [], {}, {}, {}
    for k, name in enumerate(names):
        mm = IMAGES[name][0]
        ids = (2 * k + 1, 2 * k + 2)
        for ann, mask in zip(ids, masks_of(name)):
            masks[ann] = store.put_array(mask)
            for row in structure_stats(mask, protocol, mm, mm):
                fields = {f: row[f] for f in ("value", "area_px", "area_mm2", "x0", "y0", "x1")}
                stats[(ann, row["structure"])] = StatsRow(
                    ann, row["structure"], **fields, y1=row["y1"]
                )
        items.append((k, *ids))
        spacing[k] = (mm, mm) if mm else None
    calibrated = sum(sp is not None for sp in spacing.values())
    info = SampleInfo(1, None, 0, len(items), False, "2026-12-07T00:00:00")
    return _Sample(info, "A", "B", items, stats, masks, calibrated, spacing)


NO_MM = "1 of 5 images have no mm calibration: areas in pixels"


@pytest.mark.parametrize("calibrated", [True, False])
def test_each_structure_s_figures_without_a_catalogue(tmp_path, calibrated):
    names = ["i0", "i1", "i2", "i3"] if calibrated else list(IMAGES)
    unit = "mm²" if calibrated else "px"
    store = Store(tmp_path / "store")
    smp = hand_sample(names, store)
    notes: list[str] = []
    measure, got_unit = _choose_measure(None, smp, notes)
    assert (measure, got_unit) == (("area_mm2", "mm²") if calibrated else ("area_px", "px"))
    assert notes == (
        [] if calibrated else ["1 of 5 images have no mm calibration: areas in pixels"]
    )
    protocol = load_protocol("anterior_sciatic")
    spacing = {i: sp or (1.0, 1.0) for i, sp in smp.spacing.items()}
    overlaps, _ = _overlaps(
        store.root, smp.items, smp.masks, smp.stats, protocol.structures, spacing, None
    )
    want = expected_report(names, unit)
    matrices = []
    for st in protocol.structures:
        ra, rb, pa, pb = _ratings(smp, st.name, measure)
        # the areas in px, by hand from the rectangles
        assert pa.tolist() == [int((m == st.value).sum()) for n in names for m in masks_of(n)[:1]]
        assert pb.tolist() == [int((m == st.value).sum()) for n in names for m in masks_of(n)[1:]]
        if st.name not in want["structures"]:
            assert not pa.any() and not pb.any()  # nobody labelled the adductor magnus
            continue
        w = want["structures"][st.name]
        matrix = _matrix(ra, rb)
        assert matrix.dtype == float and matrix.tolist() == [[a, b] for a, b in zip(ra, rb)]
        r = _structure_agreement(st.name, smp, matrix, ra, rb, pa, pb, overlaps[st.name], notes)
        assert r.structure == st.name
        assert_structure(r, w)
        matrices.append(matrix)
    overall = _icc_or_note(np.concatenate(matrices), "all structures", notes)
    assert_icc(overall, want["overall"], want["overall_pingouin"])
    assert notes == (
        [] if calibrated else ["1 of 5 images have no mm calibration: areas in pixels"]
    )


def test_overlaps_counted_by_hand(tmp_path):
    """Rectangles (rows y0..y1 - 1, columns x0..x1 - 1). i1: A's femur rows 4-17 x columns
    8-29, B's rows 4-18 x 8-27: they share 14 x 20 = 280 px; the nerve: rows 22-29 x 12-21
    and 22-28 x 12-20, 7 x 9 = 63 px; B has no artery (0). i2: the femur rows 8-21 x 6-19
    and 8-20 x 7-20, 13 x 13 = 169 px; the nerve 26-33 x 20-25 and 25-33 x 19-26, 8 x 6 =
    48 px; semitendinosus 30-35 x 40-47 and 31-36 x 41-47, 5 x 7 = 35 px; no artery."""
    store = Store(tmp_path / "store")
    smp = hand_sample(["i1", "i2"], store)
    structures = load_protocol("anterior_sciatic").structures
    overlaps, surfaces = _overlaps(
        store.root, smp.items, smp.masks, smp.stats, structures, {0: None, 1: None}, None
    )
    assert overlaps == {
        "femur": [280, 169],
        "adductor magnus": [0, 0],
        "sciatic nerve": [63, 48],
        "semitendinosus": [0, 35],
        "femoral artery": [0, 0],
    }
    assert {s.empty for per in surfaces.values() for s in per} == {"not asked"}


def test_surface_distances_of_one_image_by_hand(tmp_path):
    """Pixels 0.2 mm tall and 0.5 mm wide. The femur, a 2 x 2 square in the image's top
    left corner (rows 0-1, columns 0-1) for A, one row lower for B (rows 1-2): half of each
    border is 0.2 mm off, the rest on the other border: HD95 0.2, ASSD 0.1, NSD 1 at
    0.3 mm. The nerve, a 2 x 2 square at rows 5-6 and columns 4-5 for A, one column right
    for B: HD95 0.5, ASSD 0.25, NSD 0.5 at 0.3 mm. The overlaps: 2 pixels each. The
    semitendinosus only A labelled, the artery nobody."""
    store = Store(tmp_path / "store")
    a = box((10, 12), {FEMUR: (0, 2, 0, 2), NERVE: (5, 7, 4, 6), ST: (8, 9, 8, 9)})
    b = box((10, 12), {FEMUR: (1, 3, 0, 2), NERVE: (5, 7, 5, 7)})
    boxes = [
        (FEMUR, (0, 1, 1, 1), True, True, (0, 0, 1, 2)),
        (NERVE, (5, 5, 5, 6), True, True, (4, 5, 6, 6)),
        (ST, None, True, False, None),
        (ARTERY, None, False, False, None),
    ]
    job = (str(store.root), store.put_array(a), store.put_array(b), boxes, (0.2, 0.5), 0.3)
    (femur, nerve, st, artery) = _overlap_one(job)
    assert (femur[0], nerve[0], st[0], artery[0]) == (2, 2, 0, 0)
    assert (femur[1].hd95, femur[1].assd, femur[1].nsd) == pytest.approx((0.2, 0.1, 1.0))
    assert (nerve[1].hd95, nerve[1].assd, nerve[1].nsd) == pytest.approx((0.5, 0.25, 0.5))
    assert (femur[1].tolerance, femur[1].empty, nerve[1].empty) == (0.3, None, None)
    for (_, surface), why in ((st, metrics.ONE_EMPTY), (artery, metrics.BOTH_EMPTY)):
        assert surface.empty == why and surface.tolerance == 0.3
        assert all(math.isnan(x) for x in (surface.hd95, surface.assd, surface.nsd))
    # no distances asked, and no box to count in: the masks are never read (none stored)
    unread = ("/nowhere", "0" * 64, "1" * 64, boxes[2:], (0.2, 0.5), None)
    for overlap, surface in _overlap_one(unread):
        assert overlap == 0 and surface.empty == "not asked"
        assert all(math.isnan(x) for x in (surface.hd95, surface.assd, surface.nsd))
        assert math.isnan(surface.tolerance)


def _smp(n: int = 5, **fields) -> _Sample:
    items = [(k, 2 * k + 1, 2 * k + 2) for k in range(n)]
    info = SampleInfo(1, None, 0, n, False, "2026-12-07T00:00:00")
    return _Sample(info, "A", "B", items, {}, {}, n, {}, **fields)


def test_the_notes_word_for_word():
    assert _prelabelled_notes(_smp()) == []
    assert _prelabelled_notes(_smp(left_out=3, prelabelled=2)) == [
        "3 images left out: a label of either rater started from a model draft (or was made "
        "with clicks), so the raters were not independent (--include-prelabelled keeps them)",
        "2 of 5 images have a label that started from a model draft (or was made with "
        "clicks): for them this is not a measure of independent human agreement",
    ]
    assert _prelabelled_notes(_smp(left_out=0, prelabelled=1))[0].startswith("1 of 5 images")
    assert _cine_notes(_smp()) == []
    assert _cine_notes(_smp(per_cine=True, cine_frames=2, cines=2)) == [
        "at most one frame per cine loop (--per-cine): 2 of 5 images are cine frames, each "
        "of another loop"
    ]
    assert _cine_notes(_smp(cine_frames=3, cines=1)) == [
        "3 of 5 images are frames of 1 cine loop(s): frames of one loop are not independent "
        "ratings (the same anatomy moments apart, labelled in one sitting), so the ICC's "
        "confidence interval is too narrow; --per-cine takes at most one frame per loop"
    ]


def test_measures_structures_and_iccs_refused_or_noted_word_for_word():
    protocol = load_protocol("anterior_sciatic")
    assert _wanted_structures(protocol, None) == list(protocol.structures)
    assert _wanted_structures(protocol, []) == list(protocol.structures)
    assert [s.value for s in _wanted_structures(protocol, ["Sciatic Nerve", "femur"])] == [3, 1]
    with pytest.raises(UsageError) as caught:
        _wanted_structures(protocol, ["femur", "tibia"])
    assert str(caught.value) == (
        "label 'tibia' is not in protocol 'anterior_sciatic'; the protocol has: femur, "
        "adductor magnus, sciatic nerve, semitendinosus, femoral artery"
    )
    notes: list[str] = []
    assert _choose_measure("area_px", _smp(), notes) == ("area_px", "px")
    assert _choose_measure("area_mm2", _smp(), notes) == ("area_mm2", "mm²")
    assert _choose_measure(None, _smp(), notes) == ("area_mm2", "mm²") and notes == []
    two_short = _smp()
    two_short.calibrated = 3
    with pytest.raises(DatatoolError) as caught:
        _choose_measure("area_mm2", two_short, notes)
    assert str(caught.value) == "2 of 5 images have no mm calibration: use --measure area_px"
    assert _choose_measure(None, two_short, notes) == ("area_px", "px")
    assert notes == ["2 of 5 images have no mm calibration: areas in pixels"]
    # two targets are too few for an ICC; raters who agree on every target get no CI
    notes = []
    assert _icc_or_note(_matrix(np.array([1.0, 2]), np.array([1.0, 3])), "x", notes) is None
    assert notes == ["x: no ICC (ICC needs at least 3 targets and 2 raters, got 2 and 2)"]
    notes = []
    same = np.array([1.0, 2, 3])  # (F is infinite: no CI)
    icc = _icc_or_note(_matrix(same, same), "femur", notes)
    assert icc is not None and icc.ci_low is None and icc.ci_high is None
    assert notes == ["femur: the raters agree perfectly; no CI (no residual variance)"]
    notes = []  # B 1 px above A on every image: no residual variance either
    icc = _icc_or_note(_matrix(same, same + 1), "nerve", notes)
    assert icc is not None and icc.ci_low is None and 0 < icc.icc < 1
    assert notes == [
        "nerve: the raters differ by the same amount on every target; no CI (no residual variance)"
    ]
    # a plot's file name: runs of anything but a-z and 0-9 one underscore, none at the ends
    assert _slug("(Femoral)  artery, L/2.") == "femoral_artery_l_2"


def sample_of(pairs: list[tuple[np.ndarray, np.ndarray]], mm: tuple[float, float], store: Store):
    """A sample of these (A's map, B's map) pairs, every image at ``mm`` (y, x) per pixel."""
    protocol = load_protocol("anterior_sciatic")
    items, stats, masks = [], {}, {}
    for k, pair in enumerate(pairs):
        ids = (2 * k + 1, 2 * k + 2)
        for ann, mask in zip(ids, pair):
            masks[ann] = store.put_array(mask)
            for row in structure_stats(mask, protocol, mm[1], mm[0]):
                keys = ("value", "area_px", "area_mm2", "x0", "y0", "x1", "y1")
                stats[(ann, row["structure"])] = StatsRow(
                    ann, row["structure"], *map(row.get, keys)
                )
        items.append((k, *ids))
    info = SampleInfo(1, None, 0, len(items), False, "2026-12-07T00:00:00")
    spacing = dict.fromkeys(range(len(items)), mm)
    return _Sample(info, "A", "B", items, stats, masks, len(items), spacing)


# the maps of test_surface_distances_of_one_image_by_hand, with the semitendinosus one pixel
# in both maps (overlap 1, every distance 0), the artery one pixel in A's only and the
# adductor one pixel in B's only; and an image that both raters left empty
CORNER_A = box((10, 12), {FEMUR: (0, 2, 0, 2), NERVE: (5, 7, 4, 6), ST: (8, 9, 8, 9),
                          ARTERY: (0, 1, 10, 11)})  # fmt: skip
CORNER_B = box((10, 12), {FEMUR: (1, 3, 0, 2), NERVE: (5, 7, 5, 7), ST: (8, 9, 8, 9),
                          ADDUCTOR: (9, 10, 0, 1)})  # fmt: skip
EMPTY = np.zeros((10, 12), np.uint8)
CORNER_OVERLAPS = {"femur": 2, "adductor magnus": 0, "sciatic nerve": 2, "semitendinosus": 1,
                   "femoral artery": 0}  # fmt: skip


def assert_corner_surfaces(surfaces: dict, n: int) -> None:
    """HD95, ASSD, NSD at 0.3 mm (worked out in test_surface_distances_of_one_image_by_hand)
    of n pairs of the corner maps, each followed by the empty pair."""
    for name, want in (("femur", (0.2, 0.1, 1.0)), ("sciatic nerve", (0.5, 0.25, 0.5)),
                       ("semitendinosus", (0.0, 0.0, 1.0))):  # fmt: skip
        assert len(surfaces[name]) == 2 * n
        for s in surfaces[name][::2]:
            assert (s.hd95, s.assd, s.nsd) == pytest.approx(want) and s.empty is None
    for name, why in (
        ("femoral artery", metrics.ONE_EMPTY),
        ("adductor magnus", metrics.ONE_EMPTY),
    ):
        assert [s.empty for s in surfaces[name][::2]] == [why] * n
    for per in surfaces.values():
        assert [s.empty for s in per[1::2]] == [metrics.BOTH_EMPTY] * n


def test_overlaps_and_surfaces_of_a_sample_by_hand(tmp_path):
    """One image and an empty one; then 200 pairs of them, counted in worker processes
    (POOL_FROM items)."""
    store = Store(tmp_path / "store")
    structures = load_protocol("anterior_sciatic").structures
    for n in (1, POOL_FROM // 2):
        smp = sample_of([(CORNER_A, CORNER_B), (EMPTY, EMPTY)] * n, (0.2, 0.5), store)
        overlaps, surfaces = _overlaps(
            store.root, smp.items, smp.masks, smp.stats, structures, smp.spacing, 0.3
        )
        assert overlaps == {name: [v, 0] * n for name, v in CORNER_OVERLAPS.items()}
        assert_corner_surfaces(surfaces, n)


def test_a_structure_the_raters_agree_on_perfectly_is_noted_by_name():
    """Three images, both raters 1, 2 and 3 px: ICC 1, no CI; Dice 1 on each."""
    smp = _smp(3)
    ra = rb = np.array([1.0, 2.0, 3.0])
    notes: list[str] = []
    got = _structure_agreement("femur", smp, _matrix(ra, rb), ra, rb, ra, rb, [1, 2, 3], notes)
    assert notes == ["femur: the raters agree perfectly; no CI (no residual variance)"]
    assert got.icc is not None and got.icc.icc == pytest.approx(1.0) and got.icc.ci_low is None
    assert (got.dice["mean"], got.iou["min"], got.both_absent, got.one_absent) == (1.0, 1.0, 0, 0)
    assert got.mean_rating == {"A": 2.0, "B": 2.0}
