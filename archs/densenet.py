"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks"), CIFAR-sized.

Every layer of a dense block gets all earlier feature maps of the block, concatenated, and adds
`growth_rate` (k) new ones. Layers are the paper's BC form: BN-ReLU-1x1 conv to 4k channels,
BN-ReLU-3x3 conv to k. Between blocks a transition (BN-ReLU-1x1 conv, 2x2 average pool) keeps
floor(compression x channels): the paper's theta. The stem is a 3x3 stride-1 conv to 2k channels
with no max-pool (the paper's CIFAR stem), and the head BN-ReLU, global pool, linear. `width`
multiplies the growth rate, and so every channel count.

- densenet121: the ImageNet DenseNet-121 blocks (6/12/24/16, k=32, theta=0.5) behind the CIFAR stem,
  as kuangliu/pytorch-cifar's DenseNet121 (models/densenet.py): 6,956,298 parameters for 10 classes.
- densenet_bc: the paper's CIFAR DenseNet-BC, three blocks of (depth - 4) / 6 layers each; default
  DenseNet-BC-100 with k=12, theta=0.5, as bamos/densenet.pytorch's DenseNet(growthRate=12,
  depth=100, reduction=0.5, bottleneck=True): 769,162 parameters for 10 classes (paper: 0.8M).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archs.common import init_weights, scaled
from archs.registry import WIDTH, Knob, KnobError, register

PAPER = "Huang et al. 2017, Densely Connected Convolutional Networks (arXiv:1608.06993)"


class DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth_rate: int):
        super().__init__()
        inner = 4 * growth_rate  # the paper's bottleneck: 4k channels into the 3x3 conv
        self.bn1, self.conv1 = nn.BatchNorm2d(in_ch), nn.Conv2d(in_ch, inner, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(inner), nn.Conv2d(inner, growth_rate, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, out_ch, 1, bias=False),
                         nn.AvgPool2d(2))


def channel_plan(block_config, growth_rate: int, compression: float) -> list[int]:
    """Input channels of each dense block, then the head's channels."""
    channels = [2 * growth_rate]
    for i, n in enumerate(block_config):
        out = channels[-1] + n * growth_rate
        channels.append(math.floor(out * compression) if i < len(block_config) - 1 else out)
    return channels


class DenseNet(nn.Module):
    def __init__(self, block_config=(6, 12, 24, 16), growth_rate: int = 32, compression: float = 0.5,
                 num_classes: int = 10, width: float = 1.0):
        super().__init__()
        k = scaled(growth_rate, width)
        plan = channel_plan(block_config, k, compression)
        layers: list[nn.Module] = [nn.Conv2d(3, plan[0], 3, 1, 1, bias=False)]
        for i, n in enumerate(block_config):
            in_ch = plan[i]
            layers += [DenseLayer(in_ch + j * k, k) for j in range(n)]
            if i < len(block_config) - 1:
                layers.append(Transition(in_ch + n * k, plan[i + 1]))
        layers += [nn.BatchNorm2d(plan[-1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(plan[-1], num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def bc_blocks(depth: int) -> tuple[int, int, int]:
    # depth = 3 blocks x n layers x 2 convs + stem + 2 transitions + classifier
    return ((depth - 4) // 6,) * 3


def _check_for(block_config_of):
    def check(knobs: dict) -> KnobError | None:
        if "depth" in knobs and (knobs["depth"] - 4) % 6:
            return KnobError("depth", knobs["depth"],
                             "is not 6n+4: DenseNet-BC has 3 blocks of n two-conv layers plus 4 layers "
                             "(e.g. 40, 100, 190, 250)")
        k = scaled(knobs["growth_rate"], knobs["width"])
        plan = channel_plan(block_config_of(knobs), k, knobs["compression"])
        if min(plan) < 1:
            return KnobError("compression", knobs["compression"],
                             f"leaves a transition with 0 channels at growth_rate {knobs['growth_rate']} "
                             f"x width {knobs['width']}; raise compression, growth_rate or width")
        return None

    return check


GROWTH_HELP = "k: channels each layer adds"
COMPRESSION = Knob("compression", float, 0.5, low=0.1, high=1.0,
                   help="theta: share of channels a transition keeps (0 < theta <= 1)")


@register(family="DenseNet", paper=PAPER,
          knobs=[WIDTH, Knob("growth_rate", int, 32, low=1, high=64, help=GROWTH_HELP), COMPRESSION],
          check=_check_for(lambda knobs: (6, 12, 24, 16)), smallest={"width": 0.125})
def densenet121(num_classes: int = 10, width: float = 1.0, growth_rate: int = 32,
                compression: float = 0.5) -> DenseNet:
    return DenseNet((6, 12, 24, 16), growth_rate, compression, num_classes, width)


@register(family="DenseNet", paper=PAPER,
          knobs=[WIDTH, Knob("depth", int, 100, low=10, high=250, help="L = 6n + 4"),
                 Knob("growth_rate", int, 12, low=1, high=64, help=GROWTH_HELP), COMPRESSION],
          check=_check_for(lambda knobs: bc_blocks(knobs["depth"])),
          smallest={"width": 0.125, "depth": 10})
def densenet_bc(num_classes: int = 10, width: float = 1.0, depth: int = 100, growth_rate: int = 12,
                compression: float = 0.5) -> DenseNet:
    return DenseNet(bc_blocks(depth), growth_rate, compression, num_classes, width)
