"""The fixed choices of the split and model commands, as enums (Typer lists them in --help).

Kept apart from the services, with no imports beyond the standard library, so that the CLI
can declare its options without loading numpy, SQLAlchemy or torch. Each enum is a StrEnum:
library callers may pass the plain strings as well.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from datatool.core.errors import UsageError


class PresetName(StrEnum):
    """The network and recipe presets of ``datatool.model.PRESETS`` (a test keeps them equal)."""

    paper = "paper"  # the study's recipe: ResNet-50 + triplet attention, 473x473, 100 epochs
    tiny = "tiny"  # the same architecture, thin and shallow, on small images: a CPU minute
    cpu = "cpu"  # for a lab without a GPU: thin, a low-level skip, cross-entropy + Dice


DEFAULT_PRESET = PresetName.paper


class LossName(StrEnum):
    """The training losses of ``datatool.model.LOSSES`` (a test keeps them equal)."""

    ce = "ce"  # cross-entropy: the study's
    ce_dice = "ce+dice"  # cross-entropy plus soft Dice over the structures
    dice = "dice"  # soft Dice over the structures alone
    border_dice = "border+dice"  # ce weighted x3 near borders between classes, plus Dice


class SelectionName(StrEnum):
    """The checkpoint selection rules of ``datatool.model.SELECTIONS`` (a test keeps them equal)."""

    miou = "miou"  # the best validation mIoU: the study's
    min = "min"  # the best lowest per-structure IoU: no structure (the nerve) left behind


class DeviceChoice(StrEnum):
    auto = "auto"  # CUDA when available, else the CPU
    cpu = "cpu"
    cuda = "cuda"


class Subset(StrEnum):
    """The sets of a split (``SplitMember.subset``)."""

    train = "train"
    val = "val"
    test = "test"


class ScoreSet(StrEnum):
    """The sets a run can be scored on."""

    test = "test"
    val = "val"  # the run's validation set, or its fold


class CheckpointChoice(StrEnum):
    best = "best"  # selected on validation mIoU
    last = "last"


class Stratify(StrEnum):
    sex = "sex"  # balance the sets by patient sex
    side = "side"  # by the sides a patient has images of


class ExportFormat(StrEnum):
    nnunet = "nnunet"  # an nnU-Net v2 dataset folder with splits_final.json
    csv = "csv"  # a manifest with image and label PNGs


class FileEnding(StrEnum):
    """The image and label files of an nnU-Net export (its ``dataset.json`` ``file_ending``)."""

    nifti = ".nii.gz"  # 2-D NIfTI with the mm spacing, read by nnU-Net's SimpleITK reader
    png = ".png"  # PNG: no spacing (nnU-Net's PNG reader takes 1 mm pixels)


E = TypeVar("E", bound=StrEnum)


def choice(enum: type[E], value: str, option: str) -> E:
    """``value`` as a member of ``enum``, or a UsageError naming the option and its choices."""
    try:
        return enum(value)
    except ValueError:
        names = ", ".join(m.value for m in enum)
        raise UsageError(f"{option} must be one of {names}, not {value!r}") from None


__all__ = [
    "DEFAULT_PRESET",
    "CheckpointChoice",
    "DeviceChoice",
    "ExportFormat",
    "FileEnding",
    "LossName",
    "PresetName",
    "ScoreSet",
    "SelectionName",
    "Stratify",
    "Subset",
    "choice",
]
