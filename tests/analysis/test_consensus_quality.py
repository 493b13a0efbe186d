"""Each rater's quality as STAPLE estimates it (``consensus``), on label maps built so that
the answer can be worked out by hand: a rater identical to the truth (sensitivity and
specificity 1), one who misses half of a structure (sensitivity 0.5), one who adds a blob
of it in the background (specificity 1 - blob / background)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from datatool.analysis.consensus import make_consensus, quality_path, staple_performance
from datatool.cli import app
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom
from tests.handmade import box, write_us

SHAPE = (40, 50)  # 2000 pixels
FEMUR, NERVE = 1, 3
TRUTH = box(SHAPE, {FEMUR: (10, 20, 10, 30), NERVE: (24, 30, 5, 15)})  # 200 and 60 px
BLOB = 30  # pixels of femur the third rater adds in the background


def three_raters() -> list[np.ndarray]:
    """r1: the truth; r2: only the femur's upper half (100 of 200 px); r3: the truth and a
    3 x 10 blob of femur where there is none. Every femur pixel has two raters for it and
    every blob pixel two against it, so STAPLE's truth is TRUTH."""
    r1, r2, r3 = TRUTH.copy(), TRUTH.copy(), TRUTH.copy()
    r2[15:20, 10:30] = 0
    r3[33:36, 38:48] = FEMUR
    assert (r2 == FEMUR).sum() == 100 and (r3 == FEMUR).sum() == 200 + BLOB
    return [r1, r2, r3]


def test_staple_performance_by_hand():
    sens, spec = staple_performance(three_raters(), FEMUR)
    background = SHAPE[0] * SHAPE[1] - 200
    assert sens == pytest.approx([1.0, 0.5, 1.0], abs=1e-3)
    assert spec == pytest.approx([1.0, 1.0, 1 - BLOB / background], abs=1e-4)
    sens, spec = staple_performance(three_raters(), NERVE)  # all three agree
    assert sens == pytest.approx([1.0] * 3) and spec == pytest.approx([1.0] * 3)
    assert staple_performance(three_raters(), 6) is None  # nobody labelled an artery


def test_two_raters_share_their_disagreement():
    """No majority with two: a rater who labels half of what the other labels has the lower
    sensitivity, the other a specificity below 1 (STAPLE splits the difference)."""
    full = box(SHAPE, {FEMUR: (10, 20, 10, 30)})
    half = box(SHAPE, {FEMUR: (10, 15, 10, 30)})
    (s_full, s_half), (q_full, q_half) = staple_performance([full, half], FEMUR)
    assert s_half < s_full == pytest.approx(1.0) and q_full < q_half == pytest.approx(1.0)
    assert 0.5 < s_half < 1.0


def test_the_box_gives_simpleitks_own_figures_on_the_whole_image():
    """STAPLE runs on the box round the labels; the whole image's specificity follows."""
    rng = np.random.default_rng(3)
    masks = []
    for _ in range(3):
        m = np.zeros((120, 160), np.uint8)
        y, x = rng.integers(30, 50, 2)
        m[y : y + 40, x : x + 60] = 2
        m[rng.integers(0, 120, 40), rng.integers(0, 160, 40)] = 2  # scattered noise
        masks.append(m)
    staple = sitk.STAPLEImageFilter()
    staple.SetForegroundValue(1.0)
    staple.Execute([sitk.GetImageFromArray((m == 2).astype(np.uint8)) for m in masks])
    sens, spec = staple_performance(masks, 2)
    assert sens == pytest.approx(list(staple.GetSensitivity()), abs=1e-3)
    assert spec == pytest.approx(list(staple.GetSpecificity()), abs=1e-4)


@pytest.fixture()
def rated(ws, tmp_path):
    files = [
        write_us(tmp_path / "d" / f"{k}.dcm", np.full(SHAPE, 90, np.uint8), patient_id=f"Q{k}")
        for k in range(2)
    ]
    ingest(ws, [tmp_path / "d"], workers=0)
    protocol = load_protocol(ws.protocol_name)
    for name in ("r1", "r2", "r3"):
        add_rater(ws, name)
    with ws.session() as s:
        for path in files:
            image = image_for_dicom(s, ws.key, path)
            for name, mask in zip(("r1", "r2", "r3"), three_raters()):
                rater = get_rater(s, name)
                store_annotation(s, ws.store, image, rater, mask, "itksnap", None, protocol)
    return ws


def test_make_consensus_reports_each_raters_quality(rated):
    report = make_consensus(rated, "staple")
    rows = {(q.rater, q.structure): q for q in report.quality}
    # structures in the protocol's order, raters by name; nobody labelled the others
    assert [(q.structure, q.rater) for q in report.quality] == [
        ("femur", "r1"),
        ("femur", "r2"),
        ("femur", "r3"),
        ("sciatic nerve", "r1"),
        ("sciatic nerve", "r2"),
        ("sciatic nerve", "r3"),
    ]
    assert all(q.images == 2 for q in report.quality)
    assert rows[("r2", "femur")].sensitivity["mean"] == pytest.approx(0.5, abs=1e-3)
    assert rows[("r1", "femur")].sensitivity["mean"] == pytest.approx(1.0, abs=1e-3)
    background = SHAPE[0] * SHAPE[1] - 200
    assert rows[("r3", "femur")].specificity["mean"] == pytest.approx(1 - BLOB / background)
    assert rows[("r2", "femur")].specificity["mean"] == pytest.approx(1.0)
    # where the study report reads it: reports/consensus-METHOD/consensus.json
    path = rated.root / "reports" / "consensus-staple" / "consensus.json"
    assert quality_path(rated, "staple") == path and report.quality_file == str(path)
    saved = json.loads(path.read_text())
    assert saved["quality"][1]["rater"] == "r2"
    assert saved["quality"][1]["sensitivity"]["mean"] == pytest.approx(0.5, abs=1e-3)
    # one rater as the reference: no quality to estimate, no file
    single = make_consensus(rated, "rater:r1")
    assert single.quality == [] and single.quality_file is None


def test_consensus_cli_table_json_and_csv(rated, tmp_path):
    runner = CliRunner()
    root = str(rated.root)
    result = runner.invoke(app, ["consensus", "-w", root])
    assert result.exit_code == 0, result.output
    assert "STAPLE sensitivity" in result.output and "r2" in result.output
    result = runner.invoke(app, ["consensus", "--json", "-w", root])
    data = json.loads(result.stdout)
    assert {q["rater"] for q in data["quality"]} == {"r1", "r2", "r3"}
    table = tmp_path / "quality.csv"
    result = runner.invoke(app, ["consensus", "--csv", str(table), "-w", root])
    assert result.exit_code == 0, result.output
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    assert header[:3] == ["structure", "rater", "images"]
    row = next(line.split(",") for line in lines if line.startswith("femur,r2,"))
    assert float(row[header.index("sensitivity mean ± SD (mean)")]) == pytest.approx(0.5, abs=1e-3)


def test_no_quality_makes_the_reference_alone(rated):
    report = make_consensus(rated, "majority", quality=False)
    assert report.images == 2 and report.quality == [] and report.quality_file is None
    assert not quality_path(rated, "majority").exists()
    result = CliRunner().invoke(app, ["consensus", "--no-quality", "-w", str(rated.root)])
    assert result.exit_code == 0, result.output
    assert "STAPLE sensitivity" not in result.output


def test_a_structure_in_the_images_corner_is_measured_whole():
    """The box round the labels starts at row and column 0 when a structure touches the
    image's top left corner (it cannot start 8 pixels before). r1 labels rows 0-9, columns
    0-19 (200 px); r2 only rows 0-4 (100 px); r3 as r1. STAPLE's truth is r1's: r2's
    sensitivity 100 / 200 = 0.5, the others 1; nobody labels any background."""
    r1 = box(SHAPE, {FEMUR: (0, 10, 0, 20)})
    r2 = box(SHAPE, {FEMUR: (0, 5, 0, 20)})
    sens, spec = staple_performance([r1, r2, r1.copy()], FEMUR)
    assert sens == pytest.approx([1.0, 0.5, 1.0], abs=1e-3)
    assert spec == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    # and column 0 alone: columns 0-9 in r1 and r3, r2 holds column 0 only of them
    c1 = box(SHAPE, {FEMUR: (15, 25, 0, 10)})
    c2 = box(SHAPE, {FEMUR: (15, 25, 0, 1)})
    sens, _ = staple_performance([c1, c2, c1.copy()], FEMUR)
    assert sens == pytest.approx([1.0, 0.1, 1.0], abs=1e-3)
