"""EfficientNet-B0, CIFAR strides (archs/efficientnet.py)."""

import pytest
import torch

import archs
from archs.efficientnet import MBConv, StochasticDepth
from archtest import rejects, train_step


def blocks(model):
    return [m for m in model.modules() if isinstance(m, MBConv)]


def test_efficientnet_builds_and_trains_at_defaults_and_smallest():
    arch = archs.get("efficientnet_b0")
    assert arch.smallest == {"width": 0.125, "depth_coefficient": 0.25}
    for knobs in ({}, arch.smallest):
        assert train_step(archs.create("efficientnet_b0", num_classes=10, **knobs)).shape == (2, 10)


# torchvision.models.efficientnet_b0(num_classes=10) (torchvision 0.29.1): strides do not change the
# count, and with its stem and first 24-channel block set to stride 1 its weights loaded into ours gave
# identical eval-mode logits (verified). kuangliu/pytorch-cifar models/efficientnet.py has 3,599,686:
# it has no 1280-wide head conv and keeps an unused expansion conv in the t=1 block.
def test_efficientnet_b0_parameter_count_matches_torchvision_efficientnet_b0():
    assert archs.count_params(archs.create_on_meta("efficientnet_b0")) == 4_020_358


def test_efficientnet_depth_coefficient_rounds_each_stage_up():
    assert len(blocks(archs.create("efficientnet_b0", width=0.125))) == 16  # Table 1: 1+2+2+3+3+4+1
    assert len(blocks(archs.create("efficientnet_b0", width=0.125, depth_coefficient=0.25))) == 7
    # B1's depth coefficient: ceil(1.1 n) = 2+3+3+4+4+5+2, the B1 layout of the reference code.
    assert len(blocks(archs.create("efficientnet_b0", width=0.125, depth_coefficient=1.1))) == 23


def test_efficientnet_width_scales_channels_to_multiples_of_eight():
    model = archs.create("efficientnet_b0", width=2.0)
    assert model.stem[0].out_channels == 64 and model.fc.in_features == 4 * 640


def test_efficientnet_keeps_4x4_features_for_cifar():
    model = archs.create("efficientnet_b0", width=0.125).eval()
    with torch.no_grad():
        assert model.head(model.blocks(model.stem(torch.zeros(1, 3, 32, 32)))).shape[-1] == 4


def test_efficientnet_drop_probability_grows_linearly_to_the_rate_and_sits_on_residual_blocks():
    model = archs.create("efficientnet_b0", width=0.125, drop_connect_rate=0.4)
    for index, block in enumerate(blocks(model)):
        if block.use_residual:
            assert block.drop.p == pytest.approx(0.4 * index / 16)
        else:  # no residual branch to drop
            assert not isinstance(block.drop, StochasticDepth)


def test_stochastic_depth_drops_whole_samples_in_training_and_is_identity_in_eval():
    layer = StochasticDepth(0.5)
    x = torch.ones(256, 3, 2, 2)
    torch.manual_seed(0)
    out = layer.train()(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert (per_sample == per_sample[:, :1]).all()  # the whole sample, never single activations
    assert layer.eval()(x) is x


def test_efficientnet_stochastic_depth_is_random_in_training_and_deterministic_in_eval():
    torch.manual_seed(0)
    model = archs.create("efficientnet_b0", width=0.125, drop_connect_rate=0.5, dropout=0.0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        outs = [model(x) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # ...and that randomness is stochastic depth's: without it (and without dropout) training-mode
    # forwards of the same batch agree.
    model = archs.create("efficientnet_b0", width=0.125, drop_connect_rate=0.0, dropout=0.0).train()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_efficientnet_rejects_unknown_knob():
    # the paper's name; ours is `width`
    message = str(rejects("efficientnet_b0", {"width_coefficient": 1.1}, "width_coefficient"))
    assert "width" in message and "depth_coefficient" in message


@pytest.mark.parametrize("knob,value", [
    ("width", 0.0), ("width", 5.0), ("depth_coefficient", 0.0), ("depth_coefficient", 4.5),
    ("drop_connect_rate", -0.1), ("drop_connect_rate", 0.6), ("dropout", 1.0), ("dropout", "0.2"),
])
def test_efficientnet_rejects_out_of_range_values(knob, value):
    rejects("efficientnet_b0", {knob: value}, knob)


def test_efficientnet_knobs_are_independent_so_every_corner_validates():
    # Rounding keeps every width and depth buildable and the rates are plain probabilities:
    # no combination of in-range values is invalid, so there is no cross-knob rule.
    assert archs.get("efficientnet_b0").check is None
    for width in (0.125, 4.0):
        for depth in (0.25, 4.0):
            for rate in (0.0, 0.5):
                archs.validate("efficientnet_b0", {"width": width, "depth_coefficient": depth,
                                                   "drop_connect_rate": rate, "dropout": 0.9})
