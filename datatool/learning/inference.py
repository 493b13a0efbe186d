"""Drafts from a trained run: the model applied to whole images, for raters (pre-labelling,
the Label Studio ML backend), for reviewers (QA) and for choosing what to label next.

Training and the study's scores look at the preset's frame: the image resized to the preset's
size and centre-cropped. A draft must cover the whole image, so here the image is resized to
the same size (the scale the model learned; bilinear with antialiasing, as the training images
were resized), padded with black to a multiple of the network's stride (the network is fully
convolutional), run once, the padding cut off again, and the class probabilities resized back
to the image's own size (bilinear) before the arg max. Nothing near the edge of the fan is left
undrafted. A preset whose size is a multiple of the stride and whose crop keeps the whole
image (``cpu``) is run on exactly what it was trained on: padding changes what the pyramid
pooling sees (measured in issue 16: adductor magnus IoU 0.76 without, 0.68 with 16 rows).

Per image a :class:`Draft` holds the label map in protocol values at the image's own size,
its ``score`` (the mean of the highest class probability over the pixels drafted as a
structure; 0 when nothing is drafted) and its ``entropy`` (the mean predictive entropy of the
softmax over the image, in nats: high where the model hesitates).

:func:`ensure_drafts` stores drafts as annotations of rater ``model:RUN`` (``labels.drafts``),
once per image and checkpoint, for the checks that compare labels with the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from datatool.core.catalogue import Image, audit
from datatool.core.errors import DatatoolError
from datatool.core.protocol import load_protocol
from datatool.core.workspace import Workspace
from datatool.labels.annotations import store_annotations
from datatool.labels.drafts import draft_ref, drafts_of, model_rater, model_rater_name
from datatool.learning.data import GRAY_MEAN, GRAY_STD
from datatool.learning.device import autocast, channels_last, resolve_device
from datatool.learning.options import CheckpointChoice, DeviceChoice, choice

PAD_MULTIPLE = 32  # the backbone's largest stride: any input that is a multiple of it works
# drafts (prelabel, serve, qa, next, export itksnap --prefill, score's whole image) average
# the image's and its left-right mirror's probabilities: issue 23 measured +0.00 to +0.025 of
# the ratio to the raters per structure on two demo datasets, never less
DRAFT_FLIPS = True


@dataclass
class RunModel:
    """A run's network, loaded for inference on a device."""

    run_id: int
    split: str
    split_hash: str
    preset: str
    checkpoint: str  # best or last
    config: dict = field(repr=False)
    network: Any = field(repr=False)
    device: Any
    values: np.ndarray = field(repr=False)  # class index -> protocol label value (0: none)
    structures: tuple[str, ...] = ()  # class index - 1 -> protocol structure name
    flips: bool = DRAFT_FLIPS  # test-time flips: average the mirrored image's probabilities in

    @property
    def interactive(self) -> bool:
        """Trained with clicks (``train --interactive``): :func:`datatool.learning.interactive.
        redraw` takes a rater's points; without any it drafts like any run."""
        return bool(self.config.get("interactive", False))

    @property
    def resize(self) -> tuple[int, int]:
        height, width = self.config["resize"]
        return int(height), int(width)

    @property
    def pad_multiple(self) -> int:
        """What the input is padded to a multiple of: the network's output stride (its
        deepest downsampling; the dilated stages keep it), at most :data:`PAD_MULTIPLE`. The
        cpu preset's 240 x 320 is a multiple of its 16, so it runs unpadded, as trained."""
        return min(int(self.config.get("output_stride", PAD_MULTIPLE)), PAD_MULTIPLE)

    @property
    def model_version(self) -> str:
        """How a draft names its origin (Label Studio's ``model_version``)."""
        return model_version_of(self.run_id, self.split_hash)


def model_version_of(run_id: int, split_hash: str) -> str:
    """The ``model_version`` of a run's drafts, from the catalogue alone (no network loaded)."""
    return f"datatool-run-{run_id}-split-{split_hash[:12]}"


@dataclass
class Draft:
    labels: np.ndarray  # H x W uint8 protocol values, the image's own size
    score: float  # mean max-softmax over the drafted foreground; 0 when none is drafted
    entropy: float  # mean predictive entropy over the image (nats)
    probabilities: np.ndarray | None = field(default=None, repr=False)  # C x H x W, when asked


def load_run_model(
    ws: Workspace,
    run_id: int,
    checkpoint: str = CheckpointChoice.best,
    device: str = DeviceChoice.auto,
    flips: bool = DRAFT_FLIPS,
) -> RunModel:
    """A run's best (or last) checkpoint, on ``device``, in evaluation mode; ``flips`` (the
    default for drafts, :data:`DRAFT_FLIPS`): its drafts average the image's and its
    left-right mirror's probabilities (test-time flips; the study's frame keeps its recipe)."""
    from datatool.learning.training import build_for, load_checkpoint, run_summary

    checkpoint = choice(CheckpointChoice, checkpoint, "--checkpoint")
    run = run_summary(ws, run_id)
    digest = run.best_checkpoint if checkpoint == CheckpointChoice.best else run.last_checkpoint
    if digest is None:
        raise DatatoolError(
            f"run {run_id} has no {checkpoint} checkpoint yet (still in its first epoch, or it "
            f"failed before one): see 'datatool runs'"
        )
    protocol = load_protocol(ws.protocol_name)
    values = np.array([0] + [s.value for s in protocol.structures], np.uint8)
    dev = resolve_device(device)
    network = build_for(run.config, len(values))
    network.load_state_dict(load_checkpoint(ws, digest)["model"])
    network = channels_last(network.to(dev).eval(), dev)
    return RunModel(
        run_id=run.run,
        split=run.split,
        split_hash=run.split_hash,
        preset=run.preset,
        checkpoint=str(checkpoint),
        config=run.config,
        network=network,
        device=dev,
        values=values,
        structures=tuple(s.name for s in protocol.structures),
        flips=flips,
    )


def _batch_input(images: Sequence[np.ndarray], size: tuple[int, int], multiple: int = PAD_MULTIPLE):
    """uint8 images of any sizes -> a normalised B x 3 x H' x W' batch at the model's scale,
    padded with black to a multiple of ``multiple`` (:attr:`RunModel.pad_multiple`)."""
    import torch
    import torch.nn.functional as F

    h, w = size
    ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    batch = torch.zeros(len(images), 1, ph, pw)
    for k, image in enumerate(images):
        x = torch.as_tensor(np.ascontiguousarray(image)).float().div_(255.0)[None, None]
        if tuple(x.shape[-2:]) != (h, w):  # antialiased, as PIL resized the training images
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        batch[k, :, :h, :w] = x[0]
    return ((batch - GRAY_MEAN) / GRAY_STD).expand(-1, 3, -1, -1)


def _probabilities(model: RunModel, images: Sequence[np.ndarray]):
    """Class probabilities (B x C x h x w, the model's scale, padding cut off) of a batch."""
    import torch

    h, w = model.resize
    x = _batch_input(images, (h, w), model.pad_multiple)
    x = channels_last(x.to(model.device), model.device)
    with autocast(model.device):
        logits = model.network(x)
    return torch.softmax(logits.float()[:, :, :h, :w], dim=1)


def predict(
    model: RunModel,
    images: Sequence[np.ndarray],
    batch: int = 8,
    keep_probabilities: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[Draft]:
    """Whole-image drafts of 2-D uint8 images (any sizes), ``batch`` at a time (with the
    model's ``flips``, each image is run twice: as it is and mirrored left-right)."""
    import torch
    import torch.nn.functional as F

    if batch < 1:
        raise ValueError("batch must be >= 1")
    drafts: list[Draft] = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            probs = _probabilities(model, chunk)
            if model.flips:  # the mirror's probabilities, mirrored back, averaged in
                mirrored = [np.ascontiguousarray(image[:, ::-1]) for image in chunk]
                probs = (probs + _probabilities(model, mirrored).flip(-1)) / 2
            for image, p in zip(chunk, probs):
                rows, cols = image.shape
                p = F.interpolate(p[None], size=(rows, cols), mode="bilinear",
                                  align_corners=False)[0]  # fmt: skip
                drafts.append(_draft(p, model.values, keep_probabilities))
            if progress:
                progress(len(drafts), len(images))
    return drafts


def _draft(p, values: np.ndarray, keep: bool) -> Draft:
    """One image's draft from its class probabilities (C x H x W, on any device)."""
    import torch

    top, classes = p.max(dim=0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0)
    foreground = classes > 0
    score = float(top[foreground].mean()) if bool(foreground.any()) else 0.0
    return Draft(
        labels=values[classes.to(torch.uint8).cpu().numpy()],
        score=score,
        entropy=float(entropy.mean()),
        probabilities=p.cpu().numpy() if keep else None,
    )


STORE_CHUNK = 64  # images read, drafted and stored at a time (memory stays flat)


@dataclass
class DraftsStored:
    """What :func:`ensure_drafts` did: every image asked for has a draft of the run's
    checkpoint in ``annotations`` (image id -> annotation id of rater model:RUN)."""

    run: int
    rater: str
    checkpoint: str  # store hash of the checkpoint the drafts come from
    predicted: int  # images drafted now
    reused: int  # images that had a draft of this checkpoint already
    annotations: dict[int, int] = field(repr=False)


def ensure_drafts(
    ws: Workspace,
    run_id: int,
    image_ids: Sequence[int],
    checkpoint: str = CheckpointChoice.best,
    device: str = DeviceChoice.auto,
    batch: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> DraftsStored:
    """Whole-image drafts of the run for these images, stored as annotations of rater
    model:RUN (source_ref ``draft of run RUN checkpoint DIGEST12``). Images that have a draft
    of the same checkpoint are not predicted again; the model is loaded only when one lacks it."""
    from datatool.learning.training import run_summary

    checkpoint = choice(CheckpointChoice, checkpoint, "--checkpoint")
    run = run_summary(ws, run_id)
    digest = run.best_checkpoint if checkpoint == CheckpointChoice.best else run.last_checkpoint
    if digest is None:
        raise DatatoolError(
            f"run {run_id} has no {checkpoint} checkpoint yet (still in its first epoch, or it "
            f"failed before one): see 'datatool runs'"
        )
    wanted = sorted({int(i) for i in image_ids})
    with ws.session() as s:
        have = {i: a.id for i, a in drafts_of(s, run_id, wanted, checkpoint=digest).items()}
    todo = [i for i in wanted if i not in have]
    if todo:
        model = load_run_model(ws, run_id, checkpoint=checkpoint, device=device)
        protocol = load_protocol(ws.protocol_name)
        ref = draft_ref(run_id, digest)
        for start in range(0, len(todo), STORE_CHUNK):
            chunk = todo[start : start + STORE_CHUNK]
            with ws.session() as s:
                images = list(
                    s.scalars(select(Image).where(Image.id.in_(chunk)).order_by(Image.id))
                )
                arrays = [ws.store.get_array(image.store_hash) for image in images]
            drafts = predict(model, arrays, batch=batch)
            with ws.session() as s:
                rater = model_rater(s, run_id)
                assert rater is not None
                stored = store_annotations(
                    s,
                    ws.store,
                    rater,
                    [
                        (image, d.labels, model_rater_name(run_id), ref)
                        for image, d in zip(images, drafts)
                    ],
                    protocol,
                )
                have.update((image.id, st.annotation_id) for image, st in zip(images, stored))
            if progress:
                progress(start + len(chunk), len(todo))
        with ws.session() as s:
            audit(
                s,
                "qa",
                "drafts",
                run=run_id,
                checkpoint=digest[:12],
                images=len(todo),
            )
    return DraftsStored(
        run=run_id,
        rater=model_rater_name(run_id),
        checkpoint=digest,
        predicted=len(todo),
        reused=len(wanted) - len(todo),
        annotations=have,
    )


__all__ = [
    "DRAFT_FLIPS",
    "PAD_MULTIPLE",
    "Draft",
    "DraftsStored",
    "RunModel",
    "ensure_drafts",
    "load_run_model",
    "predict",
]
