"""The Triplet Attention Net for segmentation: a (dilated) ResNet-50 + triplet attention
backbone, a pyramid-pooling head (bins 1, 2, 3, 6) and an optional auxiliary head on layer3,
with one output class for the background and one per structure of the label protocol.

The ``cpu`` preset adds one thing the study's network does not have: a light low-level skip
(:class:`SkipDecoder`, DeepLabv3+-style), which brings layer1's stride-4 features back in
before the classifier so that a 7 mm artery or the nerve survive the upsampling of a thin,
small-data model. Losses: cross-entropy (the study's), soft Dice, or both
(:func:`segmentation_loss`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import ResNet


@dataclass(frozen=True)
class Preset:
    """Everything about the network and the recipe that a preset fixes."""

    layers: tuple[int, int, int, int]
    width: int
    output_stride: int
    aux: bool
    resize: tuple[int, int]  # (height, width) before the crop
    crop: int
    epochs: int
    batch: int
    lr: float
    rotation: float  # degrees: each sample is rotated by an angle drawn in [-r, r]
    head_channels: int
    # Added after the study's recipe; the defaults are the study's, so run configs recorded
    # before these fields existed come back as they were trained.
    decoder: int = 0  # channels of the low-level skip decoder (SkipDecoder); 0: none
    loss: str = "ce"  # one of LOSSES
    schedule: str = "constant"  # learning rate over the epochs: one of SCHEDULES
    flip: bool = False  # mirror a random half of the training samples left-right
    # click-guided (train --interactive): 2 extra input channels per structure, the
    # positive and negative clicks (datatool.learning.clicks), through their own stem conv
    interactive: bool = False
    # an interactive network with a decoder: the click maps also enter the decoder, at its
    # stride-4 grid (max-pooled), so a click can move a boundary where it was placed
    click_decoder: bool = False
    # which structure of a training sample gets the simulated clicks: "uniform" (any it holds,
    # alike; runs recorded before the field) or "errors" (drawn in proportion to how many
    # pixels the network's own prediction gets wrong on each: the muscles' shared border)
    click_choice: str = "uniform"
    # the share of an interactive run's training samples drawn with no clicks (so the same
    # network keeps drafting automatically): 0.5 for runs recorded before the field
    auto_share: float = 0.5
    val_every: int = 1  # validate every k-th epoch (and the last): cheaper epochs
    selection: str = "miou"  # the checkpoint kept: best validation mIoU, or "min": best
    # lowest per-structure IoU (no structure left behind, the nerve included)
    ema: float = 0.0  # decay of a moving average of the weights, validated and kept; 0: none
    # augmentation beyond the study's rotation (0: none): each sample zoomed by a factor drawn
    # log-uniformly in [1/(1+zoom), 1+zoom] about its centre (patients and depth settings
    # differ in scale), and its brightness by a gain in [1-gain, 1+gain] and a gamma in
    # [1/(1+gain), 1+gain] (gain and time-gain compensation differ between scanners)
    zoom: float = 0.0
    gain: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preset:
        """The preset's fields of ``d`` (a run's config: other keys are ignored; lists, as
        JSON keeps tuples, become tuples again)."""
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in d.items()
            if k in cls.__dataclass_fields__
        }
        return cls(**fields)


PRESETS = {
    # the study's recipe: ResNet-50 + TA, PSP head, resize 480x640, crop 473, Adam 5e-5,
    # batch 8, 100 epochs, random rotation
    "paper": Preset(
        layers=(3, 4, 6, 3),
        width=64,
        output_stride=16,
        aux=True,
        resize=(480, 640),
        crop=473,
        epochs=100,
        batch=8,
        lr=5e-5,
        rotation=15.0,
        head_channels=512,
    ),
    # the same architecture, thin and shallow, on small images: a CPU trains it in a minute
    "tiny": Preset(
        layers=(1, 1, 1, 1),
        width=8,
        output_stride=8,
        aux=False,
        resize=(240, 320),
        crop=224,
        epochs=30,
        batch=8,
        lr=3e-3,
        rotation=15.0,
        head_channels=32,
    ),
    # for a lab without a GPU (measured in issues 16 and 23): thin, a low-level skip, the
    # whole half-size image, a border-weighted cross-entropy + soft Dice, a cosine schedule,
    # left-right flips, zoom and brightness augmentation, 80 epochs validated every second
    # (issue 23, two demo datasets: 50 epochs each validated with ce+dice took 317-352 s
    # quiet, lowest ratio 0.838; 80 with border+dice 507-572 s, 0.881; a moving average of
    # the weights (--ema 0.99) did not help: 0.862; zoom 0.15 and gain 0.2: the nerve's
    # drafts 0.90-0.91 -> 0.93-0.94, the artery's spread 0.14 -> 0.07, the rest within noise)
    "cpu": Preset(
        layers=(1, 1, 1, 1),
        width=16,
        output_stride=16,
        aux=False,
        resize=(240, 320),
        crop=320,
        epochs=80,
        batch=4,
        lr=3e-3,
        rotation=15.0,
        head_channels=64,
        decoder=32,
        loss="border+dice",
        schedule="cosine",
        flip=True,
        val_every=2,
        zoom=0.15,
        gain=0.2,
    ),
}


class PyramidPooling(nn.Module):
    def __init__(self, in_channels: int, bins=(1, 2, 3, 6), reduction: int | None = None):
        super().__init__()
        reduction = reduction or in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(b),
                nn.Conv2d(in_channels, reduction, 1, bias=False),
                nn.BatchNorm2d(reduction),
                nn.ReLU(inplace=True),
            )
            for b in bins
        )
        self.out_channels = in_channels + reduction * len(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat(
            [x]
            + [
                F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False)
                for stage in self.stages
            ],
            1,
        )


def _classifier(in_channels: int, mid: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
        nn.Conv2d(mid, num_classes, 1),
    )


class SkipDecoder(nn.Module):
    """A light low-level skip (DeepLabv3+'s decoder, thinned): the head's features, upsampled
    to layer1's stride-4 grid, concatenated with a 1x1 projection of layer1, two 3x3 convs
    and the classifier. Not in the study's network: the ``cpu`` preset's addition."""

    def __init__(
        self,
        low_channels: int,
        high_channels: int,
        channels: int,
        num_classes: int,
        click_channels: int = 0,
    ):
        super().__init__()
        low = max(channels // 2, 8)
        self.click_channels = click_channels
        self.project = nn.Sequential(
            nn.Conv2d(low_channels, low, 1, bias=False),
            nn.BatchNorm2d(low),
            nn.ReLU(inplace=True),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(high_channels + low + click_channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(
        self, high: torch.Tensor, low: torch.Tensor, clicks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``clicks``: the click maps at the input's size (a decoder with click channels;
        None: no clicks, zeros)."""
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        parts = [high, self.project(low)]
        if self.click_channels:
            parts.append(
                low.new_zeros(low.shape[0], self.click_channels, *low.shape[-2:])
                if clicks is None
                else F.adaptive_max_pool2d(clicks, low.shape[-2:])
            )
        return self.classifier(self.fuse(torch.cat(parts, 1)))


class TripletAttentionNet(nn.Module):
    def __init__(
        self,
        num_classes: int,
        layers=(3, 4, 6, 3),
        width: int = 64,
        output_stride: int = 16,
        aux: bool = True,
        head_channels: int = 512,
        decoder: int = 0,
        click_channels: int = 0,
        click_decoder: bool = False,
    ):
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError("output_stride must be 8 or 16")
        self.backbone = ResNet(layers, width, output_stride=output_stride, num_classes=None)
        channels = self.backbone.out_channels
        self.ppm = PyramidPooling(channels, reduction=max(channels // 4, 8))
        head = _classifier(self.ppm.out_channels, head_channels, num_classes, 0.1)
        # with a decoder, the head's last layer (the classifier) moves into the decoder
        self.head = nn.Sequential(*list(head)[:-1]) if decoder else head
        self.decoder = (
            SkipDecoder(
                width * 4,
                head_channels,
                decoder,
                num_classes,
                click_channels if click_decoder else 0,
            )
            if decoder
            else None
        )
        self.aux_head = (
            _classifier(channels // 2, max(head_channels // 2, 8), num_classes, 0.1)
            if aux
            else None
        )
        self.num_classes = num_classes
        # an interactive network: the click maps get their own stem convolution, added to
        # the image's (RITM's "Conv1S"), so a pretrained backbone loads unchanged; zero at
        # first, so the untrained click path does not disturb the image's features
        self.click_channels = click_channels
        self.click_stem = (
            nn.Conv2d(click_channels, width, 7, stride=2, padding=3, bias=False)
            if click_channels
            else None
        )
        if self.click_stem is not None:
            nn.init.zeros_(self.click_stem.weight)
        if self.decoder is not None and self.decoder.click_channels:
            fuse = self.decoder.fuse[0]
            assert isinstance(fuse, nn.Conv2d)
            with torch.no_grad():  # the decoder's click inputs likewise start at zero
                fuse.weight[:, -self.decoder.click_channels :].zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits at the input's size; in training with the auxiliary head, (main, aux).
        An interactive network takes 3 + click_channels input channels (the image, then the
        click maps) or the image's 3 alone: no clicks, an automatic draft."""
        size = x.shape[-2:]
        extra = clicks = None
        if x.shape[1] != 3:
            if self.click_stem is None or x.shape[1] != 3 + self.click_channels:
                raise ValueError(
                    "the network takes 3 input channels"
                    + (f" or {3 + self.click_channels}" if self.click_stem is not None else "")
                    + f", not {x.shape[1]}"
                )
            x, clicks = x[:, :3], x[:, 3:]
            extra = self.click_stem(clicks)
        x1, x3, x4 = self.backbone.stages(x, extra)
        out = self.head(self.ppm(x4))
        if self.decoder is not None:
            out = self.decoder(out, x1, clicks)
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(x3), size=size, mode="bilinear", align_corners=False)
            return out, aux
        return out


AUX_WEIGHT = 0.4  # the auxiliary head's share of the loss (PSPNet's)
LOSSES = ("ce", "ce+dice", "dice", "border+dice")
SELECTIONS = ("miou", "min")
BORDER_WEIGHT, BORDER_PX = 3.0, 2  # border+dice: pixels this close to a class border count x3
SCHEDULES = ("constant", "cosine")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - the mean over the structures (classes 1..K-1, background left out) of the soft
    Dice of the softmax against the one-hot target, each summed over the whole batch:
    (2 sum p g + s) / (sum p + sum g + s). A structure absent from the batch and not
    predicted scores about 1 (``smooth``), so it neither helps nor hurts."""
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (total + smooth)
    return 1 - dice[1:].mean()


def border_weights(target: torch.Tensor, px: int = BORDER_PX, weight: float = BORDER_WEIGHT):
    """Per pixel (B x H x W): ``weight`` within ``px`` pixels of a border between two
    classes (the muscles' shared border, a structure's edge), else 1."""
    y = target.unsqueeze(1).float()
    k = 2 * px + 1
    high = F.max_pool2d(y, k, stride=1, padding=px)
    low = -F.max_pool2d(-y, k, stride=1, padding=px)
    return torch.where((high != low).squeeze(1), weight, 1.0)


def _one_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits.float(), target)
    if loss == "ce+dice":
        return F.cross_entropy(logits.float(), target) + soft_dice_loss(logits, target)
    if loss == "dice":
        return soft_dice_loss(logits, target)
    if loss == "border+dice":
        w = border_weights(target)
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        return (w * ce).sum() / w.sum() + soft_dice_loss(logits, target)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")


def segmentation_loss(
    out: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    target: torch.Tensor,
    aux_weight: float = AUX_WEIGHT,
    loss: str = "ce",
) -> torch.Tensor:
    """The loss of the logits (in float32) against class indices: cross-entropy (``ce``, the
    study's), soft Dice (``dice``, :func:`soft_dice_loss`) or their sum (``ce+dice``), or
    Dice plus a cross-entropy that weighs the pixels near a border between classes more
    (``border+dice``, :func:`border_weights`); with
    the auxiliary head's output as well (the network in training), plus ``aux_weight`` times
    its own."""
    if isinstance(out, tuple):
        main, aux = out
        return _one_loss(main, target, loss) + aux_weight * _one_loss(aux, target, loss)
    return _one_loss(out, target, loss)


def learning_rate(preset: Preset, epoch: int) -> float:
    """The learning rate of ``epoch`` (counted from 0): the preset's, constant, or falling
    along a half cosine from it to 1 % of it over the epochs (``cosine``). A function of the
    epoch alone, so a resumed run follows the same schedule."""
    if preset.schedule == "constant":
        return preset.lr
    if preset.schedule == "cosine":
        t = epoch / max(preset.epochs - 1, 1)
        return preset.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {preset.schedule!r}")


def build_model(
    num_classes: int,
    preset: str | Preset = "paper",
    output_stride: int | None = None,
    aux: bool | None = None,
) -> TripletAttentionNet:
    p = PRESETS[preset] if isinstance(preset, str) else preset
    return TripletAttentionNet(
        num_classes,
        p.layers,
        p.width,
        output_stride or p.output_stride,
        p.aux if aux is None else aux,
        p.head_channels,
        p.decoder,
        2 * (num_classes - 1) if p.interactive else 0,
        p.interactive and p.click_decoder,
    )


def load_torchvision_resnet50(model: TripletAttentionNet, path: Path | str) -> dict:
    """Load ImageNet weights saved from torchvision's ``resnet50().state_dict()`` into the
    backbone (nothing is downloaded). The classifier (fc) is dropped; the triplet attention
    modules, which torchvision does not have, keep their initialisation. Returns counts."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    own = model.backbone.state_dict()
    unknown = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in state if k in own and own[k].shape != state[k].shape)
    if unknown or mismatched:
        raise ValueError(
            f"{path}: not a torchvision resnet50 state dict for this backbone "
            f"(unknown {unknown[:3]}, shape mismatch {mismatched[:3]})"
        )
    result = model.backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if ".ta." not in k]
    if missing:
        raise ValueError(f"{path}: missing backbone weights {missing[:3]}")
    return {"loaded": len(state), "kept_initialised": len(result.missing_keys)}
