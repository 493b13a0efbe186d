"""Redrawing from clicks with a loaded interactive run: where a click lands in the network's
input, what ``previous`` keeps, and a run trained without clicks refused."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ci import require

torch = require("torch")

from datatool.core.errors import UsageError  # noqa: E402
from datatool.learning.clicks import Click  # noqa: E402
from datatool.learning.inference import load_run_model  # noqa: E402
from datatool.learning.interactive import click_input, redraw  # noqa: E402


@pytest.fixture(scope="module")
def model(trained_interactive):
    ws, run = trained_interactive
    return load_run_model(ws, run, device="cpu")


def test_a_click_lands_at_the_models_scale_in_its_structures_channel(model):
    """tiny: 240 x 320; a 480 x 640 image's click at (100, 200) lands at (50, 100)."""
    assert model.resize == (240, 320)
    image = np.zeros((480, 640), np.uint8)
    nerve = model.structures.index("sciatic nerve")
    x = click_input(model, image, [Click("sciatic nerve", 100, 200, False)])
    # 240 x 320 is a multiple of the network's stride (8): no padding, as in training
    assert x.shape == (1, 3 + 2 * len(model.structures), 240, 320)
    maps = x[0, 3:]
    assert maps.sum() > 0 and maps[2 * nerve].sum() == 0  # negative: not the positive one
    assert maps[2 * nerve + 1, 50, 100] == 1 and maps[2 * nerve + 1, 50, 106] == 0


def test_redraw_gives_a_label_map_at_the_images_size(model):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 410), dtype=np.uint8)
    labels = redraw(model, image, [Click("sciatic nerve", 150, 200)])
    assert labels.shape == image.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(model.values.tolist())


def test_previous_keeps_every_structure_not_clicked(model):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (240, 320), dtype=np.uint8)
    values = dict(zip(model.structures, model.values[1:].tolist()))
    previous = np.zeros(image.shape, np.uint8)
    previous[20:60, 20:60] = values["femur"]
    previous[100:140, 100:140] = values["sciatic nerve"]
    clicks = [Click("sciatic nerve", 120, 120)]
    drawn = redraw(model, image, clicks)
    merged = redraw(model, image, clicks, previous=previous)
    nerve = values["sciatic nerve"]
    was, now = previous == nerve, drawn == nerve
    assert np.array_equal(merged[now], drawn[now])  # the clicked structure as redrawn
    assert np.array_equal(merged[was], drawn[was])
    rest = ~(was | now)
    assert np.array_equal(merged[rest], previous[rest])  # all else as it was
    with pytest.raises(ValueError, match="previous label map"):
        redraw(model, image, clicks, previous=previous[:10])


def test_a_run_trained_without_clicks_is_refused(trained):
    ws, run = trained
    plain = load_run_model(ws, run, device="cpu")
    assert not plain.interactive
    with pytest.raises(UsageError, match="not trained with clicks"):
        redraw(plain, np.zeros((64, 64), np.uint8), [Click("femur", 3, 3)])


def test_a_redraw_with_flips_averages_in_the_mirrored_image_and_clicks(model):
    """The run's test-time flips (as its drafts): the image mirrored left-right, each click
    at its mirrored column, the probabilities mirrored back and averaged in."""
    import dataclasses

    from datatool.learning.interactive import redraw_probabilities

    assert model.flips
    plain = dataclasses.replace(model, flips=False)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 411), dtype=np.uint8)  # odd width: no centre column
    clicks = [Click("sciatic nerve", 150, 100), Click("femur", 40, 380, False)]
    mirrored = [Click("sciatic nerve", 150, 310), Click("femur", 40, 30, False)]
    assert [c.mirrored(411) for c in clicks] == mirrored
    both = redraw_probabilities(model, image, clicks)
    one = redraw_probabilities(plain, image, clicks)
    other = redraw_probabilities(plain, np.ascontiguousarray(image[:, ::-1]), mirrored)
    assert both.shape == one.shape == (len(model.values), 300, 411)
    torch.testing.assert_close(both, (one + other.flip(-1)) / 2, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both, one, atol=1e-3)  # the mirror does change the drawing


def test_a_redraw_without_clicks_is_the_draft_the_rater_was_given(model):
    from datatool.learning.inference import predict
    from datatool.learning.interactive import redraw_probabilities

    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (240, 330), dtype=np.uint8)
    (draft,) = predict(model, [image], keep_probabilities=True)
    p = redraw_probabilities(model, image, [])
    np.testing.assert_allclose(p.cpu().numpy(), draft.probabilities, atol=1e-5)
    assert np.array_equal(redraw(model, image, []), draft.labels)
