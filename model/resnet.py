"""ResNet-50 (v1.5: stride on the 3x3 conv) whose parameter names match torchvision's
``resnet50`` state dict, with triplet attention (``ta``) in every bottleneck after the last
BatchNorm and before the residual addition, and optional dilation for output stride 8 or 16.
"""

from __future__ import annotations

import torch
from torch import nn

from .triplet_attention import TripletAttention


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        attention: bool = True,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.ta = TripletAttention() if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.ta is not None:
            out = self.ta(out)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        layers=(3, 4, 6, 3),
        width: int = 64,
        output_stride: int | None = None,
        num_classes: int | None = 1000,
        attention: bool = True,
    ):
        """``output_stride`` 8 or 16 dilates the last stages (None: 32, a classifier);
        ``num_classes`` None leaves out the pooling and classifier (a backbone)."""
        super().__init__()
        dilate = {
            None: (False, False, False),
            32: (False, False, False),
            16: (False, False, True),
            8: (False, True, True),
        }[output_stride]
        self.inplanes, self.dilation, self.attention = width, 1, attention
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(width * 4, layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(width * 8, layers[3], 2, dilate[2])
        self.out_channels = width * 8 * Bottleneck.expansion
        self.num_classes = num_classes
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(self.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last BN of each block, as torchvision offers
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        previous = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, previous, downsample, self.attention)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [
            Bottleneck(self.inplanes, planes, dilation=self.dilation, attention=self.attention)
            for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def stages(
        self, x: torch.Tensor, stem_extra: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(layer1, layer3, layer4) feature maps (layer1 at stride 4). ``stem_extra`` (the
        first convolution's shape) is added to that convolution's output: an interactive
        network's clicks come in there."""
        stem = self.conv1(x)
        if stem_extra is not None:
            stem = stem + stem_extra
        x1 = self.layer1(self.maxpool(self.relu(self.bn1(stem))))
        x3 = self.layer3(self.layer2(x1))
        return x1, x3, self.layer4(x3)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer3, layer4) feature maps."""
        _, x3, x4 = self.stages(x)
        return x3, x4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, x = self.features(x)
        if self.num_classes is None:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(**kwargs) -> ResNet:
    return ResNet((3, 4, 6, 3), 64, **kwargs)
