"""VGG (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition") with BatchNorm, CIFAR-sized.

The CIFAR variant of kuangliu/pytorch-cifar (models/vgg.py): the paper's configurations A/B/D/E as
lists of 3x3 conv widths and 'M' max-pools, each conv followed by BatchNorm and ReLU. Five 2x2
max-pools take 32x32 down to 1x1, so the paper's three 4096-wide fully connected layers become a
single linear classifier on the 512 x `width` features. VGG-16 at width 1 has 14,728,266 parameters
for 10 classes, as kuangliu's VGG('VGG16').
"""

from __future__ import annotations

from torch import nn

from archs.common import init_weights, scaled
from archs.registry import WIDTH, register

PAPER = ("Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image "
         "Recognition (arXiv:1409.1556)")

# Table 1 of the paper, columns A, B, D and E (11, 13, 16 and 19 weight layers): conv widths,
# "M" = 2x2 max-pool.
CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}

def make_features(config: list, width: float) -> tuple[nn.Sequential, int]:
    """The conv stack of one configuration and its output channel count."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        out_ch = scaled(item, width)
        # The conv keeps its bias although BatchNorm follows: kuangliu and torchvision's vgg*_bn
        # both do, and keeping it keeps our parameter counts comparable with theirs.
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    return nn.Sequential(*layers), in_ch


# Five 2x2 max-pools take a 32x32 input to 1x1, and the classifier is a Linear on exactly those
# 512 x width features: another size reaches it as a different feature count (or as 0x0).
FIXED_INPUT = dict(input_size=32, input_reason="five max-pools take 32x32 to the 1x1 map its linear classifier "
                                               "is sized for")


class VGG(nn.Module):
    def __init__(self, config: list, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        self.features, out_ch = make_features(config, width)
        self.classifier = nn.Linear(out_ch, num_classes)
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register(family="VGG", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125}, **FIXED_INPUT)
def vgg11(num_classes: int = 10, width: float = 1.0) -> VGG:
    return VGG(CONFIGS["A"], num_classes, width)


@register(family="VGG", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125}, **FIXED_INPUT)
def vgg13(num_classes: int = 10, width: float = 1.0) -> VGG:
    return VGG(CONFIGS["B"], num_classes, width)


@register(family="VGG", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125}, **FIXED_INPUT)
def vgg16(num_classes: int = 10, width: float = 1.0) -> VGG:
    return VGG(CONFIGS["D"], num_classes, width)


@register(family="VGG", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125}, **FIXED_INPUT)
def vgg19(num_classes: int = 10, width: float = 1.0) -> VGG:
    return VGG(CONFIGS["E"], num_classes, width)
