"""The wrong-image check's agreement of a label with its own image's other label, from one
pass over the pair of maps (``qa.wrongimage._own_dice`` over ``pair_table``), gives the
numbers of the per-structure computation (a mask per structure kept), on a hand-made pair with
its answer worked out and on random maps."""

from __future__ import annotations

import numpy as np

from datatool.analysis.qa.measure import Thumb
from datatool.analysis.qa.wrongimage import _own_dice, overall_dice, pair_table


def per_structure(a: np.ndarray, b: np.ndarray, swapped) -> float:
    """The computation before issue 26: the structures both hold, masked, then Dice."""
    both = (set(np.unique(a).tolist()) & set(np.unique(b).tolist())) - {0, *swapped}
    keep = np.asarray(sorted(both), dtype=a.dtype)
    return overall_dice(np.where(np.isin(a, keep), a, 0), np.where(np.isin(b, keep), b, 0)) or 0.0


def test_pair_table_counts_every_pair_of_values():
    a = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    b = np.array([[0, 1, 2], [2, 0, 4]], np.uint8)
    table = pair_table(a, b)
    assert table.shape == (5, 5)
    assert table[0, 0] == 1 and table[1, 1] == 1 and table[1, 2] == 1 and table[2, 2] == 1
    assert table[2, 0] == 1 and table[0, 4] == 1 and table.sum() == 6


def test_a_hand_made_pair_gives_the_worked_out_dice():
    a = np.zeros((10, 10), np.uint8)
    b = np.zeros_like(a)
    a[0:4, 0:4] = 1  # 16 px
    b[0:4, 0:2] = 1  # 8 px, all on a's 1
    a[6:8, 6:8] = 3  # only in a: left out
    b[5:7, 0:3] = 2  # only in b: left out
    a[8:10, 0:5] = 4  # 10 px
    b[8:10, 0:5] = 4  # the same 10 px
    assert _own_dice(a, b, ()) == 2.0 * (8 + 10) / (16 + 8 + 10 + 10)
    assert _own_dice(a, b, (4,)) == 2.0 * 8 / (16 + 8)  # a swap found on 4: left out
    assert _own_dice(a, b, (1, 4)) == 0.0  # nothing left
    assert _own_dice(np.zeros_like(a), b, ()) == 0.0


def test_random_maps_give_the_per_structure_numbers():
    rng = np.random.default_rng(26)
    for trial in range(300):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        values = rng.choice([0, 1, 2, 3, 4, 6], size=int(rng.integers(1, 5)), replace=False)
        a = rng.choice(values, size=shape).astype(np.uint8)
        b = a.copy() if trial % 4 == 0 else rng.choice(values, size=shape).astype(np.uint8)
        flip = rng.random(shape) < rng.random() * 0.5
        b[flip] = rng.choice(values, size=int(flip.sum()))
        swapped = [int(v) for v in rng.choice([1, 2, 3, 4, 6], size=int(rng.integers(0, 3)))]
        assert _own_dice(a, b, swapped) == per_structure(a, b, swapped), trial


def test_a_thumbnail_keeps_every_sixth_pixel_in_a_fraction_of_the_bytes():
    """The wrong-image check's thumbnails wait in memory for every human label of a run of
    the checks (issue 26: under 1 GB at 30,000 images), so they are kept compressed: a 480 x
    640 map holding two structures gives back its 80 x 107 every-6th-pixel thumbnail exactly,
    in under a tenth of its 8,560 bytes; a wider integer map keeps its dtype."""
    label = np.zeros((480, 640), np.uint8)
    label[100:200, 300:420] = 3
    label[250:330, 50:90] = 5
    thumb = Thumb.of(label)
    small = thumb.array()
    assert small.shape == (80, 107) and small.dtype == np.uint8
    assert np.array_equal(small, label[::6, ::6])
    assert int(np.count_nonzero(small == 3)) == 17 * 20  # rows 102..198, cols 300..414
    assert len(thumb.data) < 856
    wide = (np.arange(7 * 13, dtype=np.uint16).reshape(7, 13) * 700) % 1000
    back = Thumb.of(wide).array()
    assert back.dtype == np.uint16 and np.array_equal(back, wide[::6, ::6])
