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

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy import select

from datatool.analysis import metrics
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import Image, Rater, Run, RunEpoch, Score, Split, audit
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import store_annotation
from datatool.learning.training import (
    build_for,
    class_lut,
    load_arrays,
    load_checkpoint,
    resolve_device,
    split_items,
    to_input,
)

MEASURES = ("iou", "dice", "precision", "recall", "f1")
QUANTILES = (
    ("top 10 %", 0.9),
    ("Q3", 0.75),
    ("Q2 (median)", 0.5),
    ("Q1", 0.25),
    ("bottom 10 %", 0.1),
)


def per_image_metrics(pred: np.ndarray, ref: np.ndarray, k: int) -> list[dict | None]:
    """For classes 1..k-1: the five measures, or None when the class is in neither map."""
    out = []
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
            {
                "iou": tp / (tp + fp + fn),
                "dice": 2 * tp / (2 * tp + fp + fn),
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }
        )
    return out


def _anova(long: pd.DataFrame) -> dict | None:
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
    return {
        "F": float(row["F"]),
        "df_between": int(row["ddof1"]),
        "df_within": int(row["ddof2"]),
        "p": float(row[p_col]),
        "pairwise_bonferroni": [
            {
                "a": r["A"],
                "b": r["B"],
                "t": float(r["T"]),
                "p_unc": float(r[pu]),
                "p_bonf": min(1.0, float(r[pu]) * m),
            }
            for _, r in pairs.iterrows()
        ],
    }


def _items_for(ws: Workspace, run: dict, subset: str, fold: int | None):
    if subset == "test":
        return split_items(ws, run["split"], "test", None)[1]
    if subset == "val":
        return split_items(ws, run["split"], "val", run["fold"] if fold is None else fold)[1]
    raise UsageError("--set must be test or val")


def score_run(
    ws: Workspace,
    run_id: int,
    subset: str = "test",
    fold: int | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    store_predictions: bool = True,
    out_dir: Path | None = None,
    figures: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    import torch

    from datatool.learning.training import run_summary

    run = run_summary(ws, run_id)
    if checkpoint not in ("best", "last"):
        raise UsageError("--checkpoint must be best or last")
    digest = run["best_checkpoint" if checkpoint == "best" else "last_checkpoint"]
    if digest is None:
        raise DatatoolError(
            f"run {run_id} has no {checkpoint} checkpoint (still running, or "
            "it failed before its first epoch)"
        )
    protocol = load_protocol(ws.protocol_name)
    names = [s.name for s in protocol.structures]
    k = len(names) + 1
    items = _items_for(ws, run, subset, fold)
    if not items.image_ids:
        raise DatatoolError(f"run {run_id}: the {subset} set is empty")
    conf = run["config"]
    lut = class_lut(protocol)
    resize, crop = tuple(conf["resize"]), conf["crop"]
    images, refs = load_arrays(ws, items, resize, lut)
    dev = resolve_device(device)
    model = build_for(conf, k)
    model.load_state_dict(load_checkpoint(ws, digest)["model"])
    model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    preds, times = [], []
    with torch.no_grad():
        x0, _ = to_input(torch.as_tensor(images[:1]).to(dev), crop)
        model(x0)  # warm-up, not timed
        for i in range(len(images)):
            x, _ = to_input(torch.as_tensor(images[i : i + 1]).to(dev), crop)
            if dev.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _null():
                logits = model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            preds.append(logits.float().argmax(1)[0].cpu().numpy().astype(np.uint8))
            if progress:
                progress(i + 1, len(images))
    refs_c = np.stack([_crop(r, crop) for r in refs])

    rows, pooled = [], np.zeros((k, 3), np.int64)
    for image_id, pred, ref in zip(items.image_ids, preds, refs_c):
        for name, m in zip(names, per_image_metrics(pred, ref, k)):
            if m is None:
                continue
            rows.append({"image_id": image_id, "structure": name, **m})
    table = pd.DataFrame(rows)
    per_structure = []
    for c, name in enumerate(names, start=1):
        sub = table[table["structure"] == name] if len(table) else table
        tp, fp, fn = (int(sub[col].sum()) if len(sub) else 0 for col in ("tp", "fp", "fn"))
        pooled[c] = (tp, fp, fn)
        per_structure.append(
            {
                "structure": name,
                "images": len(sub),
                **{m: metrics.describe(sub[m].tolist() if len(sub) else []) for m in MEASURES},
                "pooled_iou": tp / (tp + fp + fn) if tp + fp + fn else None,
                "pooled_dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            }
        )
    t_ms = metrics.describe([t * 1000 for t in times])
    result = {
        "run": run_id,
        "set": subset,
        "fold": fold if fold is not None else run["fold"],
        "checkpoint": checkpoint,
        "images": len(images),
        "split": run["split"],
        "frame": f"resized to {resize[0]}x{resize[1]}, centre crop {crop}x{crop}",
        "structures": per_structure,
        "mean_iou_per_image": float(table["iou"].mean()) if len(table) else None,
        "anova_iou": _anova(table) if len(table) else None,
        "inference_ms": t_ms,
        "device": str(dev),
        "per_image": table.drop(columns=["tp", "fp", "fn"]).to_dict("records")
        if len(table)
        else [],
    }
    if store_predictions:
        result["stored_predictions"] = _store_predictions(
            ws, run_id, items, preds, protocol, resize, crop
        )
    out = Path(out_dir) if out_dir else ws.root / "reports" / f"run-{run_id}-{subset}"
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        result["figures"] = _figures(
            ws, run_id, out, table, names, items, images, refs_c, preds, protocol, crop
        )
    write_text_atomic(out / "score.json", json.dumps(result, indent=2, default=str))
    result["out_dir"] = str(out)
    with ws.session() as s:
        s.add(
            Score(
                run_id=run_id,
                subset=subset,
                results={k2: v for k2, v in result.items() if k2 != "per_image"},
            )
        )
        audit(s, "score", "score", run=run_id, set=subset, images=len(images))
    return result


def _null():
    import contextlib

    return contextlib.nullcontext()


def _crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return a[top : top + size, left : left + size]


def _store_predictions(ws: Workspace, run_id: int, items, preds, protocol, resize, crop) -> int:
    """Each prediction back at the image's own size (outside the crop: background) as an
    annotation of rater model:RUN."""
    from PIL import Image as PILImage

    values = np.array([0] + [s.value for s in protocol.structures], np.uint8)
    name = f"model:{run_id}"
    created = 0
    with ws.session() as s:
        rater = s.scalar(select(Rater).where(Rater.name == name))
        if rater is None:
            rater = Rater(name=name, kind="model")
            s.add(rater)
            s.flush()
        for image_id, pred in zip(items.image_ids, preds):
            image = s.get(Image, image_id)
            canvas = np.zeros(resize, np.uint8)
            h, w = resize
            top, left = max((h - crop) // 2, 0), max((w - crop) // 2, 0)
            canvas[top : top + pred.shape[0], left : left + pred.shape[1]] = values[pred]
            if canvas.shape != (image.rows, image.cols):
                canvas = np.asarray(
                    PILImage.fromarray(canvas).resize((image.cols, image.rows), PILImage.NEAREST)
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
                        _crop(images[idx], crop),
                        refs[idx],
                        preds[idx],
                    )
                )
            files.append(str(overlays_png(out / "overlays.png", picks, protocol)))
    return files


def score_cv(ws: Workspace, run_id: int, **kwargs) -> dict:
    """Every run of the run's cross-validation group, each on its own validation fold."""
    with ws.session() as s:
        run = s.get(Run, run_id)
        if run is None or run.cv_group is None:
            raise DatatoolError(f"run {run_id} is not part of a cross-validation")
        runs = list(s.scalars(select(Run).where(Run.cv_group == run.cv_group).order_by(Run.fold)))
        split_name = s.get(Split, run.split_id).name
    folds = [score_run(ws, r.id, subset="val", **kwargs) for r in runs]
    names = [st["structure"] for st in folds[0]["structures"]]
    per = {
        n: [
            next(st for st in f["structures"] if st["structure"] == n)["iou"]["mean"] for f in folds
        ]
        for n in names
    }
    medians = {
        n: float(np.median([v for v in vals if v is not None]))
        if any(v is not None for v in vals)
        else None
        for n, vals in per.items()
    }
    return {
        "cv_group": run.cv_group,
        "split": split_name,
        "runs": [r.id for r in runs],
        "per_fold_mean_iou": per,
        "median_over_folds_mean_iou": medians,
        "folds": folds,
    }
