"""The surface distances of ``datatool agreement`` (HD95, ASSD, NSD), worked out by hand on
label maps built here, with anisotropic pixels (0.5 mm along x, 0.2 mm along y): a 2 x 2
square one column to the right is 0.5 mm off on half its border (HD95 0.5, ASSD 0.25), one
row down 0.2 mm (HD95 0.2, ASSD 0.1); the same square is 0 off; a structure one rater left
empty, or both, has no surface distance (counted, never 0)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from datatool.analysis import metrics
from datatool.analysis.agreement import run_agreement
from datatool.cli import agreement as cli_agreement
from datatool.cli import app
from datatool.core.protocol import load_protocol
from datatool.ingest.pipeline import ingest
from datatool.labels.annotations import add_rater, get_rater, store_annotation
from datatool.labels.matching import image_for_dicom
from tests.handmade import box, write_us

SHAPE = (30, 40)
FEMUR, NERVE = 1, 3
# image -> (rater A's rectangles, rater B's) as (y0, y1, x0, x1), half-open
IMAGES = [
    (  # femur one column right, nerve one row down
        {FEMUR: (5, 7, 10, 12), NERVE: (20, 22, 5, 7)},
        {FEMUR: (5, 7, 11, 13), NERVE: (21, 23, 5, 7)},
    ),
    (  # femur the same, nerve one row down
        {FEMUR: (8, 10, 20, 22), NERVE: (15, 17, 30, 32)},
        {FEMUR: (8, 10, 20, 22), NERVE: (16, 18, 30, 32)},
    ),
    (  # B leaves the femur out; nobody labels the nerve
        {FEMUR: (3, 5, 3, 5)},
        {},
    ),
]


@pytest.fixture()
def two_raters(ws, tmp_path):
    def build(mm_x: float | None = 0.5, mm_y: float | None = 0.2):
        files = [
            write_us(
                tmp_path / "d" / f"{k}.dcm",
                np.full(SHAPE, 80, np.uint8),
                patient_id=f"S{k}",
                mm_per_px=mm_x,
                mm_per_px_y=mm_y,
            )
            for k in range(len(IMAGES))
        ]
        ingest(ws, [tmp_path / "d"], workers=0)
        protocol = load_protocol(ws.protocol_name)
        add_rater(ws, "A")
        add_rater(ws, "B")
        with ws.session() as s:
            for path, (a, b) in zip(files, IMAGES):
                image = image_for_dicom(s, ws.key, path)
                assert (image.mm_per_px_x, image.mm_per_px_y) == (mm_x, mm_y)
                for name, rects in (("A", a), ("B", b)):
                    mask = box(SHAPE, rects)
                    rater = get_rater(s, name)
                    store_annotation(s, ws.store, image, rater, mask, "itksnap", None, protocol)
        return ws

    return build


def test_surface_distances_in_mm_by_hand(two_raters, tmp_path):
    ws = two_raters()
    report = run_agreement(ws, tolerance=0.3, out_dir=tmp_path / "out", plots=False)
    assert report.surface_unit == "mm" and report.nsd_tolerance == 0.3
    st = {r.structure: r for r in report.structures}
    femur, nerve = st["femur"], st["sciatic nerve"]
    # femur: 0.5 mm off (HD95 0.5, ASSD 0.25, NSD at 0.3 mm 1/2) and 0 off; one empty
    assert femur.hd95["n"] == 2 and femur.one_absent == 1 and femur.both_absent == 0
    assert sorted([femur.hd95["min"], femur.hd95["max"]]) == pytest.approx([0.0, 0.5])
    assert femur.assd["mean"] == pytest.approx((0.25 + 0.0) / 2)
    assert femur.nsd["mean"] == pytest.approx((0.5 + 1.0) / 2)
    # nerve: 0.2 mm off twice (the y spacing, not the x); both empty once
    assert nerve.hd95["n"] == 2 and nerve.both_absent == 1 and nerve.one_absent == 0
    assert nerve.hd95["median"] == pytest.approx(0.2) and nerve.assd["mean"] == pytest.approx(0.1)
    assert nerve.nsd["mean"] == 1.0
    saved = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert saved["structures"][0]["hd95"]["max"] == pytest.approx(0.5)
    assert saved["surface_unit"] == "mm" and "surface" in saved["conventions"]


def test_the_default_tolerance_is_2_mm_and_said_in_help(two_raters, tmp_path):
    assert cli_agreement.NSD_TOLERANCE_MM == metrics.NSD_TOLERANCE_MM == 2.0
    ws = two_raters()
    report = run_agreement(ws, out_dir=tmp_path / "out", plots=False)
    femur = next(r for r in report.structures if r.structure == "femur")
    assert report.nsd_tolerance == 2.0 and femur.nsd["mean"] == 1.0  # 0.5 mm is within 2
    result = CliRunner().invoke(app, ["agreement", "--help"], env={"COLUMNS": "200"})
    assert "--tolerance" in result.output and "2.0" in result.output and "mm" in result.output


def test_uncalibrated_images_give_pixels_with_a_note(two_raters, tmp_path):
    ws = two_raters(None, None)
    report = run_agreement(ws, tolerance=0.3, out_dir=tmp_path / "out", plots=False)
    assert report.surface_unit == "px"
    assert any("surface distances in pixels" in n for n in report.notes)
    femur = next(r for r in report.structures if r.structure == "femur")
    assert femur.hd95["max"] == pytest.approx(1.0)  # one pixel
    assert femur.nsd["mean"] == pytest.approx((0.5 + 1.0) / 2)


def test_the_cli_shows_json_and_csv_of_the_surface_table(two_raters, tmp_path):
    ws = two_raters()
    root = str(ws.root)
    runner = CliRunner()
    result = runner.invoke(app, ["agreement", "--tolerance", "0.3", "-w", root])
    assert result.exit_code == 0, result.output
    assert "boundary agreement" in result.output and "NSD at 0.3 mm" in result.output
    result = runner.invoke(app, ["agreement", "--tolerance", "0.3", "--json", "-w", root])
    data = json.loads(result.stdout)
    assert data["structures"][1]["hd95"]["median"] == pytest.approx(0.2)
    table = tmp_path / "agreement.csv"
    result = runner.invoke(
        app, ["agreement", "--tolerance", "0.3", "--csv", str(table), "-w", root]
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "agreement-surface.csv", newline="") as f:
        rows = {r["structure"]: r for r in csv.DictReader(f)}
    assert float(rows["femur"]["ASSD mean ± SD, mm (mean)"]) == pytest.approx(0.125)
    assert rows["femur"]["one empty"] == "1" and rows["sciatic nerve"]["both empty"] == "1"
    result = runner.invoke(app, ["agreement", "--tolerance", "-1", "-w", root])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_no_surface_skips_them_and_says_so(two_raters, tmp_path):
    ws = two_raters()
    report = run_agreement(ws, out_dir=tmp_path / "out", plots=False, surface=False)
    assert report.surface_unit is None
    assert all(r.hd95["n"] == 0 and r.nsd["n"] == 0 for r in report.structures)
    femur = next(r for r in report.structures if r.structure == "femur")
    assert femur.dice["n"] == 3  # the overlap measures are still there (one empty: 0)
    result = CliRunner().invoke(app, ["agreement", "--no-surface", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "not computed (--no-surface)" in result.output
    assert "boundary agreement" not in result.output
