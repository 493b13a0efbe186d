"""The network: triplet attention against a direct implementation, ResNet-50 parameter names
and count, output shapes, loading torchvision-format weights."""

from __future__ import annotations

import pytest

from tests.ci import require

torch = require("torch")
import torch.nn.functional as F  # noqa: E402

from datatool.model import (  # noqa: E402
    AUX_WEIGHT,
    PRESETS,
    Preset,
    TripletAttention,
    build_model,
    learning_rate,
    load_torchvision_resnet50,
    resnet50,
    segmentation_loss,
    soft_dice_loss,
)


def direct_triplet_attention(x, ta, training: bool):
    """Written from the paper, not from the module: for each branch pool over one axis, a 7x7
    conv on the two pooled maps, batch norm, sigmoid, and scale x along the other two axes."""

    def gate(pooled_max, pooled_mean, g):
        z = torch.stack([pooled_max, pooled_mean], dim=1)  # B x 2 x P x Q
        z = F.conv2d(z, g.conv.weight, padding=3)
        if training:
            mean = z.mean(dim=(0, 2, 3), keepdim=True)
            var = z.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            z = (z - mean) / torch.sqrt(var + g.bn.eps)
        else:
            z = (z - g.bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
                g.bn.running_var.view(1, -1, 1, 1) + g.bn.eps
            )
        z = z * g.bn.weight.view(1, -1, 1, 1) + g.bn.bias.view(1, -1, 1, 1)
        return torch.sigmoid(z)[:, 0]  # B x P x Q

    b, c, _h, _w = x.shape
    s_cw = gate(x.amax(dim=2), x.mean(dim=2), ta.cw)  # pool over H: B x C x W
    s_hc = gate(x.amax(dim=3).transpose(1, 2), x.mean(dim=3).transpose(1, 2), ta.hc)  # B x H x C
    s_hw = gate(x.amax(dim=1), x.mean(dim=1), ta.hw)  # pool over C: B x H x W
    out = torch.empty_like(x)
    for bi in range(b):
        for ci in range(c):
            out[bi, ci] = (
                x[bi, ci] * (s_cw[bi, ci][None, :] + s_hc[bi, :, ci][:, None] + s_hw[bi]) / 3
            )
    return out


@pytest.mark.parametrize("training", [False, True])
def test_triplet_attention_equals_the_direct_implementation(training):
    torch.manual_seed(0)
    ta = TripletAttention()
    for g in (ta.cw, ta.hc, ta.hw):  # non-trivial batch-norm state
        g.bn.running_mean.fill_(0.3)
        g.bn.running_var.fill_(2.0)
        g.bn.weight.data.fill_(1.5)
        g.bn.bias.data.fill_(-0.2)
    ta.train(training)
    x = torch.randn(2, 5, 6, 7)
    torch.testing.assert_close(
        ta(x), direct_triplet_attention(x, ta, training), atol=1e-5, rtol=1e-5
    )
    assert sum(p.numel() for p in ta.parameters()) == 300


def test_resnet50_with_triplet_attention_has_the_published_size_and_names():
    net = resnet50(num_classes=1000)
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 2) == 25.56
    modules = [m for m in net.modules() if isinstance(m, TripletAttention)]
    assert len(modules) == 16
    names = set(net.state_dict())
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer3.5.conv2.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in names
    # torchvision's own keys and shapes: test_torchvision_layout.py (a fixture made with it)


@pytest.mark.parametrize("stride,feature", [(16, 30), (8, 60)])
def test_output_shapes_at_473(stride, feature):
    net = build_model(6, "paper", output_stride=stride).eval()
    x = torch.randn(1, 3, 473, 473)
    with torch.no_grad():
        _, x4 = net.backbone.features(x)
        assert x4.shape[-2:] == (feature, feature) and x4.shape[1] == 2048
        assert net(x).shape == (1, 6, 473, 473)
    net.train()  # training adds the auxiliary head's output (checked at a smaller size)
    main, aux = net(torch.randn(2, 3, 97, 97))
    assert main.shape == aux.shape == (2, 6, 97, 97)


def test_torchvision_weights_load_from_a_file(tmp_path):
    source = resnet50(num_classes=1000, attention=False)  # stands in for torchvision's
    with torch.no_grad():
        source.layer2[1].conv2.weight.fill_(0.125)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    net = build_model(6, "paper")
    counts = load_torchvision_resnet50(net, path)
    assert counts["loaded"] == len(source.state_dict()) - 2  # fc dropped
    assert torch.all(net.backbone.layer2[1].conv2.weight == 0.125)
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision resnet50"):
        load_torchvision_resnet50(net, bad)


def test_segmentation_loss_adds_the_auxiliary_head_at_its_weight():
    torch.manual_seed(0)
    main, aux = torch.randn(2, 6, 5, 5), torch.randn(2, 6, 5, 5)
    y = torch.randint(0, 6, (2, 5, 5))
    assert AUX_WEIGHT == 0.4
    torch.testing.assert_close(segmentation_loss(main, y), F.cross_entropy(main, y))
    torch.testing.assert_close(
        segmentation_loss((main, aux), y),
        F.cross_entropy(main, y) + 0.4 * F.cross_entropy(aux, y),
    )
    assert segmentation_loss(main.bfloat16(), y).dtype == torch.float32  # computed in float32


def test_a_preset_comes_back_from_a_run_config_in_json():
    import json

    for name, preset in PRESETS.items():
        config = json.loads(json.dumps({**preset.as_dict(), "preset": name, "seed": 3}))
        assert config["resize"] == list(preset.resize)  # JSON has no tuples
        assert Preset.from_dict(config) == preset


def test_the_cpu_preset_adds_a_skip_decoder_and_keeps_the_input_size():
    net = build_model(6, "cpu")
    assert net.decoder is not None and net.aux_head is None
    # the study's network is unchanged: no decoder, its head ends in the classifier
    paper = build_model(6, "paper")
    assert paper.decoder is None and not any(k.startswith("decoder.") for k in paper.state_dict())
    assert isinstance(paper.head[-1], torch.nn.Conv2d) and paper.head[-1].out_channels == 6
    net.eval()
    with torch.no_grad():
        for h, w in ((240, 320), (100, 132)):  # any size: fully convolutional
            assert net(torch.randn(2, 3, h, w)).shape == (2, 6, h, w)


def test_soft_dice_loss_by_hand():
    """Two pixels, three classes (background and two structures): the loss is 1 minus the
    mean over the two structures of (2 sum p g + 1) / (sum p + sum g + 1)."""
    import math

    logits = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]], [[0.0, 0.0]]]])  # 1x3x1x2
    target = torch.tensor([[[1, 0]]])
    # softmax: pixel 0 (1/3, 1/3, 1/3); pixel 1 (3/5, 1/5, 1/5)
    p1, p2 = (1 / 3, 1 / 5), (1 / 3, 1 / 5)
    dice1 = (2 * p1[0] + 1) / (sum(p1) + 1 + 1)  # class 1 is in pixel 0
    dice2 = (0 + 1) / (sum(p2) + 0 + 1)  # class 2 is nowhere
    expected = 1 - (dice1 + dice2) / 2
    assert soft_dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(
        segmentation_loss(logits, target, loss="dice"), soft_dice_loss(logits, target)
    )
    torch.testing.assert_close(
        segmentation_loss(logits, target, loss="ce+dice"), ce + soft_dice_loss(logits, target)
    )
    aux = torch.zeros_like(logits)
    torch.testing.assert_close(
        segmentation_loss((logits, aux), target, loss="ce+dice"),
        ce
        + soft_dice_loss(logits, target)
        + AUX_WEIGHT * (F.cross_entropy(aux, target) + soft_dice_loss(aux, target)),
    )
    with pytest.raises(ValueError, match="loss must be one of ce, ce\\+dice, dice"):
        segmentation_loss(logits, target, loss="focal")
    # a perfect, confident prediction costs (almost) nothing
    sure = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(sure, target).item() < 0.2  # class 2: absent, smoothed


def test_gradients_reach_the_stem_through_the_decoder_with_ce_plus_dice():
    torch.manual_seed(0)
    net = build_model(6, "cpu").train()
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 6, (2, 64, 96))
    segmentation_loss(net(x), y, loss="ce+dice").backward()
    # (a block's own convolutions get none at first: its last BatchNorm starts at zero)
    for module in (net.backbone.conv1, net.backbone.layer1[0].bn3, net.decoder.project[0]):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert net.decoder.classifier.weight.grad.abs().sum() > 0


def test_learning_rate_schedules():
    paper, cpu = PRESETS["paper"], PRESETS["cpu"]
    assert [learning_rate(paper, e) for e in (0, 50, 99)] == [paper.lr] * 3
    assert learning_rate(cpu, 0) == pytest.approx(cpu.lr)
    assert learning_rate(cpu, cpu.epochs - 1) == pytest.approx(0.01 * cpu.lr)
    middle = learning_rate(cpu, (cpu.epochs - 1) / 2)
    assert middle == pytest.approx(cpu.lr * (0.01 + 0.99 * 0.5))
    rates = [learning_rate(cpu, e) for e in range(cpu.epochs)]
    assert rates == sorted(rates, reverse=True)


def test_a_run_recorded_before_the_new_preset_fields_comes_back_as_trained():
    """Configs written before decoder, loss, schedule and flip existed: the study's defaults."""
    old = PRESETS["tiny"].as_dict()
    for key in ("decoder", "loss", "schedule", "flip"):
        old.pop(key)
    preset = Preset.from_dict({**old, "preset": "tiny", "seed": 0})
    assert preset == PRESETS["tiny"]
    assert (preset.decoder, preset.loss, preset.schedule, preset.flip) == (
        0,
        "ce",
        "constant",
        False,
    )


def test_an_interactive_network_takes_click_channels_or_the_image_alone():
    """Interactive presets: 2 channels per structure more; without them the click path adds
    nothing (an automatic draft); with them it changes the output once it has weights."""
    from dataclasses import replace

    preset = replace(PRESETS["cpu"], interactive=True)
    torch.manual_seed(0)
    net = build_model(6, preset).eval()
    assert net.click_channels == 10
    image = torch.randn(1, 3, 64, 96)
    clicks = torch.zeros(1, 10, 64, 96)
    clicks[0, 2, 30:35, 40:45] = 1.0
    with torch.no_grad():
        alone = net(image)
        zero = net(torch.cat([image, torch.zeros_like(clicks)], 1))
        assert torch.equal(alone, zero)
        # a new network's click stem is zero: the clicks change nothing until trained
        assert torch.allclose(net(torch.cat([image, clicks], 1)), alone)
        torch.nn.init.normal_(net.click_stem.weight)
        assert not torch.allclose(net(torch.cat([image, clicks], 1)), alone, atol=1e-4)
        assert torch.equal(net(image), alone)  # no clicks: the same draft as before
    with pytest.raises(ValueError, match="3 input channels or 13, not 5"):
        net(torch.randn(1, 5, 64, 96))
    with pytest.raises(ValueError, match="3 input channels, not 13"):
        build_model(6, "cpu").eval()(torch.randn(1, 13, 64, 96))
    assert Preset.from_dict(preset.as_dict()).interactive
    assert not Preset.from_dict(PRESETS["cpu"].as_dict()).interactive


def test_an_interactive_network_with_a_decoder_also_feeds_the_clicks_to_the_decoder():
    """click_decoder: the click maps, max-pooled to the decoder's stride-4 grid, are inputs
    of its fuse convolution (zero at first, like the click stem); a run recorded before the
    field existed reads back without it, in the network it was trained as."""
    from dataclasses import replace

    from datatool.learning.training import TrainConfig

    preset = replace(PRESETS["cpu"], interactive=True, click_decoder=True)
    torch.manual_seed(0)
    net = build_model(6, preset).eval()
    fuse = net.decoder.fuse[0].weight
    old = build_model(6, replace(PRESETS["cpu"], interactive=True)).decoder.fuse[0].weight
    assert fuse.shape[1] == old.shape[1] + 10
    image = torch.randn(1, 3, 64, 96)
    clicks = torch.zeros(1, 10, 64, 96)
    clicks[0, 4, 30:33, 40:43] = 1.0  # a positive click on the third structure
    with torch.no_grad():
        alone = net(image)
        assert torch.allclose(net(torch.cat([image, clicks], 1)), alone)  # zero at first
        fuse[:, -10:].normal_()  # the decoder's click inputs alone, the stem still zero
        moved = (net(torch.cat([image, clicks], 1)) - alone).abs().sum(1)[0]
        assert torch.equal(net(image), alone)  # no clicks: the draft as before
    near, far = float(moved[24:40, 34:50].mean()), float(moved[:, 80:].mean())
    assert near > 10 * far  # the click changes the drawing where it was placed
    assert TrainConfig(preset="cpu", interactive=True).resolved()["click_decoder"] is True
    assert TrainConfig(preset="tiny", interactive=True).resolved()["click_decoder"] is False
    assert TrainConfig(preset="cpu").resolved()["click_decoder"] is False
    recorded = {k: v for k, v in preset.as_dict().items() if k != "click_decoder"}
    assert not Preset.from_dict(recorded).click_decoder
    # the structure clicked on in training: by the errors for a run made now; a run recorded
    # before the field was trained choosing each structure alike, and reads back so
    made_now = TrainConfig(preset="tiny", interactive=True).resolved()
    assert made_now["click_choice"] == "errors"
    assert Preset.from_dict(made_now).click_choice == "errors"
    before = {k: v for k, v in made_now.items() if k != "click_choice"}
    assert Preset.from_dict(before).click_choice == "uniform"
    assert TrainConfig(preset="cpu").resolved()["click_choice"] == "uniform"
    # and trains 30 % of its samples without clicks; one recorded before: half, as trained
    assert made_now["auto_share"] == 0.3 and Preset.from_dict(made_now).auto_share == 0.3
    older = {k: v for k, v in made_now.items() if k != "auto_share"}
    assert Preset.from_dict(older).auto_share == 0.5
