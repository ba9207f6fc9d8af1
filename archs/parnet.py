"""ParNet (Goyal et al. 2021, "Non-deep Networks", arXiv:2110.07641), CIFAR-sized.

Three parallel streams of RepVGG-SSE blocks at three resolutions, fused late, so the longest path is
12 layers. Built block for block as the authors' code (imankgoyal/NonDeepNetworks,
imagenet/timm/models/simplenet_impl/simpnet.py and repvgg.py, with SiLU as in the paper):

- RepVGG-SSE block (inside the streams): 3x3 conv-BN + 1x1 conv-BN + Skip-Squeeze-Excitation
  (BN of the input, gated by sigmoid(1x1 conv(global average pool of that BN))), summed, SiLU.
- Downsampling block: 3x3 conv-BN (stride 2) + [2x2 average pool, 1x1 conv-BN], no skip; the sum is
  scaled by a single-layer SE computed from the block's input (2 x sigmoid, as the official code).
- Fusion block: BN each of its two inputs, interleave their channels, then a downsampling block with
  groups=2 (and a channel shuffle) so each group sees half of each stream.
- Network: blocks 1-2 (3 -> 64 -> planes[0]) feed stream 1; blocks 3-4 downsample again to feed
  streams 2 and 3; stream 1 is downsampled and fused with stream 2, that with stream 3, then one more
  downsampling block to the head width, global pool, linear.

CIFAR change: ImageNet ParNet halves the resolution in blocks 1 and 2 (224 -> 56 before stream 1);
here those two blocks have stride 1, so the streams run at 32, 16 and 8 pixels and the head pools a
4x4 map - the same 32 -> 4 schedule as the CIFAR ResNets. Strides change no weights: at width 1
(ParNet-M widths 128/256/512/2048, 4/5/5 stream blocks) this has 36,924,746 parameters for 10
classes, the count of the official SimpNet with those settings and a 10-class head (with its blocks
1-2 rebuilt at stride 1 and our weights loaded, its logits equal ours). The paper's table gives 35.0M
for ImageNet ParNet-M, where the official code builds 39.0M; we follow the code.
`width` 1.25 and 1.5625 give ParNet-L's and ParNet-XL's widths; channels are rounded up to even
numbers as the official `round()` does, which keeps every groups=2 fusion convolution valid. Running
stream 1 at full resolution is not cheap: 6.2 GFLOPs per image at width 1 (torch's counter; CIFAR
ResNet-18: 1.1), 1.6 at width 0.5.

`ParNet.reparameterize()` folds each block's 3x3 and 1x1 conv-BN branches into one 3x3 conv with
bias (RepVGG-style, inference only); the SSE branch and the SE gates stay as they are, since they are
not linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archs.common import channel_shuffle, conv_bn, init_weights
from archs.registry import WIDTH, Knob, register

PAPER = "Goyal et al. 2021, Non-deep Networks (arXiv:2110.07641)"

# ParNet-M (paper Table 1 / Figure 2): widths of streams 1-3, and of the last downsampling block.
PLANES_M = (128, 256, 512)
HEAD_PLANES_M = 2048
STEM_MAX = 64  # block 1 has min(64, planes[0]) channels, as in the official code


def even(channels: float) -> int:
    """Round up to an even number, as the official code's `round()` (fusion blocks use groups=2)."""
    return max(2, math.ceil(channels / 2) * 2)


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of the single conv equal to conv -> BN in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class _RepConv(nn.Module):
    """3x3 conv-BN + 1x1 conv-BN (after a 2x2 average pool when strided), foldable into one 3x3."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.in_ch, self.out_ch, self.stride, self.groups = in_ch, out_ch, stride, groups
        self.conv3x3 = conv_bn(in_ch, out_ch, 3, stride, groups, act=None)
        # The paper adds the average pool to the strided 1x1 branch so it sees all four pixels.
        self.pool = nn.AvgPool2d(2) if stride == 2 else nn.Identity()
        self.conv1x1 = conv_bn(in_ch, out_ch, 1, 1, groups, act=None)
        self.fused: nn.Conv2d | None = None

    def forward(self, x):
        if self.fused is not None:
            return self.fused(x)
        return self.conv3x3(x) + self.conv1x1(self.pool(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.fused is not None:
            return
        kernel, bias = fold_bn(*self.conv3x3)
        kernel1, bias1 = fold_bn(*self.conv1x1)
        if self.stride == 2:
            # 2x2 average pool then 1x1 == a 3x3 stride-2 kernel with w/4 in its bottom-right 2x2
            # (padding 1 puts the pooled window at kernel rows/cols 1-2; exact for even inputs).
            kernel1 = F.pad(kernel1.repeat(1, 1, 2, 2) / 4, [1, 0, 1, 0])
        else:
            kernel1 = F.pad(kernel1, [1, 1, 1, 1])
        self.fused = nn.Conv2d(self.in_ch, self.out_ch, 3, self.stride, 1, groups=self.groups, bias=True)
        self.fused.weight.copy_(kernel + kernel1)
        self.fused.bias.copy_(bias + bias1)
        del self.conv3x3, self.pool, self.conv1x1


class RepVGGSSE(nn.Module):
    """The stream block: conv branches plus a Skip-Squeeze-Excitation skip, then SiLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = _RepConv(channels, channels)
        self.skip_bn = nn.BatchNorm2d(channels)
        # One 1x1 conv on the pooled skip (no reduction): the paper keeps SSE a single layer deep.
        self.sse = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1, bias=False),
                                 nn.Sigmoid())
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        skip = self.skip_bn(x)
        return self.act(self.conv(x) + skip * self.sse(skip))


class Downsampling(nn.Module):
    """Conv branches with no skip, gated by an SE of the input; optionally grouped (then shuffled)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 2, groups: int = 1):
        super().__init__()
        self.groups = groups
        self.conv = _RepConv(in_ch, out_ch, stride, groups)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                nn.Conv2d(in_ch, out_ch, 1, groups=groups, bias=False), nn.Sigmoid())
        self.act = nn.SiLU(inplace=True)

    def forward(self, x):
        # 2 x sigmoid, as the official code: a neutral (zero-logit) gate is 1, not 0.5.
        out = self.act(self.conv(x) * (2 * self.se(x)))
        return channel_shuffle(out, self.groups) if self.groups > 1 else out


class Fusion(nn.Module):
    """Merge a stream with the fused result so far: BN each, interleave channels, grouped downsample."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.bn_stream, self.bn_fused = nn.BatchNorm2d(in_ch), nn.BatchNorm2d(in_ch)
        self.down = Downsampling(2 * in_ch, out_ch, stride, groups=2)

    def forward(self, stream, fused):
        # Interleaving (not plain concat) puts half of each input into each of the two conv groups.
        x = torch.stack([self.bn_stream(stream), self.bn_fused(fused)], dim=2).flatten(1, 2)
        return self.down(x)


class ParNet(nn.Module):
    """`planes`: widths of streams 1-3; `stream_blocks`: RepVGG-SSE blocks in each stream."""

    def __init__(self, planes=PLANES_M, head_planes: int = HEAD_PLANES_M, stream_blocks=(4, 5, 5),
                 num_classes: int = 10, width: float = 1.0):
        super().__init__()
        p1, p2, p3 = (even(c * width) for c in planes)
        head = even(head_planes * width)
        stem = min(STEM_MAX, p1)
        # Blocks 1-2 keep stride 1 on 32x32 input (stride 2 on ImageNet; see the module docstring).
        # They stay downsampling blocks (no skip) even where widths match, as in the paper's layout.
        self.stem = nn.Sequential(Downsampling(3, stem, stride=1), Downsampling(stem, p1, stride=1))
        self.to_stream2 = Downsampling(p1, p2)
        self.to_stream3 = Downsampling(p2, p3)
        self.streams = nn.ModuleList(
            nn.Sequential(*[RepVGGSSE(c) for _ in range(n)]) for c, n in zip((p1, p2, p3), stream_blocks))
        self.down1 = Downsampling(p1, p2)
        self.fuse2 = Fusion(p2, p3, stride=2)
        self.fuse3 = Fusion(p3, p3, stride=1)
        self.down_head = Downsampling(p3, head)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)
        init_weights(self)

    def forward(self, x):
        x1 = self.stem(x)
        x2 = self.to_stream2(x1)
        x3 = self.to_stream3(x2)
        s1, s2, s3 = (stream(xi) for stream, xi in zip(self.streams, (x1, x2, x3)))
        y = self.fuse3(s3, self.fuse2(s2, self.down1(s1)))
        return self.fc(self.pool(self.down_head(y)).flatten(1))

    def reparameterize(self) -> "ParNet":
        """Fold every 3x3 + 1x1 conv-BN pair into one 3x3 conv, in place, for inference."""
        for module in [m for m in self.modules() if isinstance(m, _RepConv)]:  # listed before editing
            module.reparameterize()
        return self


# Depth counts layers on the longest path (the paper's definition): blocks 1-4, a stream, two fusions,
# the last downsampling block and the classifier. Streams 2 and 3 get depth - 7 blocks, stream 1 one
# fewer (4/5/5 at depth 12, as the official num_blocks=[5, 6, 6, 1]).
DEPTH = Knob("depth", int, 12, low=8, high=16,
             help="layers on the longest input-to-logit path (12 in the paper)")


@register(family="ParNet", knobs=[WIDTH, DEPTH], paper=PAPER,
          smallest={"width": 0.125, "depth": 8})
def parnet(num_classes: int = 10, width: float = 1.0, depth: int = 12) -> ParNet:
    n = depth - 7
    return ParNet(PLANES_M, HEAD_PLANES_M, (n - 1, n, n), num_classes, width)
