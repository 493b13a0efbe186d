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
from sqlalchemy import select

from datatool import __version__
from datatool.core.catalogue import Run, RunEpoch, RunStatus, Split, audit, utcnow
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace
from datatool.learning.data import class_lut, load_arrays, split_items, to_input
from datatool.learning.device import autocast, channels_last, resolve_device
from datatool.learning.options import DEFAULT_PRESET, DeviceChoice, LossName, PresetName, choice
from datatool.learning.splits import SEED_MAX, get_split, split_name_of


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

    def resolved(self) -> dict:
        """The run's config as the catalogue records it: the preset's fields with this
        config's overrides, the preset's name, seed, pretrained weights and image cap."""
        from datatool.model import PRESETS

        preset = choice(PresetName, self.preset, "--preset")
        p = PRESETS[preset]
        p = replace(
            p,
            epochs=self.epochs or p.epochs,
            batch=self.batch or p.batch,
            lr=self.lr or p.lr,
            output_stride=self.output_stride or p.output_stride,
            rotation=p.rotation if self.rotation is None else self.rotation,
            loss=choice(LossName, self.loss, "--loss").value if self.loss else p.loss,
            interactive=self.interactive or p.interactive,
        )
        if (
            p.epochs < 1
            or p.batch < 1
            or not math.isfinite(p.lr)
            or p.lr <= 0
            or p.output_stride not in (8, 16)
        ):
            raise UsageError(
                "epochs and batch must be >= 1, lr a number > 0, output stride 8 or 16"
            )
        if not 0 <= self.seed <= SEED_MAX:  # the catalogue's column and torch's generator
            raise UsageError(f"--seed must be 0 .. {SEED_MAX}")
        out = p.as_dict()
        out.update(
            preset=preset.value,
            seed=self.seed,
            pretrained=self.pretrained,
            max_images=self.max_images,
        )
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
    """A model on a validation set: mean loss per image, pooled and per-image mIoU."""

    loss: float | None
    miou: float | None
    miou_per_image: float | None


NO_VALIDATION = Evaluation(None, None, None)


@dataclass
class EpochRow:
    epoch: int  # counted from 0
    train_loss: float
    val_loss: float | None
    val_miou: float | None
    val_miou_per_image: float | None
    seconds: float


@dataclass
class RunSummary:
    """A training run as the catalogue records it, with its history."""

    run: int
    split: str
    split_hash: str
    fold: int | None
    cv_group: str | None
    preset: str
    seed: int
    config: dict[str, Any]
    code_version: str
    device: str
    status: RunStatus
    epochs_done: int
    best_epoch: int | None  # counted from 0
    best_val_miou: float | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    created: str
    history: list[EpochRow] = field(default_factory=list)


@dataclass
class RunRow:
    """A run in the list of runs."""

    run: int
    split: str
    fold: int | None
    preset: str
    status: RunStatus
    epochs: int  # done
    planned_epochs: int | None
    best_epoch: int | None  # counted from 0
    best_val_miou: float | None
    device: str
    created: str
    resumable: bool  # stopped, with a checkpoint to go on from

    @property
    def stopped(self) -> bool:
        """Interrupted or failed: ended before its last epoch."""
        return self.status in (RunStatus.interrupted, RunStatus.failed)


# --------------------------------------------------------------------------- validation


def confusion(pred, target, k: int):
    import torch

    return torch.bincount((target * k + pred).flatten(), minlength=k * k).reshape(k, k)


def miou_from_confusion(cm: np.ndarray) -> float | None:
    """Mean IoU over the structures (background excluded) that occur in truth or prediction."""
    tp = np.diag(cm)[1:].astype(float)
    union = cm.sum(0)[1:] + cm.sum(1)[1:] - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else None


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
    )


# --------------------------------------------------------------------------- checkpoints


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


def _save_checkpoint(
    ws: Workspace, model, optimizer, epoch: int, best: float | None, config: dict
) -> str:
    import torch

    buf = io.BytesIO()
    torch.save(
        _plain(
            {
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "best_val_miou": best,
                "config": config,
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
class _Best:
    """The selected epoch so far: validation mIoU, epoch and its checkpoint."""

    miou: float | None = None
    epoch: int | None = None
    checkpoint: str | None = None


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


def get_run(session, run_id: int) -> Run:
    """Run ``run_id``, or an error that says where the runs are listed."""
    run = session.get(Run, run_id)
    if run is None:
        raise UsageError(f"no run {run_id}: 'datatool runs' lists them")
    return run


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
            best=_Best(checkpoint["best_val_miou"], run.best_epoch, run.best_checkpoint),
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


def _build(conf: dict, k: int, checkpoint: dict | None, device, world: int):
    """The network (seeded, pretrained or from the checkpoint) on the device, and Adam."""
    import torch

    torch.manual_seed(conf["seed"])
    model = build_for(conf, k)
    if conf.get("pretrained") and checkpoint is None:
        from datatool.model import load_torchvision_resnet50

        load_torchvision_resnet50(model, conf["pretrained"])
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model = channels_last(model.to(device), device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=conf["lr"])
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return model, optimizer


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


def _steps(n: int, batch: int, world: int) -> int:
    # one process: every sample once per epoch. Under DDP every rank must take the same
    # number of full steps (an empty step would leave the others waiting in all-reduce), so
    # ranks take batches round the shuffled order, wrapping at its end.
    return max(1, math.ceil(n / batch)) if world == 1 else max(1, n // (batch * world))


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
    # every random draw of an epoch (order, angles, flips, dropout) comes from seeds of
    # (seed, epoch): a resumed run repeats exactly what the uninterrupted one did
    torch.manual_seed(conf["seed"] * 100_003 + epoch)
    gen = torch.Generator().manual_seed(conf["seed"] * 100_003 + epoch)
    order = torch.randperm(n, generator=gen)
    angles_all = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(conf["rotation"])
    flips_all = torch.rand(n, generator=gen) < 0.5 if preset.flip else None
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
        )
        if clicks_rng is not None:
            from datatool.learning.click_training import with_clicks

            x = with_clicks(loop.model, x, y, _unwrap(loop.model).num_classes, clicks_rng, device)
        with autocast(device):
            loss = segmentation_loss(loop.model(channels_last(x, device)), y, loss=preset.loss)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
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
    """Rank 0: validate, select, checkpoint and record the epoch; ``best`` is updated."""
    val = (
        evaluate(_unwrap(loop.model), data.val_x, data.val_y, loop.conf["crop"], loop.device, k)
        if data.val_x is not None
        else NO_VALIDATION
    )
    # without a validation set the last epoch is the selected one
    improved = data.val_x is None or (
        val.miou is not None and (best.miou is None or val.miou > best.miou)
    )
    if improved:
        best.miou, best.epoch = val.miou, epoch
    last = _save_checkpoint(ws, loop.model, loop.optimizer, epoch, best.miou, loop.conf)
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
    device = _place(conf.get("device", DeviceChoice.auto), world)
    data = _training_data(ws, protocol, start)
    model, optimizer = _build(conf, k, start.checkpoint, device, world)
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


def run_summary(ws: Workspace, run_id: int) -> RunSummary:
    with ws.session() as s:
        run = get_run(s, run_id)
        history = [
            EpochRow(
                epoch=e.epoch,
                train_loss=e.train_loss,
                val_loss=e.val_loss,
                val_miou=e.val_miou,
                val_miou_per_image=e.val_miou_per_image,
                seconds=e.seconds,
            )
            for e in run.epochs
        ]
        return RunSummary(
            run=run.id,
            split=split_name_of(s, run.split_id),
            split_hash=run.split_hash,
            fold=run.fold,
            cv_group=run.cv_group,
            preset=run.preset,
            seed=run.seed,
            config=run.config,
            code_version=run.code_version,
            device=run.device,
            status=RunStatus(run.status),
            epochs_done=run.epochs_done,
            best_epoch=run.best_epoch,
            best_val_miou=run.best_val_miou,
            best_checkpoint=run.best_checkpoint,
            last_checkpoint=run.last_checkpoint,
            created=run.created_at.isoformat(timespec="seconds"),
            history=history,
        )


def list_runs(ws: Workspace) -> list[RunRow]:
    with ws.session() as s:
        rows = s.execute(
            select(Run, Split.name).join(Split, Run.split_id == Split.id).order_by(Run.id)
        ).all()
        return [
            RunRow(
                run=r.id,
                split=name,
                fold=r.fold,
                preset=r.preset,
                status=RunStatus(r.status),
                epochs=r.epochs_done,
                planned_epochs=(r.config or {}).get("epochs"),
                best_epoch=r.best_epoch,
                best_val_miou=r.best_val_miou,
                device=r.device,
                created=r.created_at.isoformat(timespec="seconds"),
                resumable=r.status in (RunStatus.interrupted, RunStatus.failed)
                and r.last_checkpoint is not None,
            )
            for r, name in rows
        ]


__all__ = [
    "EpochDone",
    "EpochRow",
    "Evaluation",
    "RunRow",
    "RunSummary",
    "StepDone",
    "TrainConfig",
    "list_runs",
    "run_summary",
    "train",
    "train_cv",
]
