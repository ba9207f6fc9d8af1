"""ShuffleNet v1 (Zhang et al. 2018, "ShuffleNet: An Extremely Efficient Convolutional Neural Network
for Mobile Devices"), CIFAR-sized.

Paper Table 1: a stem conv to 24 channels, then stages 2-4 of 4/8/4 ShuffleNet units. A unit is a
1x1 group conv to a bottleneck of 1/4 of the unit's output channels, BN, ReLU, channel shuffle, a 3x3
depthwise conv, BN, a 1x1 group conv, BN, added to the input (stride 1) then ReLU. The first unit of
each stage has stride 2 and concatenates a 3x3 average-pooled shortcut instead of adding, its branch
producing only the missing channels. Stage 2's first pointwise conv is not grouped (its input is only
the stem's few channels). `groups` g picks the paper's stage widths (g1 144/288/576, g2 200/400/800,
g3 240/480/960, g4 272/544/1088, g8 384/768/1536); `width` is the paper's scale factor s
("ShuffleNet s x").

Built as the authors' code (megvii-model/ShuffleNet-Series, ShuffleNetV1/network.py and blocks.py):
bottleneck = stage output // 4, classifier without bias, and the stem scaled with `width`. Our stem
rule, 24 x width rounded up to a multiple of g, reproduces their stems at 0.5x (12 for g3, 16 for g8),
1x (24) and 2x (48); at 1.5x they keep 24 where we scale to 36/40. The shuffle is the paper's
(reshape channels to (g, n), transpose, flatten) right after the first pointwise conv, as in its
Figure 2; megvii's code shuffles after the depthwise conv with g and n swapped - same weights, a
slightly different channel mixing (with their shuffle moved to ours, the logits are identical).

CIFAR change: the stem is a 3x3 stride-1 conv and there is no max-pool (ImageNet: stride-2 conv and
max-pool), so stages run at 16, 8 and 4 pixels. At g3, width 1 this has 914,328 parameters for 10
classes, the megvii model's count with a 10-class classifier. A width whose channels the groups
cannot divide (g2 and g4 at 0.25x, 0.5x, 1.5x) is rejected before building.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archs.common import channel_shuffle, init_weights
from archs.registry import Knob, KnobError, register

PAPER = ("Zhang et al. 2018, ShuffleNet: An Extremely Efficient Convolutional Neural Network for "
         "Mobile Devices (arXiv:1707.01083)")

STAGE_OUT_CHANNELS = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960),
                      4: (272, 544, 1088), 8: (384, 768, 1536)}
STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24
SCALES = (0.25, 0.5, 1.0, 1.5, 2.0)


def channel_plan(groups: int, width: float) -> tuple[int, list[int]]:
    """Stem channels and stage 2-4 output channels at this `groups` and scale factor."""
    stem = math.ceil(STEM_CHANNELS * width / groups) * groups
    return stem, [int(round(c * width)) for c in STAGE_OUT_CHANNELS[groups]]


def plan_error(groups: int, width: float) -> str | None:
    """Why this groups/width cannot be built (a channel count groups does not divide), or None."""
    in_ch, stages = channel_plan(groups, width)
    for stage, out_ch in enumerate(stages, start=2):
        mid = out_ch // 4
        branch = out_ch - in_ch  # what the first (concatenating) unit's branch must produce
        for what, n in (("bottleneck", mid), ("output", out_ch), ("first-unit branch", branch)):
            if n <= 0 or n % groups:
                return f"stage {stage} {what} has {n} channels, not divisible by groups={groups}"
        in_ch = out_ch
    return None


def check(knobs: dict) -> KnobError | None:
    groups, width = knobs["groups"], knobs["width"]
    reason = plan_error(groups, width)
    if reason is None:
        return None
    ok = [str(s) for s in SCALES if plan_error(groups, s) is None]
    return KnobError("width", width, f"with groups={groups}: {reason}; "
                                     f"widths that work with groups={groups}: {', '.join(ok)}")


class ShuffleUnit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_group: bool = True):
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = out_ch // 4
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        self.conv1 = nn.Conv2d(in_ch, mid, 1, groups=groups if first_group else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)  # depthwise
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, branch_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_out)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.bn3(self.conv3(self.bn2(self.conv2(out))))  # no ReLU after the depthwise conv
        if self.stride == 2:
            return self.relu(torch.cat([self.shortcut(x), out], 1))
        return self.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        stem, stages = channel_plan(groups, width)
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU(inplace=True))
        in_ch, layers = stem, []
        for stage, (out_ch, repeats) in enumerate(zip(stages, STAGE_REPEATS)):
            units = []
            for i in range(repeats):
                units.append(ShuffleUnit(in_ch, out_ch, 2 if i == 0 else 1, groups,
                                         first_group=not (stage == 0 and i == 0)))
                in_ch = out_ch
            layers.append(nn.Sequential(*units))
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes, bias=False)  # no bias, as the official classifier
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


@register(family="ShuffleNet", paper=PAPER, check=check,
          knobs=[Knob("groups", int, 3, choices=tuple(STAGE_OUT_CHANNELS), help="g: groups of the 1x1 convs"),
                 Knob("width", float, 1.0, choices=SCALES, help="scale factor s: channels x s")],
          smallest={"groups": 3, "width": 0.25})
def shufflenet_v1(num_classes: int = 10, groups: int = 3, width: float = 1.0) -> ShuffleNetV1:
    return ShuffleNetV1(groups, num_classes, width)
