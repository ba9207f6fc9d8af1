"""archs/densenet.py: DenseNet-121 and DenseNet-BC (Huang et al. 2017), CIFAR-sized."""

from __future__ import annotations

import pytest

import archs
from archs import densenet
from archtest import builds_and_trains, rejects

NAMES = ["densenet121", "densenet_bc"]


def test_densenets_are_registered():
    assert archs.names("densenet*") == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("setting", ["defaults", "smallest"])
def test_densenet_builds_and_backpropagates_at_defaults_and_smallest(name, setting):
    builds_and_trains(name, setting)


def test_densenet121_parameter_count_matches_kuangliu():
    # Source: kuangliu/pytorch-cifar models/densenet.py DenseNet121() (blocks 6/12/24/16, k=32,
    # reduction 0.5, 3x3 stem to 2k). Checked: same count by instantiating it.
    assert archs.count_params(archs.create_on_meta("densenet121")) == 6_956_298


@pytest.mark.parametrize("depth, growth_rate, expected", [
    (100, 12, 769_162),     # DenseNet-BC-100, k=12 (paper Table 2: 0.8M)
    (250, 24, 15_324_406),  # DenseNet-BC-250, k=24 (paper Table 2: 15.3M)
])
def test_densenet_bc_parameter_counts_match_bamos(depth, growth_rate, expected):
    # Source: bamos/densenet.pytorch densenet.py, DenseNet(growthRate, depth, reduction=0.5,
    # nClasses=10, bottleneck=True). Checked: same counts, and (BC-100) equal log-probabilities with
    # our weights loaded.
    model = archs.create_on_meta("densenet_bc", depth=depth, growth_rate=growth_rate)
    assert archs.count_params(model) == expected


def test_densenet_transitions_keep_floor_of_compression_times_channels():
    model = archs.create("densenet_bc", depth=40, growth_rate=12, compression=0.3)
    transitions = [m for m in model.modules() if isinstance(m, densenet.Transition)]
    # block 1: 24 + 6 x 12 = 96 -> floor(28.8) = 28; block 2: 28 + 72 = 100 -> 30
    assert [(t[2].in_channels, t[2].out_channels) for t in transitions] == [(96, 28), (100, 30)]
    stem = model.features[0]
    assert stem.kernel_size == (3, 3) and stem.stride == (1, 1) and stem.out_channels == 24


def test_densenet_rejects_unknown_and_out_of_range_knobs():
    assert "is not a knob of densenet121" in str(rejects("densenet121", {"depth": 100}, "depth"))
    rejects("densenet_bc", {"compression": 0.0}, "compression")
    rejects("densenet_bc", {"compression": 1.5}, "compression")
    rejects("densenet121", {"growth_rate": 0}, "growth_rate")


def test_densenet_bc_rejects_a_depth_that_is_not_6n_plus_4():
    assert "is not 6n+4" in str(rejects("densenet_bc", {"depth": 101}, "depth"))
    archs.validate("densenet_bc", {"depth": 190})


def test_densenet_rejects_a_compression_that_leaves_a_transition_empty_at_this_growth_rate():
    # k = 1 at width 0.125: block 1 ends with 2 + 6 = 8 channels, and floor(8 x 0.1) = 0.
    knobs = {"width": 0.125, "growth_rate": 1, "compression": 0.1, "depth": 40}
    rejects("densenet_bc", knobs, "compression")
    archs.validate("densenet_bc", {**knobs, "compression": 0.25})
