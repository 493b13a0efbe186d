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


# ---------------------------------------------------------------- by hand (issue 28)


def _box(rows: int, cols: int, *cells) -> np.ndarray:
    out = np.zeros((rows, cols), bool)
    for r, c in cells:
        out[r, c] = True
    return out


def test_holes_counted_by_hand():
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False  # one 3 x 3 hole
    assert shape.holes(ring) == (1, 9)
    assert shape.holes(ring, min_px=9) == (1, 9)
    assert shape.holes(ring, min_px=10) == (0, 0)
    small = np.ones((3, 3), bool)
    small[1, 1] = False  # one pixel: brush noise unless asked
    assert shape.holes(small) == (0, 0) and shape.holes(small, min_px=1) == (1, 1)
    assert shape.holes(np.ones((2, 9), bool)) == (0, 0)  # too thin for a hole
    assert shape.holes(np.ones((9, 2), bool)) == (0, 0)
    assert shape.holes(np.ones((4, 4), bool)) == (0, 0)  # solid
    # a 2 x 2 hole and a 1 x 2 one in a 4 x 8 block: one at the default, both at 2
    two = np.ones((4, 8), bool)
    two[1:3, 1:3] = False
    two[1, 5:7] = False
    assert shape.holes(two) == (1, 4) and shape.holes(two, min_px=2) == (2, 6)
    # the ring opened on each side of its box in turn: a bay, not a hole
    for opening in ((0, 2), (4, 2), (2, 0), (2, 4)):
        bay = ring.copy()
        bay[opening] = False
        assert shape.holes(bay, min_px=1) == (0, 0), opening
    # wider than tall, the hole off centre: 4 x 7 with a 2 x 4 hole
    wide = np.ones((4, 7), bool)
    wide[1:3, 2:6] = False
    assert shape.holes(wide) == (1, 8)


def test_cross_counts_by_hand():
    binary = np.ones((2, 5), bool)  # 10 pixels
    other = np.array([[1, 1, 1, 2, 2], [2, 2, 2, 2, 0]])
    # 3 on itself: 3 x (1 + 3) = 12 > 10, no value can hold three times more: {1: 3}
    assert shape.cross_counts(binary, other, 1) == {1: 3}
    assert shape.cross_counts(binary, other, 1, area=10) == {1: 3}
    # at ratio 2.5: 3 x 3.5 = 10.5 > 10 still; at 2: 9 <= 10, every value counted
    assert shape.cross_counts(binary, other, 1, ratio=2.5) == {1: 3}
    assert shape.cross_counts(binary, other, 1, ratio=2.0) == {0: 1, 1: 3, 2: 6}
    # exactly at the bound (2 x 5 = 10): counted in full
    other2 = np.array([[1, 1, 3, 3, 3], [3, 3, 3, 3, 3]])
    assert shape.cross_counts(binary, other2, 1, ratio=4.0) == {1: 2, 3: 8}
    assert shape.cross_counts(binary, other2, 2) == {1: 2, 3: 8}  # none on itself
    part = _box(2, 5, (0, 0), (1, 4))
    assert shape.cross_counts(part, other, 7) == {0: 1, 1: 1}


def test_extra_components_by_hand():
    binary = np.zeros((6, 9), bool)
    binary[0:2, 0:3] = True  # 6
    binary[2, 3] = True  # diagonal to (1, 2): the same component (8-connected): 7
    binary[5, 0:3] = True  # 3
    binary[3, 8] = True  # 1
    assert shape.extra_component_px(binary, 1) == (3, 4)
    assert shape.extra_component_px(binary, 2) == (3, 1)
    assert shape.extra_component_px(binary, 3) == (3, 0)
    assert shape.extra_component_px(binary, 5) == (3, 0)
    assert shape.extra_component_px(np.zeros((3, 3), bool), 1) == (0, 0)


def test_inside_view_needs_a_pixel_to_spare_on_every_side():
    assert shape.inside_view((1, 1, 7, 8), (10, 9), None)
    for box in ((0, 1, 7, 8), (1, 0, 7, 8), (1, 1, 8, 8), (1, 1, 7, 9)):
        assert not shape.inside_view(box, (10, 9), None), box
    region = {"x0": 0, "y0": 0, "x1": 8, "y1": 9}
    assert shape.inside_view((1, 1, 7, 8), (10, 9), [region])
    for key, value in (("x0", 1), ("y0", 1), ("x1", 7), ("y1", 8)):
        tight = {**region, key: value}
        assert not shape.inside_view((1, 1, 7, 8), (10, 9), [tight]), key
        assert shape.inside_view((1, 1, 7, 8), (10, 9), [tight, region]), key


def test_near_outside_by_hand():
    """5 x 6 without regions: the image's border; with a region x 2..4, y 1..3 the pixels
    outside it and their neighbours (all but its centre); a region over the whole image is
    the same as none."""
    near = shape.near_outside((5, 6), None)
    want = np.ones((5, 6), bool)
    want[1:4, 1:5] = False
    np.testing.assert_array_equal(near, want)
    assert not near.flags.writeable
    near = shape.near_outside((5, 6), [{"x0": 2, "y0": 1, "x1": 4, "y1": 3}])
    want = np.ones((5, 6), bool)
    want[2, 3] = False
    np.testing.assert_array_equal(near, want)
    big = shape.near_outside((7, 8), [{"x0": 0, "y0": 0, "x1": 7, "y1": 6}])
    want = np.ones((7, 8), bool)
    want[1:6, 1:7] = False
    np.testing.assert_array_equal(big, want)


def test_edge_contact_by_hand():
    near = np.zeros((6, 6), bool)
    near[0, :] = True
    binary = np.zeros((6, 6), bool)
    binary[0:4, 1:5] = True  # 16 pixels, 4 on the top row, interior 2 x 2
    assert shape.edge_contact(binary, near) == (4, 12)
    binary[0, :] = False
    assert shape.edge_contact(binary, near) == (0, 0)


def test_centroid_of_an_l_by_hand():
    binary = _box(2, 3, (0, 0), (0, 1), (1, 0), (0, 2))  # x 0, 1, 0, 2; y 0, 0, 1, 0
    x, y = shape.centroid(binary, 10, 20)
    assert (x, y) == (pytest.approx(10 + 3 / 4), pytest.approx(20 + 1 / 4))


def test_rule_arithmetic_by_hand():
    assert shape.dice(0, 0, 0) is None
    assert shape.dice(3, 5, 2) == 0.5 and shape.dice(0, 4, 0) == 0.0 and shape.dice(4, 0, 0) == 0
    assert shape.disagreement(None, 0.7) is None
    assert shape.disagreement(0.7, 0.7) is None
    assert shape.disagreement(0.35, 0.7) == pytest.approx(0.5)
    assert shape.disagreement(0.0, 0.5) == 1.0
    assert shape.disagreement(0.1, 0.0) is None and shape.disagreement(0.1, -1.0) is None
    assert shape.components_severity(3, 12) == 0.25 and shape.components_severity(3, 0) == 0.0
    assert shape.holes_severity(4, 12) == 0.25 and shape.holes_severity(0, 0) == 0.0
    assert shape.holes_severity(4, 0) == 1.0
    assert shape.edge_severity(3, 12) == 0.25 and shape.edge_severity(20, 12) == 1.0
    assert shape.edge_severity(0, 0) == 1.0 and shape.edge_severity(12, 12) == 1.0
    assert shape.size_severity(5.25, 3.5) == pytest.approx(0.5)
    assert shape.size_severity(-5.25, 3.5) == pytest.approx(0.5)
    assert shape.size_severity(3.5, 3.5) is None and shape.size_severity(-3.5, 3.5) is None
    assert shape.size_severity(5.0, 0.0) is None
    assert shape.equivalent_radius(math.pi * 9) == pytest.approx(3.0)
    assert shape.equivalent_radius(-4.0) == 0.0


def test_size_spread_by_hand():
    """1..10: median 5.5, |x - 5.5| = 4.5, 3.5, ..., 0.5 (twice each): MAD 2.5; the modified
    z-score of 10.5 is 0.6745 x 5 / 2.5 = 1.349 (Iglewicz & Hoaglin)."""
    spread = shape.Spread.of([*range(1, 11), None, 0, -3])
    assert spread == shape.Spread(10, 5.5, 2.5)
    assert spread.z(10.5) == pytest.approx(1.349, rel=1e-12)
    assert spread.z(0.5) == pytest.approx(-1.349, rel=1e-12)
    assert shape.Spread.of(list(range(1, 10))) is None  # nine: too few
    assert shape.Spread.of([4.0] * 12) is None  # no spread
    assert shape.Spread.of([4.0] * 6 + [5.0] * 5) is None  # MAD 0: most are the median


def test_swaps_by_hand():
    values = (1, 2, 3, 4, 6)
    got = shape.swap({2: 60, 1: 10, 0: 30}, 1, 100, values)
    assert got == shape.Swap(2, 0.6, 0.1, pytest.approx(0.2))
    assert shape.swap({2: 60}, 1, 0, values) is None
    assert shape.swap({0: 90, 1: 10}, 1, 100, values) is None  # background is no structure
    assert shape.swap({5: 90, 1: 10}, 1, 100, values) is None  # 5 is not the protocol's
    assert shape.swap({2: 50, 3: 50}, 1, 100, values).other_value == 2  # the first of a tie
    assert shape.swap({3: 40, 2: 55}, 1, 100, values).other_value == 2  # the larger
    assert shape.swap({2: 50, 1: 10}, 1, 100, values).severity == 0.0  # at min_share
    assert shape.swap({2: 49, 1: 10}, 1, 100, values) is None
    assert shape.swap({2: 60, 1: 25}, 1, 100, values) is None  # 60 < 3 x 25
    # exactly three times as much (48 = 3 x 16 of 64, binary fractions): a swap
    assert shape.swap({2: 48, 1: 16}, 1, 64, values).severity == 0.5
    assert shape.swap({2: 100}, 1, 100, values).severity == 1.0
    loose = shape.swap({2: 30, 1: 10}, 1, 100, values, min_share=0.2, ratio=2.0)
    assert loose == shape.Swap(2, 0.3, 0.1, pytest.approx(0.125))
    assert shape.swap({2: 30, 1: 20}, 1, 100, values, min_share=0.2, ratio=2.0) is None


def _rel(kind: str) -> Relation:
    return Relation("a", kind, "b")


def test_relations_by_hand():
    """Centroids (x, y); areas of 13 and 28 pixels (the two discs' radii together: the
    scale); a pixel of 0.5 mm across and 0.2 mm down."""
    areas, mm = (13, 28), (0.5, 0.2)
    scale = math.sqrt(13 / math.pi) + math.sqrt(28 / math.pi)
    assert shape.relation_check(_rel("superficial to"), (5, 10), (5, 20), areas, None) is None
    broken = shape.relation_check(_rel("superficial to"), (5, 30), (9, 20), areas, None, mm)
    assert broken == shape.Broken(10, pytest.approx(2.0), pytest.approx(10 / scale))
    assert shape.relation_check(_rel("deep to"), (5, 30), (5, 20), areas, None) is None
    broken = shape.relation_check(_rel("deep to"), (5, 10), (5, 20), areas, "left", mm)
    assert broken.wrong_by_px == 10 and broken.wrong_by_mm == pytest.approx(2.0)
    assert shape.relation_check(_rel("deep to"), (5, 20), (5, 20), areas, None) is None
    # lateral on the left of the image: a structure lateral to another has the smaller x
    assert shape.relation_check(_rel("lateral to"), (5, 9), (15, 9), areas, "left") is None
    broken = shape.relation_check(_rel("lateral to"), (15, 9), (5, 9), areas, "left", mm)
    assert broken.wrong_by_px == 10 and broken.wrong_by_mm == pytest.approx(5.0)
    assert shape.relation_check(_rel("lateral to"), (15, 9), (5, 9), areas, "right") is None
    broken = shape.relation_check(_rel("lateral to"), (5, 9), (15, 9), areas, "right")
    assert broken.wrong_by_px == 10 and broken.wrong_by_mm is None
    assert broken.severity == pytest.approx(10 / scale)
    assert shape.relation_check(_rel("medial to"), (15, 9), (5, 9), areas, "left") is None
    broken = shape.relation_check(_rel("medial to"), (5, 9), (12, 9), areas, "left", mm)
    assert broken.wrong_by_px == 7 and broken.wrong_by_mm == pytest.approx(3.5)
    broken = shape.relation_check(_rel("medial to"), (12, 9), (5, 9), areas, "right", mm)
    assert broken.wrong_by_px == 7
    for side in (None, "up", "LEFT"):
        assert shape.relation_check(_rel("lateral to"), (15, 9), (5, 9), areas, side) is None
    assert shape.relation_check(_rel("lateral to"), (5, 9), (5, 9), areas, "left") is None
    none = shape.relation_check(_rel("deep to"), (5, 10), (5, 20), (0, 0), None)
    assert none.severity == 1.0  # no size to scale by


def test_the_smallest_swaps_and_holes_by_hand():
    """A structure of one pixel lying wholly on another is a swap (severity 1); one pixel of
    the other is enough to be the largest; a structure absent from the comparison's own
    map has a share of 0 there; holes as large as the structure are half the filled area."""
    values = (1, 2, 3, 4, 6)
    assert shape.swap({2: 1}, 1, 1, values) == shape.Swap(2, 1.0, 0.0, 1.0)
    assert shape.swap({2: 3}, 1, 4, values) == shape.Swap(2, 0.75, 0.0, 0.5)
    assert shape.swap({2: 3, 0: 1}, 1, 4, values) == shape.Swap(2, 0.75, 0.0, 0.5)
    assert shape.holes_severity(4, 4) == 0.5


def test_a_centroid_without_an_offset_and_a_severity_past_a_small_threshold():
    binary = _box(2, 3, (0, 0), (0, 1), (1, 0), (0, 2))
    assert shape.centroid(binary) == (pytest.approx(3 / 4), pytest.approx(1 / 4))
    assert shape.size_severity(1.5, 1.0) == 0.5 and shape.size_severity(-0.75, 0.5) == 0.5


def test_a_crop_a_diamond_hole_and_a_small_spread_by_hand():
    """crop is inclusive on both ends; a ring of single pixels (no row enters it twice but
    the middle one) encloses one pixel; a spread whose MAD is below 1 is still a spread."""
    array = np.arange(20).reshape(4, 5)
    np.testing.assert_array_equal(shape.crop(array, (1, 1, 2, 2)), [[6, 7], [11, 12]])
    np.testing.assert_array_equal(shape.crop(array, (3, 0, 4, 0)), [[3, 4]])
    diamond = _box(3, 3, (0, 1), (1, 0), (1, 2), (2, 1))
    assert shape.holes(diamond, min_px=1) == (1, 1)
    small = shape.Spread.of([v / 10 for v in range(1, 11)])
    assert small == shape.Spread(10, pytest.approx(0.55), pytest.approx(0.25))
