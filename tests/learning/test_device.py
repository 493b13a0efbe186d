"""Device choice and the GPU habits, which are no-ops on the CPU."""

from __future__ import annotations

import pytest

from tests.ci import require

torch = require("torch")

from datatool.core.errors import DatatoolError, UsageError  # noqa: E402
from datatool.learning.device import (  # noqa: E402
    autocast,
    channels_last,
    resolve_device,
    synchronize,
)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(UsageError, match="--device must be one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DatatoolError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_cpu_runs_float32_in_its_own_layout():
    cpu = torch.device("cpu")
    with autocast(cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    x = torch.randn(1, 3, 4, 4)
    assert channels_last(x, cpu) is x
    net = torch.nn.Conv2d(3, 1, 1)
    assert channels_last(net, cpu) is net
    synchronize(cpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_bf16_channels_last():
    cuda = torch.device("cuda")
    with autocast(cuda):
        assert (torch.ones(2, 2, device=cuda) @ torch.ones(2, 2, device=cuda)).dtype == (
            torch.bfloat16
        )
    x = channels_last(torch.randn(1, 3, 4, 4, device=cuda), cuda)
    assert x.is_contiguous(memory_format=torch.channels_last)
