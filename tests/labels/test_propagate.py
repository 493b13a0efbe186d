"""Label propagation through a loop (labels.propagate) on synthetic loops with known motion:
the anatomy of one textured frame moved by a known smooth deformation per frame, so every
frame's true label map is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from datatool.labels.propagate import _blend, fan_mask, nearest_labelled, propagate


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def moving_loop(
    n: int = 8, rows: int = 120, cols: int = 160, seed: int = 0, step: float = 2.5
) -> tuple[np.ndarray, np.ndarray]:
    """A loop of ``n`` frames and each frame's true label map: three structures of their own
    echo texture (values 1, 2, 3) in textured tissue inside a fan-shaped region, the whole
    anatomy sliding ``step`` pixels a frame to the right and down by half that, while a
    smooth bulge swells and shrinks; fresh noise on every frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    tissue = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 1.2)
    tissue = 90 + 40 * tissue / tissue.std() + 20 * np.sin(x / 17) * np.cos(y / 23)
    truth0 = np.zeros((rows, cols), np.uint8)
    shapes = [  # centre y, x, radii, value, echo
        (0.45, 0.35, 0.16, 0.12, 1, 0.45),
        (0.55, 0.62, 0.12, 0.10, 2, 1.7),
        (0.30, 0.55, 0.07, 0.06, 3, 0.2),
    ]
    texture = tissue.copy()
    for cy, cx, ry, rx, value, echo in shapes:
        inside = ((y - cy * rows) / (ry * rows)) ** 2 + ((x - cx * cols) / (rx * cols)) ** 2 <= 1
        truth0[inside] = value
        texture[inside] *= echo
        ring = ndimage.binary_dilation(inside, iterations=2) & ~inside
        texture[ring] = 230  # a bright wall, as vessels and fascia show
    apex = (-0.3 * rows, cols / 2)
    r = np.hypot(y - apex[0], x - apex[1])
    angle = np.arctan2(x - apex[1], y - apex[0])
    fan = (r > 0.35 * rows) & (r < 1.25 * rows) & (np.abs(angle) < 0.6)
    frames = np.zeros((n, rows, cols), np.uint8)
    truth = np.zeros((n, rows, cols), np.uint8)
    for k in range(n):
        bulge = (
            3.0
            * np.sin(k * np.pi / (n - 1))
            * np.exp(
                -(((y - 0.5 * rows) / (0.3 * rows)) ** 2 + ((x - 0.5 * cols) / (0.3 * cols)) ** 2)
            )
        )
        sy = y - step * 0.5 * k - bulge
        sx = x - step * k - bulge
        img = ndimage.map_coordinates(texture, [sy, sx], order=1, mode="reflect")
        img = img + rng.normal(0, 6, img.shape)
        frames[k] = np.where(fan, np.clip(img, 1, 255), 0).astype(np.uint8)
        lab = ndimage.map_coordinates(truth0, [sy, sx], order=0, mode="constant")
        truth[k] = np.where(fan, lab, 0)
    return frames, truth


def _mean_iou(draft: np.ndarray, truth: np.ndarray) -> float:
    values = [v for v in np.unique(truth) if v]
    return float(np.mean([_iou(draft == v, truth == v) for v in values]))


@pytest.mark.parametrize(("mode", "distances"), [("chain", (1, 2, 4, 7)), ("direct", (1, 2, 4, 7))])
def test_propagated_drafts_follow_known_motion_better_than_copying(mode, distances):
    """The anatomy slides 2.8 pixels a frame (and swells), 20 pixels over the loop: beyond one
    registration's reach from zero, so direct mode starts from the chained translations."""
    frames, truth = moving_loop()
    result = propagate(frames, {0: truth[0]}, mode=mode)
    assert result.source == [0] * 8
    np.testing.assert_array_equal(result.drafts[0], truth[0])
    for k in distances:
        got = _mean_iou(result.drafts[k], truth[k])
        copied = _mean_iou(truth[0], truth[k])
        assert got >= 0.8, (mode, k, got)
        assert got > copied + 0.05, (mode, k, got, copied)


def test_each_structure_is_one_region_and_stays_in_the_fan():
    frames, truth = moving_loop(seed=3)
    labels = truth[3].copy()
    labels[5:8, 70:74] = 2  # a stray speck of structure 2, away from it
    result = propagate(frames, {3: labels})
    fan = fan_mask(frames)
    np.testing.assert_array_equal(result.drafts[3], labels)  # the rater's own, as drawn
    for k in (0, 1, 2, 4, 5, 6, 7):
        draft = result.drafts[k]
        assert not draft[~fan].any()
        assert _mean_iou(draft, truth[k]) >= 0.85
        for value in (1, 2, 3):
            _, count = ndimage.label(draft == value)
            assert count == 1, (k, value, count)


def test_nearest_labelled_frame_drafts_each_frame():
    frames, truth = moving_loop(n=8)
    result = propagate(frames, {1: truth[1], 6: truth[6]})
    assert result.source == [1, 1, 1, 1, 6, 6, 6, 6]  # frame 3.5 is the middle: ties go early
    np.testing.assert_array_equal(result.drafts[6], truth[6])
    for k in (0, 2, 3, 4, 5, 7):
        assert _mean_iou(result.drafts[k], truth[k]) >= 0.85
    # positions: the DICOM frame numbers of a loop ingested with only some frames
    assert nearest_labelled([0, 4, 5, 20], [0, 2]) == [0, 2, 2, 2]
    assert nearest_labelled([0, 2, 4], [0, 2]) == [0, 0, 2]  # the middle: the earlier one


def test_no_labelled_frame_drafts_nothing():
    frames, _ = moving_loop(n=4)
    result = propagate(frames, {})
    assert result.source == [-1] * 4
    assert not result.drafts.any()


def test_bad_arguments_say_what_is_wrong():
    frames, truth = moving_loop(n=3)
    with pytest.raises(ValueError, match="not a frame"):
        propagate(frames, {3: truth[0]})
    with pytest.raises(ValueError, match="label map of frame 0"):
        propagate(frames, {0: truth[0][:10]})
    with pytest.raises(ValueError, match="N x H x W"):
        propagate(frames[0], {})


def test_blend_of_two_drafts_is_the_shape_between_them():
    """Two overlapping discs 8 pixels apart blended half and half: about the disc halfway (by
    signed distance); weighted 3:1, about the disc a quarter of the way; a structure in one
    draft only: as the nearer draft has it."""
    y, x = np.mgrid[0:60, 0:100]
    fan = np.ones((60, 100), bool)

    def disc(cx: float, value: int = 1) -> np.ndarray:
        return np.where((y - 30) ** 2 + (x - cx) ** 2 <= 100, value, 0).astype(np.uint8)

    first, second = disc(46), disc(54)
    for weight, centre in ((0.5, 50), (0.75, 48)):
        got = _blend(first, second, weight, fan)
        assert _iou(got == 1, disc(centre) == 1) >= 0.85, weight
        assert _iou(got == 1, disc(centre) == 1) > _iou(got == 1, first == 1), weight
    only = first.copy()
    only[2:6, 2:6] = 3  # structure 3 in the first draft only
    assert (_blend(only, second, 0.75, fan) == 3).sum() == 16
    assert not (_blend(only, second, 0.25, fan) == 3).any()


def test_blending_two_labelled_frames_drafts_the_frames_between():
    frames, truth = moving_loop(n=8)
    blended = propagate(frames, {0: truth[0], 6: truth[6]}, blend=True)
    nearest = propagate(frames, {0: truth[0], 6: truth[6]})
    assert blended.source == nearest.source == [0, 0, 0, 0, 6, 6, 6, 6]
    for k in (1, 2, 3, 4, 5):
        assert _mean_iou(blended.drafts[k], truth[k]) >= 0.85, k
    np.testing.assert_array_equal(blended.drafts[7], nearest.drafts[7])  # none beyond it
