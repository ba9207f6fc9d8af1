"""MobileNet v1 (Howard et al. 2017) and MobileNet v2 (Sandler et al. 2018), CIFAR-sized.

MobileNet v1, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications":
a 3x3 conv then 13 depthwise-separable blocks (3x3 depthwise conv, BN, ReLU, 1x1 pointwise conv, BN,
ReLU) of Table 1, global pool, linear. `width` is the paper's width multiplier alpha, applied to
every layer. CIFAR variant as kuangliu/pytorch-cifar (models/mobilenet.py): the stem conv has stride
1 instead of 2, so the four stride-2 blocks take 32x32 to 2x2. At width 1 it has 3,217,226
parameters for 10 classes, as kuangliu's MobileNet().

MobileNet v2, "MobileNetV2: Inverted Residuals and Linear Bottlenecks": a 3x3 conv, then the
bottleneck sequence of Table 2 - each block a 1x1 expansion by the expansion factor t, 3x3 depthwise
conv, and a linear (no activation) 1x1 projection, with a residual when stride is 1 and the widths
match - then a 1x1 conv to 1280, global pool, linear. ReLU6 throughout, as in the paper. `width` is
the width multiplier (channels rounded to multiples of 8; the last conv is never narrowed below
1280, as in the paper); `expansion` is t for every block but the first, which the paper fixes at 1.
CIFAR strides as in kuangliu/pytorch-cifar (models/mobilenetv2.py): the stem and the first 24-channel
block have stride 1 instead of 2, so the features end at 4x4. The blocks themselves follow the paper
and torchvision (no expansion conv when t = 1, identity residuals only), where kuangliu adds a 1x1
projection shortcut to stride-1 blocks that change width and keeps the t = 1 expansion conv; so at
width 1 we have torchvision's mobilenet_v2 count, 2,236,682 for 10 classes (kuangliu's: 2,296,922).
"""

from __future__ import annotations

from torch import nn

from archs.common import conv_bn, init_weights, scaled
from archs.registry import WIDTH, Knob, register

PAPER_V1 = ("Howard et al. 2017, MobileNets: Efficient Convolutional Neural Networks for Mobile "
            "Vision Applications (arXiv:1704.04861)")
PAPER_V2 = ("Sandler et al. 2018, MobileNetV2: Inverted Residuals and Linear Bottlenecks "
            "(arXiv:1801.04381)")


# --- MobileNet v1 -------------------------------------------------------------------------------

class DepthwiseSeparable(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.depthwise = conv_bn(in_ch, in_ch, 3, stride, groups=in_ch)
        self.pointwise = conv_bn(in_ch, out_ch, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


# Table 1 of the paper after the stem: (output channels, stride) of each depthwise-separable block.
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
             (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
V1_STEM = 32


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        in_ch = scaled(V1_STEM, width)
        self.stem = conv_bn(3, in_ch, 3, stride=1)  # stride 2 in the paper; 1 keeps 32x32 at the start
        blocks = []
        for channels, stride in V1_BLOCKS:
            blocks.append(DepthwiseSeparable(in_ch, scaled(channels, width), stride))
            in_ch = scaled(channels, width)
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


@register(family="MobileNet", knobs=[WIDTH], paper=PAPER_V1,
          smallest={"width": 0.125})
def mobilenet_v1(num_classes: int = 10, width: float = 1.0) -> MobileNetV1:
    return MobileNetV1(num_classes, width)


# --- MobileNet v2 -------------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = int(round(in_ch * expansion))
        layers: list[nn.Module] = []
        if expansion != 1:  # with t = 1 the expansion conv would map in_ch to in_ch: the paper omits it
            layers.append(conv_bn(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   conv_bn(hidden, out_ch, 1, act=None)]  # linear bottleneck: no ReLU after projecting
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


# Table 2 of the paper after the stem: (expansion t or None for the `expansion` knob, channels c,
# repeats n, stride s). CIFAR: the 24-channel stage has stride 1 (2 in the paper).
V2_STAGES = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
             (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]
V2_STEM, V2_LAST = 32, 1280


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, expansion: int = 6):
        super().__init__()
        in_ch = scaled(V2_STEM, width, 8)
        self.stem = conv_bn(3, in_ch, 3, stride=1, act=nn.ReLU6)  # stride 2 in the paper
        blocks = []
        for t, channels, repeats, stride in V2_STAGES:
            out_ch = scaled(channels, width, 8)
            for i in range(repeats):
                blocks.append(InvertedResidual(in_ch, out_ch, stride if i == 0 else 1, t or expansion))
                in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        last = scaled(V2_LAST, max(1.0, width), 8)
        self.head = conv_bn(in_ch, last, 1, act=nn.ReLU6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.head(self.blocks(self.stem(x)))).flatten(1))


@register(family="MobileNet", paper=PAPER_V2,
          knobs=[WIDTH,
                 Knob("expansion", int, 6, low=1, high=8,
                      help="expansion factor t of the inverted residual blocks (the first block keeps t=1)")],
          # t stays at the paper's 6 so the quickstart model is a real MobileNet v2: width 0.125 is cheap
          smallest={"width": 0.125})
def mobilenet_v2(num_classes: int = 10, width: float = 1.0, expansion: int = 6) -> MobileNetV2:
    return MobileNetV2(num_classes, width, expansion)
