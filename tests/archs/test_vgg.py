"""VGG-11/13/16/19 with BatchNorm, CIFAR variant (archs/vgg.py)."""

import pytest
import torch

import archs
from archtest import rejects, train_step

NAMES = ["vgg11", "vgg13", "vgg16", "vgg19"]


@pytest.mark.parametrize("name", NAMES)
def test_vgg_builds_and_trains_at_defaults_and_smallest(name):
    arch = archs.get(name)
    assert arch.family == "VGG" and arch.smallest == {"width": 0.125}
    for knobs in ({}, arch.smallest):
        assert train_step(archs.create(name, num_classes=10, **knobs)).shape == (2, 10)


def test_vgg_honours_num_classes():
    assert train_step(archs.create("vgg11", num_classes=100, width=0.125), 100).shape == (2, 100)


# kuangliu/pytorch-cifar models/vgg.py @ 64fe317af0709823a23de5010c173c1912881965, VGG('VGG11'..'VGG19')
# (10 classes). Verified: that file was fetched, instantiated, and its weights loaded into ours in
# order gave identical eval-mode logits.
@pytest.mark.parametrize("name,params", [("vgg11", 9_231_114), ("vgg13", 9_416_010),
                                         ("vgg16", 14_728_266), ("vgg19", 20_040_522)])
def test_vgg_parameter_count_matches_kuangliu_cifar_vgg(name, params):
    assert archs.count_params(archs.create_on_meta(name)) == params


def test_vgg_width_scales_every_conv():
    model = archs.create("vgg16", width=0.5)
    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]
    assert model.classifier.in_features == 256


def test_vgg_rejects_unknown_knob():
    assert "width" in str(rejects("vgg16", {"batch_norm": False}, "batch_norm"))


@pytest.mark.parametrize("width", [0.0, 0.1, 4.5, "wide", True])
def test_vgg_rejects_width_outside_its_range(width):
    rejects("vgg19", {"width": width}, "width")


def test_vgg_has_no_cross_knob_rule_so_width_range_ends_validate():
    # VGG's only knob is width; there is no combination to reject, so both ends of its range pass.
    assert archs.get("vgg16").check is None
    for width in (0.125, 4.0):
        assert archs.validate("vgg16", {"width": width}) == {"width": width}
