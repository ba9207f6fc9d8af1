"""MobileNet v1 and v2, CIFAR variants (archs/mobilenet.py)."""

import pytest
import torch

import archs
from archs.mobilenet import InvertedResidual
from archtest import rejects, train_step


def final_feature_size(model) -> int:
    """Spatial size of the features that reach global pooling."""
    seen = []
    model.pool.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    return seen[0]


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_mobilenet_builds_and_trains_at_defaults_and_smallest(name):
    arch = archs.get(name)
    assert arch.family == "MobileNet" and arch.smallest == {"width": 0.125}
    for knobs in ({}, arch.smallest):
        assert train_step(archs.create(name, num_classes=10, **knobs)).shape == (2, 10)


# kuangliu/pytorch-cifar models/mobilenet.py @ 818df5102cc146e336ffae5bdff68a794d9caea2, MobileNet()
# (10 classes). Verified: that file was fetched, instantiated, and its weights loaded into ours in
# order gave identical eval-mode logits.
def test_mobilenet_v1_parameter_count_matches_kuangliu_cifar_mobilenet():
    assert archs.count_params(archs.create_on_meta("mobilenet_v1")) == 3_217_226


# torchvision.models.mobilenet_v2(num_classes=10) (torchvision 0.29.1): strides do not change the
# count, and with its stem and first 24-channel block set to stride 1 its weights loaded into ours gave
# identical eval-mode logits (verified). kuangliu/pytorch-cifar models/mobilenetv2.py has 2,296,922:
# it adds 1x1 projection shortcuts and keeps an expansion conv in the t=1 block, which the paper
# and torchvision do not.
def test_mobilenet_v2_parameter_count_matches_torchvision_mobilenet_v2():
    assert archs.count_params(archs.create_on_meta("mobilenet_v2")) == 2_236_682


def test_mobilenet_v1_width_multiplier_scales_every_layer():
    model = archs.create("mobilenet_v1", width=0.25)
    assert model.stem[0].out_channels == 8 and model.fc.in_features == 256


def test_mobilenet_v2_width_below_one_keeps_the_1280_wide_last_conv():
    assert archs.create("mobilenet_v2", width=0.5).fc.in_features == 1280
    assert archs.create("mobilenet_v2", width=1.5).fc.in_features == 1920


def test_mobilenet_v2_expansion_knob_sets_every_block_but_the_first():
    model = archs.create("mobilenet_v2", width=0.25, expansion=3)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    hidden = [b.conv[-2][0].out_channels for b in blocks]  # the depthwise conv's width
    inputs = [model.stem[0].out_channels] + [b.conv[-1][0].out_channels for b in blocks[:-1]]
    assert hidden[0] == inputs[0]
    assert all(h == 3 * c for h, c in zip(hidden[1:], inputs[1:]))


def test_mobilenet_v2_with_expansion_one_has_no_expansion_convs_and_trains():
    model = archs.create("mobilenet_v2", width=0.125, expansion=1)
    assert all(len(b.conv) == 2 for b in model.modules() if isinstance(b, InvertedResidual))
    assert train_step(model).shape == (2, 10)


def test_mobilenet_v2_residuals_are_identity_only_where_shapes_match():
    model = archs.create("mobilenet_v2")  # at width 1: narrower widths can make stage ends match
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert sum(b.use_residual for b in blocks) == 10  # Table 2: n - 1 per stage


def test_mobilenets_keep_enough_resolution_for_cifar():
    # Stride-1 stems (and, for v2, a stride-1 first 24-channel stage) as in kuangliu/pytorch-cifar.
    assert final_feature_size(archs.create("mobilenet_v1", width=0.125)) == 2
    assert final_feature_size(archs.create("mobilenet_v2", width=0.125)) == 4


def test_mobilenet_rejects_unknown_knob():
    rejects("mobilenet_v1", {"expansion": 6}, "expansion")  # a v2 knob
    rejects("mobilenet_v2", {"alpha": 0.5}, "alpha")  # the paper's symbol; the knob is `width`


@pytest.mark.parametrize("name,knob,value", [
    ("mobilenet_v1", "width", 0.0), ("mobilenet_v1", "width", 8.0),
    ("mobilenet_v2", "width", 0.1), ("mobilenet_v2", "expansion", 0),
    ("mobilenet_v2", "expansion", 9), ("mobilenet_v2", "expansion", 2.5),
])
def test_mobilenet_rejects_out_of_range_values(name, knob, value):
    rejects(name, {knob: value}, knob)


def test_mobilenet_knobs_are_independent_so_every_corner_validates():
    # Channels are rounded to multiples of 8 and the expansion is a plain multiplier, so no
    # combination of in-range values is invalid: there is no cross-knob rule to enforce.
    assert archs.get("mobilenet_v1").check is None and archs.get("mobilenet_v2").check is None
    for width in (0.125, 4.0):
        archs.validate("mobilenet_v1", {"width": width})
        for expansion in (1, 8):
            archs.validate("mobilenet_v2", {"width": width, "expansion": expansion})
