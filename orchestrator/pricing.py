"""What a configuration costs to run, priced before it trains, measured once per model definition.

None of a model's costs (schema.COST_METRICS: parameters, FLOPs, batch-1 latency, throughput, peak
memory) depends on its weights, so a trial prices a freshly built model at its start, before its
first step, in the form it ships (`deploy:`, schema.Deploy): PyTorch eager (inference.measure of
the deployed form) or ONNX Runtime (the file `orchestrate export` writes, checked and timed by the
same export.to_onnx / export.check_onnx), on the CPU with `deploy.threads` threads or on the
trial's GPU, whatever device trains it. A trial whose price violates `search.constraints` ends
there, `infeasible`, untrained (ray_train.run_trial); the others hand the price to the engine,
which reports it with their first epoch instead of measuring again.

The cost cache. A price is kept under a key that is the sha256 of the model's definition: the
arch (a user model's file's sha256 too, archs.user.Code), its full knobs (defaults filled in),
image size, classes, the deployment target (runtime, device, threads, and the device's name: a
price from another CPU or GPU model is not this one's), precision, batch sizes, the torch (and ONNX
Runtime) version and PRICING_VERSION. Trials, repeats, seeds and later sweeps of the same model on
the same target reuse it, so measuring stops taxing every trial.

It lives in the sweep's storage (`<storage>/orchestrate_costs/<key>.json`, through pyarrow's
filesystem: a local or shared folder, s3://, gs://), not in the tracking store, because the
trials read and write it: every trial process reaches the storage already (Ray Tune writes its
checkpoints there, on a cluster too), while MLflow is the sweep driver's alone (workers never talk
to it). Every sweep pointed at the same storage shares the cache; one with another storage prices
again. A file is written whole or not at all: a local one under a temporary name beside it, then
renamed over the key (atomic on POSIX); an object store's object appears only when its upload
completes. Two trials pricing the same key at once both measure and the last rename wins, each
file whole. An unreadable entry is measured again and rewritten. Pure torch: no Ray, no MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import time
import uuid
from typing import Any, Mapping

import torch

from orchestrator import inference
from orchestrator.schema import Deploy, Trial

# Bump when what a price measures, or how, changes: older entries are then not reused.
PRICING_VERSION = 1
CACHE_DIR = "orchestrate_costs"


@dataclasses.dataclass(frozen=True)
class Price:
    """A model's costs (metrics: COST_METRICS that were priced, and the latency's IQR), the
    settings they hold for (params: runtime, device, threads, batch sizes, precision, key, whether
    the cache had it), its cache key, and the seconds spent measuring (0 from the cache)."""

    costs: dict[str, float]
    params: dict[str, str]
    key: str
    cached: bool
    seconds: float

    def facts(self) -> dict[str, Any]:
        """What a trial reports of it: the costs and the settings, in one mapping."""
        return {**self.costs, **self.params}


# ---------------------------------------------------------------------------------------------
# Constraints


def violations(costs: Mapping[str, float], constraints: Mapping[str, Mapping[str, float]] | None) -> list[str]:
    """What `costs` break of `constraints` ({metric: {max: X, min: Y}}), one phrase each, e.g.
    'infer_latency_b1_ms 4.86 > max 2'; [] when feasible. A cost that was not priced breaks
    nothing (the sweep file's check refuses a constraint on a cost it will not price)."""
    out = []
    for metric, bound in (constraints or {}).items():
        value = costs.get(metric)
        if value is None:
            continue
        if "max" in bound and value > bound["max"]:
            out.append(f"{metric} {value:.4g} > max {bound['max']:g}")
        if "min" in bound and value < bound["min"]:
            out.append(f"{metric} {value:.4g} < min {bound['min']:g}")
    return out


def slack(costs: Mapping[str, float], constraints: Mapping[str, Mapping[str, float]] | None) -> dict[str, float]:
    """Each bound's violation as Optuna reads constraints (<= 0: satisfied), relative to the
    bound so that milliseconds and FLOPs weigh alike: {'infer_latency_b1_ms.max': (v - X) / |X|}."""
    out = {}
    for metric, bound in (constraints or {}).items():
        value = costs.get(metric)
        if value is None:
            continue
        for side, sign in (("max", 1.0), ("min", -1.0)):
            if side in bound:
                limit = float(bound[side])
                out[f"{metric}.{side}"] = sign * (float(value) - limit) / (abs(limit) or 1.0)
    return out


# ---------------------------------------------------------------------------------------------
# The cache


class Cache:
    """Prices by key, as JSON files under `<storage_path>/orchestrate_costs/` (see the module's
    docstring). `measured` counts the prices this process measured (not found in the cache)."""

    def __init__(self, storage_path: str):
        from orchestrator import storage  # pyarrow: here, so the engine's import never needs it

        self.fs, root = storage.storage_fs(storage_path)
        self.folder = f"{root.rstrip('/')}/{CACHE_DIR}"
        self.local = type(self.fs).__name__ == "LocalFileSystem"

    def path(self, key: str) -> str:
        return f"{self.folder}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self.path(key)) as f:
                entry = json.loads(f.read().decode())
        except (OSError, ValueError):  # absent, or unreadable (then measured again and rewritten)
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("costs"), dict) else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        data = json.dumps(entry, sort_keys=True).encode()
        self.fs.create_dir(self.folder, recursive=True)
        if not self.local:  # an object store's PUT is whole or nothing
            with self.fs.open_output_stream(self.path(key)) as f:
                f.write(data)
            return
        tmp = f"{self.folder}/.{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.path(key))  # a rename: atomic on POSIX


# ---------------------------------------------------------------------------------------------
# Pricing


def precision(train_precision: str, deploy: Deploy) -> str:
    """The precision a model ships in: bf16 where it trains in bf16 on the deployment device (the
    engine's own rule), else fp32; ONNX Runtime gets the fp32 export."""
    if deploy.runtime == "onnxruntime":
        return "fp32"
    from orchestrator.engine import autocast_dtype

    return "bf16" if autocast_dtype(train_precision, torch.device(deploy.device)) == torch.bfloat16 else "fp32"


def definition(arch: str, knobs: Mapping[str, Any], image_size: int, num_classes: int, deploy: Deploy,
               precision: str, batch_sizes: tuple[int, int], timed: bool = True) -> dict[str, Any]:
    """Everything a price depends on: what its cache key is the digest of."""
    import archs

    spec = archs.get(arch)
    versions = {"torch": torch.__version__}
    if deploy.runtime == "onnxruntime" and timed:
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return {"pricing_version": PRICING_VERSION, "arch": arch, "code_sha256": spec.code.sha256 if spec.code else None,
            "knobs": archs.validate(arch, dict(knobs)), "image_size": image_size, "num_classes": num_classes,
            "deploy": dataclasses.asdict(deploy), "precision": precision, "batch_sizes": list(batch_sizes),
            "timed": timed, "device_name": inference.device_name(torch.device(deploy.device)), **versions}


def key_of(definition: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


def build(arch: str, knobs: Mapping[str, Any], image_size: int, num_classes: int) -> torch.nn.Module:
    """The model, freshly built on the CPU, without touching the caller's random state (the trial
    seeds its own model after this)."""
    import archs

    with torch.random.fork_rng(devices=[]):
        return archs.create(arch, num_classes=num_classes, image_size=image_size, **dict(knobs))


def measure(model: torch.nn.Module, image_size: int, deploy: Deploy, precision: str,
            batch_sizes: tuple[int, int], timed: bool = True) -> tuple[dict[str, float], dict[str, str]]:
    """(costs, settings) of `model` on the deployment target: params and FLOPs (of the model as
    built, as the engine counts them), and unless `timed` is off, latency, throughput and peak
    memory in the shipped form, on `deploy.threads` torch threads (restored after)."""
    import archs

    costs: dict[str, float] = {"param_count": archs.count_params(model), "flops": archs.count_flops(model, image_size)}
    params = {"infer_runtime": deploy.runtime}
    if not timed:
        return costs, params
    shape = (3, image_size, image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(deploy.threads)
    try:
        if deploy.runtime == "torch":
            cost = inference.measure(model, deploy.device, batch_sizes=batch_sizes, precision=precision,
                                     image_shape=shape)
            costs.update(inference.as_metrics(cost))
            params.update(inference.as_params(cost))
        else:
            costs.update(_onnxruntime(model, shape, deploy, batch_sizes))
            params.update({"infer_precision": "fp32", "infer_device": inference.device_name(torch.device("cpu")),
                           "infer_latency_batch": str(batch_sizes[0]), "infer_throughput_batch": str(batch_sizes[1]),
                           "infer_num_threads": str(deploy.threads)})
    finally:
        torch.set_num_threads(threads)
    return costs, params


def _onnxruntime(model: torch.nn.Module, shape: tuple[int, int, int], deploy: Deploy,
                 batch_sizes: tuple[int, int]) -> dict[str, float]:
    """The model exported and timed exactly as `orchestrate export` does (export.to_onnx, then
    export.check_onnx's ONNX Runtime timing on `deploy.threads` threads). Peak memory: the deployed
    form's, counted by PyTorch on the CPU (inference.peak_memory_mb: the same graph's tensors; ONNX
    Runtime's own arena is not visible from here)."""
    from orchestrator import export

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, *shape, generator=generator)
    with tempfile.TemporaryDirectory(prefix="orchestrate-price-") as tmp:
        path = export.to_onnx(model, os.path.join(tmp, "model.onnx"), images)
        check = export.check_onnx(model, path, images, batch_sizes=batch_sizes, num_threads=deploy.threads)
    deployed = inference.deployable(model)
    peak = inference.peak_memory_mb(deployed, torch.randn(batch_sizes[1], *shape, generator=generator))
    speed = check.speed
    return {**speed.metrics("infer"), "infer_peak_mem_mb": peak}


def price(arch: str, knobs: Mapping[str, Any], image_size: int, num_classes: int, deploy: Deploy, *,
          train_precision: str = "auto", inference_batch_size: int = inference.BATCH_SIZES[1], timed: bool = True,
          cache: Cache | None = None) -> Price:
    """The model's Price on the deployment target: from `cache` when it has this definition's key,
    else measured (and put there)."""
    batch_sizes = (inference.BATCH_SIZES[0], inference_batch_size)
    prec = precision(train_precision, deploy)
    defn = definition(arch, knobs, image_size, num_classes, deploy, prec, batch_sizes, timed)
    key = key_of(defn)
    entry = cache.get(key) if cache is not None else None
    if entry is not None:
        return Price(dict(entry["costs"]), {**entry["params"], "pricing_key": key, "pricing_cached": "true"}, key,
                     True, 0.0)
    start = time.perf_counter()
    costs, params = measure(build(arch, knobs, image_size, num_classes), image_size, deploy, prec, batch_sizes, timed)
    seconds = time.perf_counter() - start
    if any(not math.isfinite(float(v)) for v in costs.values()):
        raise ValueError(f"pricing {arch}: a cost is not finite: {costs}")
    if cache is not None:
        cache.put(key, {"definition": defn, "costs": costs, "params": params, "measured_s": round(seconds, 3),
                        "created": time.time()})
    return Price(costs, {**params, "pricing_key": key, "pricing_cached": "false"}, key, False, seconds)


def price_trial(trial: Trial, num_classes: int, cache: Cache | None = None) -> Price:
    """`price` of a trial's model on its `deploy` target, in its precision and inference batch size;
    timed unless its `train.benchmark_inference` is off."""
    return price(trial.arch, trial.knobs, trial.dataset.image_size, num_classes, trial.deploy,
                 train_precision=trial.train.precision, inference_batch_size=trial.train.inference_batch_size,
                 timed=trial.train.benchmark_inference, cache=cache)

