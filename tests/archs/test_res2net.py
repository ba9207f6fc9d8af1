"""archs/res2net.py: Res2Net-50 (Gao et al. 2019) with a CIFAR stem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archs
from archs import res2net
from archtest import builds_and_trains, rejects


@pytest.mark.parametrize("setting", ["defaults", "smallest"])
def test_res2net50_builds_and_backpropagates_at_defaults_and_smallest(setting):
    builds_and_trains("res2net50", setting)


# Source: Res2Net/Res2Net-PretrainedModels res2net.py, Res2Net(Bottle2neck, [3, 4, 6, 3], baseWidth,
# scale, num_classes=10) with its 7x7 stride-2 conv1 swapped for a 3x3 stride-1 conv and its max-pool
# removed (the CIFAR stem; 7,680 fewer weights than its raw count). Checked: same counts, and equal
# logits with our weights loaded.
@pytest.mark.parametrize("base_width, scale, expected", [
    (26, 4, 23_662_930),  # res2net50_26w_4s
    (14, 8, 23_023_626),  # res2net50_14w_8s
])
def test_res2net50_parameter_counts_match_the_official_code_with_a_cifar_stem(base_width, scale, expected):
    model = archs.create_on_meta("res2net50", base_width=base_width, scale=scale)
    assert archs.count_params(model) == expected


def test_res2net_block_splits_into_scale_groups_of_base_width_channels():
    model = archs.create("res2net50", scale=6, base_width=26)
    block = model.stages[1][1]  # stage 2: 128 planes -> w = floor(128 x 26 / 64) = 52
    assert block.width == 52 and block.conv1.out_channels == 52 * 6
    assert len(block.convs) == 5  # s - 1 convolved groups; one passes through
    assert [len(stage) for stage in model.stages] == [3, 4, 6, 3]
    stem = model.stem[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)


def test_res2net_first_block_of_a_stage_pools_the_pass_through_group():
    block = res2net.Bottle2neck(256, 128, stride=2, scale=4, base_width=26, first=True)
    assert isinstance(block.pool, nn.AvgPool2d)
    assert block(torch.randn(2, 256, 16, 16)).shape == (2, 512, 8, 8)


def test_res2net_rejects_unknown_and_out_of_range_knobs():
    rejects("res2net50", {"cardinality": 8}, "cardinality")
    rejects("res2net50", {"scale": 1}, "scale")
    rejects("res2net50", {"base_width": 100}, "base_width")


def test_res2net_rejects_a_base_width_that_leaves_no_channel_per_group_at_this_width():
    # width 0.125: stage 1 has 8 planes, so w = 8 x 4 // 64 = 0.
    assert "use base_width >= 8" in str(rejects("res2net50", {"width": 0.125, "base_width": 4}, "base_width"))
    archs.validate("res2net50", {"width": 0.125, "base_width": 8})
