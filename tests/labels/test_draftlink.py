"""The overlap rule that links a label to a draft when the tool lost the link: IoU per
structure present in either, more than half of them at 0.9 or more."""

from __future__ import annotations

import numpy as np

from datatool.core.protocol import load_protocol
from datatool.labels.draftlink import close_enough, closest_draft, structure_ious

P = load_protocol()


def _draft() -> np.ndarray:
    m = np.zeros((40, 60), np.uint8)
    m[0:10, 0:10] = 1  # femur, 100 px
    m[20:30, 0:10] = 2  # adductor magnus, 100 px
    m[0:10, 30:40] = 3  # sciatic nerve, 100 px
    return m


def test_ious_per_structure_present_in_either():
    draft = _draft()
    label = draft.copy()
    label[0:10, 9] = 0  # femur: 90 of 100 kept -> IoU 0.9
    label[20:30, 0:5] = 0  # adductor: 50 of 100 -> 0.5
    label[35:40, 50:60] = 6  # femoral artery only in the label -> 0
    assert structure_ious(label, draft, P) == {
        "femur": 0.9,
        "adductor magnus": 0.5,
        "sciatic nerve": 1.0,
        "femoral artery": 0.0,
    }
    # 2 of 4 structures reach 0.9: not more than half
    assert not close_enough(structure_ious(label, draft, P))
    label[35:40, 50:60] = 0  # without the artery: 2 of 3
    assert close_enough(structure_ious(label, draft, P))


def test_the_closest_draft_wins_and_nothing_links_empty_maps():
    draft = _draft()
    label = draft.copy()
    label[0:10, 9] = 0
    moved = np.roll(draft, 5, axis=1)  # every structure half off: IoU 5/15
    found = closest_draft(label, [("moved", moved), ("draft", draft), ("same", draft)], P)
    assert found is not None and found.key == "draft"  # the first of two equal ones
    assert closest_draft(label, [("moved", moved)], P) is None
    empty = np.zeros_like(draft)
    assert closest_draft(empty, [("empty", empty)], P) is None
    assert closest_draft(label, [("other size", draft[:20])], P) is None


def test_sync_labelstudio_help_states_the_rule():
    from typer.testing import CliRunner

    from datatool.cli import app
    from datatool.labels.draftlink import OVERLAP_RULE

    result = CliRunner().invoke(app, ["sync", "labelstudio", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert OVERLAP_RULE in text
