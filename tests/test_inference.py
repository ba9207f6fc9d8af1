"""The inference cost of a deployed model: the deployed form, the peak-memory count, and `measure`'s
numbers and time budget on the CPU. Speeds are not asserted beyond sanity (a shared CPU)."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

import archs
from archs import parnet
from orchestrator import inference
from support import calibrate_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def test_deployable_fuses_parnet_and_leaves_the_trained_model_as_it_was():
    torch.manual_seed(0)
    images = torch.randn(32, 3, 32, 32)
    model = calibrate_batchnorm(archs.create("parnet", **archs.get("parnet").smallest), images).train()
    deployed = inference.deployable(model)
    assert not deployed.training and model.training
    rep_convs = [m for m in deployed.modules() if isinstance(m, parnet._RepConv)]
    assert rep_convs and all(m.fused is not None and not hasattr(m, "conv1x1") for m in rep_convs)
    assert all(m.fused is None for m in model.modules() if isinstance(m, parnet._RepConv))
    model.eval()
    assert (deployed(images) - model(images)).abs().max() <= 1e-4


@torch.no_grad()
def test_deployable_of_a_model_without_a_fold_is_an_eval_copy():
    model = archs.create("resnet18", **archs.get("resnet18").smallest).train()
    deployed = inference.deployable(model)
    assert deployed is not model and not deployed.training and model.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(deployed(x), model.eval()(x))


def test_peak_memory_counts_the_tensors_alive_at_once_not_their_sum():
    # Sequential keeps a layer's input until its output exists: two 4x8x32x32 fp32 maps at once, at most.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ReLU(), nn.ReLU()).eval()
    feature_map_bytes = 4 * 8 * 32 * 32 * 4
    assert inference.forward_peak_bytes(model, torch.randn(4, 3, 32, 32)) == 2 * feature_map_bytes
    # In-place results share their input's storage: one map.
    inplace = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.ReLU(inplace=True)).eval()
    assert inference.forward_peak_bytes(inplace, torch.randn(4, 3, 32, 32)) == feature_map_bytes


def test_measure_gives_sane_numbers_on_the_cpu_within_its_time_budget():
    model = archs.create("vgg11", **archs.get("vgg11").smallest)
    min_run_time_s = 0.1
    start = time.perf_counter()
    cost = inference.measure(model, "cpu", batch_sizes=(1, 32), min_run_time_s=min_run_time_s)
    elapsed_s = time.perf_counter() - start
    # Two timed batch sizes, plus warm-up, block-size estimation and the memory pass of a tiny model.
    assert elapsed_s < 2 * min_run_time_s + 3, elapsed_s
    assert cost.speed.latency_ms > 0 and cost.speed.latency_iqr_ms >= 0 and cost.speed.imgs_per_s > 0, cost
    weights_and_input_mb = (inference.tensor_bytes(model) + 32 * 3 * 32 * 32 * 4) / 2**20
    assert cost.peak_mem_mb > weights_and_input_mb, cost
    assert cost.precision == "fp32" and cost.device.startswith("cpu") and cost.num_threads == 1
    assert set(inference.as_metrics(cost)) == {"infer_latency_b1_ms", "infer_latency_b1_iqr_ms",
                                               "infer_imgs_per_s", "infer_peak_mem_mb"}
    assert inference.as_params(cost) == {"infer_precision": "fp32", "infer_device": cost.device,
                                         "infer_latency_batch": "1", "infer_throughput_batch": "32",
                                         "infer_num_threads": "1"}


def test_measure_in_bf16_halves_the_memory():
    model = archs.create("vgg11", **archs.get("vgg11").smallest)
    fp32 = inference.measure(model, "cpu", batch_sizes=(1, 16), min_run_time_s=0.01)
    bf16 = inference.measure(model, "cpu", batch_sizes=(1, 16), min_run_time_s=0.01, precision="bf16")
    assert bf16.precision == "bf16" and bf16.peak_mem_mb == pytest.approx(fp32.peak_mem_mb / 2, rel=0.01)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "fp16"}, r"^precision: 'fp16' is not one of fp32, bf16$"),
    ({"batch_sizes": (1, 0)}, r"^batch_sizes: \(1, 0\) is not \(latency batch, throughput batch\), two whole numbers >= 1$"),
    ({"batch_sizes": (256,)}, r"^batch_sizes: \(256,\) is not"),
])
def test_measure_rejects_a_bad_setting_in_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        inference.measure(nn.Linear(2, 2), "cpu", **kwargs)
