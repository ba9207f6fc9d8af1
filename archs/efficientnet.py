"""EfficientNet-B0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks"), CIFAR-sized.

The B0 baseline of the paper's Table 1: a 3x3 conv to 32 channels, seven stages of MBConv blocks
(1x1 expansion, depthwise kxk conv, squeeze-and-excitation with a quarter of the block's input
channels, linear 1x1 projection, identity residual with stochastic depth when shapes match), a 1x1
conv to 1280, global pool, dropout, linear. SiLU (swish) throughout. The compound-scaling knobs are
exposed: `width` is the width coefficient (channels rounded to multiples of 8), `depth_coefficient`
multiplies each stage's repeats (rounded up), `drop_connect_rate` is the stochastic-depth drop
probability of the last block (the paper's survival probability 0.8 is rate 0.2), growing linearly
from 0 over the blocks as in the reference TF and torchvision code, and `dropout` is the dropout
before the classifier.

CIFAR strides: the stem and the first 24-channel stage have stride 1 instead of 2 (the change
kuangliu/pytorch-cifar makes to MobileNet v2, whose block EfficientNet reuses), so three stride-2
stages take 32x32 to 4x4. kuangliu's own efficientnet.py keeps that stage at stride 2 (ending at
2x2) and also drops the 1280-wide head conv; we keep the paper's head. Parameter counts do not depend
on strides, so at width 1 ours equals torchvision's efficientnet_b0: 4,020,358 for 10 classes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from archs.common import SqueezeExcite, conv_bn, init_weights, scaled
from archs.registry import WIDTH, Knob, register

PAPER = ("Tan & Le 2019, EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks "
         "(arXiv:1905.11946)")


class StochasticDepth(nn.Module):
    """Drops a residual branch for whole samples with probability `p` while training, scaling the
    kept ones by 1/(1-p) so eval (where it is the identity) sees the same expectation
    (Huang et al. 2016, "Deep Networks with Stochastic Depth")."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expansion: int,
                 drop_prob: float):
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:  # a t = 1 expansion would be in_ch -> in_ch: the reference code omits it
            layers.append(conv_bn(in_ch, hidden, 1, act=nn.SiLU))
        layers += [
            conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
            # SE width is a quarter of the block's *input* channels, as in the reference code.
            SqueezeExcite(hidden, max(1, in_ch // 4), act=nn.SiLU),
            conv_bn(hidden, out_ch, 1, act=None),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch
        # Stochastic depth drops the residual branch, so only blocks with a residual have one.
        self.drop = StochasticDepth(drop_prob) if self.use_residual else nn.Identity()

    def forward(self, x):
        out = self.conv(x)
        return x + self.drop(out) if self.use_residual else out


# Table 1 of the paper: (expansion, channels, repeats, kernel, stride). CIFAR: the 24-channel
# stage has stride 1 (2 in the paper).
B0_STAGES = [(1, 16, 1, 3, 1), (6, 24, 2, 3, 1), (6, 40, 2, 5, 2), (6, 80, 3, 3, 2),
             (6, 112, 3, 5, 1), (6, 192, 4, 5, 2), (6, 320, 1, 3, 1)]
STEM, HEAD_MULTIPLE = 32, 4  # head conv: 4 x 320 = 1280 channels at width 1


class EfficientNet(nn.Module):
    def __init__(self, stages: list[tuple], num_classes: int = 10, width: float = 1.0,
                 depth_coefficient: float = 1.0, drop_connect_rate: float = 0.2, dropout: float = 0.2):
        super().__init__()
        in_ch = scaled(STEM, width, 8)
        self.stem = conv_bn(3, in_ch, 3, stride=1, act=nn.SiLU)  # stride 2 in the paper
        repeats = [math.ceil(n * depth_coefficient) for _, _, n, _, _ in stages]
        total, index, blocks = sum(repeats), 0, []
        for (expansion, channels, _, kernel, stride), n in zip(stages, repeats):
            out_ch = scaled(channels, width, 8)
            for i in range(n):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expansion,
                                     drop_connect_rate * index / total))
                in_ch, index = out_ch, index + 1
        self.blocks = nn.Sequential(*blocks)
        head = HEAD_MULTIPLE * in_ch
        self.head = conv_bn(in_ch, head, 1, act=nn.SiLU)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(head, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.pool(self.head(self.blocks(self.stem(x)))).flatten(1)
        return self.fc(self.dropout(x))


@register(family="EfficientNet", paper=PAPER,
          knobs=[WIDTH,
                 Knob("depth_coefficient", float, 1.0, low=0.25, high=4.0,
                      help="multiplies every stage's number of blocks (rounded up)"),
                 Knob("drop_connect_rate", float, 0.2, low=0.0, high=0.5,
                      help="stochastic-depth drop probability of the last block (linear from 0)"),
                 Knob("dropout", float, 0.2, low=0.0, high=0.9, help="dropout before the classifier")],
          smallest={"width": 0.125, "depth_coefficient": 0.25})
def efficientnet_b0(num_classes: int = 10, width: float = 1.0, depth_coefficient: float = 1.0,
                    drop_connect_rate: float = 0.2, dropout: float = 0.2) -> EfficientNet:
    return EfficientNet(B0_STAGES, num_classes, width, depth_coefficient, drop_connect_rate, dropout)
