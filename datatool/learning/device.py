"""Where the network runs, and how: the device a ``--device`` choice means, and the habits
that pay on a GPU (bf16 autocast, channels_last) in one place for training, validation,
scoring and the benchmark. On the CPU each of them is a no-op."""

from __future__ import annotations

import contextlib

from datatool.core.errors import DatatoolError
from datatool.learning.options import DeviceChoice, choice


def resolve_device(name: str):
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` as a torch device."""
    import torch

    name = choice(DeviceChoice, name, "--device")
    if name == DeviceChoice.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == DeviceChoice.cuda and not torch.cuda.is_available():
        raise DatatoolError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return torch.device(name.value)


def autocast(device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing (float32) elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last(t, device):
    """A module or a 4-D tensor in channels_last memory format on CUDA; as it is elsewhere."""
    import torch

    if device.type != "cuda":
        return t
    if isinstance(t, torch.nn.Module):
        return t.to(memory_format=torch.channels_last)
    return t.contiguous(memory_format=torch.channels_last)


def synchronize(device) -> None:
    """Wait for the device's queued work (for timing); nothing to wait for on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["autocast", "channels_last", "resolve_device", "synchronize"]
