"""``train --init-from RUN``: a run that starts from a finished run's weights, refused with
one line when the parent's network, protocol, state or training images do not fit, its
parent recorded and listed, and honoured when the run is resumed."""

from __future__ import annotations

import csv
import json

import pytest

from tests.ci import require

torch = require("torch")
from sqlalchemy import select  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from datatool.analysis.consensus import make_consensus  # noqa: E402
from datatool.cli import app  # noqa: E402
from datatool.core.catalogue import Run, RunStatus, SplitMember  # noqa: E402
from datatool.core.errors import UsageError  # noqa: E402
from datatool.learning.runs import lineage, list_runs, run_summary  # noqa: E402
from datatool.learning.splits import create_split, get_split  # noqa: E402
from datatool.learning.training import EpochDone, TrainConfig, load_checkpoint, train  # noqa: E402
from datatool.learning.warmstart import differences  # noqa: E402
from tests.labels_util import ingest_demo_with_labels  # noqa: E402

FAST = {"preset": "tiny", "batch": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def parent(tmp_path_factory, demo_dir):
    """A workspace with split ``s`` (one patient per set) and a finished tiny run on it."""
    from datatool.core.workspace import init_workspace, open_workspace

    root = init_workspace(tmp_path_factory.mktemp("warm") / "ws").root
    ws = open_workspace(root)
    ingest_demo_with_labels(ws, demo_dir)
    make_consensus(ws, "staple")
    create_split(ws, "s", ratios="1:1:1", folds=0, seed=1)
    run = train(ws, "s", config=TrainConfig(epochs=2, seed=1, **FAST))
    assert run is not None and run.status == RunStatus.done
    yield ws, run
    ws.close()


def _conv_weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.endswith(".weight") and v.dim() == 4}


def test_a_warm_start_begins_at_the_parent_s_selected_weights(parent):
    """With a learning rate too small to move anything, the child's weights after an epoch
    are its parent's best checkpoint's: it started there (a fresh network does not)."""
    ws, p = parent
    child = train(ws, "s", config=TrainConfig(epochs=1, seed=2, lr=1e-12, init_from=p.run, **FAST))
    fresh = train(ws, "s", config=TrainConfig(epochs=1, seed=2, lr=1e-12, **FAST))
    want = _conv_weights(load_checkpoint(ws, p.best_checkpoint)["model"])
    got = _conv_weights(load_checkpoint(ws, child.last_checkpoint)["model"])
    other = _conv_weights(load_checkpoint(ws, fresh.last_checkpoint)["model"])
    assert want.keys() == got.keys() and len(want) > 5
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, atol=1e-6), name
    assert not all(torch.allclose(other[n], t, atol=1e-3) for n, t in want.items())
    assert child.parent == p.run and child.config["init_from"] == p.run
    assert fresh.parent is None and "init_from" not in fresh.config
    assert child.config["classes"][0][1] and len(child.config["classes"]) == 5
    assert lineage(ws, child.run) == [child.run, p.run]
    rows = {r.run: r for r in list_runs(ws)}
    assert rows[child.run].parent == p.run and rows[p.run].parent is None


def test_warm_start_learns_faster_than_from_scratch(parent):
    """The first epoch's training loss of a warm start is below a fresh network's (same
    seed, same recipe): the parent's learning carries over."""
    ws, p = parent
    child = train(ws, "s", config=TrainConfig(epochs=1, seed=3, init_from=p.run, **FAST))
    fresh = train(ws, "s", config=TrainConfig(epochs=1, seed=3, **FAST))
    assert child.history[0].train_loss < fresh.history[0].train_loss


def test_the_differences_a_warm_start_refuses_are_named():
    tiny = {"preset": "tiny", "layers": [1, 1, 1, 1], "output_stride": 8, "classes": [[1, "a"]]}
    assert differences(tiny, dict(tiny)) == []
    assert differences(tiny, {**tiny, "output_stride": 16}) == ["output stride 8 (this run: 16)"]
    assert differences(tiny, {**tiny, "preset": "cpu", "layers": (1, 1, 1, 1)}) == [
        "preset tiny (this run: cpu)"
    ]
    assert differences(tiny, {**tiny, "classes": [[2, "b"]]}) == [
        "protocol structures [a] (this run: [b])"
    ]
    old = {k: v for k, v in tiny.items() if k != "classes"}  # recorded before classes were
    assert differences(old, tiny) == []


def test_a_parent_that_does_not_fit_is_refused_in_one_line(parent, tmp_path):
    ws, p = parent
    with pytest.raises(UsageError, match=rf"run {p.run} differs .* output stride 8 \(this run: 16"):
        train(ws, "s", config=TrainConfig(epochs=1, init_from=p.run, output_stride=16, **FAST))
    with pytest.raises(UsageError, match="there is no run 999"):
        train(ws, "s", config=TrainConfig(epochs=1, init_from=999, **FAST))
    with pytest.raises(UsageError, match="not both"):
        TrainConfig(init_from=p.run, pretrained="w.pt").resolved()

    def stop(progress):
        if isinstance(progress, EpochDone):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ws, "s", config=TrainConfig(epochs=2, **FAST), progress=stop)
    cut = list_runs(ws)[-1]
    assert cut.status == RunStatus.interrupted
    with pytest.raises(UsageError, match=rf"run {cut.run} is interrupted, not done"):
        train(ws, "s", config=TrainConfig(epochs=1, init_from=cut.run, **FAST))
    before = len(list_runs(ws))
    res = CliRunner().invoke(
        app,
        ["train", "--split", "s", "--init-from", str(p.run), "--preset", "cpu", "--epochs", "1",
         "--device", "cpu", "--workspace", str(ws.root)],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"run {p.run} differs" in lines[0] and "preset tiny" in lines[0]
    assert len(list_runs(ws)) == before  # nothing recorded


def test_a_parent_that_trained_on_the_new_test_set_is_refused(parent):
    """A split dealt afresh may put the parent's training patients in its test set: the
    child's scores would be inflated, so the start is refused (a split made with --extend
    keeps the patients' sets and is accepted)."""
    ws, p = parent
    with ws.session() as s:
        seen = set(
            s.scalars(
                select(SplitMember.patient_id).where(
                    SplitMember.split_id == get_split(s, "s").id, SplitMember.subset != "test"
                )
            )
        )
    for seed in range(2, 40):
        name = f"t{seed}"
        create_split(ws, name, ratios="1:1:1", folds=0, seed=seed)
        with ws.session() as s:
            test = set(
                s.scalars(
                    select(SplitMember.patient_id).where(
                        SplitMember.split_id == get_split(s, name).id, SplitMember.subset == "test"
                    )
                )
            )
        if test & seen:
            break
    else:
        pytest.fail("no seed dealt a training patient of split s to the test set")
    with pytest.raises(UsageError, match=rf"run {p.run} trained on \d+ image\(s\) of split"):
        train(ws, name, config=TrainConfig(epochs=1, init_from=p.run, **FAST))
    create_split(ws, "s-more", extend="s")
    child = train(ws, "s-more", config=TrainConfig(epochs=1, init_from=p.run, **FAST))
    assert child.parent == p.run and child.split == "s-more"


def test_a_resumed_warm_start_keeps_its_parent_and_repeats_the_whole_run(parent, tmp_path):
    ws, p = parent
    conf = TrainConfig(epochs=2, seed=4, init_from=p.run, **FAST)
    whole = train(ws, "s", config=conf)

    def stop_after_one(progress):
        if isinstance(progress, EpochDone) and progress.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ws, "s", config=conf, progress=stop_after_one)
    with ws.session() as s:
        cut = s.scalars(select(Run).order_by(Run.id.desc())).first().id
    resumed = train(ws, resume=cut)
    assert resumed.status == RunStatus.done and resumed.parent == p.run
    assert [h.train_loss for h in resumed.history] == pytest.approx(
        [h.train_loss for h in whole.history], rel=1e-5
    )
    assert run_summary(ws, cut).config["init_from"] == p.run
    wsopt = ["--workspace", str(ws.root)]
    listed = json.loads(CliRunner().invoke(app, ["runs", "--json", *wsopt]).stdout)
    assert {r["run"]: r["parent"] for r in listed}[cut] == p.run
    res = CliRunner().invoke(app, ["runs", "--csv", str(tmp_path / "runs.csv"), *wsopt])
    assert res.exit_code == 0, res.output
    table = list(csv.DictReader((tmp_path / "runs.csv").read_text().splitlines()))
    assert {r["run"]: r["parent"] for r in table}[str(cut)] == str(p.run)


def test_cli_trains_from_a_parent_and_says_so(parent):
    ws, p = parent
    res = CliRunner().invoke(
        app,
        ["train", "--split", "s", "--init-from", str(p.run), "--preset", "tiny", "--epochs", "1",
         "--batch", "4", "--device", "cpu", "--workspace", str(ws.root)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"started from run {p.run}" in res.stdout
    assert list_runs(ws)[-1].parent == p.run
    res = CliRunner().invoke(
        app, ["train", "--resume", "1", "--init-from", "1", "--workspace", str(ws.root)]
    )
    assert res.exit_code == 2


def test_a_warm_start_fine_tunes_at_a_tenth_of_the_preset_s_learning_rate():
    from datatool.learning.training import WARM_LR
    from datatool.model import PRESETS

    assert WARM_LR == 0.1
    for preset in ("cpu", "paper"):
        fresh = TrainConfig(preset=preset).resolved()
        warm = TrainConfig(preset=preset, init_from=3).resolved()
        assert fresh["lr"] == PRESETS[preset].lr
        assert warm["lr"] == pytest.approx(PRESETS[preset].lr * WARM_LR)
    assert TrainConfig(preset="cpu", init_from=3, lr=1e-3).resolved()["lr"] == 1e-3
