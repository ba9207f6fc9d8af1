"""The registry as a whole: every family builds and trains a step, is counted the same on the meta
device as for real; bad knobs never build."""

from __future__ import annotations

import pytest
import torch

import archs

FAMILIES = {"ParNet", "ShuffleNet", "ResNet", "ResNeXt", "SE-ResNet", "DenseNet", "Res2Net", "ResNeSt",
            "MobileNet", "EfficientNet", "AlexNet", "VGG", "GoogLeNet"}


# Sweep files, MLflow runs and checkpoints name an arch by these strings, so none may change; each
# is its builder's function name (archs/registry.py's `register`).
ARCH_NAMES = ["alexnet", "densenet121", "densenet_bc", "efficientnet_b0", "googlenet", "mobilenet_v1",
              "mobilenet_v2", "parnet", "res2net50", "resnest50", "resnet101", "resnet18", "resnet34",
              "resnet50", "resnext29", "se_resnet18", "se_resnet50", "shufflenet_v1", "vgg11", "vgg13",
              "vgg16", "vgg19"]


def test_arch_names_are_the_ones_sweep_files_and_runs_already_use():
    assert archs.names() == ARCH_NAMES
    assert [archs.get(name).builder.__name__ for name in ARCH_NAMES] == ARCH_NAMES


def test_all_thirteen_families_are_registered():
    assert set(archs.families()) == FAMILIES


@pytest.mark.parametrize("name", archs.names())
def test_every_arch_at_its_smallest_setting_trains_a_step_with_finite_gradients(name):
    knobs = archs.get(name).smallest
    model = archs.create(name, num_classes=7, **knobs).train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)
    logits.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", archs.names())
def test_every_arch_declares_a_width_knob_and_valid_defaults(name):
    arch = archs.get(name)
    assert "width" in {k.name for k in arch.knobs}
    assert archs.validate(name, {}) == arch.defaults()
    assert archs.validate(name, arch.smallest)


@pytest.mark.parametrize("name", archs.names())
def test_every_arch_names_its_paper_and_says_what_each_knob_means(name):
    # `orchestrate archs -l` shows both.
    arch = archs.get(name)
    assert " et al. " in arch.paper or " & " in arch.paper
    assert all(knob.help for knob in arch.knobs)


def test_resnet18_cifar_has_the_reference_parameter_count():
    # kuangliu/pytorch-cifar ResNet18(): 11,173,962 parameters for 10 classes.
    assert archs.count_params(archs.create_on_meta("resnet18")) == 11_173_962


@pytest.mark.parametrize("name,count", [
    ("resnet34", 21_282_122),   # kuangliu/pytorch-cifar ResNet34()
    ("resnet50", 23_520_842),   # kuangliu/pytorch-cifar ResNet50()
    ("resnet101", 42_512_970),  # kuangliu/pytorch-cifar ResNet101()
])
def test_deeper_resnets_match_the_reference_counts(name, count):
    assert archs.count_params(archs.create_on_meta(name)) == count


def test_resnet18_forward_flops_at_32x32_are_about_0_56_gflops():
    # conv FLOPs (2 x MACs) of CIFAR ResNet-18: 0.556 GMACs -> 1.11 GFLOPs as FlopCounterMode counts.
    flops = archs.count_flops(archs.create("resnet18"))
    assert 1.10e9 < flops < 1.13e9


@pytest.mark.parametrize("name", archs.names())
def test_a_meta_device_model_counts_the_real_models_parameters_and_flops(name):
    # `orchestrate archs` and the pinned parameter counts of these tests count on meta models, the
    # engine on real ones. Checked here at the smallest knobs, where a real forward is cheap; at the
    # defaults, `orchestrate archs --flops` printed what the listing of real models printed before.
    knobs = archs.get(name).smallest
    meta = archs.create_on_meta(name, num_classes=7, **knobs)
    real = archs.create(name, num_classes=7, **knobs)
    assert all(p.is_meta for p in meta.parameters())
    assert archs.count_params(meta) == archs.count_params(real)
    assert archs.count_flops(meta) == archs.count_flops(real)


def test_unknown_arch_and_unknown_knob_are_rejected_with_what_is_allowed():
    with pytest.raises(archs.KnobError) as e:
        archs.create("resnet17")
    assert e.value.knob == "arch" and "resnet18" in str(e.value)
    with pytest.raises(archs.KnobError) as e:
        archs.validate("resnet18", {"groups": 2})
    assert e.value.knob == "groups" and "its knobs are width" in str(e.value)


def test_width_out_of_range_and_wrong_type_are_rejected():
    with pytest.raises(archs.KnobError, match=r"width: 9.0 is not a float in \[0.125, 4.0\]"):
        archs.validate("vgg16", {"width": 9.0})
    with pytest.raises(archs.KnobError, match="width: 'wide' is not a float"):
        archs.validate("vgg16", {"width": "wide"})


def test_shufflenet_rejects_groups_5_naming_the_allowed_values():
    with pytest.raises(archs.KnobError, match="groups: 5 is not one of 1, 2, 3, 4, 8"):
        archs.create("shufflenet_v1", groups=5)


def test_arch_tests_run_on_one_intra_op_thread():
    # tests/archs/conftest.py's autouse fixture, which every module in this folder gets.
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("name", archs.names())
def test_an_arch_runs_at_every_image_size_unless_its_registry_record_fixes_one(name):
    # The rule `dataset.image_size` is checked against (archs.Arch.input_size), recorded once in the
    # registry: every arch without one takes 16..96 pixels; AlexNet and VGG, whose classifiers are
    # sized for a 32x32 input's feature map, break at 96 and are refused by create.
    arch = archs.get(name)
    for size in (16, 48, 96):
        if arch.size_problem(size) is None:
            with torch.device("meta"):
                model = archs.create(name, num_classes=3, image_size=size, **arch.smallest)
                assert model(torch.zeros(2, 3, size, size)).shape == (2, 3), size
        else:
            with pytest.raises(archs.KnobError, match=f"takes 32x32 images only .*not {size}x{size}"):
                archs.create(name, num_classes=3, image_size=size, **arch.smallest)
    if arch.input_size is not None:
        with torch.device("meta"), pytest.raises(RuntimeError):
            arch.builder(num_classes=3, **arch.smallest)(torch.zeros(2, 3, 96, 96))


def test_flops_grow_with_the_pixels_and_params_do_not():
    model32 = archs.create_on_meta("resnet18", num_classes=3, width=0.125)
    model64 = archs.create_on_meta("resnet18", num_classes=3, width=0.125, image_size=64)
    assert archs.count_params(model32) == archs.count_params(model64)
    assert archs.count_flops(model64, 64) / archs.count_flops(model32, 32) == pytest.approx(4, rel=0.01)
