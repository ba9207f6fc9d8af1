"""ResNeSt (Zhang et al. 2020, "ResNeSt: Split-Attention Networks"), CIFAR-sized.

ResNeSt-50 (the paper's main model, "2s1x64d": radix 2, cardinality 1, bottleneck width 64) built as
the authors' code builds it (zhanghang1989/ResNeSt, resnest/torch/models/{resnet,splat}.py): ResNet-50's
bottleneck layout [3, 4, 6, 3] with planes 64/128/256/512 x `width`, the 3x3 conv of every bottleneck
replaced by a split-attention conv, plus the ResNet-D tweaks the paper adopts - a deep stem of three
3x3 convs (32, 32, 64 channels), strided blocks that downsample by 3x3 average pooling after the
split-attention conv ("avd") and shortcuts that average-pool before their 1x1 projection.

CIFAR changes: the stem's first conv has stride 1 (2 in the paper) and the 3x3 max-pool after the stem
is gone, so the stages run at 32, 16, 8 and 4 pixels. Neither change touches a parameter: at width 1
this has 25,454,730 parameters for 10 classes, as the authors' resnest50(num_classes=10).

Knobs (as in the paper's "RsCxWd" notation): `radix` R, the number of splits attention chooses among
inside each cardinal group; `cardinality` C, the number of cardinal groups; `bottleneck_width` W, the
channels per cardinal group for a 64-plane stage. The split-attention conv is a grouped conv with
R x C groups over C x W' channels (W' = planes x W / 64), so W' must be a multiple of R in every
stage; `validate` rejects settings where it is not.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from archs.common import conv1x1, conv3x3, init_weights, scaled
from archs.registry import WIDTH, Knob, KnobError, register
from archs.resnet import make_stages

PAPER = "Zhang et al. 2020, ResNeSt: Split-Attention Networks (arXiv:2004.08955)"

LAYERS = [3, 4, 6, 3]          # ResNeSt-50
PLANES = [64, 128, 256, 512]
STEM_WIDTH = 32
MAX_RADIX = 4                  # the paper tries 1, 2 and 4
REDUCTION, MIN_ATTENTION = 4, 32  # attention MLP width: max(channels x radix / 4, 32), as the authors'


def group_width(planes: int, bottleneck_width: int, cardinality: int) -> int:
    """Channels of a bottleneck's split-attention conv: C cardinal groups of planes x W / 64."""
    return int(planes * bottleneck_width / 64) * cardinality


class SplitAttention(nn.Module):
    """Split-attention conv (Fig. 2 of the paper, radix-major layout as in the authors' code).

    A grouped 3x3 conv makes `radix` splits of `channels` each; their sum is pooled and fed through
    a two-layer grouped MLP whose output is normalised across the splits of each cardinal group
    (softmax; sigmoid when radix is 1) and used to weight the splits before summing them.
    """

    def __init__(self, channels: int, radix: int, cardinality: int, stride: int = 1):
        super().__init__()
        self.radix, self.cardinality = radix, cardinality
        self.conv = conv3x3(channels, channels * radix, stride, groups=cardinality * radix)
        self.bn0 = nn.BatchNorm2d(channels * radix)
        self.relu = nn.ReLU(inplace=True)
        inter = max(channels * radix // REDUCTION, MIN_ATTENTION)
        # The MLP is grouped by cardinality, so its width must be a multiple of it; the authors'
        # formula can miss that (e.g. cardinality 3 with the floor of 32), so round up.
        inter = -(-inter // cardinality) * cardinality
        self.fc1 = nn.Conv2d(channels, inter, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(inter)
        self.fc2 = nn.Conv2d(inter, channels * radix, 1, groups=cardinality)

    def forward(self, x):
        x = self.relu(self.bn0(self.conv(x)))
        batch = x.shape[0]
        splits = torch.chunk(x, self.radix, dim=1) if self.radix > 1 else (x,)
        gap = sum(splits).mean((2, 3), keepdim=True)
        attention = self.fc2(self.relu(self.bn1(self.fc1(gap))))
        if self.radix > 1:
            # fc2's output is cardinal-group-major; softmax over the radix axis, back to radix-major.
            attention = attention.view(batch, self.cardinality, self.radix, -1).transpose(1, 2)
            attention = attention.softmax(dim=1).reshape(batch, -1, 1, 1)
            return sum(a * s for a, s in zip(torch.chunk(attention, self.radix, dim=1), splits))
        return x * attention.sigmoid()


def shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity where shapes match; else (ResNet-D) average-pool, then a stride-1 1x1 projection, so
    no input pixel is skipped by a strided 1x1 conv."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1
            else nn.Identity())
    return nn.Sequential(pool, conv1x1(in_ch, out_ch), nn.BatchNorm2d(out_ch))


class SplitAttentionBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, radix: int, cardinality: int,
                 bottleneck_width: int):
        super().__init__()
        width = group_width(planes, bottleneck_width, cardinality)
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(in_ch, width), nn.BatchNorm2d(width)
        self.attention = SplitAttention(width, radix, cardinality)
        # "avd": a strided block downsamples by a 3x3 average pool after the split-attention conv,
        # which itself runs at stride 1 (the authors' default, avd_first=False).
        self.downsample = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()
        self.conv3, self.bn3 = conv1x1(width, out_ch), nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.downsample(self.attention(out))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNeSt(nn.Module):
    def __init__(self, layers: list[int], num_classes: int = 10, width: float = 1.0, radix: int = 2,
                 cardinality: int = 1, bottleneck_width: int = 64):
        super().__init__()
        stem = scaled(STEM_WIDTH, width)
        self.stem = nn.Sequential(  # the deep stem, all stride 1 for CIFAR (first conv: 2 in the paper)
            conv3x3(3, stem), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
            conv3x3(stem, stem), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),
            conv3x3(stem, 2 * stem), nn.BatchNorm2d(2 * stem), nn.ReLU(inplace=True),
        )
        self.stages, in_ch = make_stages(
            lambda i, p, stride, first: SplitAttentionBottleneck(i, p, stride, radix, cardinality, bottleneck_width),
            SplitAttentionBottleneck.expansion, 2 * stem, [scaled(p, width) for p in PLANES], layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def check_split_channels(knobs: dict[str, Any]) -> KnobError | None:
    """Each stage's split-attention conv has R x C groups over C x W' channels (W' = planes x W / 64),
    so W' must be at least 1 and a multiple of the radix R."""
    radix, bottleneck_width = knobs["radix"], knobs["bottleneck_width"]
    for planes in PLANES:
        planes = scaled(planes, knobs["width"])
        per_group = group_width(planes, bottleneck_width, 1)
        if per_group < 1:
            return KnobError("bottleneck_width", bottleneck_width,
                             f"leaves no channels per cardinal group in the {planes}-plane stage at width "
                             f"{knobs['width']}; "
                             f"use bottleneck_width >= {-(-64 // planes)}")
        if per_group % radix:
            divisors = [r for r in range(1, MAX_RADIX + 1) if per_group % r == 0]
            return KnobError("radix", radix,
                             f"does not divide the {per_group} channels per cardinal group of the "
                             f"{planes}-plane stage (width {knobs['width']}, bottleneck_width "
                             f"{bottleneck_width}), so they cannot be split into radix x cardinality = "
                             f"{radix} x {knobs['cardinality']} conv groups; allowed radix: "
                             + ", ".join(map(str, divisors)))
    return None


@register(family="ResNeSt", paper=PAPER, check=check_split_channels,
          knobs=[WIDTH,
                 Knob("radix", int, 2, low=1, high=MAX_RADIX, help="splits per cardinal group (R)"),
                 Knob("cardinality", int, 1, low=1, high=64, help="cardinal groups (C)"),
                 Knob("bottleneck_width", int, 64, low=1, high=256,
                      help="channels per cardinal group of a 64-plane stage (W)")],
          smallest={"width": 0.125})
def resnest50(num_classes: int = 10, width: float = 1.0, radix: int = 2, cardinality: int = 1,
              bottleneck_width: int = 64) -> ResNeSt:
    return ResNeSt(LAYERS, num_classes, width, radix, cardinality, bottleneck_width)
