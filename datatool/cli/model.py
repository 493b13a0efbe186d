"""Model commands: train, score, runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from datatool.cli.common import (
    PANEL_MODEL,
    JsonOpt,
    WorkspaceOpt,
    app,
    err,
    guarded,
    out,
    print_json,
    progress_bar,
    workspace,
)
from datatool.cli.common import _fmt as fmt


def _fmt(value, digits: int = 3) -> str:
    return fmt(value, digits)


@app.command(rich_help_panel=PANEL_MODEL)
@guarded
def train(
    split: str | None = typer.Option(None, help="Split to train on (datatool split create)."),
    fold: int | None = typer.Option(None, help="Train on the other folds, select on this one."),
    cv: int | None = typer.Option(None, help="Cross-validation: one run per fold (e.g. 5)."),
    preset: str = typer.Option(
        "paper",
        help="paper: the study's recipe (ResNet-50 + triplet "
        "attention, 473x473, 100 epochs; wants a GPU); "
        "tiny: a thin model on small images for a CPU.",
    ),
    epochs: int | None = typer.Option(None, help="Epochs (default: the preset's)."),
    batch: int | None = typer.Option(None, help="Batch size (default: the preset's, 8)."),
    lr: float | None = typer.Option(None, help="Adam learning rate (paper: 5e-5)."),
    device: str = typer.Option("auto", help="auto (CUDA when available), cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of initialisation, order and augmentation."),
    output_stride: int | None = typer.Option(None, help="Backbone output stride, 8 or 16."),
    pretrained: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="A torchvision resnet50 state dict (ImageNet weights) to start the backbone from.",
    ),
    resume: int | None = typer.Option(None, help="Continue interrupted run RUN."),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Train the Triplet Attention Net on a split's reference labels; the run, its history and
    checkpoints are recorded. Runs under torchrun with DistributedDataParallel as well."""
    from datatool.learning.training import TrainConfig, train_cv
    from datatool.learning.training import train as run_train

    if fold is not None and cv is not None:
        raise typer.BadParameter("use --fold K or --cv N, not both")
    ws = workspace(ws_path)
    config = TrainConfig(
        preset=preset,
        epochs=epochs,
        batch=batch,
        lr=lr,
        device=device,
        seed=seed,
        output_stride=output_stride,
        pretrained=str(pretrained) if pretrained else None,
    )
    bar = Progress(
        TextColumn("[bold]train[/bold] epoch {task.fields[epoch]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  val mIoU {task.fields[miou]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=json_out or not err.is_terminal,
    )
    state = {"task": None, "miou": "-"}

    def progress(d: dict) -> None:
        total = d["epochs"] * d.get("steps", 1)
        if state["task"] is None:
            state["task"] = bar.add_task("train", total=None, epoch="", loss="-", miou="-")
        if d.get("done"):
            state["miou"] = _fmt(d["val_miou"])
            if not err.is_terminal and not json_out:
                err.print(
                    f"epoch {d['epoch']}/{d['epochs']}: train loss {d['train_loss']:.4f}, "
                    f"val loss {_fmt(d['val_loss'], 4)}, val mIoU {state['miou']}"
                )
            return
        state["steps"] = d["steps"]
        bar.update(
            state["task"],
            total=total,
            completed=(d["epoch"] - 1) * d["steps"] + d["step"],
            epoch=f"{d['epoch']}/{d['epochs']}",
            loss=f"{d['loss']:.4f}",
            miou=state["miou"],
        )

    with bar:
        if cv is not None:
            if split is None:
                raise typer.BadParameter("--cv needs --split")
            results = train_cv(ws, split, cv, config, progress=progress)
        else:
            results = [
                run_train(ws, split, fold=fold, config=config, resume=resume, progress=progress)
            ]
    if any(r.get("run") is None for r in results):
        return  # a torchrun worker other than rank 0: rank 0 reports
    if json_out:
        print_json(results if cv is not None else results[0])
        return
    for r in results:
        fold_text = "" if r["fold"] is None else f", fold {r['fold']}"
        out.print(
            f"run {r['run']}: split {r['split']} (hash {r['split_hash'][:12]}){fold_text}"
            f", preset {r['preset']}, {r['epochs_done']} epochs on {r['device']}; best "
            f"validation mIoU {_fmt(r['best_val_miou'])} at epoch "
            f"{'-' if r['best_epoch'] is None else r['best_epoch'] + 1}"
        )
    out.print(f"score it with: datatool score {results[-1]['run']}")


@app.command(rich_help_panel=PANEL_MODEL)
@guarded
def score(
    run: int = typer.Argument(..., help="The run to score (datatool runs lists them)."),
    subset: str = typer.Option(
        "test", "--set", help="test, or val (the run's validation set or fold)."
    ),
    fold: int | None = typer.Option(None, help="With --set val: score on this fold."),
    checkpoint: str = typer.Option("best", help="best (selected on validation) or last."),
    cv: bool = typer.Option(
        False, "--cv", help="Score every run of the run's cross-validation on its own fold."
    ),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    store: bool = typer.Option(
        True, "--store/--no-store", help="Store predictions as annotations of rater model:RUN."
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        help="Folder for score.json and the figures (default: WORKSPACE/reports/run-RUN-SET).",
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Score a run like the study: per structure IoU, Dice, precision, recall, F1 (mean ± SD,
    median (P25, P75)), pooled IoU and Dice, ANOVA with Bonferroni pairs, inference time,
    loss curves, IoU plots and overlays."""
    from datatool.learning.scoring import score_cv, score_run

    ws = workspace(ws_path)
    if cv:
        result = score_cv(ws, run, checkpoint=checkpoint, device=device, store_predictions=store)
        if json_out:
            print_json(result)
            return
        table = Table(title=f"cross-validation {result['cv_group']}: mean IoU per fold")
        table.add_column("structure")
        for k in range(len(result["runs"])):
            table.add_column(f"fold {k}", justify="right")
        table.add_column("median", justify="right")
        for name, vals in result["per_fold_mean_iou"].items():
            table.add_row(
                name, *(_fmt(v) for v in vals), _fmt(result["median_over_folds_mean_iou"][name])
            )
        out.print(table)
        return
    with progress_bar("score", enabled=not json_out) as progress:
        result = score_run(
            ws,
            run,
            subset=subset,
            fold=fold,
            checkpoint=checkpoint,
            device=device,
            store_predictions=store,
            out_dir=out_dir,
            progress=progress,
        )
    if json_out:
        print_json(result)
        return
    out.print(
        f"run {run} on the {result['set']} set of split {result['split']}: "
        f"{result['images']} images ({result['frame']}), {checkpoint} checkpoint"
    )
    table = Table(title="segmentation scores per structure")
    for col in (
        "structure",
        "n",
        "IoU mean ± SD",
        "IoU median (P25, P75)",
        "pooled IoU",
        "Dice mean",
        "pooled Dice",
        "precision",
        "recall",
        "F1 mean",
        "F1 median",
    ):
        table.add_column(col, justify="left" if col == "structure" else "right")
    for st in result["structures"]:
        iou = st["iou"]
        table.add_row(
            st["structure"],
            str(st["images"]),
            "-" if iou["n"] == 0 else f"{iou['mean']:.3f} ± {iou['sd']:.3f}",
            "-" if iou["n"] == 0 else f"{iou['median']:.3f} ({iou['p25']:.3f}, {iou['p75']:.3f})",
            _fmt(st["pooled_iou"]),
            _fmt(st["dice"]["mean"]),
            _fmt(st["pooled_dice"]),
            _fmt(st["precision"]["mean"]),
            _fmt(st["recall"]["mean"]),
            _fmt(st["f1"]["mean"]),
            _fmt(st["f1"]["median"]),
        )
    out.print(table)
    a = result["anova_iou"]
    if a:
        p = "< 0.001" if a["p"] < 0.001 else f"{a['p']:.3f}"
        out.print(
            f"one-way ANOVA of per-image IoU across structures: F({a['df_between']}, "
            f"{a['df_within']}) = {a['F']:.3f}, p {p}; Bonferroni pairs in score.json"
        )
    else:
        out.print(
            "one-way ANOVA of per-image IoU across structures: not computed (fewer than "
            "two structures with two values, or no variance at all)"
        )
    t = result["inference_ms"]
    out.print(
        f"inference, model alone, batch 1 on {result['device']}: {t['mean']:.1f} ± "
        f"{t['sd']:.1f} ms per image (the study: 218 ± 51 ms, metrics included)"
    )
    if result.get("stored_predictions") is not None:
        out.print(
            f"predictions stored as annotations of rater model:{run} "
            f"({result['stored_predictions']} new)"
        )
    out.print(f"figures and score.json in {result['out_dir']}")


@app.command(rich_help_panel=PANEL_MODEL)
@guarded
def runs(json_out: bool = JsonOpt, ws_path: Path | None = WorkspaceOpt):
    """List training runs."""
    from datatool.learning.training import list_runs

    rows = list_runs(workspace(ws_path))
    if json_out:
        print_json(rows)
        return
    table = Table(title="runs")
    for col in (
        "run",
        "split",
        "fold",
        "preset",
        "status",
        "epochs",
        "best epoch",
        "best val mIoU",
        "device",
        "created",
    ):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["run"]),
            r["split"],
            "-" if r["fold"] is None else str(r["fold"]),
            r["preset"],
            r["status"],
            str(r["epochs"]),
            "-" if r["best_epoch"] is None else str(r["best_epoch"] + 1),
            _fmt(r["best_val_miou"]),
            r["device"],
            r["created"],
        )
    out.print(table)
