"""torchvision's ResNet with basic blocks (resnet18), as torchvision 0.29 builds it: the same
modules, in the same order, with the same init, so the same seed gives the same weights, bit
for bit (tests/test_optim.py holds the two together).

Why a copy: importing torchvision costs a stage 1.5 s (its detection ops import
torch._dynamo), and the CNN needs 60 lines of it. Adapted from torchvision/models/resnet.py
(BSD-3-Clause, the PyTorch team), without what resnet18 does not use (bottleneck blocks,
groups, dilation, weights to download).
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1,
                     bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 convs, each followed by BatchNorm, added to the block's input (through a
    strided 1×1 conv where the shape changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """A 7×7 stem conv and max pool, four stages of basic blocks (64, 128, 256, 512
    channels, each after the first halving the map), global average pool, a linear head."""

    def __init__(self, layers: list[int], num_classes: int = 1000, init: bool = True):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules() if init else ():  # torchvision's, after the defaults
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:  # built before the block, as torchvision does
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, init: bool = True) -> ResNet:
    """torchvision's `resnet18(weights=None, num_classes=...)`; `init=False`: without its
    init (the shapes alone)."""
    return ResNet([2, 2, 2, 2], num_classes, init)


def resnet34(num_classes: int = 1000, init: bool = True) -> ResNet:
    """torchvision's `resnet34(weights=None, num_classes=...)`: the same blocks as resnet18,
    3, 4, 6 and 3 of them per stage instead of 2."""
    return ResNet([3, 4, 6, 3], num_classes, init)


# train_cnn.arch: torchvision's architectures the CNN can be (resnet18 is the book's)
ARCHITECTURES = {"resnet18": resnet18, "resnet34": resnet34}
