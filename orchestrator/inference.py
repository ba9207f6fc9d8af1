"""What a trained model costs to run: batch-1 latency, large-batch throughput and the peak memory of
one forward pass, measured on one device in the model's deployed form (eval mode, ParNet's conv
branches fused). Pure PyTorch: no Ray, no MLflow, so the engine can call it at the end of a trial on
the trial's own device, and `export.check_onnx` times ONNX Runtime the same way (`time_forward`).

    cost = measure(model, torch.device("cpu"))
    as_metrics(cost)   # {"infer_latency_b1_ms": ..., "infer_imgs_per_s": ..., ...}
    as_params(cost)    # {"infer_precision": "fp32", "infer_device": "cpu (...)", ...}
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import platform
import time
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

IMAGE_SHAPE = (3, 32, 32)  # normalised RGB at the default dataset.image_size; the engine passes its own
BATCH_SIZES = (1, 256)  # latency is measured at the first, throughput (and peak memory) at the second
PRECISIONS = ("fp32", "bf16")
# Per batch size: 0.2 s holds hundreds of batch-1 calls of a CIFAR-sized model (its IQR says how
# steady they were), and a call that takes longer is timed once. With two batch sizes and the
# memory pass a small model costs 0.5-3 s of CPU time in all, and a sweep prices each model once
# (orchestrator/pricing.py caches it). (0.5 s until issue 23: a quarter of the quickstart's
# pricing, for medians that moved less than the machine's load moves them.)
MIN_RUN_TIME_S = 0.2
# Untimed calls first: the first forwards pick oneDNN/cuDNN algorithms and fill allocator caches.
# Up to WARMUP_CALLS, but no more once WARMUP_MAX_S have passed (at least one): a 1 s forward at a
# large batch is warm after one call, and two more cost 2 s of every pricing.
WARMUP_CALLS = 3
WARMUP_MAX_S = 0.25


def deployable(model: nn.Module) -> nn.Module:
    """A copy of `model` in the form it is deployed in: eval mode, and every module that can
    re-parameterise itself for inference (ParNet's `reparameterize()`: each block's 3x3 and 1x1
    conv-BN branches folded into one 3x3 conv) done so. The copy leaves the trained model as it was
    (the fold is one-way). Pass the bare module: unwrap DDP or torch.compile first."""
    model = copy.deepcopy(model).eval()
    reparameterize = getattr(model, "reparameterize", None)
    if callable(reparameterize):
        reparameterize()
    return model


@dataclasses.dataclass(frozen=True)
class Speed:
    """Median and interquartile range of one call at `latency_batch` images, and images per second
    at `throughput_batch`. The IQR is over torch.utils.benchmark's blocks (each the mean of enough
    calls to make the timer's own overhead negligible), not over single calls; it is 0 when one
    block filled the whole run time (a slow call, or a short `min_run_time_s`)."""

    latency_batch: int
    latency_ms: float
    latency_iqr_ms: float
    throughput_batch: int
    imgs_per_s: float

    def metrics(self, prefix: str) -> dict[str, float]:
        """`{prefix}_latency_b1_ms`, `{prefix}_latency_b1_iqr_ms`, `{prefix}_imgs_per_s` (the
        latency batch is in the name, so a metric never mixes batch sizes)."""
        b = self.latency_batch
        return {f"{prefix}_latency_b{b}_ms": self.latency_ms, f"{prefix}_latency_b{b}_iqr_ms": self.latency_iqr_ms,
                f"{prefix}_imgs_per_s": self.imgs_per_s}


def time_call(call: Callable[[], Any], min_run_time_s: float, num_threads: int,
              warmed_s: float | None = None) -> tuple[float, float]:
    """(median, IQR) in seconds of `call()`, after untimed warm-up calls (WARMUP_CALLS, fewer when
    they take longer than WARMUP_MAX_S; none when the caller has warmed that call's path, taking
    `warmed_s` seconds), by `torch.utils.benchmark.Timer.blocked_autorange` (which synchronises an
    accelerator around each block, and whose block-size estimate runs the call untimed once more).
    A call that took `min_run_time_s` or more warm would be one block of one call there, after an
    estimate that runs it once more: it is timed once, directly (an accelerator synchronised
    around it), IQR 0. `num_threads` is passed on because the Timer would otherwise run torch on
    one thread."""
    if warmed_s is not None and warmed_s >= min_run_time_s:
        sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
        sync()
        started = time.perf_counter()
        call()
        sync()
        return time.perf_counter() - started, 0.0
    timer = _benchmark().Timer(stmt="call()", globals={"call": call}, num_threads=num_threads)
    started = time.perf_counter()
    for _ in range(0 if warmed_s is not None else WARMUP_CALLS):
        call()
        if time.perf_counter() - started >= WARMUP_MAX_S:
            break
    measurement = timer.blocked_autorange(min_run_time=min_run_time_s)
    return measurement.median, measurement.iqr


def _benchmark():
    # Importing torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found"
    # on a CPU-only torch wherever CUDA_HOME is set: noise in a trial's output for a timer that
    # compiles nothing. Imported here, quietly, so importing this module costs nothing.
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import benchmark
    finally:
        logger.setLevel(level)
    return benchmark


def time_forward(run_on: Callable[[int], Callable[[], Any]], batch_sizes: tuple[int, int] = BATCH_SIZES,
                 min_run_time_s: float = MIN_RUN_TIME_S, num_threads: int | None = None,
                 throughput_warmed_s: float | None = None) -> Speed:
    """Latency at `batch_sizes[0]` and throughput at `batch_sizes[1]` of any runtime: `run_on(n)`
    prepares an n-image batch and returns the call that runs one forward on it
    (`throughput_warmed_s`: the caller has run a forward at the large batch already, in that long)."""
    latency_batch, throughput_batch = check_batch_sizes(batch_sizes)
    threads = num_threads or torch.get_num_threads()
    latency_s, latency_iqr_s = time_call(run_on(latency_batch), min_run_time_s, threads)
    throughput_s, _ = time_call(run_on(throughput_batch), min_run_time_s, threads, warmed_s=throughput_warmed_s)
    return Speed(latency_batch, latency_s * 1e3, latency_iqr_s * 1e3, throughput_batch, throughput_batch / throughput_s)


def check_batch_sizes(batch_sizes) -> tuple[int, int]:
    sizes = tuple(batch_sizes)
    if len(sizes) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
        raise ValueError(f"batch_sizes: {str(batch_sizes)[:80]} is not (latency batch, throughput batch), "
                         "two whole numbers >= 1")
    return sizes


@dataclasses.dataclass(frozen=True)
class InferenceCost:
    """What `measure` found. `peak_mem_mb`: the model's weights, the input batch and the most memory
    its forward held at once at `speed.throughput_batch` (see `forward_peak_bytes`)."""

    speed: Speed
    peak_mem_mb: float
    precision: str
    device: str  # e.g. "cuda (NVIDIA H200)", "cpu (AMD EPYC 7B13)"
    num_threads: int  # torch's intra-op threads during the measurement


class _LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of every storage an ATen op returns until that storage is freed, and keeps the
    maximum. Views and in-place results share a storage already counted, so they add nothing."""

    def __init__(self):
        super().__init__()
        self.live_bytes = self.peak_bytes = 0
        self._counted: set[int] = set()

    def _freed(self, key: int, nbytes: int) -> None:
        self._counted.discard(key)
        self.live_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._counted:
                    self._counted.add(key)
                    self.live_bytes += storage.nbytes()
                    self.peak_bytes = max(self.peak_bytes, self.live_bytes)
                    # A storage's Python object lives as long as the storage itself, so this runs
                    # when the forward lets go of it (before its address can be reused).
                    weakref.finalize(storage, self._freed, key, storage.nbytes())
        return out


def forward_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """The most memory one forward of `model` on `x` holds at once beyond what was allocated before it
    (weights, input). CUDA: the caching allocator's own peak (`reset_peak_memory_stats`,
    `max_memory_allocated`), cuDNN workspaces included. CPU: torch keeps no allocator statistics for
    the CPU, and the process's peak RSS is useless here (the allocator returns and reuses pages, and
    the high-water mark is the whole process's, usually set long before); so the forward runs under a
    dispatch mode that counts the storages its ATen ops return until each is freed. That is the live
    activation memory as the forward's Python code holds it: exact for tensors, blind to oneDNN's
    internal scratch buffers and allocator slack. The counting slows the forward, so it runs once,
    outside the timed calls (the first dispatch mode in a process also imports torch._dynamo, ~1 s)."""
    with torch.inference_mode():
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
            before = torch.cuda.memory_allocated(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            model(x)
            torch.cuda.synchronize(x.device)
            return torch.cuda.max_memory_allocated(x.device) - before
        counter = _LiveTensorBytes()
        with counter:
            model(x)
        return counter.peak_bytes


def tensor_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({cpu_model() or platform.machine()})"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def measure(model: nn.Module, device: torch.device | str, *, batch_sizes: tuple[int, int] = BATCH_SIZES,
            precision: str = "fp32", min_run_time_s: float = MIN_RUN_TIME_S,
            image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> InferenceCost:
    """Latency at batch_sizes[0] (median and IQR), throughput at batch_sizes[1] and the peak memory of
    that large forward, of `deployable(model)` on `device` at `precision`, in inference mode, on
    random normalised images (the cost of a CIFAR classifier does not depend on the pixels).

    `precision` "bf16" casts the deployed copy's weights and inputs to bfloat16 (a deployed model
    stores bf16 weights; autocast would keep fp32 weights and cast on every call). Each batch size
    is timed for `min_run_time_s` after WARMUP_CALLS untimed calls; on the CPU torch uses its current
    thread count (`torch.set_num_threads`), which the result records."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: {str(precision)[:40]!r} is not one of {', '.join(PRECISIONS)}")
    check_batch_sizes(batch_sizes)
    device = torch.device(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    deployed = deployable(model).to(device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)

    def batch(n: int) -> torch.Tensor:
        return torch.randn(n, *image_shape, generator=generator).to(device=device, dtype=dtype)

    def run_on(n: int) -> Callable[[], Any]:
        x = batch(n)
        return lambda: deployed(x)

    # The memory pass first: one forward at the large batch, which also warms that batch's path
    # (slower than a plain forward: every op goes through the counting mode).
    started = time.perf_counter()
    peak_mb = peak_memory_mb(deployed, batch(batch_sizes[1]))
    warmed_s = time.perf_counter() - started
    # Grad mode is thread-local and the Timer runs in this thread, so this covers every timed call.
    with torch.inference_mode():
        speed = time_forward(run_on, batch_sizes, min_run_time_s, throughput_warmed_s=warmed_s)
    return InferenceCost(speed, peak_mb, precision, device_name(device), torch.get_num_threads())


def peak_memory_mb(deployed: nn.Module, x: torch.Tensor) -> float:
    """MB held at the peak of one forward of `deployed` (already in its deployed form, on its
    device and dtype) on batch `x`: weights + input + the forward's own peak (forward_peak_bytes)."""
    return (tensor_bytes(deployed) + x.numel() * x.element_size() + forward_peak_bytes(deployed, x)) / 2**20


def as_metrics(cost: InferenceCost) -> dict[str, float]:
    """The numbers, as MLflow metrics: infer_latency_b1_ms, infer_latency_b1_iqr_ms, infer_imgs_per_s,
    infer_peak_mem_mb."""
    return {**cost.speed.metrics("infer"), "infer_peak_mem_mb": cost.peak_mem_mb}


def as_params(cost: InferenceCost) -> dict[str, str]:
    """The settings the numbers hold for, as MLflow params (strings)."""
    return {"infer_precision": cost.precision, "infer_device": cost.device,
            "infer_latency_batch": str(cost.speed.latency_batch),
            "infer_throughput_batch": str(cost.speed.throughput_batch),
            "infer_num_threads": str(cost.num_threads)}
