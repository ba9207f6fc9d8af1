"""Res2Net (Gao et al. 2019, "Res2Net: A New Multi-scale Backbone Architecture"), CIFAR-sized.

Res2Net-50: the ResNet-50 layout (bottleneck blocks 3/4/6/3, outputs 256/512/1024/2048) with each
bottleneck's 3x3 conv replaced by the Res2Net module. The 1x1 conv's output is split into `scale`
(s) groups of w channels, w = floor(planes x `base_width` / 64); group 1 passes through, and each
further group gets a 3x3 conv-BN-ReLU of its own input plus the previous group's output, so
receptive fields grow within the block; the groups are concatenated into the closing 1x1 conv. In a
stage's first block (stride 2, or the projection block of stage 1) the groups are not chained, and
the pass-through group is 3x3-average-pooled to the new size, as the authors' code
(Res2Net/Res2Net-PretrainedModels, res2net.py: Bottle2neck with stype='stage').

This is the 4-stage res2net50 with the CIFAR stem of the other ResNets here: a 3x3 stride-1 conv and
no max-pool (ImageNet: 7x7 stride 2 and max-pool), so stages run at 32/16/8/4 pixels - not the
3-stage Res2NeXt-29 of the paper's CIFAR table. Default 26w x 4s (the authors' res2net50_26w_4s):
23,662,930 parameters for 10 classes, their model's count with this stem and a 10-class classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from archs.common import conv1x1, conv3x3, init_weights, scaled
from archs.registry import WIDTH, Knob, KnobError, register
from archs.resnet import make_stages, shortcut

PAPER = "Gao et al. 2019, Res2Net: A New Multi-scale Backbone Architecture (arXiv:1904.01169)"

STAGE_PLANES = (64, 128, 256, 512)


def scale_width(planes: int, base_width: int) -> int:
    """w: channels in each of the s groups of a block with `planes` (the authors' floor rule)."""
    return planes * base_width // 64


class Bottle2neck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, scale: int, base_width: int, first: bool):
        super().__init__()
        w = scale_width(planes, base_width)
        out_ch = planes * self.expansion
        self.width, self.first = w, first
        self.conv1, self.bn1 = conv1x1(in_ch, w * scale), nn.BatchNorm2d(w * scale)
        self.convs = nn.ModuleList(conv3x3(w, w, stride) for _ in range(scale - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(w) for _ in range(scale - 1))
        # A stage's first block pools its pass-through group (the authors' stype='stage'): to the
        # strided groups' size where the block has stride 2, a 3x3 smoothing in stage 1.
        self.pool = nn.AvgPool2d(3, stride, 1) if first else nn.Identity()
        self.conv3, self.bn3 = conv1x1(w * scale, out_ch), nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        splits = torch.split(self.relu(self.bn1(self.conv1(x))), self.width, 1)
        outs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            # Chain each group onto the previous one's output, except across a stride/width change.
            sp = splits[i] if (i == 0 or self.first) else outs[-1] + splits[i]
            outs.append(self.relu(bn(conv(sp))))
        outs.append(self.pool(splits[-1]))
        out = self.bn3(self.conv3(torch.cat(outs, 1)))
        return self.relu(out + self.shortcut(x))


class Res2Net(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), scale: int = 4, base_width: int = 26, num_classes: int = 10,
                 width: float = 1.0):
        super().__init__()
        planes = [scaled(p, width) for p in STAGE_PLANES]
        self.stem = nn.Sequential(conv3x3(3, planes[0]), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        self.stages, in_ch = make_stages(
            lambda i, p, stride, first: Bottle2neck(i, p, stride, scale, base_width, first=first),
            Bottle2neck.expansion, planes[0], planes, layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def check(knobs: dict) -> KnobError | None:
    # Stage 1 has the narrowest groups; each needs at least one channel.
    w, width = knobs["base_width"], knobs["width"]
    planes = scaled(STAGE_PLANES[0], width)
    if scale_width(planes, w) < 1:
        return KnobError("base_width", w,
                         f"x width {width} leaves 0 channels per scale group in stage 1; at width "
                         f"{width} use base_width >= {-(-64 // planes)}")
    return None


@register(family="Res2Net", paper=PAPER, check=check,
          knobs=[WIDTH,
                 Knob("scale", int, 4, low=2, high=8, help="s: groups the 3x3 conv is split into"),
                 Knob("base_width", int, 26, low=1, high=64, help="w at 64 planes: channels per group")],
          smallest={"width": 0.125, "scale": 2})
def res2net50(num_classes: int = 10, width: float = 1.0, scale: int = 4, base_width: int = 26) -> Res2Net:
    return Res2Net((3, 4, 6, 3), scale, base_width, num_classes, width)
