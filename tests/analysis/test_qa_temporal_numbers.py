"""The temporal check's numbers on plain sequences (``analysis.qa.temporal.jumps``) and its
part in the flood limit (``analysis.qa.flood.cap``): known answers worked out by hand. The
check on real ingested cines: test_qa_temporal.py."""

from __future__ import annotations

from datatool.analysis.qa.flood import cap
from datatool.analysis.qa.rules import _Found
from datatool.analysis.qa.temporal import jumps
from datatool.core.catalogue import FlagReason


def pts(*xs: float) -> list[tuple[float, ...]]:
    return [(x, 0.0) for x in xs]


def test_jumps_on_plain_sequences():
    frames = list(range(6))
    # constant speed, or accelerating: every frame where its neighbours say
    assert jumps(frames, pts(0, 5, 10, 15, 20, 25), 3.0, 1.0) == []
    assert jumps(frames, pts(0, 1, 3, 6, 10, 15), 3.0, 1.0) == []
    # a still loop with noise under the floor
    assert jumps(frames, pts(0, 0.3, -0.2, 0.1, 0.4, 0.0), 3.0, 1.0) == []
    # one frame off by 10: only that frame, against the other frames' usual step of 1
    (j,) = jumps(frames, pts(0, 1, 12, 3, 4, 5), 3.0, 1.0)
    assert (j.index, j.change, j.usual, j.threshold) == (2, 10.0, 1.0, 3.0)
    # the first frame off: its one neighbour predicts it
    (j,) = jumps(frames, pts(9, 1, 2, 3, 4, 5), 3.0, 1.0)
    assert (j.index, j.change) == (0, 8.0)
    # the frame next to the last one off: that frame, not the end frame beside it
    assert [j.index for j in jumps(frames, pts(0, 1, 2, 3, 14, 5), 3.0, 1.0)] == [4]
    assert [j.index for j in jumps(frames, pts(0, 11, 2, 3, 4, 5), 3.0, 1.0)] == [1]
    # three frames: the middle one judged against the floor alone
    (j,) = jumps([0, 1, 2], pts(0, 5, 0), 3.0, 2.0)
    assert (j.index, j.threshold) == (1, 2.0)
    assert jumps([0, 1, 2], pts(0, 1.5, 0), 3.0, 2.0) == []
    # uneven frame numbers (only some frames ingested): interpolated at the frame
    assert jumps([0, 1, 4, 5], pts(0, 2, 8, 10), 3.0, 1.0) == []
    # a structure in fewer than three frames of the loop (or none): no course to leave
    assert jumps([], [], 3.0, 1.0) == [] and jumps([0, 1], pts(0, 50), 3.0, 1.0) == []
    # a loop that oscillates frame to frame: that is its usual change, nothing flagged
    assert jumps(frames, pts(0, 10, 0, 10, 0, 10), 3.0, 1.0) == []
    # two bad frames of six: the worse first, then the other once the first is left out
    assert [j.index for j in jumps(frames, pts(0, 1, 30, 3, 14, 5), 3.0, 1.0)] == [2, 4]
    # never more than a third of the frames: the rest say what is usual
    assert len(jumps(frames, pts(0, 40, 2, 50, 4, 70), 3.0, 1.0)) <= 2


def test_the_temporal_rule_takes_part_in_the_flood_limit():
    """Counted against the labels of loops, not every label: 10 flags among 30 loop labels
    (of 200) are a rule wrong for this dataset; the same among 200 loop labels are kept."""
    found = [_Found(a, a, "femur", FlagReason.temporal, 1.0, {"moved": 2.0}) for a in range(1, 11)]
    kept, notes = cap(list(found), 200, 0.25, {FlagReason.temporal: 30})
    assert kept == [] and notes == [
        "temporal on femur: would flag 10 of 30 labels (33 %, over the 25 % a rule may flag, "
        "--max-flag-share): a note about the rule, not flags; check its threshold or the "
        "protocol"
    ]
    assert cap(list(found), 200, 0.25, {FlagReason.temporal: 200}) == (found, [])
    assert cap(list(found), 200, 0.25, {FlagReason.temporal: 15}) == (found, [])  # < 20
