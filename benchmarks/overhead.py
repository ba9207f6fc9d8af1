"""The cost of the Ray Train + Tune + MLflow path: per-trial overhead next to a minimal Ray Train
trial, and training img/s against the bare engine on the same model, data and epochs.

    python benchmarks/overhead.py [--workers 1] [--repeats 2] [--epochs 3]

Both run inside one already-started local Ray cluster, one trial at a time, as a Tune trial that
builds a TorchTrainer (Train V2) and reports through TuneReportCallback:
- minimal: a worker loop that reports one metric dict (no model, no data) -> its wall time is all
  overhead (Tune trial + Train controller + worker group + process group set-up and tear-down);
- orchestrate: our trial driver (engine, digits, resnet18 width 0.125, 1 epoch) with the MLflow
  callback writing a real sqlite store -> overhead = wall - the engine's own epoch seconds.
- bare: the same engine, config and data in this process, no Ray, no MLflow, with torch limited to
  the threads Ray gives a worker of that CPU share (OMP_NUM_THREADS) -> img/s ratio.
Prints one JSON object per measurement and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def minimal_worker(config):
    import ray.train

    ray.train.report({"epoch": 1, "val_acc": 0.0})


def minimal_driver(config, workers, storage, cpus_per_worker=1.0):
    import ray.tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(minimal_worker, scaling_config=ScalingConfig(num_workers=workers,
                                                              resources_per_worker={"CPU": cpus_per_worker}),
                 run_config=RunConfig(name=f"minimal-{ray.tune.get_context().get_trial_id()}", storage_path=storage,
                                      callbacks=[TuneReportCallback()])).fit()


def time_minimal(workers: int, storage: str, cpus_per_worker: float = 1.0) -> float:
    """Wall seconds of a Tuner running one minimal trial. The trial's workers must fit beside its
    0.1-CPU driver (2 workers of 1 CPU never start on a 2-CPU machine: pass 1 / workers there)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(minimal_driver, workers=workers, storage=storage,
                                                         cpus_per_worker=cpus_per_worker),
                                    {"CPU": 0.1})
    start = time.perf_counter()
    tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    return time.perf_counter() - start


def train_cfg(epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0.5, "data_path": "device"}


def bare_engine(epochs: int, threads: int) -> list[float]:
    import torch

    from orchestrator import data, engine

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        splits = data.load_splits(data.DataSpec("digits"))
        reporter = engine.CollectingReporter()
        engine.Engine(engine.TrainConfig(**train_cfg(epochs)), engine.ModelSpec("resnet18", {"width": 0.125}),
                      splits, device="cpu").fit(reporter)
        return [m["imgs_per_s"] for m in reporter.history]
    finally:
        torch.set_num_threads(old)


def time_orchestrate(workers: int, folder: str, epochs: int) -> tuple[float, float, list[float]]:
    from sweep_run import run_sweep

    raw = {"name": "overhead", "dataset": {"name": "digits"},
           "train": train_cfg(epochs),
           "resources": {"num_workers": workers, "cpus_per_worker": 1.0 / workers, "driver_cpus": 0.1},
           "search": {"scheduler": "fifo"}, "models": [{"arch": "resnet18", "knobs": {"width": 0.125}}]}
    wall, client, runs = run_sweep(folder, raw)
    epoch_s = sum(m.value for m in client.get_metric_history(runs[0].info.run_id, "epoch_s"))
    imgs = [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, "imgs_per_s"), key=lambda m: m.step)]
    return wall, epoch_s, imgs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    import logging

    import ray

    ray.init(log_to_driver=False, logging_level=logging.ERROR)
    results = {"minimal_s": [], "orchestrate_wall_s": [], "orchestrate_train_s": [], "orchestrate_overhead_s": [],
               "ray_imgs_per_s": [], "bare_imgs_per_s": []}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):
            m = time_minimal(args.workers, os.path.join(folder, "minimal"), 1.0 / args.workers)  # as our trial
            results["minimal_s"].append(round(m, 2))
            print(json.dumps({"trial": "minimal", "repeat": i, "wall_s": round(m, 2)}), flush=True)
            wall, train, imgs = time_orchestrate(args.workers, folder, args.epochs)
            results["ray_imgs_per_s"] += [round(v, 1) for v in imgs[1:]]  # epoch 1 includes warm-up
            results["orchestrate_wall_s"].append(round(wall, 2))
            results["orchestrate_train_s"].append(round(train, 2))
            results["orchestrate_overhead_s"].append(round(wall - train, 2))
            print(json.dumps({"trial": "orchestrate", "repeat": i, "wall_s": round(wall, 2),
                              "epoch_s": round(train, 2), "overhead_s": round(wall - train, 2)}), flush=True)
    ray.shutdown()
    # Ray gives a worker of `1/workers` CPU share this many torch threads; the bare run uses the same.
    threads = max(1, int(os.cpu_count() / args.workers)) if args.workers > 1 else 1
    for i in range(args.repeats):
        imgs = bare_engine(args.epochs, threads)
        results["bare_imgs_per_s"] += [round(v, 1) for v in imgs[1:]]
        print(json.dumps({"trial": "bare", "repeat": i, "threads": threads, "imgs_per_s": imgs}), flush=True)
    import statistics

    ratio = statistics.median(results["ray_imgs_per_s"]) / statistics.median(results["bare_imgs_per_s"])
    print(json.dumps({"summary": True, "workers": args.workers, "epochs": args.epochs, "cpus": os.cpu_count(),
                      "date": time.strftime("%Y-%m-%d"), "ray_over_bare_imgs_per_s": round(ratio, 3),
                      "median_minimal_s": statistics.median(results["minimal_s"]),
                      "median_orchestrate_overhead_s": statistics.median(results["orchestrate_overhead_s"]),
                      **results}))


if __name__ == "__main__":
    main()
