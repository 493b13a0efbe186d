"""The levers toward drafts as good as a second rater (issue 23): test-time flips for drafts,
a validation schedule, checkpoint selection on the lowest structure, a border-weighted loss."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from tests.ci import require

torch = require("torch")

from datatool.core.catalogue import Image  # noqa: E402
from datatool.core.errors import UsageError  # noqa: E402
from datatool.learning.inference import _probabilities, load_run_model, predict  # noqa: E402
from datatool.learning.training import (  # noqa: E402
    Evaluation,
    TrainConfig,
    load_checkpoint,
    train,
    validates,
)
from datatool.model import border_weights, segmentation_loss  # noqa: E402


def _images(ws, n: int = 3) -> list[np.ndarray]:
    with ws.session() as s:
        hashes = list(s.scalars(select(Image.store_hash).order_by(Image.id).limit(n)))
    return [ws.store.get_array(h) for h in hashes]


def test_flipped_drafts_average_the_image_and_its_mirror(trained):
    ws, run = trained
    plain = load_run_model(ws, run, device="cpu", flips=False)
    flipped = load_run_model(ws, run, device="cpu")  # drafts use flips by default
    assert not plain.flips and flipped.flips
    images = _images(ws)
    got = predict(flipped, images, keep_probabilities=True)
    base = predict(plain, images, keep_probabilities=True)
    with torch.no_grad():
        p = _probabilities(plain, images)
        m = _probabilities(plain, [np.ascontiguousarray(i[:, ::-1]) for i in images]).flip(-1)
    for k, (image, draft) in enumerate(zip(images, got)):
        want = torch.nn.functional.interpolate(
            ((p[k] + m[k]) / 2)[None], size=image.shape, mode="bilinear", align_corners=False
        )[0].numpy()
        np.testing.assert_allclose(draft.probabilities, want, atol=1e-5)
        assert not np.allclose(draft.probabilities, base[k].probabilities, atol=1e-3)
    # a mirrored image's flipped draft is the mirror of the image's flipped draft
    mirrored = predict(flipped, [np.ascontiguousarray(images[0][:, ::-1])])[0]
    assert (mirrored.labels[:, ::-1] == got[0].labels).mean() > 0.995


def test_the_validation_schedule_validates_every_kth_and_the_last_epoch():
    conf = {"epochs": 7, "val_every": 3}
    assert [e for e in range(7) if validates(conf, e)] == [2, 5, 6]
    assert [e for e in range(3) if validates({"epochs": 3}, e)] == [0, 1, 2]


def test_the_selection_score_is_the_miou_or_the_lowest_structure():
    ev = Evaluation(0.5, 0.7, 0.6, (0.9, None, 0.4, 0.8))
    assert ev.selection_score("miou") == 0.7
    assert ev.selection_score("min") == 0.4
    assert Evaluation(None, None, None).selection_score("min") is None


def test_a_run_validates_on_its_schedule_and_selects_on_the_lowest_structure(trained):
    ws, _ = trained
    run = train(
        ws,
        "s",
        config=TrainConfig(
            preset="tiny", epochs=3, batch=4, device="cpu", val_every=2, selection="min"
        ),
    )
    assert [h.val_miou is None for h in run.history] == [True, False, False]
    assert run.best_epoch in (1, 2)
    assert run.config["val_every"] == 2 and run.config["selection"] == "min"
    best = load_checkpoint(ws, run.best_checkpoint)
    assert best["best_score"] is not None and best["best_score"] <= best["best_val_miou"]
    with pytest.raises(UsageError, match="val-every"):
        TrainConfig(preset="tiny", val_every=0).resolved()
    with pytest.raises(UsageError, match="--select must be one of miou, min"):
        TrainConfig(preset="tiny", selection="nerve").resolved()


def test_zoom_and_gain_augment_training_and_are_recorded(trained):
    """Augmentation beyond the study's rotation: recorded in the run (a config recorded before
    the fields existed reads back as 0: none), and really applied (the same seed, another
    first epoch)."""
    from datatool.model import Preset

    ws, _ = trained
    base = {"preset": "tiny", "epochs": 1, "batch": 4, "device": "cpu", "max_images": 8}
    plain = train(ws, "s", config=TrainConfig(**base))
    again = train(ws, "s", config=TrainConfig(**base))
    augmented = train(ws, "s", config=TrainConfig(**base, zoom=0.3, gain=0.3))
    assert plain.config["zoom"] == 0 and plain.config["gain"] == 0
    assert augmented.config["zoom"] == 0.3 and augmented.config["gain"] == 0.3
    assert plain.history[0].train_loss == again.history[0].train_loss  # seeded draws
    assert augmented.history[0].train_loss != plain.history[0].train_loss
    old = {k: v for k, v in plain.config.items() if k not in ("zoom", "gain")}
    assert Preset.from_dict(old).zoom == 0 and Preset.from_dict(old).gain == 0
    for bad in ({"zoom": 1.0}, {"gain": -0.1}, {"zoom": float("nan")}):
        with pytest.raises(UsageError, match="--zoom and --gain"):
            TrainConfig(preset="tiny", **bad).resolved()


def test_border_weights_mark_the_pixels_near_a_class_border():
    y = torch.zeros(1, 9, 9, dtype=torch.long)
    y[0, :, 5:] = 2  # a vertical border between columns 4 and 5
    w = border_weights(y, px=1, weight=3.0)[0]
    assert torch.all(w[:, 4:6] == 3.0) and torch.all(w[:, :4] == 1.0) and torch.all(w[:, 6:] == 1.0)
    w2 = border_weights(y, px=2, weight=3.0)[0]
    assert torch.all(w2[:, 3:7] == 3.0) and torch.all(w2[:, :3] == 1.0)


def test_the_border_loss_weighs_mistakes_at_the_border_more():
    y = torch.zeros(1, 16, 16, dtype=torch.long)
    y[0, :, 8:] = 1
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 0] = (y[0] == 0).float() * 4
    logits[:, 1] = (y[0] == 1).float() * 4
    at_border, far = logits.clone(), logits.clone()
    at_border[0, :, :, 7] = torch.tensor([0.0, 4.0])[:, None]  # column 7 wrong: at the border
    far[0, :, :, 0] = torch.tensor([0.0, 4.0])[:, None]  # column 0 wrong: far from it
    for loss in ("ce+dice", "border+dice"):
        a = float(segmentation_loss(at_border, y, loss=loss))
        b = float(segmentation_loss(far, y, loss=loss))
        if loss == "ce+dice":
            assert a == pytest.approx(b, rel=1e-5)
        else:
            assert a > b * 1.2


def test_score_without_flips_scores_plain_drafts_and_stores_none(trained, tmp_path):
    """score's whole image is the drafts as raters get them (flips); --no-flips measures the
    plain ones, and stores none of them beside the drafts raters get."""
    from datatool.learning.scoring import score_run

    ws, run = trained
    plain = score_run(ws, run, device="cpu", store_predictions=True, figures=False,
                      out_dir=tmp_path / "a", flips=False)  # fmt: skip
    flipped = score_run(ws, run, device="cpu", store_predictions=False, figures=False,
                        out_dir=tmp_path / "b")  # fmt: skip
    assert plain.stored_predictions is None  # the stored drafts are the flipped ones
    assert [s.iou for s in flipped.structures] == [s.iou for s in plain.structures]  # the frame
    assert [s.iou for s in flipped.whole_image] != [s.iou for s in plain.whole_image]
    image = _images(ws, 1)
    draft = predict(load_run_model(ws, run, device="cpu"), image, keep_probabilities=True)[0]
    plain_draft = predict(
        load_run_model(ws, run, device="cpu", flips=False), image, keep_probabilities=True
    )[0]
    assert not np.allclose(draft.probabilities, plain_draft.probabilities, atol=1e-3)


def test_train_help_names_the_cpu_presets_loss_and_average():
    """The help text spells the presets' defaults out (the CLI does not import torch to read
    them): it must say what the cpu preset really uses."""
    import re

    from typer.testing import CliRunner

    from datatool.cli import app
    from datatool.model import PRESETS

    out = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    text = re.sub(r"[\s│]+", " ", out)
    assert f"paper and tiny ce, cpu {PRESETS['cpu'].loss})" in text
    assert PRESETS["cpu"].ema == 0 and "(default: the preset's: none)" in text
    p = PRESETS
    assert p["paper"].zoom == p["tiny"].zoom == p["paper"].gain == p["tiny"].gain == 0
    assert f"(default: the preset's: cpu {p['cpu'].zoom}, paper and tiny 0)" in text
    assert f"(default: the preset's: cpu {p['cpu'].gain}, paper and tiny 0)" in text
