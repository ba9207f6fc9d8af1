"""AlexNet (Krizhevsky et al. 2012, "ImageNet Classification with Deep Convolutional Neural
Networks"), CIFAR-sized.

Five conv layers and three fully connected layers, as in the paper, with the widths the common CIFAR
ports use (64-192-384-256-256, torchvision's single-GPU AlexNet) and 3x3 kernels. The layout is that
of icpm/pytorch-cifar10 (models/AlexNet.py) with one change: its first conv has stride 2, which with
the max-pool after it cuts 32x32 to 8x8 before the second layer; ours has stride 1, so three 2x2
max-pools leave 4x4x256 features (not 2x2x256) for the 4096-4096 classifier. That makes the first
linear layer 4x larger: 35,855,178 parameters for 10 classes at width 1, where icpm's has
23,272,266. No BatchNorm and no local response normalisation; dropout before the first two linear
layers as in the paper.
"""

from __future__ import annotations

from torch import nn

from archs.common import init_weights, scaled
from archs.registry import WIDTH, Knob, register

PAPER = ("Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep Convolutional "
         "Neural Networks (NeurIPS 2012)")

# (out channels, max-pool after) for the five convs; the classifier's hidden width.
CONVS = [(64, True), (192, True), (384, False), (256, False), (256, True)]
HIDDEN = 4096
FEATURE_SIZE = 32 // 2 ** sum(pool for _, pool in CONVS)  # 4: the spatial size into the classifier


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for channels, pool in CONVS:
            out_ch = scaled(channels, width)
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
            if pool:
                layers.append(nn.MaxPool2d(2, 2))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        hidden = scaled(HIDDEN, width)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_ch * FEATURE_SIZE ** 2, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register(family="AlexNet", paper=PAPER,
          knobs=[WIDTH,
                 Knob("dropout", float, 0.5, low=0.0, high=0.9,
                      help="dropout probability before the first two linear layers")],
          smallest={"width": 0.125},
          input_size=32, input_reason=f"its classifier's first Linear is sized for the {FEATURE_SIZE}x{FEATURE_SIZE} "
                                      f"feature map of a 32x32 input")
def alexnet(num_classes: int = 10, width: float = 1.0, dropout: float = 0.5) -> AlexNet:
    return AlexNet(num_classes, width, dropout)
