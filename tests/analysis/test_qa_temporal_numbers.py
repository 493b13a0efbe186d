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
    # never more than a third of the frames (one at least): the rest say what is usual; each
    # of these would lose more frames, one after the other, without the limit
    assert [j.index for j in jumps(range(4), pts(0, 100, 0, -20), 3.0, 1.0)] == [1]
    assert [j.index for j in jumps(frames, pts(0, 20, 100, 100, 0, 0), 3.0, 1.0)] == [1, 0]
    assert [j.index for j in jumps(range(7), pts(5, 5, 0, 0, 20, 20, 0), 3.0, 1.0)] == [6, 3]
    # the frame next to the last one off, the last one further from it than the frame is from
    # its course: still that frame (the end frame lies only 11 / 10 as far off)
    assert [j.index for j in jumps(range(7), pts(0, 1, 2, 3, 4, -5, 6), 3.0, 1.0)] == [5]
    # an end frame exactly 1.5 times as far off as its neighbour is not judged until that
    # neighbour is left out
    assert [j.index for j in jumps(frames, pts(0, 0, 0, 0, -5, 10), 3.0, 1.0)] == [4, 5]
    # a change exactly at the threshold is not flagged
    assert jumps([0, 1, 2], pts(0, 2, 0), 3.0, 2.0) == []
    # two frames equally off: the earlier first
    twice = jumps(range(9), pts(0, 0, 5, 0, 0, 0, 5, 0, 0), 3.0, 1.0)
    assert [j.index for j in twice] == [2, 6]
    # steps are per frame: over a gap of 4 frames a step of 4 is the usual 1 a frame
    assert [j.index for j in jumps([0, 4, 5, 6, 7], pts(0, 4, 5, 10, 7), 3.0, 1.0)] == [3]
    # an end frame's gap to its neighbour, at either end, in frames
    assert [j.index for j in jumps(range(10, 15), pts(6, 1, 2, 3, 4), 3.0, 1.0)] == [0]
    assert [j.index for j in jumps(range(10, 15), pts(0, 1, 2, 3, -2), 3.0, 1.0)] == [4]


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
