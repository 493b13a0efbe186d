"""The Triplet Attention Net: ResNet-50 with triplet attention in every bottleneck and a
pyramid-pooling head, for semantic segmentation. Depends on torch only: it takes tensors and
returns tensors, so ``datatool train``, a notebook or ``torchrun`` can all drive it."""

from .network import (
    AUX_WEIGHT,
    LOSSES,
    PRESETS,
    SCHEDULES,
    SELECTIONS,
    Preset,
    SkipDecoder,
    TripletAttentionNet,
    border_weights,
    build_model,
    learning_rate,
    load_torchvision_resnet50,
    segmentation_loss,
    soft_dice_loss,
)
from .resnet import ResNet, resnet50
from .triplet_attention import AttentionGate, TripletAttention, ZPool

__all__ = [
    "AUX_WEIGHT",
    "LOSSES",
    "PRESETS",
    "SCHEDULES",
    "SELECTIONS",
    "AttentionGate",
    "Preset",
    "ResNet",
    "SkipDecoder",
    "TripletAttention",
    "TripletAttentionNet",
    "ZPool",
    "border_weights",
    "build_model",
    "learning_rate",
    "load_torchvision_resnet50",
    "resnet50",
    "segmentation_loss",
    "soft_dice_loss",
]
