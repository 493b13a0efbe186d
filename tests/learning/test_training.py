"""Training and scoring on the demo data, on the CPU: overfitting, determinism, checkpoint
and resume, scoring like the study, cross-validation, the CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from tests.ci import require

torch = require("torch")
import torch.nn.functional as F  # noqa: E402
from sqlalchemy import select  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from datatool.analysis.consensus import make_consensus  # noqa: E402
from datatool.cli import app  # noqa: E402
from datatool.core.catalogue import Annotation, Run, RunStatus  # noqa: E402
from datatool.core.errors import UsageError  # noqa: E402
from datatool.core.protocol import load_protocol  # noqa: E402
from datatool.labels.annotations import store_annotation  # noqa: E402
from datatool.learning.crossval import score_cv  # noqa: E402
from datatool.learning.data import class_lut, load_arrays, split_items, to_input  # noqa: E402
from datatool.learning.scoring import score_run  # noqa: E402
from datatool.learning.splits import create_split  # noqa: E402
from datatool.learning.training import (  # noqa: E402
    EpochDone,
    TrainConfig,
    list_runs,
    load_checkpoint,
    train,
    train_cv,
)
from datatool.model import PRESETS, build_model  # noqa: E402
from tests.labels_util import ingest_demo_with_labels  # noqa: E402

FAST = {"preset": "tiny", "batch": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def ready(tmp_path_factory, demo_dir):
    from datatool.core.workspace import init_workspace, open_workspace

    root = init_workspace(tmp_path_factory.mktemp("train") / "ws").root
    ws = open_workspace(root)
    ingest_demo_with_labels(ws, demo_dir)
    make_consensus(ws, "staple")
    create_split(ws, "s", folds=2, seed=1)
    yield ws
    ws.close()


def test_tiny_preset_overfits_four_images(ready):
    """The tiny network learns four images' sciatic nerve to IoU > 0.9 (Adam, 250 steps on
    160-pixel centre crops: a third of the compute of the preset's 224-pixel crops, with the
    same margin; measured 0.94 at 200 and 250 steps)."""
    protocol = load_protocol()
    preset = PRESETS["tiny"]
    _, items = split_items(ready, "s", "train", None)
    images, masks = load_arrays(ready, items, preset.resize, class_lut(protocol))
    x, y = to_input(torch.as_tensor(images[:4]), 160, masks_u8=torch.as_tensor(masks[:4]))
    torch.manual_seed(0)
    net = build_model(len(protocol.structures) + 1, "tiny")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [180], 0.1)
    for _ in range(250):
        net.train()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1).numpy()
    nerve = protocol.structures.index(protocol.by_label("sciatic nerve")) + 1
    # pooled IoU counted here, without the scoring code
    p, t = pred == nerve, y.numpy() == nerve
    assert (p & t).sum() / (p | t).sum() > 0.9


def test_same_seed_same_first_losses(ready):
    a = train(ready, "s", config=TrainConfig(epochs=2, seed=3, **FAST))
    b = train(ready, "s", config=TrainConfig(epochs=2, seed=3, **FAST))
    c = train(ready, "s", config=TrainConfig(epochs=2, seed=4, **FAST))
    losses = [[h.train_loss for h in r.history] for r in (a, b, c)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert losses[0] != pytest.approx(losses[2], rel=1e-6)
    assert a.status == RunStatus.done and a.epochs_done == 2 and a.best_checkpoint
    assert a.split_hash and a.code_version.startswith("0.1.0")


def test_checkpoint_and_resume_give_the_uninterrupted_run(ready):
    whole = train(ready, "s", config=TrainConfig(epochs=3, seed=5, **FAST))

    def stop_after_two(p):
        if isinstance(p, EpochDone) and p.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ready, "s", config=TrainConfig(epochs=3, seed=5, **FAST), progress=stop_after_two)
    with ready.session() as s:
        cut = s.scalars(select(Run).order_by(Run.id.desc())).first()
        assert cut.status == RunStatus.interrupted and cut.epochs_done == 2
        cut_id = cut.id
    resumed = train(ready, resume=cut_id)
    assert resumed.run == cut_id and resumed.status == RunStatus.done
    assert [h.epoch for h in resumed.history] == [0, 1, 2]
    assert [h.train_loss for h in resumed.history] == pytest.approx(
        [h.train_loss for h in whole.history], rel=1e-5
    )


def test_the_loss_is_recorded_and_a_resumed_run_keeps_it(ready):
    """--loss is part of the run's config; a resumed run goes on with it (and with the cpu
    preset's cosine schedule and flips) exactly as the uninterrupted run did."""
    cpu = {"preset": "cpu", "batch": 4, "device": "cpu", "epochs": 2, "seed": 5}
    whole = train(ready, "s", config=TrainConfig(loss="dice", **cpu))
    assert (whole.config["loss"], whole.config["schedule"], whole.config["flip"]) == (
        "dice",
        "cosine",
        True,
    )

    def stop_after_one(p):
        if isinstance(p, EpochDone) and p.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ready, "s", config=TrainConfig(loss="dice", **cpu), progress=stop_after_one)
    cut = list_runs(ready)[-1]
    assert cut.status == RunStatus.interrupted
    resumed = train(ready, resume=cut.run)
    assert resumed.config["loss"] == "dice"
    assert [h.train_loss for h in resumed.history] == pytest.approx(
        [h.train_loss for h in whole.history], rel=1e-5
    )
    default = train(ready, "s", config=TrainConfig(**cpu))
    assert default.config["loss"] == "border+dice" == PRESETS["cpu"].loss
    assert default.history[0].train_loss != pytest.approx(whole.history[0].train_loss, rel=1e-3)
    assert TrainConfig().resolved()["loss"] == "ce"  # the study's, by default
    with pytest.raises(UsageError, match=r"--loss must be one of ce, ce\+dice, dice"):
        TrainConfig(loss="focal").resolved()


def test_checkpoints_hold_plain_data_and_load_with_weights_only(ready):
    run = train(ready, "s", config=TrainConfig(epochs=1, seed=7, **FAST))
    blob = ready.store.get_blob(run.last_checkpoint)
    raw = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)

    def plain(obj):
        if isinstance(obj, dict):
            assert type(obj) is dict and all(type(k) in (str, int) for k in obj)
            return all(plain(v) for v in obj.values())
        if isinstance(obj, list | tuple):
            assert type(obj) is list
            return all(plain(v) for v in obj)
        return obj is None or type(obj) in (str, int, float, bool) or type(obj) is torch.Tensor

    assert plain(raw)
    assert raw["epoch"] == 0 and raw["config"]["preset"] == "tiny"
    assert raw["config"]["resize"] == [240, 320] and raw["config"]["device"] == "cpu"
    assert load_checkpoint(ready, run.last_checkpoint).keys() == raw.keys()


def test_the_default_preset_is_the_study_s():
    conf = TrainConfig().resolved()
    assert conf["preset"] == "paper" and conf["crop"] == PRESETS["paper"].crop == 473
    with pytest.raises(UsageError, match="--preset must be one of paper, tiny"):
        TrainConfig(preset="huge").resolved()
    from typer.main import get_command

    option = next(p for p in get_command(app).commands["train"].params if p.name == "preset")
    assert option.default == TrainConfig().preset


def test_a_failed_run_says_how_to_resume_it_and_resumes(ready, tmp_path):
    def disk_full(p):
        if isinstance(p, EpochDone):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train(ready, "s", config=TrainConfig(epochs=2, seed=8, **FAST), progress=disk_full)
    row = list_runs(ready)[-1]
    assert row.status == RunStatus.failed and row.stopped and row.resumable
    assert (row.epochs, row.planned_epochs) == (1, 2)
    ws = ["--workspace", str(ready.root)]
    res = CliRunner().invoke(app, ["runs", "--csv", str(tmp_path / "runs.csv"), *ws])
    assert res.exit_code == 0, res.output
    assert (
        f"run {row.run} failed after epoch 1 of 2: continue it with "
        f"'datatool train --resume {row.run}'" in res.stdout
    )
    table = list(csv.DictReader((tmp_path / "runs.csv").read_text().splitlines()))
    assert table[-1]["run"] == str(row.run) and table[-1]["status"] == "failed"
    assert table[-1]["best epoch"] == "1"  # counted from 1, as printed
    listed = json.loads(CliRunner().invoke(app, ["runs", "--json", *ws]).stdout)
    assert set(listed[-1]) >= {
        "run", "split", "fold", "preset", "status", "epochs", "best_epoch", "best_val_miou",
        "device", "created",
    }  # fmt: skip
    resumed = train(ready, resume=row.run)
    assert resumed.status == RunStatus.done and resumed.epochs_done == 2
    res = CliRunner().invoke(app, ["runs", *ws])
    assert f"'datatool train --resume {row.run}'" not in res.stdout


def test_score_reports_like_the_study_and_stores_predictions(ready, tmp_path):
    run = train(ready, "s", config=TrainConfig(epochs=2, seed=1, **FAST))
    result = score_run(ready, run.run, out_dir=tmp_path)
    names = [s.name for s in load_protocol().structures]
    assert [st.structure for st in result.structures] == names
    for st in result.structures:
        for m in ("iou", "dice", "precision", "recall", "f1"):
            assert set(getattr(st, m)) >= {"mean", "sd", "median", "p25", "p75"}
    assert result.images == 4 and result.inference_ms["n"] == 4
    assert result.stored_predictions == 4
    assert {p.name for p in tmp_path.iterdir()} >= {
        "loss.png",
        "iou_per_structure.png",
        "overlays.png",
        "score.json",
    }
    with ready.session() as s:
        stored = s.scalars(
            select(Annotation).where(Annotation.rater.has(name=f"model:{run.run}"))
        ).all()
        assert len(stored) == 4 and all(a.source == f"model:{run.run}" for a in stored)
        image = stored[0].image
        assert ready.store.get_array(stored[0].mask_hash).shape == (image.rows, image.cols)
    from scipy import stats

    # the ANOVA is there exactly when it can be computed (its numbers: test_scoring_numbers)
    groups = {}
    for row in result.per_image:
        groups.setdefault(row.structure, []).append(row.iou)
    testable = len(groups) >= 2 and min(map(len, groups.values())) >= 2
    if testable and len({v for g in groups.values() for v in g}) > 1:
        f = stats.f_oneway(*groups.values()).statistic
        anova = result.anova_iou
        assert (anova.df_between, anova.F) == (len(groups) - 1, pytest.approx(f, rel=1e-9))
    else:
        assert result.anova_iou is None
    on_disk = json.loads((tmp_path / "score.json").read_text())
    assert list(on_disk) == [
        "run", "set", "fold", "checkpoint", "images", "split", "frame", "structures",
        "mean_iou_per_image", "anova_iou", "inference_ms", "device", "whole_image", "raters",
        "rater_images", "versus_raters", "per_image", "surface_unit", "nsd_tolerance",
        "stored_predictions", "figures",
    ]  # fmt: skip
    assert on_disk["set"] == "test" and on_disk["structures"][0]["iou"]["n"] >= 0
    assert set(on_disk["per_image"][0]) == {
        "image_id", "structure", "iou", "dice", "precision", "recall", "f1",
    }  # fmt: skip


def test_whole_image_drafts_and_the_raters_yardstick_are_scored(trained, tmp_path):
    """score adds the whole image (the drafts predict() makes, stored as model:RUN) and, on
    the images both raters labelled, the raters' IoU in the same frames and the ratio."""
    import numpy as np

    from datatool.labels.annotations import latest_annotations_query
    from datatool.learning.data import centre_crop, resize_mask
    from datatool.learning.inference import load_run_model, predict

    ws, run = trained
    result = score_run(ws, run, out_dir=tmp_path, figures=False)
    protocol = load_protocol()
    names = [s.name for s in protocol.structures]
    lut = class_lut(protocol)
    _, items = split_items(ws, "s", "test", None)
    assert result.raters == ["rater1", "rater2"] and result.rater_images == len(items.image_ids)
    # the stored predictions are the whole-image drafts
    drafts = predict(
        load_run_model(ws, run, device="cpu"), [ws.store.get_array(h) for h in items.image_hashes]
    )
    with ws.session() as s:
        stored = {
            a.image_id: ws.store.get_array(a.mask_hash)
            for a in s.scalars(latest_annotations_query()).all()
            if a.rater.name == f"model:{run}"
        }
        raters = {
            (a.image_id, a.rater.name): lut[ws.store.get_array(a.mask_hash)]
            for a in s.scalars(latest_annotations_query()).all()
            if a.rater.name in ("rater1", "rater2")
        }
    for image_id, draft in zip(items.image_ids, drafts):
        np.testing.assert_array_equal(stored[image_id], draft.labels)
    # whole-image IoU and the raters' IoU, by hand, for every structure
    resize, crop = tuple(result_config(ws, run)["resize"]), result_config(ws, run)["crop"]

    def iou(a, b, c):
        union = np.count_nonzero((a == c) | (b == c))
        return np.count_nonzero((a == c) & (b == c)) / union if union else None

    def mean(values):
        present = [v for v in values if v is not None]
        return sum(present) / len(present) if present else None

    for c, name in enumerate(names, start=1):
        refs = [lut[ws.store.get_array(h)] for h in items.mask_hashes]
        whole = mean([iou(lut[d.labels], r, c) for d, r in zip(drafts, refs)])
        pairs = [(raters[(i, "rater1")], raters[(i, "rater2")]) for i in items.image_ids]
        in_frame = [
            iou(*(centre_crop(resize_mask(m, resize), crop) for m in pair), c) for pair in pairs
        ]
        st = next(x for x in result.whole_image if x.structure == name)
        v = next(x for x in result.versus_raters if x.structure == name)
        assert st.iou["mean"] == pytest.approx(whole) if whole is not None else st.images == 0
        assert v.whole_model_iou == pytest.approx(whole)
        assert v.whole_raters_iou == pytest.approx(mean([iou(a, b, c) for a, b in pairs]))
        assert v.raters_iou == pytest.approx(mean(in_frame))
        frame = next(x for x in result.structures if x.structure == name).iou["mean"]
        assert v.model_iou == pytest.approx(frame)  # every test image has both raters' labels
        if v.model_iou is not None and v.raters_iou:
            assert v.ratio == pytest.approx(v.model_iou / v.raters_iou)
        if v.whole_model_iou is not None and v.whole_raters_iou:
            assert v.whole_ratio == pytest.approx(v.whole_model_iou / v.whole_raters_iou)


def result_config(ws, run):
    from datatool.learning.training import run_summary

    return run_summary(ws, run).config


def test_the_ratio_of_a_hand_built_case():
    """Known IoUs: the model 0.5 and 1.0 (mean 0.75), the raters 0.5 and 0.75 (mean 0.625);
    a third image, which only one rater labelled, is left out of both means."""
    import numpy as np

    from datatool.learning.scoring import _metric_table, versus_raters

    def mask(*cells):
        m = np.zeros((2, 4), np.uint8)
        for r, c in cells:
            m[r, c] = 1
        return m

    ref1, ref2 = mask((0, 0), (0, 1)), mask((1, 0), (1, 1), (1, 2))
    model1, model2 = mask((0, 0)), mask((1, 0), (1, 1), (1, 2))  # IoU 1/2, 1
    rater_a1, rater_b1 = mask((0, 0), (0, 1)), mask((0, 1))  # IoU 1/2
    rater_a2, rater_b2 = mask((1, 0), (1, 1), (1, 2)), mask((1, 0), (1, 1), (1, 2), (1, 3))
    model = _metric_table([1, 2, 3], [model1, model2, mask()], [ref1, ref2, ref1], ["a"])
    raters = _metric_table([1, 2], [rater_a1, rater_a2], [rater_b1, rater_b2], ["a"])
    (v,) = versus_raters((model, raters), (model, raters), ["a"], [1, 2])
    assert (v.model_iou, v.raters_iou) == (pytest.approx(0.75), pytest.approx(0.625))
    assert v.ratio == pytest.approx(0.75 / 0.625) == v.whole_ratio
    (empty,) = versus_raters((model, raters), (model, raters), ["a"], [3])
    assert empty.model_iou == 0.0 and empty.raters_iou is None and empty.ratio is None


def test_the_yardstick_compares_the_label_versions_the_reference_was_made_from(ready):
    """A rater who relabels an image after the consensus does not move the yardstick: the
    consensus names the versions it fused. Without such a consensus (a reference that is
    one rater's labels), the two human raters with the most labels, latest versions."""
    import numpy as np

    from datatool.core.catalogue import Image
    from datatool.labels.annotations import get_rater, latest_annotation
    from datatool.learning.scoring import _rater_labels

    _, items = split_items(ready, "s", "test", None)
    before = _rater_labels(ready, "s", items.image_ids)
    assert before.names == ["rater1", "rater2"] and before.image_ids == items.image_ids
    image_id = items.image_ids[0]
    with ready.session() as s:
        rater = get_rater(s, "rater1")
        image = s.get(Image, image_id)
        old = latest_annotation(s, image_id, rater.id).mask_hash
        relabel = np.zeros((image.rows, image.cols), np.uint8)
        relabel[10:20, 10:20] = load_protocol().structures[0].value
        store_annotation(s, ready.store, image, rater, relabel, "itksnap", "again", load_protocol())
    after = _rater_labels(ready, "s", items.image_ids)
    assert after.hashes == before.hashes and after.hashes[0][0] == old
    make_consensus(ready, "rater:rater1")
    create_split(ready, "one", folds=0, seed=1, reference="consensus:rater:rater1")
    _, one = split_items(ready, "one", "test", None)
    assert one.image_ids == items.image_ids  # the same patients dealt to the test set
    latest = _rater_labels(ready, "one", one.image_ids)
    assert latest.names == ["rater1", "rater2"]
    assert latest.hashes[0][0] != old and latest.hashes[1:] == before.hashes[1:]


def test_anova_without_variance_is_no_test():
    import pandas as pd

    from datatool.learning.scoring import _anova

    flat = pd.DataFrame({"structure": ["a"] * 3 + ["b"] * 3, "iou": [0.0] * 6})
    assert _anova(flat) is None
    varied = pd.DataFrame(
        {"structure": ["a"] * 3 + ["b"] * 3, "iou": [0.1, 0.2, 0.3, 0.6, 0.7, 0.9]}
    )
    result = _anova(varied)
    assert result.df_between == 1 and result.p < 0.05
    pair = result.pairwise_bonferroni[0]
    assert pair.p_bonf == pair.p_unc  # one pair: Bonferroni multiplies by 1


def test_cross_validation_runs_and_scores_every_fold(ready):
    runs = train_cv(ready, "s", 2, TrainConfig(epochs=1, seed=2, **FAST))
    assert [r.fold for r in runs] == [0, 1] and runs[0].cv_group == runs[1].cv_group
    result = score_cv(ready, runs[0].run, store_predictions=False, figures=False)
    assert len(result.folds) == 2 and result.runs == [r.run for r in runs]
    assert set(result.median_over_folds_mean_iou) == {s.name for s in load_protocol().structures}


def test_cli_train_runs_score(ready, cli_env, tmp_path):
    base = [sys.executable, "-m", "datatool"]
    ws = ["--workspace", str(ready.root)]
    res = subprocess.run(
        [
            *base,
            "train",
            "--split",
            "s",
            "--preset",
            "tiny",
            "--epochs",
            "1",
            "--batch",
            "4",
            "--device",
            "cpu",
            "--loss",
            "ce+dice",
            "--json",
            *ws,
        ],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert res.returncode == 0, res.stderr
    run = json.loads(res.stdout)["run"]
    assert json.loads(res.stdout)["config"]["loss"] == "ce+dice"
    res = subprocess.run(
        [*base, "score", str(run), "--no-store", "--csv", str(tmp_path / "score.csv"), *ws],
        capture_output=True,
        text=True,
        env=dict(cli_env, COLUMNS="220"),
    )
    assert res.returncode == 0, res.stderr
    assert "IoU mean ± SD" in res.stdout and "ANOVA" in res.stdout and "218" in res.stdout
    header = (tmp_path / "score.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["structure", "n", "IoU mean ± SD (mean)", "IoU mean ± SD (sd)"]
    assert "model beside the raters (rater1 and rater2" in res.stdout and "ratio" in res.stdout
    beside = list(csv.DictReader((tmp_path / "score-whole-image-and-raters.csv").open()))
    assert [r["structure"] for r in beside] == [s.name for s in load_protocol().structures]
    assert {"whole: IoU mean ± SD (mean)", "model IoU", "raters IoU", "ratio"} <= set(beside[0])
    assert (
        "runs"
        in subprocess.run([*base, "runs", *ws], capture_output=True, text=True, env=cli_env).stdout
    )
    bad = subprocess.run(
        [*base, "train", "--split", "nope", "--preset", "tiny", *ws],
        capture_output=True,
        text=True,
        env=cli_env,
    )
    assert bad.returncode == 1 and "no split 'nope'" in bad.stderr
    runner = CliRunner()
    assert "paper" in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "160"}).output
    for args in (
        ["train", "--split", "s", "--preset", "huge"],
        ["train", "--split", "s", "--loss", "focal"],
        ["score", "1", "--set", "all"],
    ):
        assert runner.invoke(app, [*args, *ws]).exit_code == 2  # not a choice: a usage error


def test_distributed_data_parallel_under_torchrun(ready, cli_env, tmp_path):
    """Two CPU processes (gloo) train one run together; rank 0 alone records it."""
    import shutil

    from tests.learning.test_ddp import free_port

    torchrun = shutil.which("torchrun") or str(
        __import__("pathlib").Path(sys.executable).parent / "torchrun"
    )
    with ready.session() as s:
        before = s.query(Run).count()
    res = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "datatool",
            "train",
            "--split",
            "s",
            "--preset",
            "tiny",
            "--epochs",
            "2",
            "--batch",
            "2",
            "--device",
            "cpu",
            "--json",
            "--workspace",
            str(ready.root),
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    run = json.loads(res.stdout)
    assert run["device"].endswith("x2") and run["epochs_done"] == 2 and run["status"] == "done"
    with ready.session() as s:
        assert s.query(Run).count() == before + 1


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--seed", str(2**62), "less than or equal to 2147483647"),
        ("--seed", "-1", "greater than or equal to 0"),
        ("--lr", "nan", "lr a number > 0"),
        ("--lr", "inf", "lr a number > 0"),
    ],
)
def test_a_seed_beyond_the_catalogue_or_a_lr_that_is_no_number_is_a_usage_error(
    tmp_path, option, value, message
):
    """A seed of 2**62 once reached torch's generator (a traceback: 'Overflow when unpacking
    long long'); lr nan reached Adam (a traceback), lr inf trained on nothing. Refused
    before any run is made, by the service too."""
    from datatool.core.workspace import init_workspace

    root = init_workspace(tmp_path / "ws").root
    args = ["train", "--split", "s", "--preset", "tiny", option, value, "-w", str(root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert message in " ".join(result.output.split()).replace("│ ", "")
    with pytest.raises(UsageError):
        key = "lr" if option == "--lr" else "seed"
        TrainConfig(preset="tiny", **{key: float(value) if key == "lr" else int(value)}).resolved()
