"""The study report shows each rater's scores on their gold-standard tasks (issue 21: gold
scores reach the report), read back from the HTML and the Markdown and compared with values
worked out by hand on a handmade study (femur 10 x 10 px; moved 2 px: IoU 80/120, Dice
160/200; moved 5 px on the last half labelled: drift 0.5 - 1 = -0.5)."""

from __future__ import annotations

import datetime as dt
import re

from datatool.labels.gold import hand_gold
from datatool.report.study import study_report
from tests.gold_util import femur_shifted, label, reference_mask, study
from tests.report.page import parse

T0 = dt.datetime(2026, 1, 5, 9, 0, 0)


def _gold_workspace(ws, tmp_path):
    ids = study(ws, tmp_path, 4, raters=("EXP", "AN2", "AN3"))
    for i in ids:
        label(ws, "EXP", i, reference_mask())
    for rater in ("AN2", "AN3"):
        hand_gold(ws, rater, 4, "EXP", 0, "itksnap", [])
    for k, i in enumerate(ids):
        label(ws, "AN2", i, femur_shifted(2))
        # AN3: exact on the first two it labels, femur 5 px off on the last two
        mask = reference_mask() if k < 2 else femur_shifted(5)
        label(ws, "AN3", i, mask, T0 + dt.timedelta(minutes=k))
    return ids


def test_gold_scores_in_the_html_and_the_markdown(ws, tmp_path):
    _gold_workspace(ws, tmp_path)
    report = study_report(ws, out=tmp_path / "study.html")
    page = parse((tmp_path / "study.html").read_text(encoding="utf-8"))
    rows = {tuple(k.split("|")): r for k, r in page.texts("gold-table", "data-key").items()}
    # rater, reference, structure, gold images labelled, IoU mean, Dice mean ± SD, drift
    assert rows[("AN2", "femur")][1:] == ["EXP", "femur", "4", "0.667", "0.800 ± 0.000", "0.000"]
    assert rows[("AN2", "sciatic nerve")][4:6] == ["1.000", "1.000 ± 0.000"]
    assert rows[("AN3", "femur")][3] == "4"
    assert rows[("AN3", "femur")][6] == "-0.500"
    # all structures pooled: AN2's femur (0.8 x 4) and nerve (1 x 4) pairs
    assert rows[("AN2", "all structures")][5].startswith("0.900 ± ")
    assert report.gold is not None and {g.rater for g in report.gold.raters} == {"AN2", "AN3"}

    study_report(ws, out=tmp_path / "study.md", fmt="md")
    md = (tmp_path / "study.md").read_text(encoding="utf-8")
    assert "## Gold-standard tasks" in md
    assert re.search(
        r"^\| AN2 \| EXP \| femur \| 4 \| 0\.667 \| 0\.800 ± 0\.000 \| 0\.000 \|$", md, re.M
    )
    assert re.search(r"^\| AN3 \| EXP \| femur \| 4 \| .* \| -0\.500 \|$", md, re.M)


def test_no_gold_section_without_gold_tasks(ws, tmp_path):
    ids = study(ws, tmp_path, 2, raters=("EXP",))
    label(ws, "EXP", ids[0], reference_mask())
    report = study_report(ws, out=tmp_path / "study.html")
    assert report.gold is None
    html = (tmp_path / "study.html").read_text(encoding="utf-8")
    assert 'id="gold"' not in html and "gold-table" not in html
