"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition"), CIFAR-sized.

The CIFAR variant used across the common CIFAR repositories (e.g. kuangliu/pytorch-cifar): a 3x3
stride-1 stem with no max-pool, then four stages of 64/128/256/512 x `width` channels, strides
1/2/2/2. ResNet-18 at width 1 has 11,173,962 parameters for 10 classes.
"""

from __future__ import annotations

from torch import nn

from archs.common import conv1x1, conv3x3, init_weights, scaled
from archs.registry import WIDTH, register

PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition (arXiv:1512.03385)"


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity where shapes match, else a strided 1x1 projection (option B of the paper)."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, attention: nn.Module | None = None):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = conv3x3(in_ch, planes, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, out_ch), nn.BatchNorm2d(out_ch)
        self.attention = attention or nn.Identity()  # SE-ResNet plugs its SE module in here
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, attention: nn.Module | None = None):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(in_ch, planes), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, out_ch), nn.BatchNorm2d(out_ch)
        self.attention = attention or nn.Identity()
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        return self.relu(out + self.shortcut(x))


def make_stages(make_block, expansion: int, in_ch: int, planes: list[int], layers) -> tuple[nn.Sequential, int]:
    """Stages of residual blocks, every stage after the first opening with a stride-2 block (the
    layout ResNet, ResNeXt, Res2Net and ResNeSt share). `make_block(in_ch, planes, stride, first)`
    builds one block. Returns the stages and their output channels."""
    stages = []
    for i, (p, n) in enumerate(zip(planes, layers)):
        blocks = []
        for j in range(n):
            blocks.append(make_block(in_ch, p, 2 if (i > 0 and j == 0) else 1, j == 0))
            in_ch = p * expansion
        stages.append(nn.Sequential(*blocks))
    return nn.Sequential(*stages), in_ch


class ResNet(nn.Module):
    """`block_factory(in_ch, planes, stride)` builds one residual block; `block.expansion` is read
    from `block` so SE-ResNet can pass a partial that adds attention."""

    def __init__(self, block, layers: list[int], num_classes: int = 10, width: float = 1.0,
                 block_factory=None):
        super().__init__()
        make = block_factory or block
        planes = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(conv3x3(3, planes[0]), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        self.stages, in_ch = make_stages(lambda i, p, stride, first: make(i, p, stride), block.expansion,
                                         planes[0], planes, layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


# Table 1 of the paper: the block and the blocks per stage of each depth.


@register(family="ResNet", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125})
def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


@register(family="ResNet", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125})
def resnet34(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, width)


@register(family="ResNet", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125})
def resnet50(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width)


@register(family="ResNet", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125})
def resnet101(num_classes: int = 10, width: float = 1.0) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes, width)
