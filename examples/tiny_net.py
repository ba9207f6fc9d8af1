"""A small convolutional network, as a user would write one: a plain PyTorch module. Named in a
sweep file as `arch: ../examples/tiny_net.py:TinyNet` (experiments/your_model.yaml), its typed
constructor arguments are the knobs a sweep searches; `num_classes` and `image_size` are filled in.
"""

from __future__ import annotations

from typing import Literal

from torch import nn


def block(in_ch: int, out_ch: int, act: str) -> nn.Sequential:
    """3x3 conv, BatchNorm, activation, then a 2x2 max-pool: half the side, `out_ch` channels."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True) if act == "relu" else nn.GELU(), nn.MaxPool2d(2))


class TinyNet(nn.Module):
    """`depth` conv blocks, each doubling the channels from `width`, then global average pooling,
    dropout and one linear layer: any image size from 2**depth pixels up."""

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 16, depth: Literal[2, 3, 4] = 3,
                 act: Literal["relu", "gelu"] = "relu", dropout: float = 0.0):
        super().__init__()
        if image_size < 2 ** depth:
            raise ValueError(f"depth {depth} halves a {image_size}-pixel image below 1 pixel")
        channels = [3] + [width * 2 ** i for i in range(depth)]
        self.features = nn.Sequential(*(block(a, b, act) for a, b in zip(channels, channels[1:])))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))
