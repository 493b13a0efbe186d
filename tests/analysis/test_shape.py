"""The measures and rules of the QA checks on label maps (datatool.analysis.shape)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datatool.analysis import shape
from datatool.core.protocol import Relation


def disc(shape_rc=(60, 80), centre=(40, 30), r=10, value=1) -> np.ndarray:
    yy, xx = np.mgrid[: shape_rc[0], : shape_rc[1]]
    out = np.zeros(shape_rc, np.uint8)
    out[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= r * r] = value
    return out


def box_of(binary: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(binary)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_cross_counts_say_what_the_other_label_holds_under_a_structure():
    label = np.zeros((10, 10), np.uint8)
    label[2:6, 2:6] = 2  # 16 px
    other = np.zeros((10, 10), np.uint8)
    other[2:6, 2:4] = 2  # 8 of them are 2 in the other label
    other[2:6, 4:5] = 4  # 4 are 4, the last 4 are background
    box = box_of(label == 2)
    binary, crop = shape.crop(label, box) == 2, shape.crop(other, box)
    # half of it on its own: no swap is possible, so only that count is taken
    assert shape.cross_counts(binary, crop, 2) == {2: 8}
    assert shape.cross_counts(binary, crop, 2, ratio=0.5) == {0: 4, 2: 8, 4: 4}
    other[2:6, 2:4] = 4  # now 12 of the 16 lie on the other's 4, none on its own 2
    assert shape.cross_counts(binary, shape.crop(other, box), 2) == {0: 4, 4: 12}


def test_components_beyond_the_allowed_count_and_their_pixels():
    binary = disc(r=8).astype(bool) | disc(centre=(70, 50), r=2).astype(bool)
    assert shape.extra_component_px(binary, 1) == (2, int(disc(centre=(70, 50), r=2).sum()))
    assert shape.extra_component_px(binary, 2) == (2, 0)
    # diagonal neighbours are one component (8-connected, as the catalogue counts them)
    diagonal = np.eye(5, dtype=bool)
    assert shape.extra_component_px(diagonal, 1) == (1, 0)


def test_holes_are_enclosed_regions_of_other_pixels_not_bays():
    ring = disc(r=12).astype(bool) & ~disc(r=4).astype(bool)
    n, px = shape.holes(shape.crop(ring, box_of(ring)))
    assert n == 1 and px == int(disc(r=4).sum())
    assert shape.holes(shape.crop(ring, box_of(ring)), min_px=1000) == (0, 0)  # brush noise
    bay = disc(r=12).astype(bool)
    bay[28:33, 40:] = False  # a notch open to the outside: not a hole
    assert shape.holes(shape.crop(bay, box_of(bay))) == (0, 0)
    solid = disc(r=12).astype(bool)
    assert shape.holes(shape.crop(solid, box_of(solid))) == (0, 0)
    # a C shape crosses rows twice but encloses nothing
    c_shape = np.zeros((20, 20), bool)
    c_shape[2:18, 2:6] = c_shape[2:6, 2:18] = c_shape[14:18, 2:18] = True
    assert shape.holes(c_shape) == (0, 0)
    c_shape[6:14, 14:18] = True  # closed: the inside is a hole
    assert shape.holes(c_shape) == (1, 8 * 8)


def test_the_view_edge_is_the_image_border_or_the_blanked_area():
    near = shape.near_outside((60, 80), [{"x0": 10, "y0": 5, "x1": 69, "y1": 54}])
    # row 4 and column 9 are blanked; the view's first row and column touch them
    assert near[0, 40] and near[4, 40] and near[5, 40] and not near[6, 40]
    assert near[30, 9] and near[30, 10] and not near[30, 11]
    whole = shape.near_outside((60, 80), None)  # nothing blanked: only the border
    assert whole[0, 0] and whole[59, 40] and whole[30, 79] and not whole[1, 1]
    inside = disc(r=8).astype(bool)
    assert shape.edge_contact(inside, near) == (0, 0)
    region = [{"x0": 10, "y0": 5, "x1": 69, "y1": 54}]
    assert shape.inside_view((32, 22, 48, 38), (60, 80), region)  # the disc's box: no look
    assert not shape.inside_view((10, 22, 48, 38), (60, 80), region)  # on the region's edge
    assert not shape.inside_view((0, 22, 48, 38), (60, 80), None)  # on the image's border
    assert shape.inside_view((1, 1, 78, 58), (60, 80), None)
    touching = disc(centre=(14, 30), r=8).astype(bool)
    px, outline = shape.edge_contact(touching, near)
    assert px > 0 and outline > px


def test_centroid_in_image_coordinates():
    binary = disc(centre=(40, 30), r=6).astype(bool)
    box = box_of(binary)
    x, y = shape.centroid(shape.crop(binary, box), box[0], box[1])
    assert (x, y) == pytest.approx((40.0, 30.0))


def test_disagreement_severity_scales_from_the_threshold_to_a_missing_structure():
    assert shape.dice(100, 0, 0) == 0.0 and shape.dice(0, 0, 0) is None
    assert shape.disagreement(0.0, 0.5) == 1.0  # present in one, absent in the other
    assert shape.disagreement(0.25, 0.5) == pytest.approx(0.5)
    assert shape.disagreement(0.5, 0.5) is None and shape.disagreement(None, 0.5) is None


def test_a_swap_lies_mostly_on_the_other_structure():
    values = [1, 2, 3, 4, 6]
    swapped = shape.swap({4: 95, 0: 5}, 2, 100, values)
    assert swapped is not None and swapped.other_value == 4
    assert swapped.share_other == 0.95 and swapped.severity == pytest.approx(0.9)
    assert shape.swap({2: 90, 4: 10}, 2, 100, values) is None  # mostly on its own
    assert shape.swap({2: 30, 4: 60, 0: 10}, 2, 100, values) is None  # not three times more
    assert shape.swap({4: 40, 0: 60}, 2, 100, values) is None  # less than half
    assert shape.swap({}, 2, 0, values) is None


def test_size_spread_is_median_and_mad():
    spread = shape.Spread.of([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 0])  # 0: absent, left out
    assert spread is not None and (spread.n, spread.median, spread.mad) == (10, 14.5, 2.5)
    assert spread.z(14.5) == 0.0
    # Iglewicz & Hoaglin's modified z-score, 0.6745 (x - median) / MAD, with the literature's
    # constant written out here (not the code's): one MAD above the median is 0.6745
    assert spread.z(14.5 + 2.5) == pytest.approx(0.6745, rel=1e-12)
    assert spread.z(24.5) == pytest.approx(0.6745 * 10 / 2.5, rel=1e-12)  # 2.698
    assert spread.z(9.5) == pytest.approx(-1.349, rel=1e-12)  # two MADs below
    assert shape.Spread.of([10] * 20) is None  # no spread
    assert shape.Spread.of([10, 11, 12]) is None  # too few
    assert shape.size_severity(7.0, 3.5) == pytest.approx(1.0)
    assert shape.size_severity(-7.0, 3.5) == pytest.approx(1.0)
    assert shape.size_severity(3.0, 3.5) is None


@pytest.mark.parametrize(
    "relation,centre,other,lateral,broken",
    [
        ("superficial to", (50, 20), (50, 60), None, False),  # artery above the nerve
        ("superficial to", (50, 80), (50, 60), None, True),  # below it
        ("deep to", (50, 80), (50, 60), None, False),
        ("lateral to", (20, 50), (60, 50), "left", False),  # lateral shows on the left
        ("lateral to", (20, 50), (60, 50), "right", True),  # the other leg
        ("medial to", (20, 50), (60, 50), "right", False),
        ("lateral to", (20, 50), (60, 50), None, False),  # unknown leg: not checked
    ],
)
def test_relations_on_centroids(relation, centre, other, lateral, broken):
    rel = Relation("a", relation, "b")
    found = shape.relation_check(rel, centre, other, (314, 314), lateral, (0.1, 0.2))
    assert (found is not None) == broken
    if found is not None:
        assert found.wrong_by_px == 20 or found.wrong_by_px == 40
        mm = 0.1 if "lateral" in relation or "medial" in relation else 0.2
        assert found.wrong_by_mm == pytest.approx(found.wrong_by_px * mm)
        assert found.severity == pytest.approx(found.wrong_by_px / (2 * math.sqrt(314 / math.pi)))


def test_equivalent_radius_of_a_disc():
    """r = sqrt(area / pi): pi -> 1, 4 pi -> 2, nothing (or a negative area) -> 0."""
    assert shape.equivalent_radius(math.pi) == pytest.approx(1.0)
    assert shape.equivalent_radius(4 * math.pi) == pytest.approx(2.0)
    assert shape.equivalent_radius(0.5) == pytest.approx(math.sqrt(0.5 / math.pi))
    assert shape.equivalent_radius(0) == 0.0 and shape.equivalent_radius(-3) == 0.0
