"""The backbone's parameter names and shapes against torchvision's real ``resnet50`` layout.

``torchvision_resnet50_layout.json`` beside this file lists every key of
``torchvision.models.resnet50().state_dict()`` with its shape and dtype, in order. It was
made once, with torchvision (whose version it records) in a separate environment, since the
project's own never imports torchvision::

    import json, torch, torchvision
    sd = torchvision.models.resnet50().state_dict()
    rows = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()]
    # written as {"made_with": ..., "how": ..., "state_dict": rows}, one row a line

Regenerate it the same way if torchvision ever changes its layout (it has not since v0.2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ci import require

torch = require("torch")

from datatool.model import build_model, load_torchvision_resnet50, resnet50  # noqa: E402

LAYOUT = json.loads((Path(__file__).parent / "torchvision_resnet50_layout.json").read_text())
TORCHVISION = {k: (tuple(shape), dtype) for k, shape, dtype in LAYOUT["state_dict"]}


def layout(state_dict, skip_attention: bool = True) -> dict:
    return {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
        for k, v in state_dict.items()
        if not (skip_attention and ".ta." in k)
    }


def test_the_fixture_is_torchvision_s_resnet50():
    assert LAYOUT["made_with"].startswith("torch ") and "torchvision" in LAYOUT["made_with"]
    assert len(TORCHVISION) == 320
    params = sum(
        torch.Size(shape).numel()
        for k, (shape, dtype) in TORCHVISION.items()
        if dtype == "float32" and "running_" not in k
    )
    assert params == 25_557_032  # torchvision's documented resnet50 parameter count


def test_the_classifier_network_has_torchvision_s_keys_shapes_and_dtypes():
    own = layout(resnet50(num_classes=1000).state_dict())
    assert own == TORCHVISION
    # torchvision's order, too (a state dict saved by one loads key by key in the other)
    assert [k for k in resnet50(num_classes=1000).state_dict() if ".ta." not in k] == list(
        TORCHVISION
    )


@pytest.mark.parametrize("stride", [8, 16])
def test_the_dilated_segmentation_backbone_has_the_same_layout_less_the_classifier(stride):
    net = build_model(6, "paper", output_stride=stride)
    want = {k: v for k, v in TORCHVISION.items() if not k.startswith("fc.")}
    assert layout(net.backbone.state_dict()) == want


def test_a_state_dict_of_torchvision_s_layout_loads(tmp_path):
    """Tensors of exactly the fixture's keys, shapes and dtypes (each filled with its index)
    load into the paper network's backbone; the classifier is dropped."""
    state = {}
    for i, (k, (shape, dtype)) in enumerate(TORCHVISION.items()):
        state[k] = torch.full(shape, i, dtype=getattr(torch, dtype))
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    net = build_model(6, "paper")
    counts = load_torchvision_resnet50(net, path)
    assert counts["loaded"] == len(TORCHVISION) - 2  # fc.weight and fc.bias dropped
    loaded = net.backbone.state_dict()
    for i, k in enumerate(TORCHVISION):
        if not k.startswith("fc."):
            assert torch.all(loaded[k] == i), k
