"""A ``datatool train`` process killed with SIGKILL in the middle of an epoch (no handler
runs, nothing is flushed), then ``datatool train --resume RUN``: the run's history and final
weights equal those of the same run trained without interruption.

Tolerance: every epoch of a run draws its order, angles and dropout from (seed, epoch) and
the checkpoint holds the weights, batch-norm statistics and Adam's state, so the resumed run
repeats the same float32 operations in the same order on the same number of threads: losses
and mIoU to a relative 1e-6, weights to an absolute 1e-6 (in practice bit for bit)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.ci import require

torch = require("torch")

from datatool.core.catalogue import RunStatus  # noqa: E402
from datatool.learning.splits import create_split  # noqa: E402
from datatool.learning.training import load_checkpoint, run_summary  # noqa: E402

EPOCHS, SEED, BATCH = 3, 21, 2


def _history(summary) -> list[tuple]:
    return [(h.epoch, h.train_loss, h.val_loss, h.val_miou, h.val_miou_per_image)
            for h in summary.history]  # fmt: skip


def test_kill_9_mid_epoch_then_resume_equals_the_uninterrupted_run(trained, cli_env):
    ws, _ = trained
    # two patients train (8 images, 4 steps an epoch at batch 2), one validates
    create_split(ws, "killed", ratios="2:1:0", folds=0, seed=3)
    command = [sys.executable, "-m", "datatool", "train", "--split", "killed", "--preset",
               "tiny", "--epochs", str(EPOCHS), "--batch", str(BATCH), "--seed", str(SEED),
               "--device", "cpu", "--workspace", str(ws.root)]  # fmt: skip
    # the uninterrupted run, in a process of its own like the others (the test process's
    # thread count, which other tests may set, does not enter)
    res = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=cli_env, timeout=600
    )
    assert res.returncode == 0, res.stderr[-2000:]
    whole = run_summary(ws, json.loads(res.stdout)["run"])
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env
    )
    lines = []
    try:
        for line in proc.stderr:  # one line per epoch recorded (stderr is not a terminal)
            lines.append(line)
            if line.startswith(f"epoch 1/{EPOCHS}:"):
                os.kill(proc.pid, signal.SIGKILL)  # epoch 2 has begun: its first steps run
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(lines)[-2000:]
    run_id = whole.run + 1
    cut = run_summary(ws, run_id)
    assert cut.split == "killed" and cut.epochs_done == 1 and len(cut.history) == 1
    assert cut.status == RunStatus.running  # SIGKILL: nobody could record the stop

    res = subprocess.run(
        [sys.executable, "-m", "datatool", "train", "--resume", str(run_id), "--json",
         "--workspace", str(ws.root)],
        capture_output=True, text=True, env=cli_env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = run_summary(ws, json.loads(res.stdout)["run"])
    assert resumed.run == run_id and resumed.status == RunStatus.done
    assert resumed.epochs_done == EPOCHS
    got, want = _history(resumed), _history(whole)
    assert [h[0] for h in got] == [h[0] for h in want] == list(range(EPOCHS))
    for g, w in zip(got, want):
        assert g[1:] == pytest.approx(w[1:], rel=1e-6, abs=1e-9)
    assert (resumed.best_epoch, resumed.best_val_miou) == (
        whole.best_epoch,
        pytest.approx(whole.best_val_miou, rel=1e-6),
    )
    final = load_checkpoint(ws, resumed.last_checkpoint)["model"]
    reference = load_checkpoint(ws, whole.last_checkpoint)["model"]
    assert final.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(final[key], value, rtol=0, atol=1e-6, msg=key)
