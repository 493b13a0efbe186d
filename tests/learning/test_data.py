"""The data pipeline's frame: one centre crop for arrays and tensors, and its inverse;
the network's input from uint8 images and masks."""

from __future__ import annotations

import numpy as np
import pytest

from datatool.learning.data import centre_crop, crop_offsets, frame_description, uncrop
from tests.ci import require


@pytest.mark.parametrize(
    "shape,size,offsets",
    [((240, 320), 224, (8, 48)), ((481, 640), 473, (4, 83)), ((100, 300), 224, (0, 38))],
)
def test_crop_offsets_centre_the_window(shape, size, offsets):
    assert crop_offsets(shape, size) == offsets


@pytest.mark.parametrize(
    "resize,crop,words",
    [
        ((480, 640), 473, "resized to 480x640, centre crop 473x473"),
        ((240, 320), 300, "resized to 240x320, centre crop 240x300"),
        ((240, 320), 320, "resized to 240x320, the whole of it"),
        ((240, 320), 224, "resized to 240x320, centre crop 224x224"),
        ((240, 320), 512, "resized to 240x320, the whole of it"),
    ],
)
def test_the_frame_is_described_as_the_crop_keeps_it(resize, crop, words):
    """A crop larger than a side keeps that side whole, and the words say so."""
    assert frame_description(resize, crop) == words
    kept = centre_crop(np.zeros(resize), crop).shape
    assert f"{kept[0]}x{kept[1]}" in words or "whole" in words


def test_centre_crop_is_the_same_for_arrays_and_tensors_and_uncrop_inverts_it():
    torch = require("torch")
    a = np.arange(2 * 9 * 12, dtype=np.int64).reshape(2, 9, 12)
    crop = centre_crop(a, 5)
    assert crop.shape == (2, 5, 5) and crop[0, 0, 0] == a[0, 2, 3]
    assert np.array_equal(centre_crop(torch.as_tensor(a), 5).numpy(), crop)
    back = uncrop(crop[1], (9, 12), 5)
    assert back.shape == (9, 12) and np.array_equal(centre_crop(back, 5), crop[1])
    assert back.sum() == crop[1].sum()  # 0 outside the window
    short = np.ones((3, 12), np.uint8)  # shorter than the crop: that side is kept whole
    assert centre_crop(short, 5).shape == (3, 5)
    assert np.array_equal(uncrop(centre_crop(short, 5), (3, 12), 5)[:, 3:8], np.ones((3, 5)))


def test_to_input_normalises_crops_and_rotates_masks_with_nearest_neighbour():
    torch = require("torch")
    from datatool.learning.data import GRAY_MEAN, GRAY_STD, to_input

    images = torch.full((2, 20, 30), 255, dtype=torch.uint8)
    masks = torch.zeros((2, 20, 30), dtype=torch.uint8)
    masks[:, 5:15, 10:20] = 3
    x, y = to_input(images, 16, masks_u8=masks)
    assert x.shape == (2, 3, 16, 16) and y.shape == (2, 16, 16) and y.dtype == torch.long
    assert torch.allclose(x, torch.full_like(x, (1 - GRAY_MEAN) / GRAY_STD))
    xr, yr = to_input(images, 16, torch.tensor([0.0, 0.6]), masks)
    assert torch.equal(yr[0], y[0])  # angle 0: unchanged
    assert set(yr[1].unique().tolist()) <= {0, 3}  # no blended labels
    assert (xr[1] < x[1]).any()  # the rotated frame brings in black corners


def test_to_input_zooms_masks_with_the_image_and_changes_brightness_by_gain_and_gamma():
    torch = require("torch")
    from datatool.learning.data import GRAY_MEAN, GRAY_STD, to_input

    images = torch.full((3, 40, 40), 128, dtype=torch.uint8)
    masks = torch.zeros((3, 40, 40), dtype=torch.uint8)
    masks[:, 10:30, 10:30] = 2  # a 20 x 20 square about the centre
    angles = torch.zeros(3)
    _, y = to_input(images, 40, angles, masks, scales=torch.tensor([1.0, 1.5, 0.5]))
    area = (y == 2).sum(dim=(1, 2)).tolist()
    assert area[0] == 400  # factor 1: unchanged
    assert 850 <= area[1] <= 950 and 90 <= area[2] <= 110  # x 1.5^2 and x 0.5^2
    assert set(y.unique().tolist()) == {0, 2}  # nearest neighbour: no blended labels
    tones = torch.tensor([[1.0, 1.0], [1.5, 1.0], [1.0, 2.0]])  # (gain, gamma)
    x, _ = to_input(images, 40, tones=tones)
    value = x[:, 0, 20, 20] * GRAY_STD + GRAY_MEAN
    v = 128 / 255
    assert torch.allclose(value, torch.tensor([v, min(1.0, 1.5 * v), v**2]), atol=1e-5)
    bright = to_input(torch.full((1, 4, 4), 250, dtype=torch.uint8), 4,
                      tones=torch.tensor([[1.5, 1.0]]))[0]  # fmt: skip
    assert torch.allclose(bright * GRAY_STD + GRAY_MEAN, torch.ones_like(bright))  # clipped
