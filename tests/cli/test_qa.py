"""The QA commands: qa (the checks), qa list, qa resolve, qa report, next; labelstudio push
--review and sync labelstudio --review refuse what does not go together."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from datatool.cli import app
from tests.ci import require
from tests.qa_util import V, clean, images_of, qa_ws, relabel

__all__ = ["qa_ws"]  # the fixture counts as used
ENV = {"COLUMNS": "200"}


def run(ws, *args: str):
    return CliRunner().invoke(app, [*args, "--workspace", str(ws.root)], env=ENV)


@pytest.fixture()
def flagged(qa_ws):
    """B missed the artery on one image."""
    image_id, side = images_of(qa_ws)[1]
    m = clean(side, 1, 2.0)
    m[m == V["femoral artery"]] = 0
    relabel(qa_ws, "B", image_id, m)
    return qa_ws, image_id


def test_qa_checks_lists_resolves_and_reports(flagged, tmp_path):
    ws, image_id = flagged
    res = run(ws, "qa")
    assert res.exit_code == 0, res.output
    assert "checked 24 label versions of A, B on 12 images (no model)" in res.output
    assert "rater_disagreement" in res.output and "2 open flags in the queue" in res.output
    res = run(ws, "qa", "--json")
    data = json.loads(res.stdout)
    assert data["open"] == 2 and data["thresholds"]["rater_dice_below"] == 0.7
    assert {r["reason"]: r["found"] for r in data["reasons"]}["rater_disagreement"] == 2

    res = run(ws, "qa", "list", "--csv", str(tmp_path / "q.csv"))
    assert res.exit_code == 0 and "femoral artery" in res.output and "absent here" in res.output
    rows = list(csv.DictReader((tmp_path / "q.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[0]["severity"] == "1.0"
    listed = json.loads(run(ws, "qa", "list", "--rater", "B", "--json").stdout)
    assert listed["total"] == 1 and listed["items"][0]["image_id"] == image_id
    flag = listed["items"][0]["flag"]
    assert json.loads(run(ws, "qa", "list", "--reason", "swap", "--json").stdout)["total"] == 0

    res = run(ws, "qa", "resolve", str(flag), "--note", "[red]artery out of plane", "--status",
              "accepted")  # fmt: skip
    assert res.exit_code == 0 and f"flag {flag}" in res.output and "accepted" in res.output
    again = run(ws, "qa", "resolve", str(flag), "--note", "again")
    assert again.exit_code == 1 and "only open flags" in again.output
    every = run(ws, "qa", "list", "--all")
    assert "[red]artery out of plane" in every.output  # user text printed as it is
    assert run(ws, "qa", "resolve", "999", "--note", "x").exit_code == 2
    assert run(ws, "qa", "list", "--reason", "nonsense").exit_code == 2

    res = run(ws, "qa", "report", "--out", str(tmp_path / "r"), "--top", "1", "--json")
    report = json.loads(res.stdout)
    assert report["items"] == 1 and len(report["thumbnails"]) == 1
    assert (tmp_path / "r" / "index.html").is_file()


def test_options_of_the_checks_do_not_go_with_a_subcommand(qa_ws):
    res = run(qa_ws, "qa", "--run", "1", "list")
    assert res.exit_code == 2 and "--run" in res.output


def test_qa_help_says_how_the_queue_is_ranked():
    res = CliRunner().invoke(app, ["qa", "list", "--help"], env=ENV)
    assert "ranked by severity" in res.output and "priority" in res.output
    res = CliRunner().invoke(app, ["qa", "--help"], env=ENV)
    assert "--pair-z-above" in res.output and "wrong_image" in res.output
    assert "mirrored" in res.output
    res = CliRunner().invoke(app, ["next", "--help"], env=ENV)
    assert "mean predictive entropy" in res.output and "--per-patient" in res.output


def test_next_lists_the_most_uncertain_unlabelled_images(trained, tmp_path):
    require("torch")
    from datatool.labels.annotations import add_rater
    from tests.qa_util import clone

    source, run_id = trained
    ws = clone(source, tmp_path / "ws")
    add_rater(ws, "NEXT")
    res = run(ws, "next", "--rater", "NEXT", "--n", "3", "--run", str(run_id), "--device", "cpu",
              "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["run"] == run_id and len(data["images"]) == 3 and data["per_patient"] == 1
    assert len({c["patient"] for c in data["images"]}) == 3  # three patients, one each
    entropies = [c["entropy"] for c in data["images"]]
    assert entropies == sorted(entropies, reverse=True)
    # asked again, every image's score is in the run's cache: the same list, and neither the
    # network nor torch is loaded (a process of its own, to see what it imports)
    code = (
        "import json, sys\n"
        "from datatool.assist.selection import next_images\n"
        "from datatool.core.jsonable import to_jsonable\n"
        "from datatool.core.workspace import open_workspace\n"
        f"got = next_images(open_workspace({str(ws.root)!r}), 'NEXT', n=3, run={run_id})\n"
        "print(json.dumps([to_jsonable(got.images), 'torch' in sys.modules]))\n"
    )
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == [data["images"], False]
    assert run(ws, "next", "--rater", "rater1", "--run", str(run_id)).exit_code == 0  # none left


@pytest.mark.parametrize(
    "args",
    [
        ["labelstudio", "push"],  # --rater is needed
        ["labelstudio", "push", "--rater", "A", "--store-as", "reviewer"],  # without --review
        ["labelstudio", "push", "--review", "--images", "1"],
        ["sync", "labelstudio"],
        ["sync", "labelstudio", "--review", "--export", "x.json"],
    ],
)
def test_review_options_that_do_not_go_together(qa_ws, args):
    res = run(qa_ws, *args)
    assert res.exit_code == 2, res.output


def test_the_clis_defaults_are_the_checks_defaults():
    from datatool.analysis import shape
    from datatool.cli import qa as cli_qa

    assert (cli_qa.MODEL_DICE_BELOW, cli_qa.RATER_DICE_BELOW) == (
        shape.MODEL_DICE_BELOW,
        shape.RATER_DICE_BELOW,
    )
    assert (cli_qa.SIZE_Z_ABOVE, cli_qa.PAIR_Z_ABOVE) == (shape.SIZE_Z_ABOVE, shape.PAIR_Z_ABOVE)
    assert cli_qa.MAX_FLAG_SHARE == shape.MAX_FLAG_SHARE
    assert (cli_qa.TEMPORAL_RATIO, cli_qa.TEMPORAL_FLOOR_MM, cli_qa.TEMPORAL_FLOOR_PX) == (
        shape.TEMPORAL_RATIO,
        shape.TEMPORAL_FLOOR_MM,
        shape.TEMPORAL_FLOOR_PX,
    )
