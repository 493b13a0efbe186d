"""Model commands: train, score, runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from datatool.cli import render
from datatool.cli.agreement import NSD_TOLERANCE_MM
from datatool.cli.common import (
    MAX_INT,
    PANEL_MODEL,
    CsvOpt,
    JsonOpt,
    WorkspaceOpt,
    app,
    guarded,
    progress_bar,
    workspace,
)
from datatool.cli.render import Block, MeanSD, MedianIQR, PValue, Table, cell_text
from datatool.learning.options import (
    DEFAULT_PRESET,
    CheckpointChoice,
    DeviceChoice,
    LossName,
    PresetName,
    ScoreSet,
    SelectionName,
)

if TYPE_CHECKING:  # result types; the services load when a command runs
    from datatool.learning.click_scoring import ClickScore
    from datatool.learning.crossval import CVResult
    from datatool.learning.scoring import ScoreResult
    from datatool.learning.training import EpochDone, RunRow, RunSummary, StepDone


# --------------------------------------------------------------------------- train


class _TrainProgress:
    """A bar over every step of every epoch on a terminal; one line per epoch in logs."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = Progress(
            TextColumn("[bold]train[/bold] epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  val mIoU {task.fields[miou]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=render.err,
            disable=quiet or not render.err.is_terminal,
        )
        self.task: TaskID | None = None
        self.miou = "-"

    def __call__(self, p: StepDone | EpochDone) -> None:
        from datatool.learning.training import EpochDone

        if self.task is None:
            self.task = self.bar.add_task("train", total=None, epoch="", loss="-", miou="-")
        if isinstance(p, EpochDone):  # an epoch validated and recorded
            self.miou = cell_text(p.val_miou)
            if not render.err.is_terminal and not self.quiet:
                render.progress_line(
                    f"epoch {p.epoch}/{p.epochs}: train loss {p.train_loss:.4f}, "
                    f"val loss {cell_text(p.val_loss, 4)}, val mIoU {self.miou}"
                )
            return
        self.bar.update(
            self.task,
            total=p.epochs * p.steps,
            completed=(p.epoch - 1) * p.steps + p.step,
            epoch=f"{p.epoch}/{p.epochs}",
            loss=f"{p.loss:.4f}",
            miou=self.miou,
        )


def _train_view(result: RunSummary | list[RunSummary]) -> Iterator[Block]:
    runs = result if isinstance(result, list) else [result]
    for r in runs:
        fold_text = "" if r.fold is None else f", fold {r.fold}"
        best_epoch = "-" if r.best_epoch is None else r.best_epoch + 1
        parent_text = "" if r.parent is None else f", started from run {r.parent}"
        yield (
            f"run {r.run}: split {r.split} (hash {r.split_hash[:12]}){fold_text}{parent_text}, "
            f"preset {r.preset} (loss {r.config.get('loss', 'ce')}"
            f"{', interactive' if r.config.get('interactive') else ''}), "
            f"{r.epochs_done} epochs on "
            f"{r.device}; best validation mIoU "
            f"{cell_text(r.best_val_miou)} at epoch {best_epoch}"
        )
    if runs:
        yield f"score it with: datatool score {runs[-1].run}"


@app.command(rich_help_panel=PANEL_MODEL)
@guarded
def train(
    split: str | None = typer.Option(None, help="Split to train on (datatool split create)."),
    fold: int | None = typer.Option(None, help="Train on the other folds, select on this one."),
    cv: int | None = typer.Option(None, help="Cross-validation: one run per fold (e.g. 5)."),
    preset: PresetName = typer.Option(
        DEFAULT_PRESET,
        help="paper: the study's recipe (ResNet-50 + triplet attention, 473x473, 100 epochs; "
        "wants a GPU); cpu: for a lab without a GPU (a thin model with a low-level skip, "
        "cross-entropy + Dice, minutes on a CPU); tiny: the thinnest, for smoke tests.",
    ),
    loss: LossName | None = typer.Option(
        None,
        help="ce (cross-entropy, the study's), ce+dice (plus soft Dice over the structures, "
        "so the background does not swamp a small one), dice, or border+dice (soft Dice and "
        "a cross-entropy that weighs pixels within 2 px of a border between classes x3: the "
        "muscles' shared border) (default: the preset's: paper and tiny ce, cpu "
        "border+dice).",
    ),
    ema: float | None = typer.Option(
        None,
        min=0.0,
        max=0.999999,
        help="Keep a moving average of the weights with this decay (e.g. 0.99), validated, "
        "selected and drafted with instead of the trained weights; 0: none (default: the "
        "preset's: none).",
    ),
    zoom: float | None = typer.Option(
        None,
        min=0.0,
        max=0.99,
        help="Zoom augmentation: each training sample scaled by a factor in "
        "[1/(1+Z), 1+Z] (patients and depth settings differ in scale); 0: none (default: "
        "the preset's: cpu 0.15, paper and tiny 0).",
    ),
    gain: float | None = typer.Option(
        None,
        min=0.0,
        max=0.99,
        help="Brightness augmentation: each training image's gain in [1-G, 1+G] and gamma in "
        "[1/(1+G), 1+G] (scanners' gain and depth compensation differ); 0: none (default: "
        "the preset's: cpu 0.2, paper and tiny 0).",
    ),
    epochs: int | None = typer.Option(None, help="Epochs (default: the preset's)."),
    val_every: int | None = typer.Option(
        None,
        min=1,
        help="Validate every K-th epoch and the last (default: the preset's): cheaper "
        "epochs; only validated epochs can be selected.",
    ),
    select: SelectionName | None = typer.Option(
        None,
        "--select",
        help="The checkpoint kept: miou (best validation mIoU, the study's) or min (best "
        "lowest per-structure IoU: no structure, the nerve included, left behind; default: "
        "the preset's).",
    ),
    batch: int | None = typer.Option(None, help="Batch size (default: the preset's, 8)."),
    lr: float | None = typer.Option(
        None,
        help="Adam learning rate (default: the preset's, paper 5e-5, cpu 3e-3; a tenth of it "
        "for a warm start, --init-from).",
    ),
    device: DeviceChoice = typer.Option(
        DeviceChoice.auto, help="auto (CUDA when available), cpu or cuda."
    ),
    seed: int = typer.Option(
        0, min=0, max=MAX_INT, help="Seed of initialisation, order and augmentation."
    ),
    output_stride: int | None = typer.Option(None, help="Backbone output stride, 8 or 16."),
    pretrained: Path | None = typer.Option(
        None,
        exists=True,
        dir_okay=False,
        help="A torchvision resnet50 state dict (ImageNet weights) to start the backbone from.",
    ),
    resume: int | None = typer.Option(
        None, help="Continue interrupted (or failed) run RUN from its last checkpoint."
    ),
    interactive: bool = typer.Option(
        False,
        "--interactive",
        help="Click-guided: the network also takes a rater's positive and negative clicks "
        "per structure, trained on clicks simulated from its own errors (half the samples "
        "without clicks, so it still drafts on its own). Recorded in the run; a resumed "
        "run keeps it.",
    ),
    init_from: int | None = typer.Option(
        None,
        "--init-from",
        metavar="RUN",
        min=1,
        help="Start from finished run RUN's selected weights (same preset and protocol) instead "
        "of a fresh network: retraining after a batch of new labels, on a new split or one "
        "made with --extend. The run records RUN as its parent ('datatool runs').",
    ),
    json_out: bool = JsonOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Train the Triplet Attention Net on a split's reference labels; the run, its history and
    checkpoints are recorded. Runs under torchrun with DistributedDataParallel as well."""
    from datatool.learning.training import TrainConfig, train_cv
    from datatool.learning.training import train as run_train

    if fold is not None and cv is not None:
        raise typer.BadParameter("use --fold K or --cv N, not both")
    if init_from is not None and resume is not None:
        raise typer.BadParameter(
            "use --resume RUN (a resumed run keeps its own parent) or --init-from RUN, not both"
        )
    if init_from is not None and cv is not None:
        raise typer.BadParameter("--init-from starts one run: use --fold K instead of --cv")
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
        loss=loss,
        interactive=interactive,
        init_from=init_from,
        val_every=val_every,
        selection=select,
        ema=ema,
        zoom=zoom,
        gain=gain,
    )
    progress = _TrainProgress(quiet=json_out)
    with progress.bar:
        if cv is not None:
            if split is None:
                raise typer.BadParameter("--cv needs --split")
            results = train_cv(ws, split, cv, config, progress=progress)
        else:
            one = run_train(ws, split, fold=fold, config=config, resume=resume, progress=progress)
            results = [] if one is None else [one]
    if not results:
        return  # a torchrun worker other than rank 0: rank 0 reports
    render.show(results if cv is not None else results[0], _train_view, json_out)


# --------------------------------------------------------------------------- score


def _anova_line(r: ScoreResult) -> str:
    a = r.anova_iou
    if a is None:
        return (
            "one-way ANOVA of per-image IoU across structures: not computed (fewer than "
            "two structures with two values, or no variance at all)"
        )
    return (
        f"one-way ANOVA of per-image IoU across structures: F({a.df_between}, "
        f"{a.df_within}) = {a.F:.3f}, p {cell_text(PValue(a.p))}; Bonferroni pairs in score.json"
    )


def _score_view(r: ScoreResult) -> Iterator[Block]:
    yield (
        f"run {r.run} on the {r.set} set of split {r.split}: {r.images} images ({r.frame}), "
        f"{r.checkpoint} checkpoint"
    )
    table = Table(
        "segmentation scores per structure",
        [
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
        ],
    )
    for st in r.structures:
        table.add(
            st.structure,
            st.images,
            MeanSD.of(st.iou),
            MedianIQR.of(st.iou),
            st.pooled_iou,
            st.dice["mean"],
            st.pooled_dice,
            st.precision["mean"],
            st.recall["mean"],
            st.f1["mean"],
            st.f1["median"],
        )
    yield table
    yield from _versus_view(r)
    yield from _surface_view(r)
    yield _anova_line(r)
    t = r.inference_ms
    yield (
        f"inference, model alone, batch 1 on {r.device}: {t['mean']:.1f} ± {t['sd']:.1f} ms "
        "per image (the study: 218 ± 51 ms, metrics included)"
    )
    if r.stored_predictions is not None:
        yield (
            f"predictions stored as annotations of rater model:{r.run} ({r.stored_predictions} new)"
        )
    yield f"figures and score.json in {r.out_dir}"


def _versus_view(r: ScoreResult) -> Iterator[Block]:
    """The whole image beside the study's frame, and the model beside the raters."""
    raters = " and ".join(r.raters)
    table = Table(
        f"the whole image, and the model beside the raters ({raters}: {r.rater_images} images "
        "both labelled; means of per-image IoU)"
        if r.rater_images
        else "the whole image (no two raters labelled these images: no yardstick)",
        [
            "structure",
            "whole: IoU mean ± SD",
            "whole: pooled IoU",
            "whole: Dice mean",
            "model IoU",
            "raters IoU",
            "ratio",
            "whole: model IoU",
            "whole: raters IoU",
            "whole: ratio",
        ],
        name="whole-image and raters",
    )
    versus = {v.structure: v for v in r.versus_raters}
    for st in r.whole_image:
        v = versus.get(st.structure)
        table.add(
            st.structure,
            MeanSD.of(st.iou),
            st.pooled_iou,
            st.dice["mean"],
            *(
                (None,) * 6
                if v is None
                else (
                    v.model_iou,
                    v.raters_iou,
                    v.ratio,
                    v.whole_model_iou,
                    v.whole_raters_iou,
                    v.whole_ratio,
                )
            ),
        )
    yield table
    if r.rater_images:
        yield (
            "ratio: the model's IoU against the reference / the raters' IoU against each other "
            "(1: a draft as close to the reference as a second rater); model and raters in the "
            "study's frame, then on the whole image"
        )


def _surface_view(r: ScoreResult) -> Iterator[Block]:
    """The whole image's boundaries: HD95, ASSD and NSD of the model against the reference."""
    unit, tol = r.surface_unit, r.nsd_tolerance
    table = Table(
        f"boundaries on the whole image: the model against the reference ({unit}, each "
        "image's own x and y spacing)",
        [
            "structure",
            f"HD95 median (P25, P75), {unit}",
            f"HD95 mean ± SD, {unit}",
            f"ASSD mean ± SD, {unit}",
            f"NSD at {tol:g} {unit}, mean ± SD",
            "NSD median (P25, P75)",
            "one empty",
            "both empty",
        ],
        name="surface",
    )
    for st in r.whole_image:
        s = st.surface or {}
        table.add(
            st.structure,
            MedianIQR.of(s.get("hd95")),
            MeanSD.of(s.get("hd95")),
            MeanSD.of(s.get("assd")),
            MeanSD.of(s.get("nsd")),
            MedianIQR.of(s.get("nsd")),
            s.get("one_empty"),
            s.get("both_empty"),
        )
    yield table
    yield (
        "HD95: the larger directed 95th-percentile border distance; ASSD: the mean border "
        f"distance, both directions; NSD: the share of both borders within {tol:g} {unit} "
        "(--tolerance). A structure in only one of the two maps has no surface distance "
        "(one empty, not 0)."
    )


def _clicks_view(r: ClickScore) -> Iterator[Block]:
    """``score --clicks``: the simulated clicker's figures per structure."""
    yield (
        f"run {r.run} on the {r.set} set of split {r.split} under the simulated clicker: "
        f"{r.images} images ({r.frame}), {r.checkpoint} checkpoint, up to {r.max_clicks} "
        f"clicks per structure, {r.ms_per_click:.0f} ms a click on {r.device}"
        + (", each redraw with test-time flips (as serve redraws)" if r.flips else "")
    )
    after = [k for k in (0, 1, 3, 5) if k <= r.max_clicks]
    table = Table(
        f"clicks to reach {r.threshold:g} x the inter-rater IoU "
        f"({' and '.join(r.raters) if r.raters else 'no two raters on the set'})",
        [
            "structure",
            "images",
            "raters' IoU",
            "target IoU",
            "mean NoC",
            "never reached",
            *(f"IoU after {k}" for k in after),
        ],
        name="clicks",
    )
    for st in r.structures:
        table.add(
            st.structure,
            st.images,
            st.raters_iou,
            st.target,
            st.noc,
            st.never_reached,
            *(st.iou_after.get(k) for k in after),
        )
    yield table
    yield (
        "NoC: clicks until the structure's IoU against the reference first reaches the target "
        f"(0: the draft does; {r.max_clicks} counted when never); each click at the interior "
        "of the largest error region, positive on a miss, negative on a spill"
    )
    if r.out_dir:
        yield f"written: {r.out_dir}/clicks.json"


def _cv_view(r: CVResult) -> Iterator[Block]:
    table = Table(
        f"cross-validation {r.cv_group}: mean IoU per fold",
        ["structure", *(f"fold {k}" for k in range(len(r.runs))), "median"],
    )
    for name, values in r.per_fold_mean_iou.items():
        table.add(name, *values, r.median_over_folds_mean_iou[name])
    yield table


@app.command(rich_help_panel=PANEL_MODEL)
@guarded
def score(
    run: int = typer.Argument(..., help="The run to score (datatool runs lists them)."),
    subset: ScoreSet = typer.Option(
        ScoreSet.test, "--set", help="test, or val (the run's validation set or fold)."
    ),
    fold: int | None = typer.Option(None, help="With --set val: score on this fold."),
    checkpoint: CheckpointChoice = typer.Option(
        CheckpointChoice.best, help="best (selected on validation) or last."
    ),
    cv: bool = typer.Option(
        False, "--cv", help="Score every run of the run's cross-validation on its own fold."
    ),
    device: DeviceChoice = typer.Option(DeviceChoice.auto, help="auto, cpu or cuda."),
    store: bool = typer.Option(
        True, "--store/--no-store", help="Store predictions as annotations of rater model:RUN."
    ),
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        file_okay=False,
        help="Folder for score.json and the figures (default: WORKSPACE/reports/run-RUN-SET).",
    ),
    tolerance: float = typer.Option(
        NSD_TOLERANCE_MM,
        min=0,
        max=1000,
        help="Tolerance of the normalised surface distance (NSD) on the whole image, in mm "
        "(in px when an image of the set is not calibrated).",
    ),
    clicks: bool = typer.Option(
        False,
        "--clicks",
        help="An interactive run (train --interactive) under the simulated clicker instead: "
        "per structure, clicks to reach 0.95 x the inter-rater IoU (NoC; --max-clicks when "
        "never), IoU after 0, 1, 3 and 5 clicks, the share never reaching it (clicks.json).",
    ),
    max_clicks: int = typer.Option(10, min=1, max=100, help="With --clicks: clicks per structure."),
    flips: bool = typer.Option(
        True,
        "--flips/--no-flips",
        help="The whole-image drafts with test-time flips (the image and its mirror "
        "averaged), as raters get them from prelabel, serve and export itksnap --prefill; "
        "--no-flips scores plain drafts instead and stores none. The study's frame is "
        "unchanged. With --clicks: each redraw with the flips, as serve redraws (or without).",
    ),
    json_out: bool = JsonOpt,
    csv_out: Path | None = CsvOpt,
    ws_path: Path | None = WorkspaceOpt,
):
    """Score a run like the study: per structure IoU, Dice, precision, recall, F1 (mean ± SD,
    median (P25, P75)), pooled IoU and Dice, ANOVA with Bonferroni pairs, inference time,
    loss curves, IoU plots and overlays; on the whole image also the boundaries (HD95, ASSD,
    NSD at --tolerance mm, with each image's x and y pixel spacing)."""
    from datatool.learning.crossval import score_cv
    from datatool.learning.scoring import score_run

    ws = workspace(ws_path)
    if clicks:
        from datatool.learning.click_scoring import score_clicks

        if cv or fold is not None:
            raise typer.BadParameter("--clicks scores one run on its test or validation set")
        with progress_bar("clicker", enabled=not json_out) as progress:
            clicked = score_clicks(
                ws,
                run,
                subset=subset,
                checkpoint=checkpoint,
                device=device,
                max_clicks=max_clicks,
                out_dir=out_dir,
                progress=progress,
                flips=flips,
            )
        render.show(clicked, _clicks_view, json_out, csv_out)
        return
    if cv:
        result = score_cv(
            ws,
            run,
            checkpoint=checkpoint,
            device=device,
            store_predictions=store,
            tolerance=tolerance,
            flips=flips,
        )
        render.show(result, _cv_view, json_out, csv_out)
        return
    with progress_bar("score", enabled=not json_out) as progress:
        scored = score_run(
            ws,
            run,
            subset=subset,
            fold=fold,
            checkpoint=checkpoint,
            device=device,
            store_predictions=store,
            out_dir=out_dir,
            progress=progress,
            tolerance=tolerance,
            flips=flips,
        )
    render.show(scored, _score_view, json_out, csv_out)


# --------------------------------------------------------------------------- runs


def _resume_line(r: RunRow) -> str | None:
    """How to go on with a run that stopped before its last epoch."""
    if not r.stopped:
        return None
    if not r.resumable:
        return f"run {r.run} {r.status} before its first checkpoint: nothing to resume"
    of = "" if r.planned_epochs is None else f" of {r.planned_epochs}"
    return (
        f"run {r.run} {r.status} after epoch {r.epochs}{of}: continue it with "
        f"'datatool train --resume {r.run}'"
    )


def _runs_view(rows: list[RunRow]) -> Iterator[Block]:
    table = Table(
        "runs",
        [
            "run",
            "split",
            "fold",
            "parent",
            "preset",
            "status",
            "epochs",
            "best epoch",
            "best val mIoU",
            "device",
            "created",
        ],
    )
    for r in rows:
        table.add(
            r.run,
            r.split,
            r.fold,
            r.parent,
            r.preset,
            r.status,
            r.epochs,
            None if r.best_epoch is None else r.best_epoch + 1,
            r.best_val_miou,
            r.device,
            r.created,
        )
    yield table
    for r in rows:
        line = _resume_line(r)
        if line:
            yield line


@app.command(rich_help_panel=PANEL_MODEL)
@guarded
def runs(
    json_out: bool = JsonOpt, csv_out: Path | None = CsvOpt, ws_path: Path | None = WorkspaceOpt
):
    """List training runs; an interrupted or failed run says how to resume it. The parent
    column is the run a run started from (train --init-from): its lineage."""
    from datatool.learning.training import list_runs

    render.show(list_runs(workspace(ws_path)), _runs_view, json_out, csv_out)
