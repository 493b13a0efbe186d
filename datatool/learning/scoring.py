"""``datatool score RUN``: the study's evaluation of a trained run.

Metrics are computed where the model looks: the image resized to the preset's size and
centre-cropped (473x473 for the paper preset), against the frozen reference label of the split.
Per image and structure: IoU, Dice, precision, recall and F1; a structure absent from both the
reference and the prediction is excluded for that image; absent from one of them gives IoU,
Dice and F1 of 0 (and an undefined precision or recall). Per structure: mean ± SD and median
(P25, P75) of the per-image values, and the *pooled* IoU and Dice (one confusion matrix over
the whole set). A one-way ANOVA of per-image IoU across structures with Bonferroni-corrected
pairwise t-tests (pingouin). Inference time per image is the model alone, batch 1, timed apart
from the metrics.

Beside the study's frame: the *whole image* (the drafts raters get, :mod:`datatool.learning.
inference`: the whole image at the model's scale, the probabilities back at the image's own
size) against the reference at the image's own size, and the yardstick of a draft: on the
images of the set that both raters labelled, per structure, the model's IoU against the
reference beside the two raters' IoU against each other, in the same frame, and their ratio
(mean of per-image IoU of the model / mean of per-image IoU between the raters; each mean over
the images where the structure is in either map). A ratio near 1 is a draft as close to the
reference as a second rater's label. The raters are the two human raters whose labels made
the reference (a consensus names them), with the label versions it was made from; otherwise
the two human raters with the most labels on the set, their latest versions.

Boundaries, as Metrics Reloaded recommends beside overlap: on the whole image, per image and
structure, the 95th-percentile Hausdorff distance, the average symmetric surface distance and
the normalised surface distance at a tolerance (``metrics.surface``), in mm with each image's
own x and y pixel spacing (in px when an image of the set is not calibrated). Not in the
study's frame: its resized pixels have no exact size. A structure in the reference or the
prediction but not both has no surface distance (NaN, counted as ``one_empty``, not 0); one
in neither is left out, as for the overlap measures.

Predictions (the whole-image drafts) are stored as annotations of rater ``model:RUN``.
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
from datatool.analysis.consensus import fused_annotation_ids
from datatool.core.atomic import write_text_atomic
from datatool.core.catalogue import (
    Annotation,
    Image,
    Rater,
    RaterKind,
    RunEpoch,
    Score,
    SplitMember,
    audit,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import in_chunks, latest_annotations_query, store_annotations
from datatool.labels.drafts import draft_ref, model_rater, model_rater_name
from datatool.learning.data import (
    Items,
    centre_crop,
    class_lut,
    frame_description,
    load_arrays,
    resize_mask,
    split_items,
    to_input,
)
from datatool.learning.device import autocast, channels_last, resolve_device, synchronize
from datatool.learning.inference import DRAFT_FLIPS, RunModel, predict
from datatool.learning.options import CheckpointChoice, DeviceChoice, ScoreSet, choice
from datatool.learning.splits import get_split
from datatool.learning.training import (
    RunSummary,
    build_for,
    load_checkpoint,
    run_summary,
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
    # the whole image only: metrics.describe_surfaces of the per-image HD95, ASSD (in the
    # result's surface_unit) and NSD (its nsd_tolerance), with one_empty and both_empty
    surface: dict[str, Any] | None = None


@dataclass
class VersusRaters:
    """A structure's yardstick: the model against the reference beside rater against rater,
    on the images both raters labelled; means of per-image IoU (over the images where the
    structure is in either map), in the study's frame and on the whole image."""

    structure: str
    model_iou: float | None  # the study's frame
    raters_iou: float | None
    ratio: float | None  # model_iou / raters_iou
    whole_model_iou: float | None  # the whole image, at its own size
    whole_raters_iou: float | None
    whole_ratio: float | None


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
    whole_image: list[StructureScore]  # the same measures on the whole image (the drafts)
    raters: list[str]  # the two raters of the yardstick; empty when the set has no such pair
    rater_images: int  # images of the set both raters labelled
    versus_raters: list[VersusRaters]  # empty when rater_images is 0
    per_image: list[ImageScore] = field(default_factory=list)
    surface_unit: str = "mm"  # of the whole image's HD95 and ASSD: mm, or px uncalibrated
    nsd_tolerance: float = metrics.NSD_TOLERANCE_MM  # in surface_unit
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


def _metric_rows(
    image_id: int,
    pred: np.ndarray,
    ref: np.ndarray,
    names: list[str],
    surface: tuple[tuple[float, float], float] | None = None,
) -> list[dict]:
    """One image's rows of the long table (the structures in the reference or the
    prediction); with ``surface`` ((y, x) spacing, NSD tolerance) also HD95, ASSD, NSD and
    ``empty`` (why there is no surface distance, or None)."""
    rows = []
    for k, (name, m) in enumerate(zip(names, per_image_metrics(pred, ref, len(names) + 1))):
        if m is None:
            continue
        row = {"image_id": image_id, "structure": name, **dataclasses.asdict(m)}
        if surface is not None:
            s = metrics.surface(pred == k + 1, ref == k + 1, *surface)
            row.update(hd95=s.hd95, assd=s.assd, nsd=s.nsd, empty=s.empty)
        rows.append(row)
    return rows


def _metric_table(image_ids: list[int], preds, refs, names: list[str]) -> pd.DataFrame:
    """Long table: one row per (image, structure in the reference or the prediction)."""
    rows = []
    for image_id, pred, ref in zip(image_ids, preds, refs):
        rows.extend(_metric_rows(image_id, pred, ref, names))
    return pd.DataFrame(rows)


def _image_scores(table: pd.DataFrame) -> list[ImageScore]:
    """The table's rows as ImageScores; an undefined precision or recall is None (pandas
    holds it as NaN, which would reach score.json as a bare ``NaN``, not JSON)."""
    if not len(table):
        return []
    rows = table.drop(columns=["tp", "fp", "fn"]).astype(object)
    return [ImageScore(**r) for r in rows.where(rows.notna(), None).to_dict("records")]


def _mean_iou(table: pd.DataFrame, name: str, image_ids: set[int]) -> float | None:
    if not len(table):
        return None
    sub = table[(table["structure"] == name) & table["image_id"].isin(image_ids)]
    return float(sub["iou"].mean()) if len(sub) else None


def _ratio(model: float | None, raters: float | None) -> float | None:
    return model / raters if model is not None and raters else None


def versus_raters(
    frame: tuple[pd.DataFrame, pd.DataFrame],
    whole: tuple[pd.DataFrame, pd.DataFrame],
    names: list[str],
    image_ids: list[int],
) -> list[VersusRaters]:
    """Per structure, on ``image_ids`` only: the mean per-image IoU of the model against the
    reference and of one rater against the other, and their ratio, in the study's frame and
    on the whole image. Each pair is (model table, raters table), long tables as
    :func:`_metric_table` makes them."""
    ids = set(image_ids)
    out = []
    for name in names:
        m, r = _mean_iou(frame[0], name, ids), _mean_iou(frame[1], name, ids)
        wm, wr = _mean_iou(whole[0], name, ids), _mean_iou(whole[1], name, ids)
        out.append(VersusRaters(name, m, r, _ratio(m, r), wm, wr, _ratio(wm, wr)))
    return out


def _mean_iou_per_image(table: pd.DataFrame) -> float | None:
    """The mean IoU over every (image, structure) row: each row weighs the same, so a
    structure found in fewer images weighs less (not the mean of the structures' means)."""
    return float(table["iou"].mean()) if len(table) else None


def _per_structure(
    table: pd.DataFrame, names: list[str], images: int | None = None
) -> list[StructureScore]:
    """Each structure described over the table; with ``images`` (the set's size) also the
    surface distances the table holds."""
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
                surface=_surfaces(sub, images) if images is not None else None,
            )
        )
    return out


def _surfaces(sub: pd.DataFrame, images: int) -> dict[str, Any]:
    """``metrics.describe_surfaces`` of one structure's rows (one per image where it is in
    the reference or the prediction); the other images of the set are both empty."""
    defined = sub[sub["empty"].isna()] if len(sub) else sub
    out: dict[str, Any] = {
        m: metrics.describe(defined[m].tolist() if len(defined) else [])
        for m in metrics.SURFACE_MEASURES
    }
    out["one_empty"] = int((sub["empty"] == metrics.ONE_EMPTY).sum()) if len(sub) else 0
    out["both_empty"] = images - len(sub)
    return out


# --------------------------------------------------------------------------- scoring


def _items_for(ws: Workspace, run: RunSummary, subset: ScoreSet, fold: int | None) -> Items:
    if subset == ScoreSet.test:
        return split_items(ws, run.split, "test", None)[1]
    return split_items(ws, run.split, "val", run.fold if fold is None else fold)[1]


@dataclass
class _RaterLabels:
    """The two raters of the yardstick and, per image both labelled, their masks' hashes."""

    names: list[str] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    hashes: list[tuple[str, str]] = field(default_factory=list)


def _rater_labels(ws: Workspace, split_name: str, image_ids: list[int]) -> _RaterLabels:
    """The two human raters whose labels made the reference of these images (a consensus
    names the annotations it fused: those versions are compared), else the two human raters
    with the most labels on them (their latest versions); only images both labelled."""
    named: dict[int, dict[int, str]] = {}  # image -> rater -> mask the reference was made from
    latest: dict[int, dict[int, str]] = {}  # image -> rater -> latest mask
    with ws.session() as s:
        split = get_split(s, split_name)
        humans = {
            r.id: r.name for r in s.scalars(select(Rater).where(Rater.kind == RaterKind.human))
        }
        for chunk in in_chunks(image_ids):
            refs = s.execute(
                select(Annotation.source_ref)
                .join(SplitMember, SplitMember.annotation_id == Annotation.id)
                .where(SplitMember.split_id == split.id, SplitMember.image_id.in_(chunk))
            ).scalars()
            fused = [a for ref in refs for a in fused_annotation_ids(ref)]
            for ids in in_chunks(fused):
                for ann in s.scalars(select(Annotation).where(Annotation.id.in_(ids))):
                    if ann.rater_id in humans:
                        named.setdefault(ann.image_id, {})[ann.rater_id] = ann.mask_hash
            query = latest_annotations_query(list(humans), image_ids=chunk)
            for ann in s.scalars(query):
                latest.setdefault(ann.image_id, {})[ann.rater_id] = ann.mask_hash
    from_reference = {r for per in named.values() for r in per}
    if len(from_reference) == 2:
        pair = sorted(from_reference, key=lambda r: humans[r])
    else:
        named = {}
        counts: dict[int, int] = {}
        for per in latest.values():
            for r in per:
                counts[r] = counts.get(r, 0) + 1
        top = sorted(counts, key=lambda r: (-counts[r], humans[r]))[:2]
        pair = sorted(top, key=lambda r: humans[r])
        if len(pair) < 2:
            return _RaterLabels()
    out = _RaterLabels(names=[humans[r] for r in pair])
    for i in image_ids:
        a, b = (named.get(i, {}).get(r) or latest.get(i, {}).get(r) for r in pair)
        if a and b:
            out.image_ids.append(i)
            out.hashes.append((a, b))
    return out


def _raters_tables(
    ws: Workspace, labels: _RaterLabels, lut: np.ndarray, names: list[str], resize, crop: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rater against rater, per image and structure: (the study's frame, the whole image)."""
    frame, whole = [], []
    for image_id, (ha, hb) in zip(labels.image_ids, labels.hashes):
        a, b = lut[ws.store.get_array(ha)], lut[ws.store.get_array(hb)]
        whole.extend(_metric_rows(image_id, a, b, names))
        a, b = (centre_crop(resize_mask(m, resize), crop) for m in (a, b))
        frame.extend(_metric_rows(image_id, a, b, names))
    return pd.DataFrame(frame), pd.DataFrame(whole)


def _whole_image(
    ws: Workspace,
    model: RunModel,
    items: Items,
    lut: np.ndarray,
    names: list[str],
    store_as: tuple[int, str, Protocol] | None,
    progress: Callable[[int, int], None] | None,
    surface: tuple[dict[int, tuple[float, float]], float],
    chunk: int = 16,
) -> tuple[pd.DataFrame, int]:
    """The whole-image drafts against the reference at the image's own size (the long
    table), stored as annotations of rater model:RUN when ``store_as`` (run, checkpoint
    digest, protocol) is given, as ``inference.ensure_drafts`` stores them (so qa, next and
    review find them and do not predict again); returns how many were new. ``surface``:
    (image -> (y, x) spacing, NSD tolerance) for the surface distances."""
    spacing, tolerance = surface
    rows: list[dict] = []
    created = 0
    n = len(items.image_ids)
    for start in range(0, n, chunk):
        ids = items.image_ids[start : start + chunk]
        images = [ws.store.get_array(h) for h in items.image_hashes[start : start + chunk]]
        drafts = predict(model, images)
        refs = items.mask_hashes[start : start + chunk]
        for image_id, draft, mh in zip(ids, drafts, refs):
            ref = lut[ws.store.get_array(mh)]
            rows.extend(
                _metric_rows(
                    image_id, lut[draft.labels], ref, names, (spacing[image_id], tolerance)
                )
            )
        if store_as is not None:
            created += _store_predictions(ws, *store_as, ids, [d.labels for d in drafts])
        if progress:
            progress(n + start + len(ids), 2 * n)
    return pd.DataFrame(rows), created


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
    tolerance: float = metrics.NSD_TOLERANCE_MM,
    flips: bool = DRAFT_FLIPS,
) -> ScoreResult:
    """Score a run on its test set (or validation set or fold): the study's tables, the
    ANOVA, inference time and figures, written to ``out_dir/score.json`` and the catalogue;
    on the whole image also HD95, ASSD and NSD at ``tolerance`` mm. The whole image is
    drafted as raters get drafts: with test-time flips (``flips``, :data:`DRAFT_FLIPS`);
    ``flips=False`` scores plain drafts and stores none (the stored drafts are the ones
    raters get). The study's frame keeps its recipe either way."""
    subset = choice(ScoreSet, subset, "--set")
    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a distance in mm of 0 or more, not {tolerance}")
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
    lut = class_lut(protocol)
    model = _load_model(ws, run.config, digest, len(names) + 1, dev)
    n = len(images)
    preds, times = _predict(
        model, images, crop, dev, (lambda i, _: progress(i, 2 * n)) if progress else None
    )
    refs = centre_crop(refs, crop)
    table = _metric_table(items.image_ids, preds, refs, names)
    run_model = RunModel(
        run_id=run_id,
        split=run.split,
        split_hash=run.split_hash,
        preset=run.preset,
        checkpoint=str(checkpoint),
        config=run.config,
        network=model,
        device=dev,
        values=np.array([0] + [s.value for s in protocol.structures], np.uint8),
        flips=flips,
    )
    spacing, surface_unit = _spacing(ws, items.image_ids)
    whole, stored = _whole_image(
        ws,
        run_model,
        items,
        lut,
        names,
        (run_id, digest, protocol) if store_predictions and flips == DRAFT_FLIPS else None,
        progress,
        (spacing, tolerance),
    )
    labels = _rater_labels(ws, run.split, items.image_ids)
    raters_frame, raters_whole = _raters_tables(ws, labels, lut, names, resize, crop)
    result = ScoreResult(
        run=run_id,
        set=subset,
        fold=fold if fold is not None else run.fold,
        checkpoint=checkpoint,
        images=len(images),
        split=run.split,
        frame=frame_description(resize, crop),
        structures=_per_structure(table, names),
        mean_iou_per_image=_mean_iou_per_image(table),
        anova_iou=_anova(table) if len(table) else None,
        inference_ms=metrics.describe([t * 1000 for t in times]),
        device=str(dev),
        whole_image=_per_structure(whole, names, len(images)),
        raters=labels.names,
        rater_images=len(labels.image_ids),
        versus_raters=versus_raters(
            (table, raters_frame), (whole, raters_whole), names, labels.image_ids
        )
        if labels.image_ids
        else [],
        per_image=_image_scores(table),
        surface_unit=surface_unit,
        nsd_tolerance=tolerance,
    )
    if store_predictions and flips == DRAFT_FLIPS:
        result.stored_predictions = stored
    out = Path(out_dir) if out_dir else ws.root / "reports" / f"run-{run_id}-{subset}"
    out.mkdir(parents=True, exist_ok=True)
    if figures:
        result.figures = _figures(
            ws, run_id, out, table, names, items, images, refs, preds, protocol, crop
        )
    _record(ws, result, out)
    return result


def _spacing(ws: Workspace, image_ids: list[int]) -> tuple[dict[int, tuple[float, float]], str]:
    """Each image's (y, x) pixel size in mm and "mm"; (1, 1) each and "px" when any image
    of the set is not calibrated (one unit for the whole set)."""
    found: dict[int, tuple[float, float] | None] = {}
    with ws.session() as s:
        for chunk in in_chunks(image_ids):
            for i, x, y in s.execute(
                select(Image.id, Image.mm_per_px_x, Image.mm_per_px_y).where(Image.id.in_(chunk))
            ):
                found[i] = (float(y), float(x)) if x and y else None
    if all(found.get(i) is not None for i in image_ids):
        return {i: sp for i, sp in found.items() if sp is not None}, "mm"
    return dict.fromkeys(image_ids, (1.0, 1.0)), "px"


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
    checkpoint: str,
    protocol: Protocol,
    image_ids: list[int],
    labels: list[np.ndarray],
) -> int:
    """Whole-image drafts (protocol values, each at its image's own size) as annotations of
    rater model:RUN with the checkpoint's draft reference; returns how many were new."""
    ref = draft_ref(run_id, checkpoint)
    with ws.session() as s:
        rater = model_rater(s, run_id)
        assert rater is not None
        images = {i.id: i for i in s.scalars(select(Image).where(Image.id.in_(image_ids)))}
        stored = store_annotations(
            s,
            ws.store,
            rater,
            [(images[i], m, model_rater_name(run_id), ref) for i, m in zip(image_ids, labels)],
            protocol,
        )
    return sum(1 for st in stored if st.created)


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


__all__ = [
    "Anova",
    "BonferroniPair",
    "ImageMetrics",
    "ImageScore",
    "ScoreResult",
    "StructureScore",
    "VersusRaters",
    "per_image_metrics",
    "score_run",
    "versus_raters",
]
