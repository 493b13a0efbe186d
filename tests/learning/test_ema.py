"""The moving average of the weights (``--ema``, datatool.learning.ema): its arithmetic,
what a run validates and keeps, and a resumed run that averages as the uninterrupted one."""

from __future__ import annotations

import io

import pytest

from tests.ci import require

torch = require("torch")

from datatool.core.catalogue import RunStatus  # noqa: E402
from datatool.core.errors import UsageError  # noqa: E402
from datatool.learning.ema import WeightAverage, ema_decay  # noqa: E402
from datatool.learning.training import (  # noqa: E402
    EpochDone,
    TrainConfig,
    list_runs,
    load_checkpoint,
    train,
)


def test_the_decay_warms_up_to_its_value():
    assert ema_decay(0.99, 0) == pytest.approx(0.1)
    assert ema_decay(0.99, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.99, 10_000) == 0.99


def test_the_average_moves_each_weight_toward_the_trained_one_and_copies_counters():
    net = torch.nn.Sequential(torch.nn.Linear(2, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    average = WeightAverage(net, 0.9)
    with torch.no_grad():
        net[0].weight.fill_(3.0)
        net[1].num_batches_tracked.fill_(7)
    average.update(net, 1000)  # decay 0.9
    assert average.network[0].weight[0].tolist() == pytest.approx([1.2, 1.2])
    assert int(average.network[1].num_batches_tracked) == 7
    assert not average.network.training and not average.network[0].weight.requires_grad
    assert net[0].weight.tolist() == [[3.0, 3.0]]  # the trained network is left alone
    with pytest.raises(ValueError, match="between 0 and 1"):
        WeightAverage(net, 1.0)
    with pytest.raises(UsageError, match="--ema"):
        TrainConfig(preset="tiny", ema=1.5).resolved()


def test_a_run_with_an_average_keeps_it_and_resumes_exactly(trained):
    ws, _ = trained
    conf = {"preset": "tiny", "batch": 4, "device": "cpu", "epochs": 2, "seed": 3, "ema": 0.9}
    whole = train(ws, "s", config=TrainConfig(**conf))
    assert whole.config["ema"] == 0.9
    last = load_checkpoint(ws, whole.last_checkpoint)
    assert set(last) >= {"model", "raw"}  # inference loads the average; resume the weights
    differ = [n for n, t in last["model"].items() if t.is_floating_point()
              and not torch.equal(t, last["raw"][n])]  # fmt: skip
    assert differ

    def stop_after_one(p):
        if isinstance(p, EpochDone) and p.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ws, "s", config=TrainConfig(**conf), progress=stop_after_one)
    cut = list_runs(ws)[-1]
    assert cut.status == RunStatus.interrupted
    resumed = train(ws, resume=cut.run)
    assert [h.val_miou for h in resumed.history] == pytest.approx(
        [h.val_miou for h in whole.history], rel=1e-5
    )
    again = load_checkpoint(ws, resumed.last_checkpoint)
    for name, t in last["model"].items():
        torch.testing.assert_close(again["model"][name], t, rtol=1e-5, atol=1e-6)
    plain = train(ws, "s", config=TrainConfig(**{**conf, "ema": 0.0, "epochs": 1}))
    blob = torch.load(io.BytesIO(ws.store.get_blob(plain.last_checkpoint)), weights_only=True)
    assert "raw" not in blob
