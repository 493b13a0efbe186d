"""Whole-image drafts (datatool.learning.inference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import select

from tests.ci import require

torch = require("torch")

from datatool.core.catalogue import Image  # noqa: E402
from datatool.core.protocol import load_protocol  # noqa: E402
from datatool.learning.data import centre_crop, to_input  # noqa: E402
from datatool.learning.inference import _draft, load_run_model, predict  # noqa: E402


def _images(ws, n: int = 4) -> list[np.ndarray]:
    with ws.session() as s:
        hashes = list(s.scalars(select(Image.store_hash).order_by(Image.id).limit(n)))
    return [ws.store.get_array(h) for h in hashes]


def test_drafts_cover_the_whole_image_in_protocol_values(trained):
    ws, run = trained
    model = load_run_model(ws, run, device="cpu")
    images = _images(ws)
    drafts = predict(model, images, batch=3, keep_probabilities=True)
    allowed = {0, *load_protocol().values}
    for image, draft in zip(images, drafts):
        assert draft.labels.shape == image.shape and draft.labels.dtype == np.uint8
        assert set(np.unique(draft.labels)) <= allowed
        assert 0.0 <= draft.score <= 1.0
        assert 0.0 <= draft.entropy <= math.log(len(allowed))
        assert draft.probabilities.shape == (len(allowed), *image.shape)
        np.testing.assert_allclose(draft.probabilities.sum(0), 1.0, atol=1e-4)
    assert model.model_version.startswith(f"datatool-run-{run}-split-")
    # the batch does not change a draft (the network is in evaluation mode)
    for a, b in zip(drafts, predict(model, images, batch=1)):
        np.testing.assert_array_equal(a.labels, b.labels)


def test_whole_image_drafts_agree_with_the_study_frame_inside_the_crop(trained):
    """Inside the centre crop, away from its border, the whole-image draft (brought back to the
    model's scale) and the study frame's prediction see the same pixels: their class
    probabilities must match far more closely than the same draft shifted by 4 pixels does
    (a wrong crop offset, a flip or a wrong scale would fail this)."""
    import torch.nn.functional as F
    from PIL import Image as PILImage

    ws, run = trained
    model = load_run_model(ws, run, device="cpu", flips=False)  # the frame has no flips
    (h, w), crop = model.resize, model.config["crop"]
    images = _images(ws, 3)
    inner = (slice(None), slice(24, -24), slice(24, -24))  # the crop's border sees other context
    for image, draft in zip(images, predict(model, images, keep_probabilities=True)):
        # the study frame as training makes it (load_arrays: PIL's bilinear resize)
        small = np.array(PILImage.fromarray(image).resize((w, h), PILImage.Resampling.BILINEAR))
        x, _ = to_input(torch.as_tensor(small)[None], crop)
        with torch.no_grad():
            frame = torch.softmax(model.network(x), 1)[0].numpy()
        whole = F.interpolate(
            torch.as_tensor(draft.probabilities)[None],
            size=(h, w),
            mode="bilinear",
            align_corners=False,
        )[0].numpy()
        whole = centre_crop(whole, crop)

        same = float(np.abs(whole[inner] - frame[inner]).sum(0).mean())
        moved = np.roll(whole, 4, axis=2)
        shifted = float(np.abs(moved[inner] - frame[inner]).sum(0).mean())
        assert same < 0.6 * shifted and same < 0.03, (same, shifted)


def test_score_and_entropy_of_a_hand_made_draft():
    values = np.array([0, 1, 3], np.uint8)
    p = torch.tensor(
        [
            [[0.9, 0.2], [0.5, 1.0]],  # background
            [[0.1, 0.7], [0.2, 0.0]],  # class 1 (value 1)
            [[0.0, 0.1], [0.3, 0.0]],  # class 2 (value 3)
        ]
    )
    draft = _draft(p, values, keep=False)
    np.testing.assert_array_equal(draft.labels, [[0, 1], [0, 0]])
    assert draft.score == pytest.approx(0.7)  # one drafted pixel, its top probability

    def h(*q):
        return -sum(v * math.log(v) for v in q if v > 0)

    expected = (h(0.9, 0.1) + h(0.2, 0.7, 0.1) + h(0.5, 0.2, 0.3) + h(1.0)) / 4
    assert draft.entropy == pytest.approx(expected, rel=1e-5)
    empty = _draft(torch.tensor([[[1.0]], [[0.0]], [[0.0]]]), values, keep=False)
    assert empty.score == 0.0 and empty.entropy == pytest.approx(0.0, abs=1e-9)


def test_drafts_are_stored_once_per_checkpoint(trained):
    from datatool.labels.drafts import drafts_of
    from datatool.learning.inference import ensure_drafts

    ws, run = trained
    with ws.session() as s:
        ids = sorted(s.scalars(select(Image.id)))[:3]
    made = ensure_drafts(ws, run, ids, device="cpu")
    assert made.predicted + made.reused == 3 and made.rater == f"model:{run}"
    again = ensure_drafts(ws, run, ids, device="cpu")
    assert (again.predicted, again.reused) == (0, 3) and again.annotations == made.annotations
    with ws.session() as s:
        found = drafts_of(s, run, ids)
        assert {a.id for a in found.values()} == set(made.annotations.values())
        assert {a.source_ref for a in found.values()} == {
            f"draft of run {run} checkpoint {made.checkpoint[:12]}"
        }
        assert drafts_of(s, run, ids, checkpoint="0" * 64) == {}
    model = load_run_model(ws, run, device="cpu")
    images = _images(ws, 4)
    with ws.session() as s:
        stored = {i: ws.store.get_array(a.mask_hash) for i, a in drafts_of(s, run, ids).items()}
    np.testing.assert_array_equal(stored[ids[0]], predict(model, images[:1])[0].labels)


@pytest.mark.parametrize("preset", ["cpu", "tiny"])
def test_a_preset_whose_frame_is_the_whole_image_drafts_exactly_what_it_was_trained_on(preset):
    """The cpu preset trains on the whole 240 x 320 image (its crop keeps every pixel). Its
    whole-image draft of an image at that size must be the frame's prediction itself: the
    input padded to the network's stride (16), not to 32 (16 black rows under a 240-row
    image change what the pyramid pooling sees: the nerve's whole-image IoU fell from 0.73 to
    0.68 on a bench dataset). The tiny preset (stride 8) likewise."""
    from datatool.learning.inference import RunModel, _probabilities
    from datatool.learning.training import build_for
    from datatool.model import PRESETS

    config = PRESETS[preset].as_dict()
    h, w = config["resize"]
    torch.manual_seed(0)
    network = build_for(config, 6).eval()
    with torch.no_grad():  # a network whose batch statistics are not the identity
        for m in network.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    model = RunModel(
        run_id=1,
        split="s",
        split_hash="0" * 64,
        preset=preset,
        checkpoint="best",
        config=config,
        network=network,
        device=torch.device("cpu"),
        values=np.arange(6, dtype=np.uint8),
    )
    assert model.pad_multiple == config["output_stride"]
    image = np.random.default_rng(0).integers(0, 256, (h, w), dtype=np.uint8)
    with torch.no_grad():
        whole = _probabilities(model, [image])[0]
        x, _ = to_input(torch.as_tensor(image)[None], config["crop"])
        frame = torch.softmax(network(x), 1)[0]
    if preset == "cpu":  # the frame is the whole image
        torch.testing.assert_close(whole, frame, atol=1e-5, rtol=0)
    else:  # inside the 224 crop, away from its border, the same pixels
        inner = centre_crop(whole, config["crop"])[:, 24:-24, 24:-24]
        assert float((inner - frame[:, 24:-24, 24:-24]).abs().max()) < 0.2
