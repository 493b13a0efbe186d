"""``datatool train``: the catalogue's split and reference labels in, a trained Triplet
Attention Net (checkpoints in the store, history in the catalogue) out.

The recipe is the study's (``--preset paper``): Adam, lr 5e-5, batch 8, images resized to
480x640 and centre-cropped to 473x473, a random rotation per sample, 100 epochs, selection on
validation mIoU. Images and reference masks are decoded once into a cache (``.datatool/cache``)
and, for training, held as uint8 tensors on the device; each sample gets its own rotation angle
on the device (bilinear for the image, nearest neighbour for the mask, both filled with 0 =
black / background outside the rotated frame). On CUDA: bf16 autocast and channels_last.
Under ``torchrun`` the same command trains with DistributedDataParallel (rank 0 records).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sqlalchemy import select

from datatool import __version__
from datatool.core.atomic import write_bytes_atomic
from datatool.core.catalogue import (
    Annotation,
    Image,
    Run,
    RunEpoch,
    Split,
    SplitMember,
    audit,
    utcnow,
)
from datatool.core.errors import DatatoolError, UsageError
from datatool.core.protocol import Protocol, load_protocol
from datatool.core.workspace import Workspace

GRAY_MEAN, GRAY_STD = 0.449, 0.226  # ImageNet's channel means/SDs, averaged: gray in 3 channels
AUX_WEIGHT = 0.4


@dataclass
class TrainConfig:
    preset: str = "tiny"
    epochs: int | None = None
    batch: int | None = None
    lr: float | None = None
    device: str = "auto"
    seed: int = 0
    output_stride: int | None = None
    rotation: float | None = None
    pretrained: str | None = None
    max_images: int | None = None  # cap the training set (tests, quick looks)

    def resolved(self) -> dict:
        from datatool.model import PRESETS

        if self.preset not in PRESETS:
            raise UsageError(f"--preset must be one of {', '.join(PRESETS)}")
        p = PRESETS[self.preset]
        p = replace(
            p,
            epochs=self.epochs or p.epochs,
            batch=self.batch or p.batch,
            lr=self.lr or p.lr,
            output_stride=self.output_stride or p.output_stride,
            rotation=p.rotation if self.rotation is None else self.rotation,
        )
        if p.epochs < 1 or p.batch < 1 or p.lr <= 0 or p.output_stride not in (8, 16):
            raise UsageError("epochs and batch must be >= 1, lr > 0, output stride 8 or 16")
        out = p.as_dict()
        out.update(
            preset=self.preset,
            seed=self.seed,
            pretrained=self.pretrained,
            max_images=self.max_images,
        )
        return out


# --------------------------------------------------------------------------- data


def class_lut(protocol: Protocol) -> np.ndarray:
    """Label value -> class index (0 background, then the structures in protocol order)."""
    lut = np.zeros(256, np.uint8)
    for i, s in enumerate(protocol.structures, start=1):
        lut[s.value] = i
    return lut


@dataclass
class Items:
    image_ids: list[int] = field(default_factory=list)
    image_hashes: list[str] = field(default_factory=list)
    mask_hashes: list[str] = field(default_factory=list)


def split_items(ws: Workspace, split_name: str, part: str, fold: int | None) -> tuple[Split, Items]:
    """The members of a split's part: ``train``/``val`` (of the fold when given: the other
    folds train, the fold validates) or ``test``, with their frozen reference labels."""
    with ws.session() as s:
        split = s.scalar(select(Split).where(Split.name == split_name))
        if split is None:
            raise DatatoolError(f"no split {split_name!r}: create one with 'datatool split create'")
        if fold is not None and not 0 <= fold < max(split.folds, 1):
            raise UsageError(f"split {split_name!r} has {split.folds} folds (0..{split.folds - 1})")
        q = (
            select(SplitMember.image_id, Image.store_hash, Annotation.mask_hash)
            .join(Image, SplitMember.image_id == Image.id)
            .outerjoin(Annotation, SplitMember.annotation_id == Annotation.id)
            .where(SplitMember.split_id == split.id)
            .order_by(SplitMember.image_id)
        )
        if part == "test":
            q = q.where(SplitMember.subset == "test")
        elif fold is None:
            q = q.where(SplitMember.subset == part)
        elif part == "train":
            q = q.where(SplitMember.subset != "test", SplitMember.fold != fold)
        else:
            q = q.where(SplitMember.subset != "test", SplitMember.fold == fold)
        rows = s.execute(q).all()
        s.expunge(split)
    missing = [i for i, _, m in rows if m is None]
    if missing:
        raise DatatoolError(
            f"split {split_name!r}: {len(missing)} {part} image(s) have no "
            "reference label; run 'datatool split check'"
        )
    items = Items([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    return split, items


def load_arrays(
    ws: Workspace, items: Items, resize: tuple[int, int], lut: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x H x W uint8) and class-index masks at ``resize``, decoded once and cached."""
    from PIL import Image as PILImage

    key = hashlib.sha256(
        json.dumps([items.image_hashes, items.mask_hashes, list(resize), lut.tolist()]).encode()
    ).hexdigest()[:24]
    cache = ws.meta_dir / "cache" / f"{key}.npz"
    if cache.exists():
        with np.load(cache) as data:
            return data["images"], data["masks"]
    h, w = resize
    images = np.empty((len(items.image_ids), h, w), np.uint8)
    masks = np.empty_like(images)
    for k, (ih, mh) in enumerate(zip(items.image_hashes, items.mask_hashes)):
        img, mask = ws.store.get_array(ih), lut[ws.store.get_array(mh)]
        if img.shape != (h, w):
            img = np.asarray(PILImage.fromarray(img).resize((w, h), PILImage.BILINEAR))
            mask = np.asarray(PILImage.fromarray(mask).resize((w, h), PILImage.NEAREST))
        images[k], masks[k] = img, mask
    cache.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, images=images, masks=masks)
    write_bytes_atomic(cache, buf.getvalue())
    return images, masks


# --------------------------------------------------------------------------- tensors


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DatatoolError("--device cuda: no CUDA GPU is available here; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError("--device must be auto, cpu or cuda")
    return torch.device(name)


def rotate(images, masks, angles):
    """Rotate each sample by its own angle (radians) about its centre: images bilinear,
    masks nearest neighbour, both filled with 0 outside. images: B x 1 x H x W float."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(b, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(
        masks.unsqueeze(1).to(images.dtype),
        grid,
        mode="nearest",
        padding_mode="zeros",
        align_corners=False,
    ).squeeze(1)
    return images, masks.round().long()


def centre_crop(t, size: int):
    h, w = t.shape[-2:]
    top, left = max((h - size) // 2, 0), max((w - size) // 2, 0)
    return t[..., top : top + size, left : left + size]


def to_input(images_u8, size: int, angles=None, masks_u8=None):
    """uint8 B x H x W (on the device) -> normalised B x 3 x size x size (and masks)."""
    x = images_u8.unsqueeze(1).float().div_(255.0)
    y = masks_u8.long() if masks_u8 is not None else None
    if angles is not None:
        x, y = rotate(x, masks_u8, angles)
    x = centre_crop(x, size)
    x = ((x - GRAY_MEAN) / GRAY_STD).expand(-1, 3, -1, -1)
    return x, (centre_crop(y, size) if y is not None else None)


def confusion(pred, target, k: int):
    import torch

    return torch.bincount((target * k + pred).flatten(), minlength=k * k).reshape(k, k)


def miou_from_confusion(cm: np.ndarray) -> float | None:
    """Mean IoU over the structures (background excluded) that occur in truth or prediction."""
    tp = np.diag(cm)[1:].astype(float)
    union = cm.sum(0)[1:] + cm.sum(1)[1:] - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else None


def _autocast(device):
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(model, images, masks, crop: int, device, k: int, batch: int = 16) -> dict:
    import torch
    import torch.nn.functional as F

    model.eval()
    total_cm = np.zeros((k, k), np.int64)
    losses, per_image = [], []
    with torch.no_grad(), _autocast(device):
        for i in range(0, len(images), batch):
            x, y = to_input(
                torch.as_tensor(images[i : i + batch]).to(device),
                crop,
                masks_u8=torch.as_tensor(masks[i : i + batch]).to(device),
            )
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float()
            losses.append(float(F.cross_entropy(logits, y, reduction="sum")) / y[0].numel())
            pred = logits.argmax(1)
            for p, t in zip(pred, y):
                cm = confusion(p, t, k).cpu().numpy()
                total_cm += cm
                per_image.append(miou_from_confusion(cm))
    valid = [v for v in per_image if v is not None]
    return {
        "loss": float(np.sum(losses) / max(len(images), 1)),
        "miou": miou_from_confusion(total_cm),
        "miou_per_image": float(np.mean(valid)) if valid else None,
    }


# --------------------------------------------------------------------------- the run


def code_version() -> str:
    here = Path(__file__).resolve().parents[2]
    if not (here / ".git").exists():  # an installed wheel: the version says it all
        return __version__
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "", ""
    return f"{__version__}+{rev}{'.dirty' if dirty else ''}" if rev else __version__


def _dist():
    """(rank, world size) under torchrun, else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if os.environ.get("LOCAL_RANK") and _cuda() else "gloo")
    return dist.get_rank(), world


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _save_checkpoint(
    ws: Workspace, model, optimizer, epoch: int, best: float | None, config: dict
) -> str:
    import torch

    buf = io.BytesIO()
    state = (model.module if hasattr(model, "module") else model).state_dict()
    torch.save(
        {
            "model": state,
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_val_miou": best,
            "config": config,
        },
        buf,
    )
    return ws.store.put_blob(buf.getvalue())


def load_checkpoint(ws: Workspace, digest: str) -> dict:
    import torch

    return torch.load(io.BytesIO(ws.store.get_blob(digest)), map_location="cpu", weights_only=False)


def build_for(config: dict, num_classes: int):
    from datatool.model import Preset, build_model

    preset = Preset(
        **{
            k: (tuple(v) if isinstance(v, list) else v)
            for k, v in config.items()
            if k in Preset.__dataclass_fields__
        }
    )
    return build_model(num_classes, preset)


def train(
    ws: Workspace,
    split: str | None = None,
    fold: int | None = None,
    config: TrainConfig | None = None,
    resume: int | None = None,
    progress: Callable[[dict], None] | None = None,
    cv_group: str | None = None,
) -> dict:
    """Train one model; returns the run's summary. ``resume`` continues run RUN."""
    import torch
    import torch.nn.functional as F

    protocol = load_protocol(ws.protocol_name)
    classes = ["background"] + [s.name for s in protocol.structures]
    k = len(classes)
    rank, world = _dist()
    if resume is not None:
        with ws.session() as s:
            run = s.get(Run, resume)
            if run is None:
                raise DatatoolError(f"no run {resume}")
            if run.last_checkpoint is None:
                raise DatatoolError(f"run {resume} has no checkpoint to resume from")
            split_name = s.get(Split, run.split_id).name
            conf, fold, cv_group = dict(run.config), run.fold, run.cv_group
            device_name, run_id = conf.get("device", "auto"), run.id
            checkpoint = load_checkpoint(ws, run.last_checkpoint)
            start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best_val_miou"]
            best_epoch, best_ckpt = run.best_epoch, run.best_checkpoint
    else:
        if split is None:
            raise UsageError("--split NAME is needed (or --resume RUN)")
        config = config or TrainConfig()
        conf = config.resolved()
        device_name, split_name, checkpoint = config.device, split, None
        start_epoch, best, best_epoch, best_ckpt = 0, None, None, None
    device = resolve_device(device_name)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    split_row, train_items = split_items(ws, split_name, "train", fold)
    _, val_items = split_items(ws, split_name, "val", fold)
    if conf.get("max_images"):
        train_items = Items(
            *(
                getattr(train_items, f)[: conf["max_images"]]
                for f in ("image_ids", "image_hashes", "mask_hashes")
            )
        )
    if not train_items.image_ids:
        raise DatatoolError(f"split {split_name!r} has no training images for this fold")
    lut = class_lut(protocol)
    resize = tuple(conf["resize"])
    train_x, train_y = load_arrays(ws, train_items, resize, lut)
    val_x, val_y = load_arrays(ws, val_items, resize, lut) if val_items.image_ids else (None, None)

    torch.manual_seed(conf["seed"])
    model = build_for(conf, k)
    if conf.get("pretrained") and checkpoint is None:
        from datatool.model import load_torchvision_resnet50

        load_torchvision_resnet50(model, conf["pretrained"])
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
    model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=conf["lr"])
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])

    if resume is None and rank == 0:
        conf["device"] = device_name
        with ws.session() as s:
            run = Run(
                split_id=split_row.id,
                split_hash=split_row.content_hash,
                fold=fold,
                cv_group=cv_group,
                preset=conf["preset"],
                config=conf,
                seed=conf["seed"],
                code_version=code_version(),
                device=_device_text(device, world),
                status="running",
            )
            s.add(run)
            s.flush()
            run_id = run.id
            audit(s, "train", "run", run=run_id, split=split_name, fold=fold, preset=conf["preset"])
    elif resume is None:
        run_id = -1
    if resume is not None and rank == 0:
        with ws.session() as s:
            s.get(Run, run_id).status = "running"

    gpu_x = torch.as_tensor(train_x).to(device)  # held on the device, augmented there
    gpu_y = torch.as_tensor(train_y).to(device)
    n, batch, crop = len(train_x), conf["batch"], conf["crop"]
    # one process: every sample once per epoch. Under DDP every rank must take the same
    # number of full steps (an empty step would leave the others waiting in all-reduce), so
    # ranks take batches round the shuffled order, wrapping at its end.
    steps = max(1, math.ceil(n / batch)) if world == 1 else max(1, n // (batch * world))
    try:
        for epoch in range(start_epoch, conf["epochs"]):
            started = time.perf_counter()
            model.train()
            # every random draw of an epoch (order, angles, dropout) comes from seeds of
            # (seed, epoch): a resumed run repeats exactly what the uninterrupted one did
            torch.manual_seed(conf["seed"] * 100_003 + epoch)
            gen = torch.Generator().manual_seed(conf["seed"] * 100_003 + epoch)
            order = torch.randperm(n, generator=gen)
            angles_all = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(conf["rotation"])
            total, count = 0.0, 0
            for step in range(steps):
                if world == 1:
                    idx = order[step * batch : (step + 1) * batch]
                else:
                    idx = order[(torch.arange(batch) + (step * world + rank) * batch) % n]
                x, y = to_input(
                    gpu_x[idx.to(device)], crop, angles_all[idx].to(device), gpu_y[idx.to(device)]
                )
                if device.type == "cuda":
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(device):
                    out = model(x)
                    if isinstance(out, tuple):
                        loss = F.cross_entropy(out[0].float(), y) + AUX_WEIGHT * F.cross_entropy(
                            out[1].float(), y
                        )
                    else:
                        loss = F.cross_entropy(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
                if progress and rank == 0:
                    progress(
                        {
                            "epoch": epoch + 1,
                            "epochs": conf["epochs"],
                            "step": step + 1,
                            "steps": steps,
                            "loss": float(loss.detach()),
                        }
                    )
            train_loss = total / max(count, 1)
            if rank != 0:
                continue
            net = model.module if hasattr(model, "module") else model
            val = (
                evaluate(net, val_x, val_y, crop, device, k)
                if val_x is not None
                else {"loss": None, "miou": None, "miou_per_image": None}
            )
            improved = val["miou"] is not None and (best is None or val["miou"] > best)
            if improved or (val_x is None):
                best, best_epoch = val["miou"], epoch
            last = _save_checkpoint(ws, model, optimizer, epoch, best, conf)
            if improved or val_x is None:
                best_ckpt = last
            with ws.session() as s:
                run = s.get(Run, run_id)
                s.add(
                    RunEpoch(
                        run_id=run_id,
                        epoch=epoch,
                        train_loss=train_loss,
                        val_loss=val["loss"],
                        val_miou=val["miou"],
                        val_miou_per_image=val["miou_per_image"],
                        seconds=time.perf_counter() - started,
                    )
                )
                run.epochs_done, run.last_checkpoint = epoch + 1, last
                run.best_epoch, run.best_val_miou, run.best_checkpoint = best_epoch, best, best_ckpt
            if progress:
                progress(
                    {
                        "epoch": epoch + 1,
                        "epochs": conf["epochs"],
                        "train_loss": train_loss,
                        "val_loss": val["loss"],
                        "val_miou": val["miou"],
                        "done": True,
                    }
                )
    except BaseException:
        if rank == 0 and run_id > 0:
            with ws.session() as s:
                s.get(Run, run_id).status = "interrupted"
        raise
    if rank == 0:
        with ws.session() as s:
            run = s.get(Run, run_id)
            run.status, run.finished_at = "done", utcnow()
        return run_summary(ws, run_id)
    return {"run": None, "rank": rank}


def _device_text(device, world: int) -> str:
    import torch

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine()
    )
    return f"{device.type}:{name}" + (f" x{world}" if world > 1 else "")


def train_cv(
    ws: Workspace,
    split: str,
    folds: int,
    config: TrainConfig,
    progress: Callable[[dict], None] | None = None,
) -> list[dict]:
    """One run per fold of the split's cross-validation, grouped under one cv_group."""
    with ws.session() as s:
        row = s.scalar(select(Split).where(Split.name == split))
        if row is None:
            raise DatatoolError(f"no split {split!r}")
        available = row.folds
    if available < 2:
        raise DatatoolError(
            f"split {split!r} has no cross-validation folds; create one with --folds 5"
        )
    if folds != available:
        raise UsageError(f"split {split!r} has {available} folds: use --cv {available}")
    group = f"cv-{split}-{int(time.time())}"
    return [
        train(ws, split, fold=f, config=config, progress=progress, cv_group=group)
        for f in range(folds)
    ]


def run_summary(ws: Workspace, run_id: int) -> dict:
    with ws.session() as s:
        run = s.get(Run, run_id)
        if run is None:
            raise DatatoolError(f"no run {run_id}: 'datatool runs' lists them")
        split = s.get(Split, run.split_id)
        history = [
            {
                "epoch": e.epoch,
                "train_loss": e.train_loss,
                "val_loss": e.val_loss,
                "val_miou": e.val_miou,
                "val_miou_per_image": e.val_miou_per_image,
                "seconds": e.seconds,
            }
            for e in run.epochs
        ]
        return {
            "run": run.id,
            "split": split.name,
            "split_hash": run.split_hash,
            "fold": run.fold,
            "cv_group": run.cv_group,
            "preset": run.preset,
            "seed": run.seed,
            "config": run.config,
            "code_version": run.code_version,
            "device": run.device,
            "status": run.status,
            "epochs_done": run.epochs_done,
            "best_epoch": run.best_epoch,
            "best_val_miou": run.best_val_miou,
            "best_checkpoint": run.best_checkpoint,
            "last_checkpoint": run.last_checkpoint,
            "created": run.created_at.isoformat(timespec="seconds"),
            "history": history,
        }


def list_runs(ws: Workspace) -> list[dict]:
    with ws.session() as s:
        rows = s.execute(
            select(Run, Split.name).join(Split, Run.split_id == Split.id).order_by(Run.id)
        ).all()
        return [
            {
                "run": r.id,
                "split": name,
                "fold": r.fold,
                "preset": r.preset,
                "status": r.status,
                "epochs": r.epochs_done,
                "best_epoch": r.best_epoch,
                "best_val_miou": r.best_val_miou,
                "device": r.device,
                "created": r.created_at.isoformat(timespec="seconds"),
            }
            for r, name in rows
        ]


__all__ = ["TrainConfig", "list_runs", "run_summary", "train", "train_cv"]
