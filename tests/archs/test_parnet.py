"""archs/parnet.py: ParNet (Goyal et al. 2021), CIFAR-sized, with RepVGG-style reparameterization."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archs
from archs import parnet
from archtest import builds_and_trains, rejects


@pytest.mark.parametrize("setting", ["defaults", "smallest"])
def test_parnet_builds_and_backpropagates_at_defaults_and_smallest(setting):
    builds_and_trains("parnet", setting)


def test_parnet_m_parameter_count_matches_the_official_code():
    # Source: imankgoyal/NonDeepNetworks, imagenet/timm/models/simplenet_impl/simpnet.py, built with
    # SimpNet(planes=[128, 256, 512, 2048], num_blocks=[5, 6, 6, 1], additional_branches=['swish'])
    # and a 10-class head: 36,924,746. Checked against that code (blocks 1-2 rebuilt at our CIFAR
    # stride 1, which changes no weights): same count, and equal logits with our weights loaded.
    assert archs.count_params(archs.create_on_meta("parnet")) == 36_924_746


def test_parnet_depth_sets_the_stream_lengths_as_the_paper_counts_depth():
    model = archs.create("parnet", width=0.125, depth=12)
    assert [len(stream) for stream in model.streams] == [4, 5, 5]  # official num_blocks [5, 6, 6, 1]
    model = archs.create("parnet", width=0.125, depth=8)
    assert [len(stream) for stream in model.streams] == [0, 1, 1]


def test_parnet_width_rounds_channels_up_to_even_so_fusion_groups_always_divide():
    # 128 x 0.13 = 16.64 -> 18; 256 x 0.13 = 33.28 -> 34: no width in range needs a cross-knob rule.
    model = archs.create("parnet", width=0.13, depth=8)
    assert model.streams[1][0].skip_bn.num_features == 34
    assert model.fuse2.down.conv.conv3x3[0].groups == 2


def test_parnet_rejects_unknown_and_out_of_range_knobs():
    rejects("parnet", {"streams": 3}, "streams")
    assert "[8, 16]" in str(rejects("parnet", {"depth": 20}, "depth"))
    rejects("parnet", {"width": 8.0}, "width")


def _randomize_batchnorm(model: nn.Module) -> None:
    # Fresh BNs are the identity in eval mode, which would make folding them trivially right.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)


@torch.no_grad()
def test_parnet_reparameterized_model_gives_the_same_eval_logits():
    torch.manual_seed(0)
    model = archs.create("parnet", width=0.25, depth=9)
    _randomize_batchnorm(model)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    params_before = archs.count_params(model)
    assert model.reparameterize() is model
    after = model(x)
    assert torch.allclose(before, after, rtol=0, atol=1e-4), (before - after).abs().max()
    # The 1x1 conv-BN branches are gone: one 3x3 conv with bias per block remains.
    assert archs.count_params(model) < params_before
    assert not any(isinstance(m, parnet._RepConv) and m.fused is None for m in model.modules())
    for m in model.modules():
        if isinstance(m, parnet._RepConv):
            assert not hasattr(m, "conv1x1") and m.fused.kernel_size == (3, 3)


@torch.no_grad()
def test_parnet_strided_fold_matches_average_pool_then_1x1():
    # The downsampling block's 1x1 branch sees a 2x2 average pool; its fold is a 3x3 stride-2 kernel.
    torch.manual_seed(0)
    block = parnet._RepConv(6, 8, stride=2, groups=2)
    _randomize_batchnorm(block)
    block.eval()
    x = torch.randn(2, 6, 16, 16)
    before = block(x)
    block.reparameterize()
    assert torch.allclose(before, block(x), rtol=0, atol=1e-5)
