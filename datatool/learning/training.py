"""``datatool train``: the catalogue's split and reference labels in, a trained Triplet
Attention Net (checkpoints in the store, history in the catalogue) out.

The recipe is the study's (``--preset paper``): Adam, lr 5e-5, batch 8, images resized to
480x640 and centre-cropped to 473x473, a random rotation per sample, 100 epochs, selection on
validation mIoU. Images and reference masks are decoded once into a cache (``.datatool/cache``)
and, for training, held as uint8 tensors on the device; each sample gets its own rotation angle
on the device (:mod:`datatool.learning.data`). On CUDA: bf16 autocast and channels_last
(:mod:`datatool.learning.device`). Under ``torchrun`` the same command trains with
DistributedDataParallel (rank 0 records).

A run is ``running`` while it trains, ``done`` when every epoch is, ``interrupted`` when it
was stopped (Ctrl-C, a signal) and ``failed`` when an error ended it; both of the last two
continue with ``datatool train --resume RUN`` from their last checkpoint.
"""

from __future__ import annotations

import io
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from datatool import __version__
from datatool.core.catalogue import Run, RunEpoch, RunStatus, Split, audit, utcnow
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.learning.click_training import AUTO_SHARE, CLICK_ERRORS
from datatool.learning.data import class_lut, load_arrays, split_items, to_input
from datatool.learning.device import autocast, channels_last, resolve_device
from datatool.learning.ema import WeightAverage
from datatool.learning.options import (
    DEFAULT_PRESET,
    DeviceChoice,
    LossName,
    PresetName,
    SelectionName,
    choice,
)
from datatool.learning.runs import (
    EpochRow,
    RunRow,
    RunSummary,
    get_run,
    list_runs,
    run_summary,
)
from datatool.learning.splits import SEED_MAX, get_split, split_name_of
from datatool.learning.warmstart import classes_of, parent_weights

# a warm start (--init-from) fine-tunes: its learning rate is the preset's times this unless
# --lr is given (issue 23, bench/model.py --loop, cpu preset: at the preset's full rate the
# first epochs undid the parent's learning, and the warm run needed 16 of 20 epochs to reach
# the run from scratch)
WARM_LR = 0.1


@dataclass
class TrainConfig:
    preset: str = DEFAULT_PRESET
    epochs: int | None = None
    batch: int | None = None
    lr: float | None = None
    device: str = DeviceChoice.auto
    seed: int = 0
    output_stride: int | None = None
    rotation: float | None = None
    pretrained: str | None = None
    max_images: int | None = None  # cap the training set (tests, quick looks)
    loss: str | None = None  # None: the preset's (LossName)
    interactive: bool = False  # click channels, trained with simulated clicks (click_training)
    init_from: int | None = None  # start from this finished run's weights (warmstart)
    val_every: int | None = None  # None: the preset's
    selection: str | None = None  # None: the preset's (SelectionName)
    ema: float | None = None  # None: the preset's; 0: no moving average of the weights
    zoom: float | None = None  # None: the preset's; 0: no zoom augmentation
    gain: float | None = None  # None: the preset's; 0: no brightness augmentation

    def resolved(self) -> dict:
        """The run's config as the catalogue records it: the preset's fields with this
        config's overrides, the preset's name, seed, pretrained weights and image cap."""
        from datatool.model import PRESETS

        preset = choice(PresetName, self.preset, "--preset")
        p = PRESETS[preset]
        interactive = self.interactive or p.interactive
        p = replace(
            p,
            epochs=self.epochs or p.epochs,
            batch=self.batch or p.batch,
            lr=self.lr or (p.lr * WARM_LR if self.init_from is not None else p.lr),
            output_stride=self.output_stride or p.output_stride,
            rotation=p.rotation if self.rotation is None else self.rotation,
            loss=choice(LossName, self.loss, "--loss").value if self.loss else p.loss,
            interactive=interactive,
            # an interactive run made now also feeds its clicks to the decoder (a run
            # recorded before the field existed was trained without, and reads back so)
            click_decoder=p.click_decoder or bool(interactive and p.decoder),
            # and chooses the structure to click on by the prediction's errors
            click_choice=CLICK_ERRORS if interactive else p.click_choice,
            # and trains fewer of its samples without clicks (more practise clicks, same epochs)
            auto_share=AUTO_SHARE if interactive else p.auto_share,
            val_every=p.val_every if self.val_every is None else self.val_every,
            selection=choice(SelectionName, self.selection, "--select").value
            if self.selection
            else p.selection,
            ema=p.ema if self.ema is None else float(self.ema),
            zoom=p.zoom if self.zoom is None else float(self.zoom),
            gain=p.gain if self.gain is None else float(self.gain),
        )
        if (
            p.epochs < 1
            or p.batch < 1
            or not math.isfinite(p.lr)
            or p.lr <= 0
            or p.output_stride not in (8, 16)
            or p.val_every < 1
            or not 0 <= p.ema < 1
            or not 0 <= p.zoom < 1
            or not 0 <= p.gain < 1
        ):
            raise UsageError(
                "epochs, batch and --val-every must be >= 1, lr a number > 0, output stride 8 or "
                "16, --ema 0 (none) or a decay below 1, --zoom and --gain 0 (none) up to 0.99"
            )
        if not 0 <= self.seed <= SEED_MAX:  # the catalogue's column and torch's generator
            raise UsageError(f"--seed must be 0 .. {SEED_MAX}")
        if self.init_from is not None and self.pretrained:
            raise UsageError("use --init-from RUN or --pretrained WEIGHTS, not both")
        out = p.as_dict()
        out.update(
            preset=preset.value,
            seed=self.seed,
            pretrained=self.pretrained,
            max_images=self.max_images,
        )
        if self.init_from is not None:  # recorded only when given: older configs stay equal
            out["init_from"] = int(self.init_from)
        return out


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StepDone:
    """Progress: a training step of an epoch (both counted from 1)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float


@dataclass(frozen=True)
class EpochDone:
    """Progress: an epoch validated and recorded (rank 0 only)."""

    epoch: int  # counted from 1
    epochs: int
    train_loss: float
    val_loss: float | None
    val_miou: float | None


ProgressFn = Callable[[StepDone | EpochDone], None]


@dataclass(frozen=True)
class Evaluation:
    """A model on a validation set: mean loss per image, pooled and per-image mIoU, and the
    pooled IoU of each structure (None: in neither truth nor prediction)."""

    loss: float | None
    miou: float | None
    miou_per_image: float | None
    per_structure: tuple[float | None, ...] = ()

    def selection_score(self, rule: str) -> float | None:
        """What a checkpoint is selected on: ``miou``, or ``min``, the lowest structure's IoU
        (the selected epoch is the one that leaves no structure, the nerve included, behind)."""
        if rule == "min":
            present = [v for v in self.per_structure if v is not None]
            return min(present) if present else None
        return self.miou


NO_VALIDATION = Evaluation(None, None, None)


# --------------------------------------------------------------------------- validation


def confusion(pred, target, k: int):
    import torch

    return torch.bincount((target * k + pred).flatten(), minlength=k * k).reshape(k, k)


def iou_from_confusion(cm: np.ndarray) -> list[float | None]:
    """Each structure's IoU (background excluded); None where in neither truth nor prediction."""
    tp = np.diag(cm)[1:].astype(float)
    union = cm.sum(0)[1:] + cm.sum(1)[1:] - tp
    return [float(t / u) if u > 0 else None for t, u in zip(tp, union)]


def miou_from_confusion(cm: np.ndarray) -> float | None:
    """Mean IoU over the structures (background excluded) that occur in truth or prediction."""
    present = [v for v in iou_from_confusion(cm) if v is not None]
    return float(np.mean(present)) if present else None


def evaluate(model, images, masks, crop: int, device, k: int, batch: int = 16) -> Evaluation:
    import torch
    import torch.nn.functional as F

    model.eval()
    total_cm = np.zeros((k, k), np.int64)
    losses, per_image = [], []
    with torch.no_grad(), autocast(device):
        for i in range(0, len(images), batch):
            x, y = to_input(
                torch.as_tensor(images[i : i + batch]).to(device),
                crop,
                masks_u8=torch.as_tensor(masks[i : i + batch]).to(device),
            )
            logits = model(channels_last(x, device)).float()
            losses.append(float(F.cross_entropy(logits, y, reduction="sum")) / y[0].numel())
            pred = logits.argmax(1)
            for p, t in zip(pred, y):
                cm = confusion(p, t, k).cpu().numpy()
                total_cm += cm
                per_image.append(miou_from_confusion(cm))
    valid = [v for v in per_image if v is not None]
    return Evaluation(
        loss=float(np.sum(losses) / max(len(images), 1)),
        miou=miou_from_confusion(total_cm),
        miou_per_image=float(np.mean(valid)) if valid else None,
        per_structure=tuple(iou_from_confusion(total_cm)),
    )


# --------------------------------------------------------------------------- checkpoints


@dataclass
class _Best:
    """The selected epoch so far: validation mIoU, epoch, its checkpoint and its score under
    the preset's selection rule (the mIoU, or the lowest structure's IoU)."""

    miou: float | None = None
    epoch: int | None = None
    checkpoint: str | None = None
    score: float | None = None


def _plain(obj: Any) -> Any:
    """Checkpoint contents as plain data (dicts, lists, tensors, numbers, strings, None),
    which ``torch.load(..., weights_only=True)`` reads without unpickling any class."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _unwrap(model):
    """The network itself, also when DistributedDataParallel wraps it."""
    return model.module if hasattr(model, "module") else model


def _save_checkpoint(ws: Workspace, loop: _Loop, epoch: int, best: _Best) -> str:
    """The checkpoint's ``model`` is what inference loads, the network validated
    (``loop.evaluated``: the moving average of the weights when the run keeps one, the
    trained weights then going in ``raw``, for a resume)."""
    import torch

    buf = io.BytesIO()
    extra = {"raw": _unwrap(loop.model).state_dict()} if loop.average is not None else {}
    torch.save(
        _plain(
            {
                **extra,
                "model": loop.evaluated.state_dict(),
                "optimizer": loop.optimizer.state_dict(),
                "epoch": epoch,
                "best_val_miou": best.miou,
                "best_score": best.score,  # what the selection rule compares
                "config": loop.conf,
            }
        ),
        buf,
    )
    return ws.store.put_blob(buf.getvalue())


def load_checkpoint(ws: Workspace, digest: str) -> dict:
    """A checkpoint from the store: tensors and plain data only (``weights_only``)."""
    import torch

    return torch.load(io.BytesIO(ws.store.get_blob(digest)), map_location="cpu", weights_only=True)


def build_for(config: dict, num_classes: int):
    """The network a run's config describes (its preset's fields), initialised."""
    from datatool.model import Preset, build_model

    return build_model(num_classes, Preset.from_dict(config))


# --------------------------------------------------------------------------- the run


def _git(here: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5
    ).stdout.strip()


def code_version() -> str:
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():  # an installed wheel: the version says it all
        return __version__
    try:
        rev = _git(here, "rev-parse", "--short=12", "HEAD")
        dirty = _git(here, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    return f"{__version__}+{rev}{'.dirty' if dirty else ''}" if rev else __version__


def _dist():
    """(rank, world size) under torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = bool(os.environ.get("LOCAL_RANK")) and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), world


def _device_text(device, world: int) -> str:
    import torch

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    return f"{device.type}:{name}" + (f" x{world}" if world > 1 else "")


@dataclass
class _Start:
    """Where a run starts: a new run's config, or a resumed run's record and checkpoint."""

    conf: dict
    split_name: str
    fold: int | None
    cv_group: str | None
    run_id: int | None = None  # None: a new run, recorded when training starts
    checkpoint: dict | None = None
    start_epoch: int = 0
    best: _Best = field(default_factory=_Best)


@dataclass
class _Data:
    split: Split
    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray | None
    val_y: np.ndarray | None


def _new_start(
    split: str | None, fold: int | None, config: TrainConfig | None, cv_group: str | None
) -> _Start:
    if split is None:
        raise UsageError("--split NAME is needed (or --resume RUN)")
    config = config or TrainConfig()
    conf = config.resolved()
    conf["device"] = choice(DeviceChoice, config.device, "--device").value
    return _Start(conf, split, fold, cv_group)


def _resume_start(ws: Workspace, run_id: int) -> _Start:
    with ws.session() as s:
        run = get_run(s, run_id)
        if run.last_checkpoint is None:
            raise DatatoolError(f"run {run_id} has no checkpoint to resume from")
        checkpoint = load_checkpoint(ws, run.last_checkpoint)
        return _Start(
            conf=dict(run.config),
            split_name=split_name_of(s, run.split_id),
            fold=run.fold,
            cv_group=run.cv_group,
            run_id=run.id,
            checkpoint=checkpoint,
            start_epoch=checkpoint["epoch"] + 1,
            best=_Best(
                checkpoint["best_val_miou"],
                run.best_epoch,
                run.best_checkpoint,
                checkpoint.get("best_score", checkpoint["best_val_miou"]),
            ),
        )


def _place(device_name: str, world: int):
    """The device of this process (its own GPU under torchrun)."""
    import torch

    device = resolve_device(device_name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _training_data(ws: Workspace, protocol: Protocol, start: _Start) -> _Data:
    """The split's training and validation images and masks, at the preset's size."""
    split, train_items = split_items(ws, start.split_name, "train", start.fold)
    _, val_items = split_items(ws, start.split_name, "val", start.fold)
    if start.conf.get("max_images"):
        train_items = train_items.head(start.conf["max_images"])
    if not train_items.image_ids:
        raise DatatoolError(f"split {start.split_name!r} has no training images for this fold")
    lut = class_lut(protocol)
    resize = tuple(start.conf["resize"])
    train_x, train_y = load_arrays(ws, train_items, resize, lut)
    val_x, val_y = load_arrays(ws, val_items, resize, lut) if val_items.image_ids else (None, None)
    return _Data(split, train_x, train_y, val_x, val_y)


def _build(
    conf: dict, k: int, checkpoint: dict | None, device, world: int, init: dict | None = None
):
    """The network (seeded; pretrained, from a parent run's weights ``init`` or from the
    checkpoint) on the device, and Adam."""
    import torch

    torch.manual_seed(conf["seed"])
    model = build_for(conf, k)
    if conf.get("pretrained") and checkpoint is None:
        from datatool.model import load_torchvision_resnet50

        load_torchvision_resnet50(model, conf["pretrained"])
    if checkpoint is not None:
        model.load_state_dict(checkpoint.get("raw", checkpoint["model"]))
    elif init is not None:
        model.load_state_dict(init)
    model = channels_last(model.to(device), device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=conf["lr"])
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return model, optimizer


def _average(conf: dict, model, checkpoint: dict | None) -> WeightAverage | None:
    """The run's moving average of the weights (``ema`` > 0), from the checkpoint when
    resuming."""
    if not conf.get("ema"):
        return None
    state = checkpoint["model"] if checkpoint is not None and "raw" in checkpoint else None
    return WeightAverage(_unwrap(model), float(conf["ema"]), state)


def _record_start(ws: Workspace, start: _Start, split: Split, device, world: int) -> int:
    """Rank 0: the new run's row (or the resumed run's status) in the catalogue."""
    with ws.session() as s:
        if start.run_id is not None:
            get_run(s, start.run_id).status = RunStatus.running
            return start.run_id
        run = Run(
            split_id=split.id,
            split_hash=split.content_hash,
            fold=start.fold,
            cv_group=start.cv_group,
            preset=start.conf["preset"],
            config=start.conf,
            seed=start.conf["seed"],
            code_version=code_version(),
            device=_device_text(device, world),
            status=RunStatus.running,
        )
        s.add(run)
        s.flush()
        audit(
            s,
            "train",
            "run",
            run=run.id,
            split=start.split_name,
            fold=start.fold,
            preset=start.conf["preset"],
            init_from=start.conf.get("init_from"),
        )
        return run.id


def _set_status(ws: Workspace, run_id: int, status: RunStatus) -> None:
    with ws.session() as s:
        run = get_run(s, run_id)
        run.status = status
        if status == RunStatus.done:
            run.finished_at = utcnow()


@dataclass
class _Loop:
    """What every epoch of a run uses: the training tensors on the device and the steps."""

    model: Any
    optimizer: Any
    images: Any  # uint8 N x H x W on the device, augmented there
    masks: Any
    conf: dict
    device: Any
    rank: int
    world: int
    steps: int
    average: WeightAverage | None = None  # the moving average of the weights (--ema)

    @property
    def evaluated(self):
        """The network validated and kept: the average when there is one."""
        return self.average.network if self.average is not None else _unwrap(self.model)


def _steps(n: int, batch: int, world: int) -> int:
    # one process: every sample once per epoch. Under DDP every rank must take the same
    # number of full steps (an empty step would leave the others waiting in all-reduce), so
    # ranks take batches round the shuffled order, wrapping at its end. One process leaves
    # out a last batch of a single sample (89 images in batches of 4): batch norm cannot
    # train on one value per channel (the pyramid pooling's 1 x 1 bin); shuffled, a
    # different sample waits each epoch.
    if world == 1:
        return max(1, n // batch if n % batch == 1 and n > 1 else math.ceil(n / batch))
    return max(1, n // (batch * world))


def _log_uniform(n: int, spread: float, gen):
    """``n`` factors drawn log-uniformly in [1/(1+spread), 1+spread]."""
    import torch

    return torch.exp((torch.rand(n, generator=gen) * 2 - 1) * math.log1p(spread))


def _tones(n: int, gain: float, gen):
    """``n`` (gain, gamma) pairs: gains uniform in [1-gain, 1+gain], gammas log-uniform in
    [1/(1+gain), 1+gain] (drawn in that order)."""
    import torch

    gains = 1 + (torch.rand(n, generator=gen) * 2 - 1) * gain
    return torch.stack([gains, _log_uniform(n, gain, gen)], 1)


def _train_epoch(loop: _Loop, epoch: int, progress: ProgressFn | None) -> float:
    """One epoch of training; returns the mean training loss per sample."""
    import torch

    from datatool.model import Preset, learning_rate, segmentation_loss

    conf, device, rank, world = loop.conf, loop.device, loop.rank, loop.world
    n, batch, crop = len(loop.images), conf["batch"], conf["crop"]
    preset = Preset.from_dict(conf)  # a run recorded before a field existed: its default
    for group in loop.optimizer.param_groups:
        group["lr"] = learning_rate(preset, epoch)
    loop.model.train()
    # every random draw of an epoch (order, angles, flips, zooms, tones, dropout) comes from
    # seeds of (seed, epoch): a resumed run repeats exactly what the uninterrupted one did
    torch.manual_seed(conf["seed"] * 100_003 + epoch)
    gen = torch.Generator().manual_seed(conf["seed"] * 100_003 + epoch)
    order = torch.randperm(n, generator=gen)
    angles_all = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(conf["rotation"])
    flips_all = torch.rand(n, generator=gen) < 0.5 if preset.flip else None
    scales_all = _log_uniform(n, preset.zoom, gen) if preset.zoom else None
    tones_all = _tones(n, preset.gain, gen) if preset.gain else None
    clicks_rng = np.random.default_rng([conf["seed"], epoch]) if preset.interactive else None
    total, count = 0.0, 0
    for step in range(loop.steps):
        if world == 1:
            idx = order[step * batch : (step + 1) * batch]
        else:
            idx = order[(torch.arange(batch) + (step * world + rank) * batch) % n]
        on_device = idx.to(device)
        x, y = to_input(
            loop.images[on_device],
            crop,
            angles_all[idx].to(device),
            loop.masks[on_device],
            None if flips_all is None else flips_all[idx].to(device),
            None if scales_all is None else scales_all[idx].to(device),
            None if tones_all is None else tones_all[idx].to(device),
        )
        if clicks_rng is not None:
            from datatool.learning.click_training import with_clicks

            x = with_clicks(
                loop.model,
                x,
                y,
                _unwrap(loop.model).num_classes,
                clicks_rng,
                device,
                by_errors=preset.click_choice == CLICK_ERRORS,
                auto_share=preset.auto_share,
            )
        with autocast(device):
            loss = segmentation_loss(loop.model(channels_last(x, device)), y, loss=preset.loss)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        if loop.average is not None:
            loop.average.update(_unwrap(loop.model), epoch * loop.steps + step)
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        if progress and rank == 0:
            progress(
                StepDone(epoch + 1, conf["epochs"], step + 1, loop.steps, float(loss.detach()))
            )
    if world > 1:  # the run's loss: every rank's samples, not rank 0's share alone
        import torch.distributed as dist

        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        dist.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)


def validates(conf: dict, epoch: int) -> bool:
    """Whether ``epoch`` (counted from 0) is validated: every ``val_every``-th and the last."""
    every = int(conf.get("val_every", 1))
    return (epoch + 1) % every == 0 or epoch + 1 >= conf["epochs"]


def _end_epoch(
    ws: Workspace,
    run_id: int,
    loop: _Loop,
    data: _Data,
    epoch: int,
    train_loss: float,
    best: _Best,
    seconds: float,
    k: int,
) -> Evaluation:
    """Rank 0: validate (on the preset's schedule), select, checkpoint and record the epoch;
    ``best`` is updated."""
    val = (
        evaluate(loop.evaluated, data.val_x, data.val_y, loop.conf["crop"], loop.device, k)
        if data.val_x is not None and validates(loop.conf, epoch)
        else NO_VALIDATION
    )
    score = val.selection_score(loop.conf.get("selection", "miou"))
    # without a validation set the last epoch is the selected one; an epoch the schedule
    # does not validate is never selected
    improved = data.val_x is None or (
        score is not None and (best.score is None or score > best.score)
    )
    if improved:
        best.miou, best.epoch, best.score = val.miou, epoch, score
    last = _save_checkpoint(ws, loop, epoch, best)
    if improved:
        best.checkpoint = last
    with ws.session() as s:
        run = get_run(s, run_id)
        s.add(
            RunEpoch(
                run_id=run_id,
                epoch=epoch,
                train_loss=train_loss,
                val_loss=val.loss,
                val_miou=val.miou,
                val_miou_per_image=val.miou_per_image,
                seconds=seconds,
            )
        )
        run.epochs_done, run.last_checkpoint = epoch + 1, last
        run.best_epoch, run.best_val_miou, run.best_checkpoint = (
            best.epoch,
            best.miou,
            best.checkpoint,
        )
    return val


def train(
    ws: Workspace,
    split: str | None = None,
    fold: int | None = None,
    config: TrainConfig | None = None,
    resume: int | None = None,
    progress: ProgressFn | None = None,
    cv_group: str | None = None,
) -> RunSummary | None:
    """Train one model; returns the run's summary (None in a torchrun worker other than
    rank 0, which records and reports). ``resume`` continues run RUN from its checkpoint."""
    import torch

    protocol = load_protocol(ws.protocol_name)
    k = len(protocol.structures) + 1  # background and the structures
    rank, world = _dist()
    start = (
        _resume_start(ws, resume)
        if resume is not None
        else _new_start(split, fold, config, cv_group)
    )
    conf = start.conf
    init = None
    if start.run_id is None:  # a new run records its classes; a resumed one has them
        conf["classes"] = classes_of(protocol)
        if conf.get("init_from") is not None:
            init = parent_weights(ws, conf["init_from"], conf, start.split_name, k)
    device = _place(conf.get("device", DeviceChoice.auto), world)
    data = _training_data(ws, protocol, start)
    model, optimizer = _build(conf, k, start.checkpoint, device, world, init)
    run_id = _record_start(ws, start, data.split, device, world) if rank == 0 else None
    best = start.best
    try:
        loop = _Loop(
            model,
            optimizer,
            torch.as_tensor(data.train_x).to(device),
            torch.as_tensor(data.train_y).to(device),
            conf,
            device,
            rank,
            world,
            _steps(len(data.train_x), conf["batch"], world),
            _average(conf, model, start.checkpoint),
        )
        for epoch in range(start.start_epoch, conf["epochs"]):
            started = time.perf_counter()
            train_loss = _train_epoch(loop, epoch, progress)
            if run_id is None:
                continue  # a torchrun worker: rank 0 validates and records
            val = _end_epoch(
                ws, run_id, loop, data, epoch, train_loss, best, time.perf_counter() - started, k
            )
            if progress:
                progress(EpochDone(epoch + 1, conf["epochs"], train_loss, val.loss, val.miou))
    except (KeyboardInterrupt, SystemExit):
        if run_id is not None:
            _set_status(ws, run_id, RunStatus.interrupted)
        raise
    except BaseException:
        if run_id is not None:
            _set_status(ws, run_id, RunStatus.failed)
        raise
    if run_id is None:
        return None
    _set_status(ws, run_id, RunStatus.done)
    return run_summary(ws, run_id)


def train_cv(
    ws: Workspace,
    split: str,
    folds: int,
    config: TrainConfig,
    progress: ProgressFn | None = None,
) -> list[RunSummary]:
    """One run per fold of the split's cross-validation, grouped under one cv_group (an
    empty list in a torchrun worker other than rank 0)."""
    with ws.session() as s:
        available = get_split(s, split).folds
    if available < 2:
        raise DatatoolError(
            f"split {split!r} has no cross-validation folds; create one with --folds 5"
        )
    if folds != available:
        raise UsageError(f"split {split!r} has {available} folds: use --cv {available}")
    group = f"cv-{split}-{int(time.time())}"
    runs = [
        train(ws, split, fold=f, config=config, progress=progress, cv_group=group)
        for f in range(folds)
    ]
    return [r for r in runs if r is not None]


__all__ = [
    "EpochDone",
    "EpochRow",
    "Evaluation",
    "RunRow",
    "RunSummary",
    "StepDone",
    "TrainConfig",
    "get_run",
    "list_runs",
    "run_summary",
    "train",
    "train_cv",
]
