"""``score RUN --clicks``: the clicker's figures worked out by hand (NoC, the share never
reaching the target, IoU after k clicks), the clicker's first click on a network that draws
nothing, and the whole command on an interactive run: clicks.json, the CLI's JSON, the
refusals, and the study report's table read back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.ci import require

torch = require("torch")

from datatool.cli import app  # noqa: E402
from datatool.core.errors import UsageError  # noqa: E402
from datatool.learning.click_scoring import clicker_curves, score_clicks, summarise  # noqa: E402
from datatool.report.study import study_report  # noqa: E402
from tests.qa_util import clone  # noqa: E402


class Background(torch.nn.Module):
    """A network that draws background everywhere, whatever the clicks."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.k, *x.shape[-2:])
        logits[:, 0] = 1.0
        return logits


def test_noc_never_reached_and_iou_after_k_clicks_by_hand():
    """Raters' IoU 0.8, so the target is 0.95 x 0.8 = 0.76. Image A reaches it with no click
    (0), B after its second click (0.77 >= 0.76: 2), C never (3, the maximum counted).
    NoC = (0 + 2 + 3) / 3 = 5/3; never reached: 1 of 3; mean IoU after 0 clicks
    (0.80 + 0.50 + 0.10) / 3 = 0.4667, after 1 (0.85 + 0.70 + 0.20) / 3 = 0.5833, after 3
    (0.90 + 0.90 + 0.40) / 3 = 0.7333; 5 is beyond the 3 clicks and left out."""
    curves = np.array(
        [
            [0.80, 0.85, 0.88, 0.90],
            [0.50, 0.70, 0.77, 0.90],
            [0.10, 0.20, 0.30, 0.40],
        ]
    )
    s = summarise("sciatic nerve", curves, 0.8)
    assert s.images == 3 and s.target == pytest.approx(0.76)
    assert s.noc == pytest.approx(5 / 3) and s.never_reached == pytest.approx(1 / 3)
    assert s.iou_after == pytest.approx({0: 1.4 / 3, 1: 1.75 / 3, 3: 2.2 / 3})
    assert s.iou_curve == pytest.approx([1.4 / 3, 1.75 / 3, 1.95 / 3, 2.2 / 3])
    # exactly at the target counts as reached: B's 0.77 lowered to 0.76
    curves[1, 2] = 0.76
    assert summarise("n", curves, 0.8).noc == pytest.approx(5 / 3)
    # no second rater: no target, so no NoC and no share; the curve is still reported
    alone = summarise("n", curves, None)
    assert alone.target is None and alone.noc is None and alone.never_reached is None
    assert alone.iou_after[0] == pytest.approx(1.4 / 3)


def test_the_first_click_on_a_network_that_draws_nothing():
    """A 10 x 10 square of structure 1 (rows and columns 10-19) that the network misses
    whole: IoU 0 with no click. The clicker clicks the square's deepest point, the first in
    raster order of the four at distance 5 from its border: (14, 14). The drawing is made to
    agree with the click: its small disc (HONOUR_RADIUS 1: the 5 lattice points with
    dy² + dx² <= 1, all inside the square) becomes the structure. IoU = 5 / 100."""
    refs = np.zeros((1, 32, 32), np.uint8)
    refs[0, 10:20, 10:20] = 1
    images = np.zeros((1, 32, 32), np.uint8)
    names = ["femur", "sciatic nerve"]
    cpu = torch.device("cpu")
    curves = clicker_curves(Background(3), images, refs, 1, names, 32, cpu, max_clicks=1)
    assert curves.shape == (1, 2)
    assert curves[0, 0] == 0.0
    assert curves[0, 1] == pytest.approx(5 / 100)


class LeftHalf(torch.nn.Module):
    """A network that draws structure 1 on the left half of its input only: logit 3 there
    (background 1 everywhere, structure 1 logit 0 on the right half)."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
        logits[:, 0] = 1.0
        logits[:, 1, :, : x.shape[-1] // 2] = 3.0
        return logits


def test_each_redraw_averages_in_the_mirrored_input_with_flips():
    """Structure 1 fills the 32 x 32 image. Plainly the network draws its left half: IoU 0.5.
    With flips the mirror's drawing (its left half, the image's right half) is averaged in:
    structure 1's probability is (e^3 / (e^3 + e) + 1 / (1 + e)) / 2 = (0.881 + 0.269) / 2 =
    0.575 on either half, above background's 0.425: the whole square, IoU 1."""
    refs = np.ones((1, 32, 32), np.uint8)
    images = np.zeros((1, 32, 32), np.uint8)
    cpu = torch.device("cpu")
    plain = clicker_curves(LeftHalf(), images, refs, 1, ["femur"], 32, cpu, 1, flips=False)
    mirrored = clicker_curves(LeftHalf(), images, refs, 1, ["femur"], 32, cpu, 1, flips=True)
    assert plain[0, 0] == pytest.approx(0.5)
    assert mirrored[0, 0] == pytest.approx(1.0)


@pytest.fixture()
def clicked(trained_interactive, tmp_path):
    ws0, run = trained_interactive
    ws = clone(ws0, tmp_path / "ws")
    yield ws, run
    ws.close()


def test_score_clicks_writes_its_figures_and_the_report_shows_them(clicked, trained):
    ws, run = clicked
    result = score_clicks(ws, run, device="cpu", max_clicks=2)
    assert result.run == run and result.set == "test" and result.max_clicks == 2
    assert result.threshold == 0.95 and result.raters == ["rater1", "rater2"]
    assert result.ms_per_click > 0 and result.flips  # as serve redraws: with the flips
    saved = json.loads((ws.root / "reports" / f"run-{run}-test" / "clicks.json").read_text())
    assert saved == json.loads(json.dumps({**result.as_dict(), "out_dir": None}))
    assert result.out_dir == str(ws.root / "reports" / f"run-{run}-test")
    for st in result.structures:
        assert 0 < st.images <= result.images
        assert len(st.iou_curve) == 3 and set(st.iou_after) == {0, 1}
        assert all(0.0 <= v <= 1.0 for v in st.iou_curve)
        if st.raters_iou is not None:
            assert st.target == pytest.approx(0.95 * st.raters_iou)
            assert 0.0 <= st.noc <= 2.0 and 0.0 <= st.never_reached <= 1.0
    # the study report of this run reads clicks.json back into its table
    from datatool.learning.scoring import score_run

    score_run(ws, run, device="cpu", store_predictions=False)
    page = Path(study_report(ws, run=run).out).read_text(encoding="utf-8")
    start = page.index('id="clicks-table"')
    table = page[start : page.index("</table>", start)]
    assert "ms a click, each redraw with test-time flips as <code>serve</code> redraws" in page
    for st in result.structures:
        assert f">{st.structure}</td>" in table
        if st.noc is not None:
            assert f'data-value="{st.noc!r}"' in table
    assert len(re.findall(r"<tr><td class=\"text\">", table)) == len(result.structures)
    # a run trained without clicks is refused, word for word
    _, plain = trained
    with pytest.raises(UsageError) as refused:
        score_clicks(ws, plain, device="cpu")
    assert str(refused.value) == (
        f"run {plain} was not trained with clicks: 'score --clicks' needs a run of "
        "'datatool train --interactive'"
    )


def test_the_cli_scores_clicks_as_json_and_refuses_cross_validation(clicked, cli_env):
    ws, run = clicked
    base = ["score", str(run), "--clicks", "--max-clicks", "1", "--device", "cpu"]
    where = ["--json", "--workspace", str(ws.root)]
    res = CliRunner().invoke(app, [*base, "--no-flips", *where], env=cli_env)
    assert res.exit_code == 0, res.output
    answer = json.loads(res.stdout)
    assert answer["run"] == run and answer["max_clicks"] == 1 and answer["flips"] is False
    assert [len(s["iou_curve"]) for s in answer["structures"]] == [2] * len(answer["structures"])
    res = CliRunner().invoke(app, [*base, "--cv", "--workspace", str(ws.root)], env=cli_env)
    assert res.exit_code == 2 and "--clicks scores one run" in res.output
