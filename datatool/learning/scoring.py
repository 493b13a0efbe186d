"""``datatool score RUN``: the study's evaluation of a trained run.

Metrics are computed where the model looks: the image resized to the preset's size and
centre-cropped (473x473 for the paper preset), against the frozen reference label of the split.
Per image and structure: IoU, Dice, precision, recall and F1; a structure absent from both the
reference and the prediction is excluded for that image; absent from one of them gives IoU,
Dice and F1 of 0 (and an undefined precision or recall). Per structure: mean ± SD and median
(P25, P75) of the per-image values, and the *pooled* IoU and Dice (one confusion matrix over
the whole set). A one-way ANOVA of per-image IoU across structures with Bonferroni-corrected
pairwise t-tests (pingouin). Inference time per image is the model alone, batch 1, timed apart
from the metrics. Predictions are stored as annotations of rater ``model:RUN``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from datatool.analysis import metrics
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import Image, Rater, RaterKind, Run, RunEpoch, Score, audit
from datatool.core.errors import DatatoolError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import store_annotation
from datatool.learning.data import (
    Items,
    centre_crop,
    class_lut,
    load_arrays,
    split_items,
    to_input,
    uncrop,
)
from datatool.learning.device import autocast, channels_last, resolve_device, synchronize
from datatool.learning.options import CheckpointChoice, DeviceChoice, ScoreSet, choice
from datatool.learning.training import (
    RunSummary,
    build_for,
    get_run,
    load_checkpoint,
    run_summary,
    split_name_of,
)

MEASURES = ("iou", "dice", "precision", "recall", "f1")
QUANTILES = (
    ("top 10 %", 0.9),
    ("Q3", 0.75),
    ("Q2 (median)", 0.5),
    ("Q1", 0.25),
    ("bottom 10 %", 0.1),
)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ImageMetrics:
    """One structure in one image: the five measures and the pixel counts behind them."""

    iou: float
    dice: float
    precision: float | None  # None: nothing predicted
    recall: float | None  # None: nothing in the reference
    f1: float
    tp: int
    fp: int
    fn: int


@dataclass
class ImageScore:
    image_id: int
    structure: str
    iou: float
    dice: float
    precision: float | None
    recall: float | None
    f1: float


@dataclass
class StructureScore:
    """A structure over the set: each measure described (``metrics.describe``: n, mean, sd,
    median, p25, p75, min, max) over the images it is in, and the pooled IoU and Dice."""

    structure: str
    images: int
    iou: dict[str, Any]
    dice: dict[str, Any]
    precision: dict[str, Any]
    recall: dict[str, Any]
    f1: dict[str, Any]
    pooled_iou: float | None
    pooled_dice: float | None


@dataclass
class BonferroniPair:
    """A pairwise t-test; t and p are None where it is undefined (two groups without
    variance, e.g. both all 0)."""

    a: str
    b: str
    t: float | None
    p_unc: float | None
    p_bonf: float | None  # p_unc times the number of pairs, at most 1


@dataclass
class Anova:
    """One-way ANOVA of per-image IoU across structures, with Bonferroni-corrected pairs."""

    F: float
    df_between: int
    df_within: int
    p: float
    pairwise_bonferroni: list[BonferroniPair] = field(default_factory=list)


@dataclass
class ScoreResult:
    """A run scored on a set; ``score.json`` holds it (less ``out_dir``)."""

    run: int
    set: ScoreSet
    fold: int | None
    checkpoint: CheckpointChoice
    images: int
    split: str
    frame: str
    structures: list[StructureScore]
    mean_iou_per_image: float | None
    anova_iou: Anova | None
    inference_ms: dict[str, Any]  # metrics.describe of the per-image times
    device: str
    per_image: list[ImageScore] = field(default_factory=list)
    stored_predictions: int | None = None  # None: not stored (--no-store)
    figures: list[str] | None = None  # None: not drawn
    out_dir: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain data with the keys score.json has always had (``stored_predictions`` and
        ``figures`` only when they were made)."""
        d = dataclasses.asdict(self)
        for key in ("stored_predictions", "figures", "out_dir"):
            if d[key] is None:
                del d[key]
        return d


@dataclass
class CVResult:
    """Every run of a cross-validation group scored on its own validation fold."""

    cv_group: str
    split: str
    runs: list[int]
    per_fold_mean_iou: dict[str, list[float | None]]  # structure -> one mean IoU per fold
    median_over_folds_mean_iou: dict[str, float | None]
    folds: list[ScoreResult]


# --------------------------------------------------------------------------- measures


def per_image_metrics(pred: np.ndarray, ref: np.ndarray, k: int) -> list[ImageMetrics | None]:
    """For classes 1..k-1: the five measures, or None when the class is in neither map."""
    out: list[ImageMetrics | None] = []
    for c in range(1, k):
        p, r = pred == c, ref == c
        tp = int(np.count_nonzero(p & r))
        fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
        if tp + fp + fn == 0:
            out.append(None)
            continue
        precision = tp / (tp + fp) if tp + fp else None
        recall = tp / (tp + fn) if tp + fn else None
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
        out.append(
            ImageMetrics(
                iou=tp / (tp + fp + fn),
                dice=2 * tp / (2 * tp + fp + fn),
                precision=precision,
                recall=recall,
                f1=f1,
                tp=tp,
                fp=fp,
                fn=fn,
            )
        )
    return out


def _anova(long: pd.DataFrame) -> Anova | None:
    import warnings

    import pingouin

    if long["structure"].nunique() < 2 or long.groupby("structure").size().min() < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = pingouin.anova(data=long, dv="iou", between="structure", detailed=False)
        pairs = pingouin.pairwise_tests(data=long, dv="iou", between="structure")
    p_col = next((c for c in ("p-unc", "p_unc", "p-val") if c in table), None)
    if "F" not in table or p_col is None:
        return None  # no variance at all (e.g. an untrained model: every IoU 0): no test
    row = table.iloc[0]
    pu = next(c for c in ("p-unc", "p_unc") if c in pairs)
    m = len(pairs)  # Bonferroni: each p times the number of comparisons, at most 1
    return Anova(
        F=float(row["F"]),
        df_between=int(row["ddof1"]),
        df_within=int(row["ddof2"]),
        p=float(row[p_col]),
        pairwise_bonferroni=[
            BonferroniPair(
                a=r["A"],
                b=r["B"],
                t=_finite(r["T"]),
                p_unc=_finite(r[pu]),
                p_bonf=None if _finite(r[pu]) is None else min(1.0, float(r[pu]) * m),
            )
            for _, r in pairs.iterrows()
        ],
    )


def _finite(value) -> float | None:
    """A float, or None for NaN (a test that is undefined; score.json holds no bare NaN)."""
    value = float(value)
    return None if np.isnan(value) else value


def _metric_table(image_ids: list[int], preds, refs, names: list[str]) -> pd.DataFrame:
    """Long table: one row per (image, structure in the reference or the prediction)."""
    rows = []
    for image_id, pred, ref in zip(image_ids, preds, refs):
        for name, m in zip(names, per_image_metrics(pred, ref, len(names) + 1)):
            if m is not None:
                rows.append({"image_id": image_id, "structure": name, **dataclasses.asdict(m)})
    return pd.DataFrame(rows)


def _image_scores(table: pd.DataFrame) -> list[ImageScore]:
    """The table's rows as ImageScores; an undefined precision or recall is None (pandas
    holds it as NaN, which would reach score.json as a bare ``NaN``, not JSON)."""
    if not len(table):
        return []
    rows = table.drop(columns=["tp", "fp", "fn"]).astype(object)
    return [ImageScore(**r) for r in rows.where(rows.notna(), None).to_dict("records")]


def _per_structure(table: pd.DataFrame, names: list[str]) -> list[StructureScore]:
    out = []
    for name in names:
        sub = table[table["structure"] == name] if len(table) else table
        tp, fp, fn = (int(sub[col].sum()) if len(sub) else 0 for col in ("tp", "fp", "fn"))
        described = {m: metrics.describe(sub[m].tolist() if len(sub) else []) for m in MEASURES}
        out.append(
            StructureScore(
                structure=name,
                images=len(sub),
                **described,
                pooled_iou=tp / (tp + fp + fn) if tp + fp + fn else None,
                pooled_dice=2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            )
        )
    return out


# --------------------------------------------------------------------------- scoring


def _items_for(ws: Workspace, run: RunSummary, subset: ScoreSet, fold: int | None) -> Items:
    if subset == ScoreSet.test:
        return split_items(ws, run.split, "test", None)[1]
    return split_items(ws, run.split, "val", run.fold if fold is None else fold)[1]


def _checkpoint_digest(run: RunSummary, checkpoint: CheckpointChoice) -> str:
    digest = run.best_checkpoint if checkpoint == CheckpointChoice.best else run.last_checkpoint
    if digest is None:
        raise DatatoolError(
            f"run {run.run} has no {checkpoint} checkpoint (still running, or "
            "it failed before its first epoch)"
        )
    return digest


def _load_model(ws: Workspace, conf: dict, digest: str, k: int, device):
    model = build_for(conf, k)
    model.load_state_dict(load_checkpoint(ws, digest)["model"])
    return channels_last(model.to(device).eval(), device)


def _predict(
    model, images: np.ndarray, crop: int, device, progress: Callable[[int, int], None] | None
) -> tuple[list[np.ndarray], list[float]]:
    """Each image's class map (crop x crop) and the seconds of its forward pass alone,
    batch 1, after one untimed warm-up pass."""
    import torch

    def forward(i: int):
        x, _ = to_input(torch.as_tensor(images[i : i + 1]).to(device), crop)
        x = channels_last(x, device)
        synchronize(device)
        start = time.perf_counter()
        with autocast(device):
            logits = model(x)
        synchronize(device)
        return logits, time.perf_counter() - start

    preds, times = [], []
    with torch.no_grad():
        forward(0)  # warm-up, not timed
        for i in range(len(images)):
            logits, seconds = forward(i)
            times.append(seconds)
            preds.append(logits.float().argmax(1)[0].cpu().numpy().astype(np.uint8))
            if progress:
                progress(i + 1, len(images))
    return preds, times


def score_run(
    ws: Workspace,
    run_id: int,
    subset: str = ScoreSet.test,
    fold: int | None = None,
    checkpoint: str = CheckpointChoice.best,
    device: str = DeviceChoice.auto,
    store_predictions: bool = True,
    out_dir: Path | None = None,
    figures: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score a run on its test set (or validation set or fold): the study's tables, the
    ANOVA, inference time and figures, written to ``out_dir/score.json`` and the catalogue."""
    subset = choice(ScoreSet, subset, "--set")
    checkpoint = choice(CheckpointChoice, checkpoint, "--checkpoint")
    run = run_summary(ws, run_id)
    digest = _checkpoint_digest(run, checkpoint)
    protocol = load_protocol(ws.protocol_name)
    names = [s.name for s in protocol.structures]
    items = _items_for(ws, run, subset, fold)
    if not items.image_ids:
        raise DatatoolError(f"run {run_id}: the {subset} set is empty")
    resize, crop = tuple(run.config["resize"]), run.config["crop"]
    images, refs = load_arrays(ws, items, resize, class_lut(protocol))
    dev = resolve_device(device)
    model = _load_model(ws, run.config, digest, len(names) + 1, dev)
    preds, times = _predict(model, images, crop, dev, progress)
    refs = centre_crop(refs, crop)
    table = _metric_table(items.image_ids, preds, refs, names)
    result = ScoreResult(
        run=run_id,
        set=subset,
        fold=fold if fold is not None else run.fold,
        checkpoint=checkpoint,
        images=len(images),
        split=run.split,
        frame=f"resized to {resize[0]}x{resize[1]}, centre crop {crop}x{crop}",
        structures=_per_structure(table, names),
        mean_iou_per_image=float(table["iou"].mean()) if len(table) else None,
        anova_iou=_anova(table) if len(table) else None,
        inference_ms=metrics.describe([t * 1000 for t in times]),
        device=str(dev),
        per_image=_image_scores(table),
    )
    if store_predictions:
        result.stored_predictions = _store_predictions(
            ws, run_id, items, preds, protocol, resize, crop
        )
    out = Path(out_dir) if out_dir else ws.root / "reports" / f"run-{run_id}-{subset}"
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        result.figures = _figures(
            ws, run_id, out, table, names, items, images, refs, preds, protocol, crop
        )
    _record(ws, result, out)
    return result


def _record(ws: Workspace, result: ScoreResult, out: Path) -> None:
    """score.json in ``out``, the score (less the per-image rows) in the catalogue."""
    data = result.as_dict()
    write_text_atomic(out / "score.json", json.dumps(data, indent=2, default=str))
    result.out_dir = str(out)
    with ws.session() as s:
        s.add(
            Score(
                run_id=result.run,
                subset=result.set,
                results={k: v for k, v in data.items() if k != "per_image"},
            )
        )
        audit(s, "score", "score", run=result.run, set=result.set, images=result.images)


def _store_predictions(
    ws: Workspace,
    run_id: int,
    items: Items,
    preds: list[np.ndarray],
    protocol: Protocol,
    resize: tuple[int, int],
    crop: int,
) -> int:
    """Each prediction back at the image's own size (outside the crop: background) as an
    annotation of rater model:RUN."""
    from PIL import Image as PILImage

    values = np.array([0] + [s.value for s in protocol.structures], np.uint8)
    name = f"model:{run_id}"
    created = 0
    with ws.session() as s:
        rater = s.scalar(select(Rater).where(Rater.name == name))
        if rater is None:
            rater = Rater(name=name, kind=RaterKind.model)
            s.add(rater)
            s.flush()
        for image_id, pred in zip(items.image_ids, preds):
            image = s.execute(select(Image).where(Image.id == image_id)).scalar_one()
            canvas = uncrop(values[pred], resize, crop)
            if canvas.shape != (image.rows, image.cols):
                canvas = np.asarray(
                    PILImage.fromarray(canvas).resize(
                        (image.cols, image.rows), PILImage.Resampling.NEAREST
                    )
                )
            created += store_annotation(
                s, ws.store, image, rater, canvas, name, f"run {run_id}", protocol
            ).created
    return created


def _figures(
    ws, run_id, out: Path, table, names, items, images, refs, preds, protocol, crop
) -> list[str]:
    from datatool.analysis.plots import iou_box_png, loss_curve_png, overlays_png

    files = []
    with ws.session() as s:
        epochs = [
            (e.epoch, e.train_loss, e.val_loss)
            for e in s.scalars(
                select(RunEpoch).where(RunEpoch.run_id == run_id).order_by(RunEpoch.epoch)
            )
        ]
    if epochs:
        files.append(str(loss_curve_png(out / "loss.png", epochs, f"run {run_id}")))
    if len(table):
        files.append(str(iou_box_png(out / "iou_per_structure.png", table, names)))
        try:  # the study ranks its overlays by the nerve; other protocols by their first
            nerve = protocol.by_label("sciatic nerve")
        except KeyError:
            nerve = protocol.structures[0]
        sub = table[table["structure"] == nerve.name].sort_values("iou")
        if len(sub):
            picks = []
            for label, q in QUANTILES:
                pos = round(q * (len(sub) - 1))
                row = sub.iloc[pos]
                idx = items.image_ids.index(int(row["image_id"]))
                picks.append(
                    (
                        f"{label}: {nerve.name} IoU {row['iou']:.3f}",
                        centre_crop(images[idx], crop),
                        refs[idx],
                        preds[idx],
                    )
                )
            files.append(str(overlays_png(out / "overlays.png", picks, protocol)))
    return files


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.median(present)) if present else None


def score_cv(ws: Workspace, run_id: int, **kwargs) -> CVResult:
    """Every run of the run's cross-validation group, each on its own validation fold."""
    with ws.session() as s:
        run = get_run(s, run_id)
        if run.cv_group is None:
            raise DatatoolError(f"run {run_id} is not part of a cross-validation")
        cv_group = run.cv_group
        runs = [
            r.id for r in s.scalars(select(Run).where(Run.cv_group == cv_group).order_by(Run.fold))
        ]
        split = split_name_of(s, run.split_id)
    folds = [score_run(ws, r, subset=ScoreSet.val, **kwargs) for r in runs]
    per = {
        st.structure: [
            next(x for x in f.structures if x.structure == st.structure).iou["mean"] for f in folds
        ]
        for st in folds[0].structures
    }
    return CVResult(
        cv_group=cv_group,
        split=split,
        runs=runs,
        per_fold_mean_iou=per,
        median_over_folds_mean_iou={n: _median_or_none(v) for n, v in per.items()},
        folds=folds,
    )


__all__ = [
    "Anova",
    "BonferroniPair",
    "CVResult",
    "ImageMetrics",
    "ImageScore",
    "ScoreResult",
    "StructureScore",
    "per_image_metrics",
    "score_cv",
    "score_run",
]
