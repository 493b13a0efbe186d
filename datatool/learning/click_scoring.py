"""``datatool score RUN --clicks``: an interactive run measured the way the field measures
click-guided segmentation, with the standard simulated clicker.

Per structure, on each image of the set whose reference label holds it, in the study's frame
(the image resized to the preset's size and centre-cropped, as ``score``): the run drafts with
no clicks (click 0), then the clicker (:func:`datatool.learning.clicks.next_click`) places one
click at a time on that structure alone, at the interior point of the largest error region
of the structure's current drawing against the reference, positive on a miss, negative on a
spill, up to ``max_clicks`` (10); the network redraws after each. Per structure:

* the target: ``threshold`` (0.95) times the inter-rater IoU on the same images (the mean of
  per-image IoU between the two raters of the yardstick of ``score``, over the set's images
  both labelled where either drew the structure; the frame is the same);
* NoC: per image the number of clicks after which the IoU first reaches the target (0 when
  the draft already does), ``max_clicks`` when it never does; the mean over the images;
* the mean IoU after 0, 1, 3 and 5 clicks, and the share of images never reaching the target.

Without two raters on the set there is no target: NoC and the share are left out (None), the
IoU after each click is still reported. ``clicks.json`` is written beside ``score.json``
(``reports/run-RUN-SET/``) for the study report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from datatool.core.atomic import write_text_atomic
from datatool.core.errors import UsageError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.learning.clicks import Click, click_maps, honour_clicks, iou, next_click
from datatool.learning.data import (
    centre_crop,
    class_lut,
    frame_description,
    load_arrays,
    to_input,
)
from datatool.learning.device import autocast, channels_last, resolve_device
from datatool.learning.inference import DRAFT_FLIPS
from datatool.learning.options import CheckpointChoice, DeviceChoice, ScoreSet, choice
from datatool.learning.scoring import (
    _checkpoint_digest,
    _items_for,
    _load_model,
    _mean_iou,
    _rater_labels,
    _raters_tables,
)
from datatool.learning.training import run_summary

MAX_CLICKS = 10
THRESHOLD = 0.95  # the target: this share of the inter-rater IoU
REPORTED = (0, 1, 3, 5)  # clicks after which the IoU is reported
BATCH = 8


@dataclass
class StructureClicks:
    """One structure under the simulated clicker."""

    structure: str
    images: int  # images of the set whose reference holds the structure
    raters_iou: float | None  # inter-rater IoU on the set (mean of per-image IoU)
    target: float | None  # threshold x raters_iou
    noc: float | None  # mean clicks to reach the target, max_clicks counted when never
    never_reached: float | None  # share of the images that never reach it
    iou_after: dict[int, float]  # clicks -> mean IoU after that many
    iou_curve: list[float] = field(default_factory=list)  # mean IoU after 0 .. max_clicks


@dataclass
class ClickScore:
    """``score RUN --clicks``: the clicker on a run's set."""

    run: int
    set: str
    split: str
    checkpoint: str
    frame: str
    images: int
    max_clicks: int
    threshold: float
    raters: list[str]
    structures: list[StructureClicks]
    ms_per_click: float  # the network's redraw, batched, per image and click
    device: str
    flips: bool = DRAFT_FLIPS  # each redraw with test-time flips (the mirror averaged in)
    out_dir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _forward(
    model, images: np.ndarray, maps: np.ndarray, crop: int, device, flips: bool = DRAFT_FLIPS
) -> np.ndarray:
    """Class maps (B x crop-frame) of images (B x H x W uint8) with click maps (B x 2K x
    frame); with ``flips`` the mirrored input (image and clicks) goes through in the same
    batch and its probabilities, mirrored back, are averaged in (as a redraw at the server,
    :func:`datatool.learning.interactive.redraw_probabilities`)."""
    import torch

    x, _ = to_input(torch.as_tensor(images).to(device), crop)
    x = torch.cat([x, torch.as_tensor(maps).to(x)], 1)
    if flips:
        x = torch.cat([x, x.flip(-1)])
    with torch.no_grad(), autocast(device):
        logits = model(channels_last(x, device))
    if not flips:
        return logits.float().argmax(1).cpu().numpy().astype(np.uint8)
    p = torch.softmax(logits.float(), 1)
    n = len(images)
    return ((p[:n] + p[n:].flip(-1)) / 2).argmax(1).cpu().numpy().astype(np.uint8)


def clicker_curves(
    model,
    images: np.ndarray,
    refs: np.ndarray,
    structure: int,
    names: list[str],
    crop: int,
    device,
    max_clicks: int = MAX_CLICKS,
    flips: bool = DRAFT_FLIPS,
) -> np.ndarray:
    """IoU of class ``structure`` (1-based) after 0 .. max_clicks clicks on it, per image:
    N x (max_clicks + 1). ``refs`` are the class maps in the frame; ``flips``: each redraw
    with test-time flips, as a rater gets it."""
    n = len(images)
    frame = refs.shape[1:]
    curves = np.zeros((n, max_clicks + 1))
    clicks: list[list[Click]] = [[] for _ in range(n)]
    maps = np.zeros((n, 2 * len(names), *frame), np.float32)
    name = names[structure - 1]
    for step in range(max_clicks + 1):
        pred = np.concatenate(
            [
                _forward(model, images[i : i + BATCH], maps[i : i + BATCH], crop, device, flips)
                for i in range(0, n, BATCH)
            ]
        )
        for i in range(n):  # the rater sees the drawing that agrees with their clicks
            drawn = honour_clicks(pred[i], clicks[i], {name: structure})
            mine, truth = drawn == structure, refs[i] == structure
            curves[i, step] = iou(mine, truth)
            if step == max_clicks:
                continue
            click = next_click(mine, truth, name)
            if click is not None:
                clicks[i].append(click)
                maps[i] = click_maps(clicks[i], frame, names)
    return curves


def summarise(
    name: str, curves: np.ndarray, raters_iou: float | None, threshold: float = THRESHOLD
) -> StructureClicks:
    """A structure's figures from its per-image IoU curves (N x (max_clicks + 1))."""
    max_clicks = curves.shape[1] - 1
    target = threshold * raters_iou if raters_iou is not None else None
    noc = never = None
    if target is not None and len(curves):
        reached = curves >= target
        first = np.where(reached.any(1), reached.argmax(1), max_clicks)
        noc = float(first.mean())
        never = float((~reached.any(1)).mean())
    mean = curves.mean(0) if len(curves) else np.full(max_clicks + 1, np.nan)
    return StructureClicks(
        structure=name,
        images=len(curves),
        raters_iou=raters_iou,
        target=target,
        noc=noc,
        never_reached=never,
        iou_after={k: float(mean[k]) for k in REPORTED if k <= max_clicks and len(curves)},
        iou_curve=[float(v) for v in mean] if len(curves) else [],
    )


def score_clicks(
    ws: Workspace,
    run_id: int,
    subset: str = ScoreSet.test,
    checkpoint: str = CheckpointChoice.best,
    device: str = DeviceChoice.auto,
    max_clicks: int = MAX_CLICKS,
    out_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    flips: bool = DRAFT_FLIPS,
) -> ClickScore:
    """The simulated clicker on a run's test (or validation) set, per structure; written to
    ``clicks.json`` in ``out_dir`` (default ``reports/run-RUN-SET``). ``flips``: each redraw
    with test-time flips, as ``serve`` redraws for a rater."""
    subset = choice(ScoreSet, subset, "--set")
    checkpoint = choice(CheckpointChoice, checkpoint, "--checkpoint")
    if not 1 <= max_clicks <= 100:
        raise UsageError("--max-clicks must be 1 to 100")
    run = run_summary(ws, run_id)
    if not run.config.get("interactive"):
        raise UsageError(
            f"run {run_id} was not trained with clicks: 'score --clicks' needs a run of "
            "'datatool train --interactive'"
        )
    digest = _checkpoint_digest(run, checkpoint)
    protocol = load_protocol(ws.protocol_name)
    names = [s.name for s in protocol.structures]
    items = _items_for(ws, run, subset, None)
    if not items.image_ids:
        raise UsageError(f"run {run_id}: the {subset} set is empty")
    resize, crop = tuple(run.config["resize"]), int(run.config["crop"])
    lut = class_lut(protocol)
    images, refs = load_arrays(ws, items, resize, lut)
    refs = np.ascontiguousarray(centre_crop(refs, crop))
    dev = resolve_device(device)
    model = _load_model(ws, run.config, digest, len(names) + 1, dev)
    labels = _rater_labels(ws, run.split, items.image_ids)
    raters_frame, _ = _raters_tables(ws, labels, lut, names, resize, crop)
    out: list[StructureClicks] = []
    seconds, forwards = 0.0, 0
    for k, name in enumerate(names, start=1):
        keep = np.array([(r == k).any() for r in refs], bool)
        started = time.perf_counter()
        curves = clicker_curves(
            model, images[keep], refs[keep], k, names, crop, dev, max_clicks, flips
        )
        seconds += time.perf_counter() - started
        forwards += int(keep.sum()) * (max_clicks + 1)
        raters = _mean_iou(raters_frame, name, set(labels.image_ids)) if labels.image_ids else None
        out.append(summarise(name, curves, raters))
        if progress:
            progress(k, len(names))
    result = ClickScore(
        run=run_id,
        set=str(subset),
        split=run.split,
        checkpoint=str(checkpoint),
        frame=frame_description(resize, crop),
        images=len(items.image_ids),
        max_clicks=max_clicks,
        threshold=THRESHOLD,
        raters=labels.names,
        structures=out,
        ms_per_click=1000 * seconds / max(forwards, 1),
        device=str(dev),
        flips=flips,
    )
    folder = Path(out_dir) if out_dir else ws.root / "reports" / f"run-{run_id}-{subset}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "clicks.json", json.dumps(result.as_dict(), indent=2))
    result.out_dir = str(folder)
    return result


__all__ = [
    "MAX_CLICKS",
    "REPORTED",
    "THRESHOLD",
    "ClickScore",
    "StructureClicks",
    "clicker_curves",
    "score_clicks",
    "summarise",
]
