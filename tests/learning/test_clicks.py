"""Clicks: their channels and the simulated clicker, on constructed masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from datatool.learning.clicks import (
    Click,
    click_channels,
    click_maps,
    honour_clicks,
    iou,
    next_click,
)


def test_click_maps_put_a_disc_in_the_structures_positive_or_negative_channel():
    maps = click_maps(
        [Click("b", 10, 12, True), Click("a", 20, 5, False)], (32, 40), ["a", "b"], radius=2
    )
    assert maps.shape == (4, 32, 40) and maps.dtype == np.float32
    assert maps[0].sum() == 0  # a positive: none
    assert maps[1].sum() == 13  # a negative: one disc of radius 2 (13 pixels)
    assert maps[1, 20, 5] == 1 and maps[1, 22, 5] == 1 and maps[1, 22, 6] == 0
    assert maps[2].sum() == 13 and maps[2, 10, 12] == 1 and maps[2, 10, 14] == 1
    assert maps[2, 10, 15] == 0
    assert maps[3].sum() == 0
    assert click_channels(5) == 10


def test_a_click_at_the_edge_keeps_the_part_of_its_disc_inside():
    maps = click_maps([Click("a", 0, 0)], (8, 8), ["a"], radius=2)
    # of the 13-pixel disc, the quarter with y >= 0 and x >= 0: 6 pixels
    assert maps[0].sum() == 6 and maps[0, 0, 0] == 1


def test_click_maps_refuse_an_unknown_structure_or_a_point_outside():
    with pytest.raises(ValueError, match="'c', which is not a structure"):
        click_maps([Click("c", 1, 1)], (8, 8), ["a", "b"])
    with pytest.raises(ValueError, match="outside the 8 x 8 image"):
        click_maps([Click("a", 8, 1)], (8, 8), ["a"])


def test_missed_structure_gets_a_positive_click_at_its_centre():
    truth = np.zeros((64, 64), bool)
    truth[10:31, 20:41] = True  # 21 x 21: the centre (20, 30) is deepest
    click = next_click(np.zeros_like(truth), truth, "nerve")
    assert click == Click("nerve", 20, 30, True)


def test_the_largest_error_region_decides_a_spill_gets_a_negative_click():
    truth = np.zeros((64, 64), bool)
    truth[5:15, 5:15] = True  # missed: 100 pixels
    pred = np.zeros_like(truth)
    pred[30:51, 30:51] = True  # spilled: 441 pixels
    click = next_click(pred, truth)
    assert click is not None and not click.positive and (click.y, click.x) == (40, 40)
    # shrink the spill below the miss: the miss is clicked, positive
    pred[:] = False
    pred[30:35, 30:35] = True
    click = next_click(pred, truth)
    assert click is not None and click.positive and 5 <= click.y < 15 and 5 <= click.x < 15


def test_the_image_edge_counts_as_the_regions_border():
    truth = np.zeros((40, 64), bool)
    truth[0:10, :] = True  # a band along the top edge
    click = next_click(np.zeros_like(truth), truth)
    assert click is not None and click.y in (4, 5)  # not row 9, as if the edge were inside


def test_no_error_no_click_and_shapes_must_match():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    assert next_click(mask, mask) is None
    with pytest.raises(ValueError, match="differ in shape"):
        next_click(mask, mask[:4])


def test_a_drawn_click_falls_in_the_deep_half_of_the_region():
    truth = np.zeros((64, 64), bool)
    truth[10:31, 20:41] = True
    rng = np.random.default_rng(0)
    points = {
        (c.y, c.x) for c in (next_click(np.zeros_like(truth), truth, rng=rng) for _ in range(50))
    }
    assert len(points) > 5  # not always the centre
    for y, x in points:  # depth >= 5.5 (half of 11): at least 5 pixels inside every side
        assert 15 <= y <= 25 and 25 <= x <= 35


def test_click_scaling_and_iou():
    assert Click("a", 100, 200).scaled(0.5, 0.5) == Click("a", 50, 100)
    assert Click("a", 0, 0, False).scaled(2, 2) == Click("a", 0, 0, False)
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert iou(a, b) == 1.0
    a[0, :2] = True
    b[0, 1:3] = True
    assert iou(a, b) == pytest.approx(1 / 3)


def test_a_drawing_is_made_to_agree_with_its_clicks():
    """A positive click the network ignored paints its disc; a negative click on the structure
    clears the structure in its disc (not the other labels there); a click already honoured
    changes nothing."""
    labels = np.zeros((20, 20), np.uint8)
    labels[0:6, 0:6] = 3  # the nerve, drawn
    labels[4:6, 4:10] = 2  # a muscle beside it
    value_of = {"nerve": 3, "muscle": 2}
    positive = honour_clicks(labels, [Click("nerve", 15, 15, True)], value_of, radius=1)
    added = (positive == 3) & (labels != 3)
    assert sorted(zip(*np.nonzero(added))) == [(14, 15), (15, 14), (15, 15), (15, 16), (16, 15)]
    negative = honour_clicks(labels, [Click("nerve", 4, 3, False)], value_of, radius=1)
    cleared = (labels == 3) & (negative == 0)
    assert sorted(zip(*np.nonzero(cleared))) == [(3, 3), (4, 2), (4, 3), (5, 3)]
    assert (negative[labels == 2] == 2).all()  # (4, 4) is the muscle's and stays so
    assert (honour_clicks(labels, [Click("nerve", 2, 2, True)], value_of) == labels).all()
    assert (honour_clicks(labels, [Click("nerve", 9, 9, False)], value_of) == labels).all()
    assert labels[15, 15] == 0  # the input is left as it was
    # by default the disc is small (HONOUR_RADIUS): a negative click at a small structure's
    # edge must not cut a hole of the network's 5-pixel click disc into it
    default = honour_clicks(labels, [Click("nerve", 5, 2, False)], value_of)
    assert int(((labels == 3) & (default == 0)).sum()) == 4  # (4,2) (5,1) (5,2) (5,3)
