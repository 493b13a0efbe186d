"""Training with clicks: the simulated clicks of a batch, the interactive run recorded and
resumed as one, and everything that reads a run working with it."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from tests.ci import require

torch = require("torch")

from datatool.core.catalogue import Run  # noqa: E402
from datatool.learning.click_training import _structure_of, with_clicks  # noqa: E402
from datatool.learning.inference import load_run_model, predict  # noqa: E402
from datatool.learning.scoring import score_run  # noqa: E402
from datatool.learning.training import TrainConfig, load_checkpoint, run_summary, train  # noqa: E402


class Background(torch.nn.Module):
    """A network that draws background everywhere and records what it was given."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        logits = torch.zeros(x.shape[0], self.k, *x.shape[-2:])
        logits[:, 0] = 1.0
        return logits


def test_clicks_are_simulated_from_the_networks_own_misses():
    """A network that misses everything gets positive clicks inside the structure, on the
    samples drawn as interactive; the others keep empty click channels."""
    k, b = 4, 16
    y = torch.zeros(b, 64, 64, dtype=torch.long)
    y[:, 10:40, 20:50] = 2  # structure 2 (class index), a 30 x 30 square
    x = torch.randn(b, 3, 64, 64)
    net = Background(k)
    out = with_clicks(net, x, y, k, np.random.default_rng(3), torch.device("cpu"))
    assert out.shape == (b, 3 + 2 * (k - 1), 64, 64)
    assert torch.equal(out[:, :3], x)
    maps = out[:, 3:]
    clicked = maps.flatten(1).sum(1) > 0
    assert 0 < int(clicked.sum()) < b  # some samples with clicks, some without
    rounds = len(net.seen)
    assert 1 <= rounds <= 3 and net.training  # back in training mode after
    for i in torch.nonzero(clicked).flatten():
        positive = maps[i, 2]  # structure 2: channels 2 (positive) and 3 (negative)
        assert positive.sum() > 0 and maps[i, [0, 1, 3, 4, 5]].sum() == 0
        inside = y[i] == 2
        assert bool(inside[positive > 0].all())  # every disc inside the missed square
    # the network saw the clicks of earlier rounds: round 2's input holds round 1's clicks
    if rounds > 1:
        assert net.seen[1][:, 3:].sum() > 0 and net.seen[0][:, 3:].sum() == 0


@pytest.mark.parametrize("share", [0.3, 0.5])
def test_the_share_of_samples_without_clicks_is_the_runs(share):
    """``auto_share``: each sample's chance to be trained with no clicks (the run's)."""
    k, b = 4, 400
    y = torch.zeros(b, 16, 16, dtype=torch.long)
    y[:, 4:12, 4:12] = 1
    out = with_clicks(Background(k), torch.randn(b, 3, 16, 16), y, k, np.random.default_rng(5),
                      torch.device("cpu"), auto_share=share)  # fmt: skip
    without = float((out[:, 3:].flatten(1).sum(1) == 0).float().mean())
    assert abs(without - share) < 0.07  # 400 draws: about 3 standard deviations


def test_a_structure_absent_and_not_drawn_gets_no_click():
    k = 3
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    out = with_clicks(Background(k), torch.randn(4, 3, 32, 32), y, k, np.random.default_rng(0),
                      torch.device("cpu"))  # fmt: skip
    assert out[:, 3:].sum() == 0


def test_the_structure_clicked_on_is_drawn_by_the_predictions_errors():
    """Structure 1 drawn right, structure 2 (a 10 x 10 square) missed whole: by the errors,
    1 is drawn with a chance of 1 / (1 + 101) (its 0 wrong pixels + 1, against 100 + 1);
    alike, with a chance of 1/2. A structure the sample does not hold is never drawn, and
    with no structure held, the ones the prediction spilled are the candidates."""
    truth = np.zeros((32, 32), np.int64)
    truth[0:10, 0:10] = 1
    truth[20:30, 20:30] = 2
    pred = np.where(truth == 1, 1, 0)
    rng = np.random.default_rng(0)
    by_errors = [_structure_of(truth, pred, 4, rng, True) for _ in range(2000)]
    alike = [_structure_of(truth, pred, 4, rng, False) for _ in range(2000)]
    assert set(by_errors) == set(alike) == {1, 2}  # never 3, which the sample lacks
    assert by_errors.count(1) / 2000 == pytest.approx(1 / 102, abs=0.006)
    assert alike.count(1) / 2000 == pytest.approx(0.5, abs=0.04)
    spilled = np.zeros_like(truth)
    spilled[5:8, 5:8] = 3
    assert _structure_of(np.zeros_like(truth), spilled, 4, rng, True) == 3
    assert _structure_of(np.zeros_like(truth), np.zeros_like(truth), 4, rng, True) == 0


def test_an_interactive_run_is_recorded_and_read_like_any(trained_interactive, tmp_path):
    ws, run_id = trained_interactive
    run = run_summary(ws, run_id)
    assert run.config["interactive"] is True and run.epochs_done == 3
    assert run.config["click_choice"] == "errors"  # the structure clicked on, by its errors
    assert run.config["auto_share"] == 0.3  # and 30 % of the samples without clicks
    state = load_checkpoint(ws, run.best_checkpoint)["model"]
    assert state["click_stem.weight"].shape[1] == 10  # 2 x 5 structures
    assert float(state["click_stem.weight"].abs().sum()) > 0  # it learned from clicks
    model = load_run_model(ws, run_id, device="cpu")
    assert model.interactive and model.structures[0]
    image = ws.store.get_array(_first_image(ws))
    draft = predict(model, [image])[0]
    assert draft.labels.shape == image.shape
    scored = score_run(ws, run_id, device="cpu", store_predictions=False, out_dir=tmp_path,
                       figures=False)  # fmt: skip
    assert scored.images > 0 and scored.structures


def test_a_resumed_interactive_run_stays_interactive(trained_interactive):
    ws, _ = trained_interactive
    first = train(
        ws, "s", config=TrainConfig(preset="tiny", epochs=1, batch=4, device="cpu",
                                    interactive=True, max_images=8)
    )  # fmt: skip
    assert first is not None
    with ws.session() as s:
        row = s.get(Run, first.run)
        row.config = {**row.config, "epochs": 2}  # as if it had been stopped after epoch 1
    resumed = train(ws, resume=first.run)
    assert resumed is not None and resumed.epochs_done == 2
    assert resumed.config["interactive"] is True
    state = load_checkpoint(ws, resumed.last_checkpoint)["model"]
    assert "click_stem.weight" in state


def _first_image(ws) -> str:
    from datatool.core.catalogue import Image

    with ws.session() as s:
        return s.scalars(select(Image.store_hash).order_by(Image.id).limit(1)).one()


@pytest.mark.parametrize("flag", [True, False])
def test_the_train_config_records_interactive(flag):
    conf = TrainConfig(preset="cpu", interactive=flag).resolved()
    assert conf["interactive"] is flag


def test_a_last_batch_of_one_sample_is_left_out():
    """89 training images in batches of 4 (the 20-patient demo's split): 22 steps, not a 23rd
    of one sample, which batch norm cannot train on (the pyramid pooling's 1 x 1 bin)."""
    from datatool.learning.training import _steps

    assert [_steps(n, 4, 1) for n in (88, 89, 90, 91, 1, 4)] == [22, 22, 23, 23, 1, 1]
    assert _steps(89, 4, 2) == 11  # under DDP: full steps only, as before
