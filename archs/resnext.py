"""ResNeXt-29 (Xie et al. 2017, "Aggregated Residual Transformations for Deep Neural Networks"), CIFAR.

The paper's CIFAR network (section 5.3) as the authors' code builds it (facebookresearch/ResNeXt,
models/resnext.lua, bottleneck form C): a 3x3 stride-1 conv to 64 channels, three stages of three
bottleneck blocks with outputs 256/512/1024 and strides 1/2/2, global average pool, linear; 29 layers.
A block is a 1x1 conv to C x D channels, a 3x3 conv with C groups (the cardinality), and a 1x1 conv
to the stage output; D is the bottleneck width d in stage 1 and doubles with each stage. Shortcuts
are identity, or a 1x1 projection where the shape changes. `width` scales every channel count, and
the per-group width with it (D = floor(stage planes x d / 64), as the Lua code).

Registered as "resnext29" at 2x64d (kuangliu/pytorch-cifar's ResNeXt29_2x64d; the paper's 8x64d and
16x64d are the same builder with cardinality=8 or 16). kuangliu's models/resnext.py has the same
blocks where C x d = 128 (2x64d, 32x4d) but a 1x1 stem conv where the paper has 3x3, so our counts are
kuangliu's plus 1,536 (3 x 64 x 8 stem weights): 9,130,314 for 2x64d, 10 classes. (kuangliu's
4x64d/8x64d grow the block output with C x d; the paper fixes it at 256/512/1024, as we do, and our
8x64d has the paper's 34.4M parameters.)
"""

from __future__ import annotations

from torch import nn

from archs.common import conv1x1, conv3x3, init_weights, scaled
from archs.registry import WIDTH, Knob, KnobError, register
from archs.resnet import make_stages, shortcut

PAPER = ("Xie et al. 2017, Aggregated Residual Transformations for Deep Neural Networks "
         "(arXiv:1611.05431)")

STAGE_PLANES = (64, 128, 256)  # block output is 4x these; the stem has STAGE_PLANES[0] channels


def group_width(planes: int, bottleneck_width: int) -> int:
    """D: channels per group in a stage whose blocks output 4 x `planes` (the Lua code's rule)."""
    return planes * bottleneck_width // 64


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, cardinality: int, bottleneck_width: int):
        super().__init__()
        inner = cardinality * group_width(planes, bottleneck_width)
        out_ch = planes * self.expansion
        self.conv1, self.bn1 = conv1x1(in_ch, inner), nn.BatchNorm2d(inner)
        self.conv2, self.bn2 = conv3x3(inner, inner, stride, groups=cardinality), nn.BatchNorm2d(inner)
        self.conv3, self.bn3 = conv1x1(inner, out_ch), nn.BatchNorm2d(out_ch)
        self.shortcut = shortcut(in_ch, out_ch, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, layers=(3, 3, 3), cardinality: int = 2, bottleneck_width: int = 64,
                 num_classes: int = 10, width: float = 1.0):
        super().__init__()
        planes = [scaled(p, width) for p in STAGE_PLANES]
        self.stem = nn.Sequential(conv3x3(3, planes[0]), nn.BatchNorm2d(planes[0]), nn.ReLU(inplace=True))
        self.stages, in_ch = make_stages(
            lambda i, p, stride, first: Bottleneck(i, p, stride, cardinality, bottleneck_width),
            Bottleneck.expansion, planes[0], planes, layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def check(knobs: dict) -> KnobError | None:
    # Stage 1 has the fewest channels per group; it must keep at least one.
    d, width = knobs["bottleneck_width"], knobs["width"]
    if group_width(scaled(STAGE_PLANES[0], width), d) < 1:
        return KnobError("bottleneck_width", d,
                         f"x width {width} leaves 0 channels per group in stage 1; at width {width} "
                         f"use bottleneck_width >= {-(-64 // scaled(STAGE_PLANES[0], width))}")
    return None


@register(family="ResNeXt", paper=PAPER, check=check,
          knobs=[WIDTH,
                 Knob("cardinality", int, 2, low=1, high=64, help="C: groups of the 3x3 conv"),
                 Knob("bottleneck_width", int, 64, low=1, high=128,
                      help="d: channels per group in stage 1 (doubles per stage)")],
          smallest={"width": 0.125})
def resnext29(num_classes: int = 10, width: float = 1.0, cardinality: int = 2,
              bottleneck_width: int = 64) -> ResNeXt:
    return ResNeXt((3, 3, 3), cardinality, bottleneck_width, num_classes, width)
