"""The planted-error benchmark's small version (datatool.demo.planted, bench/qa.py --planted):
on a small demo workspace (with its second display convention), errors of every kind planted at
known places are found, the queue's head holds them, and a mirrored image raises one flag."""

from __future__ import annotations

import pytest

from datatool.analysis.qa import run_qa
from datatool.core.workspace import init_workspace, open_workspace
from datatool.demo.generator import write_demo_dataset
from datatool.demo.planted import KINDS, plant, score
from tests.labels_util import ingest_demo_with_labels


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """4 patients (the 4th scanned by the operator whose display is mirrored), 3 images per
    side, both raters, the demo's own rater errors left out."""
    root = tmp_path_factory.mktemp("planted")
    write_demo_dataset(root / "data", patients=4, seed=3, images_per_side=(3, 3),
                       rater_errors=False)  # fmt: skip
    init_workspace(root / "ws")
    ws = open_workspace(root / "ws")
    ingest_demo_with_labels(ws, root / "data")
    yield ws
    ws.close()


def test_a_clean_demo_with_two_display_conventions_raises_no_flag(small):
    result = run_qa(small)
    assert result.labels == 48 and result.open == 0
    assert any(
        n.startswith("2 series (6 images) show the lateral side mirrored") for n in result.notes
    )


def test_planted_errors_are_found_and_lead_the_queue(small):
    # seed 0 spreads the changes over the series; with 3 images a series, a series whose three
    # images all changed (a swap of the femur and the nerve, a mirrored image, a wrong image:
    # seeds 1, 2 and 4) has no majority left to learn its convention from
    plan = plant(small, per_kind=1, mirrored_share=0.05, seed=0)
    assert sorted(p.kind for p in plan.planted) == sorted(KINDS) and len(plan.mirrored) == 1
    run_qa(small)
    got = score(small, plan)
    for kind in ("missed", "swap", "wrong_image", "blob", "mirrored"):
        assert got.recall[kind] == 1.0, (kind, got.missed)
    assert got.precision_at_k >= 0.8, got
    assert got.mirrored_extra == 0 and got.elsewhere == 0
    assert got.k == 7 and got.queue_per_image == got.queue / 24
