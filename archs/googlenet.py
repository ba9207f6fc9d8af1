"""GoogLeNet / Inception v1 (Szegedy et al. 2015, "Going Deeper with Convolutions"), CIFAR-sized.

The CIFAR variant of kuangliu/pytorch-cifar (models/googlenet.py): the paper's nine Inception modules
3a-5b with the widths of the paper's Table 1, but
- the ImageNet stem (7x7/2 conv, max-pool, 1x1 and 3x3 convs, max-pool) is one 3x3 stride-1 conv to
  192 channels, so the modules run at 32x32, 16x16 and 8x8;
- every conv is followed by BatchNorm (the paper predates it) and keeps its bias, as kuangliu's does;
- the 5x5 branch is two stacked 3x3 convs (the Inception v2 factorisation kuangliu uses);
- no auxiliary classifiers, no dropout before the classifier.
At width 1 it has 6,166,250 parameters for 10 classes, as kuangliu's GoogLeNet().
"""

from __future__ import annotations

import torch
from torch import nn

from archs.common import init_weights, scaled
from archs.registry import WIDTH, register

PAPER = "Szegedy et al. 2015, Going Deeper with Convolutions (arXiv:1409.4842)"


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True)]


class Inception(nn.Module):
    """Four parallel branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3 (the "5x5");
    3x3 max-pool -> 1x1. Argument names are the columns of the paper's Table 1."""

    def __init__(self, in_ch: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
                 pool_proj: int):
        super().__init__()
        self.branch1 = nn.Sequential(*conv_bn_relu(in_ch, n1x1, 1))
        self.branch2 = nn.Sequential(*conv_bn_relu(in_ch, n3x3red, 1), *conv_bn_relu(n3x3red, n3x3, 3))
        self.branch3 = nn.Sequential(*conv_bn_relu(in_ch, n5x5red, 1), *conv_bn_relu(n5x5red, n5x5, 3),
                                     *conv_bn_relu(n5x5, n5x5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *conv_bn_relu(in_ch, pool_proj, 1))
        self.out_channels = n1x1 + n3x3 + n5x5 + pool_proj

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


# Table 1 of the paper: (name, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj);
# "pool3"/"pool4" = the 3x3 stride-2 max-pool after that group.
MODULES = [
    ("3a", 64, 96, 128, 16, 32, 32), ("3b", 128, 128, 192, 32, 96, 64), "pool3",
    ("4a", 192, 96, 208, 16, 48, 64), ("4b", 160, 112, 224, 24, 64, 64),
    ("4c", 128, 128, 256, 24, 64, 64), ("4d", 112, 144, 288, 32, 64, 64),
    ("4e", 256, 160, 320, 32, 128, 128), "pool4",
    ("5a", 256, 160, 320, 32, 128, 128), ("5b", 384, 192, 384, 48, 128, 128),
]
STEM_CHANNELS = 192


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        stem_ch = scaled(STEM_CHANNELS, width)
        self.stem = nn.Sequential(*conv_bn_relu(3, stem_ch, 3))
        in_ch, layers = stem_ch, nn.Sequential()
        for spec in MODULES:
            if isinstance(spec, str):
                layers.add_module(spec, nn.MaxPool2d(3, 2, 1))
                continue
            name, *widths = spec
            module = Inception(in_ch, *(scaled(w, width) for w in widths))
            layers.add_module(f"inception{name}", module)
            in_ch = module.out_channels
        self.inceptions = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.fc(self.pool(self.inceptions(self.stem(x))).flatten(1))


@register(family="GoogLeNet", knobs=[WIDTH], paper=PAPER,
          smallest={"width": 0.125})
def googlenet(num_classes: int = 10, width: float = 1.0) -> GoogLeNet:
    return GoogLeNet(num_classes, width)
