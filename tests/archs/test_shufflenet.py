"""archs/shufflenet.py: ShuffleNet v1 (Zhang et al. 2018), CIFAR-sized."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import archs
from archs import shufflenet
from archtest import builds_and_trains, rejects


@pytest.mark.parametrize("setting", ["defaults", "smallest"])
def test_shufflenet_builds_and_backpropagates_at_defaults_and_smallest(setting):
    builds_and_trains("shufflenet_v1", setting)


# Source: megvii-model/ShuffleNet-Series, ShuffleNetV1/network.py + blocks.py (the authors' code), built
# with n_class=10 and the same stem and stage widths (their table has g3 only; other groups by
# passing the paper's widths). Checked: equal counts for every valid groups x width, and equal logits
# with our weights loaded once their shuffle is moved to the paper's place.
@pytest.mark.parametrize("groups, width, expected", [
    (3, 1.0, 914_328),   # their model_size='1.0x'
    (3, 0.5, 242_124),   # their model_size='0.5x' (stem 12)
    (3, 2.0, 3_548_976),  # their model_size='2.0x' (stem 48)
    (8, 1.0, 913_128),
    (1, 1.0, 960_696),
])
def test_shufflenet_parameter_counts_match_the_official_code(groups, width, expected):
    assert archs.count_params(archs.create_on_meta("shufflenet_v1", groups=groups, width=width)) == expected


def test_shufflenet_uses_the_papers_stage_widths_and_repeats():
    model = archs.create("shufflenet_v1", groups=4)
    assert [len(stage) for stage in model.stages] == [4, 8, 4]
    assert [stage[-1].bn3.num_features for stage in model.stages] == [272, 544, 1088]
    assert [stage[0].conv1.out_channels for stage in model.stages] == [68, 136, 272]  # 1/4 of output


def test_shufflenet_stage2_first_pointwise_conv_is_not_grouped():
    model = archs.create("shufflenet_v1", groups=3)
    first, second = model.stages[0][0], model.stages[0][1]
    assert first.conv1.groups == 1
    assert second.conv1.groups == 3 and first.conv3.groups == 3
    assert model.stages[1][0].conv1.groups == 3


def test_shufflenet_strided_unit_concatenates_an_average_pooled_shortcut():
    unit = shufflenet.ShuffleUnit(24, 240, stride=2, groups=3, first_group=False)
    assert isinstance(unit.shortcut, nn.AvgPool2d) and unit.conv3.out_channels == 240 - 24
    out = unit(torch.randn(2, 24, 32, 32))
    assert out.shape == (2, 240, 16, 16)


def test_shufflenet_stem_is_cifar_sized():
    model = archs.create("shufflenet_v1")
    conv = model.stem[0]
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.out_channels == 24
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_channel_shuffle_interleaves_the_groups():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert shufflenet.channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_shufflenet_rejects_groups_outside_the_papers_choices():
    assert str(rejects("shufflenet_v1", {"groups": 5}, "groups")) == "groups: 5 is not one of 1, 2, 3, 4, 8"


def test_shufflenet_rejects_a_width_outside_the_scale_factors():
    rejects("shufflenet_v1", {"width": 0.75}, "width")


def test_shufflenet_rejects_an_unknown_knob():
    rejects("shufflenet_v1", {"cardinality": 2}, "cardinality")


def test_shufflenet_rejects_groups_that_do_not_divide_channels():
    # g4 at 0.5x: 136-channel stage, bottleneck 34, and 34 is not divisible by 4.
    message = str(rejects("shufflenet_v1", {"groups": 4, "width": 0.5}, "width"))
    assert "34 channels, not divisible by groups=4" in message
    assert "widths that work with groups=4: 1.0, 2.0" in message


def test_shufflenet_validate_accepts_exactly_the_settings_the_network_can_be_built_at():
    # Built straight from the class, bypassing validate: a setting validate rejects must fail torch's
    # own group checks, and one it accepts must build and give [N, classes] logits. (An eval-mode
    # forward of one image: ~20 ms a setting, where a meta-device forward costs twice that.)
    rejected, unbuildable = set(), set()
    for groups in shufflenet.STAGE_OUT_CHANNELS:
        for width in shufflenet.SCALES:
            try:
                archs.validate("shufflenet_v1", {"groups": groups, "width": width})
            except archs.KnobError:
                rejected.add((groups, width))
            try:
                model = shufflenet.ShuffleNetV1(groups, 10, width).eval()
            except ValueError as e:  # nn.Conv2d: "in_channels/out_channels must be divisible by groups"
                assert "divisible by groups" in str(e)
                unbuildable.add((groups, width))
                continue
            with torch.no_grad():
                assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    # The module docstring's list: g2 and g4 at 0.25x, 0.5x and 1.5x.
    assert rejected == unbuildable == {(g, w) for g in (2, 4) for w in (0.25, 0.5, 1.5)}
