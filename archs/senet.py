"""SE-ResNet (Hu et al. 2018, "Squeeze-and-Excitation Networks"), CIFAR-sized.

The CIFAR ResNets of archs.resnet with a Squeeze-and-Excitation module in every residual block, on
the residual branch after its last BN and before the addition (the paper's SE-ResNet module, Fig. 3):
global average pool, 1x1 conv to channels / `reduction`, ReLU, 1x1 conv back, sigmoid, rescale.
`reduction` is the paper's ratio r (16 in the paper). As kuangliu/pytorch-cifar (models/senet.py,
its post-activation BasicBlock) the SE layers are 1x1 convs with bias and the reduced width is
channels // r, so se_resnet18 at width 1, r=16 is kuangliu's SENet(BasicBlock, [2, 2, 2, 2]):
11,263,042 parameters for 10 classes (kuangliu's own SENet18 uses pre-activation blocks instead).
se_resnet50 is moskomule/senet.pytorch's se_resnet50 (torchvision ResNet with SEBottleneck) with the
CIFAR stem and bias in the SE layers: 26,051,834 for 10 classes.
"""

from __future__ import annotations

from archs.common import SqueezeExcite, scaled
from archs.registry import WIDTH, Knob, KnobError, register
from archs.resnet import BasicBlock, Bottleneck, ResNet

PAPER = "Hu et al. 2018, Squeeze-and-Excitation Networks (arXiv:1709.01507)"

REDUCTION = Knob("reduction", int, 16, choices=(4, 8, 16, 32), help="r: SE bottleneck ratio")


def se_block_factory(block, reduction: int):
    """ResNet `block_factory`: the plain block with an SE module on its residual branch."""

    def make(in_ch: int, planes: int, stride: int):
        out_ch = planes * block.expansion
        return block(in_ch, planes, stride, attention=SqueezeExcite(out_ch, out_ch // reduction))

    return make


def reduction_check(block):
    """The cross-knob rule for SE-ResNets of `block`: stage 1's SE keeps at least one channel."""

    def check(knobs: dict) -> KnobError | None:
        # The narrowest SE sits in stage 1: it needs at least one channel after the reduction.
        channels = scaled(64, knobs["width"]) * block.expansion
        if channels // knobs["reduction"] < 1:
            ok = [str(r) for r in REDUCTION.choices if channels // r >= 1]
            return KnobError("reduction", knobs["reduction"],
                             f"leaves 0 channels in stage 1's SE ({channels} channels at width "
                             f"{knobs['width']}); use reduction {' or '.join(ok)}")
        return None

    return check


# ResNet-18 and -50 of archs.resnet, SE in every block. At width 0.125 stage 1 has 8 channels
# (BasicBlock) or 32 (Bottleneck): the smallest settings take the largest reduction that leaves 1.


@register(family="SE-ResNet", knobs=[WIDTH, REDUCTION], paper=PAPER,
          check=reduction_check(BasicBlock), smallest={"width": 0.125, "reduction": 8})
def se_resnet18(num_classes: int = 10, width: float = 1.0, reduction: int = 16) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, width,
                  block_factory=se_block_factory(BasicBlock, reduction))


@register(family="SE-ResNet", knobs=[WIDTH, REDUCTION], paper=PAPER,
          check=reduction_check(Bottleneck), smallest={"width": 0.125, "reduction": 32})
def se_resnet50(num_classes: int = 10, width: float = 1.0, reduction: int = 16) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, width,
                  block_factory=se_block_factory(Bottleneck, reduction))
