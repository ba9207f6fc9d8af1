"""GoogLeNet / Inception v1, CIFAR variant (archs/googlenet.py)."""

import pytest
import torch

import archs
from archtest import rejects, train_step


@pytest.fixture(scope="module")
def default_model():
    return archs.create("googlenet")


def test_googlenet_builds_and_trains_at_defaults(default_model):
    assert train_step(default_model).shape == (2, 10)


def test_googlenet_builds_and_trains_at_smallest():
    smallest = archs.get("googlenet").smallest
    assert smallest == {"width": 0.125}
    assert train_step(archs.create("googlenet", num_classes=100, **smallest), 100).shape == (2, 100)


# kuangliu/pytorch-cifar models/googlenet.py @ 64fe317af0709823a23de5010c173c1912881965, GoogLeNet()
# (10 classes). Verified: that file was fetched, instantiated, and its weights loaded into ours in
# order gave the same eval-mode logits (max difference 1.5e-8).
def test_googlenet_parameter_count_matches_kuangliu_cifar_googlenet(default_model):
    assert archs.count_params(default_model) == 6_166_250


def test_googlenet_runs_inception_modules_at_32_16_and_8_pixels():
    model = archs.create("googlenet", width=0.125)
    sizes = {}
    for name, module in model.inceptions.named_children():
        if name.startswith("inception"):
            module.register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name[9:], o.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))
    assert sizes == {"3a": 32, "3b": 32, "4a": 16, "4b": 16, "4c": 16, "4d": 16, "4e": 16, "5a": 8, "5b": 8}


def test_googlenet_module_widths_follow_the_paper_table():
    model = archs.create("googlenet", width=0.125)
    # 5b at width 1: 384 + 384 + 128 + 128 = 1024 channels into the classifier; x 0.125 = 128.
    assert model.inceptions.inception5b.out_channels == 128 == model.fc.in_features


def test_googlenet_rejects_unknown_knob():
    rejects("googlenet", {"aux_logits": True}, "aux_logits")


@pytest.mark.parametrize("width", [0.0, 0.1, 4.5, "1"])
def test_googlenet_rejects_width_outside_its_range(width):
    rejects("googlenet", {"width": width}, "width")


def test_googlenet_has_no_cross_knob_rule_so_width_range_ends_validate():
    assert archs.get("googlenet").check is None
    for width in (0.125, 4.0):
        archs.validate("googlenet", {"width": width})
