"""Device-seconds ASHA spends to find a config within 1 point of the full grid's best, on `digits`.

    python benchmarks/asha_vs_grid.py [--lrs 12] [--epochs 9] [--concurrency 2] [--shuffle-seed 0]

The same learning-rate grid (log-spaced, resnet18 width 0.125, 1 worker per trial) is run twice
through the real sweep path (Tune + Train + MLflow) in one local Ray cluster: once FIFO (every
trial to the end), once with ASHA (grace 1 epoch, reduction factor 3, so rungs at epochs 1, 3, 9).
The grid is given to Tune in a fixed shuffled order (as a researcher's grid is not sorted by how
good each point is; `--shuffle-seed -1` keeps it ascending). Device-seconds = the sum of every
trial's epoch seconds (train + eval) x its workers, read back from MLflow. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(folder: str, scheduler: str, lrs: list[float], epochs: int, concurrency: int) -> dict:
    from sweep_run import run_sweep

    raw = {"name": f"asha-vs-grid-{scheduler}", "dataset": {"name": "digits"},
           "train": {"epochs": epochs, "batch_size": 32, "warmup_epochs": 0.5, "data_path": "device"},
           "resources": {"num_workers": 1, "cpus_per_worker": 1.0 / concurrency, "driver_cpus": 0.05},
           "search": {"scheduler": scheduler, "grace_period": 1, "reduction_factor": 3,
                      "max_concurrent_trials": concurrency},
           "models": [{"arch": "resnet18", "knobs": {"width": 0.125}, "lr": {"grid": lrs}}]}
    wall, client, trials = run_sweep(folder, raw)
    device_s, best, statuses = 0.0, {}, {}
    for r in trials:
        workers = int(r.data.params.get("world_size", 1))
        device_s += workers * sum(m.value for m in client.get_metric_history(r.info.run_id, "epoch_s"))
        best[r.data.params["lr"]] = r.data.metrics.get("best_val_acc", 0.0)
        statuses[r.data.tags.get("status", "")] = statuses.get(r.data.tags.get("status", ""), 0) + 1
    top_lr = max(best, key=best.get)
    return {"scheduler": scheduler, "wall_s": round(wall, 1), "device_s": round(device_s, 1),
            "best_val_acc": best[top_lr], "best_lr": top_lr, "trials": len(trials), "statuses": statuses}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=int, default=12, help="grid points, log-spaced in [0.001, 2.0]")
    p.add_argument("--epochs", type=int, default=9)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--shuffle-seed", type=int, default=0, help="order of the grid given to Tune; -1: ascending")
    args = p.parse_args()
    import logging

    import ray

    lo, hi = 0.001, 2.0
    lrs = [round(lo * (hi / lo) ** (i / (args.lrs - 1)), 5) for i in range(args.lrs)]
    if args.shuffle_seed >= 0:
        random.Random(args.shuffle_seed).shuffle(lrs)
    ray.init(log_to_driver=False, logging_level=logging.ERROR)
    with tempfile.TemporaryDirectory() as folder:
        grid = run(folder, "fifo", lrs, args.epochs, args.concurrency)
        print(json.dumps(grid), flush=True)
        asha = run(folder, "asha", lrs, args.epochs, args.concurrency)
        print(json.dumps(asha), flush=True)
    ray.shutdown()
    print(json.dumps({"summary": True, "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "lrs": lrs,
                      "epochs": args.epochs, "concurrency": args.concurrency, "shuffle_seed": args.shuffle_seed,
                      "asha_within_1_point": (grid["best_val_acc"] - asha["best_val_acc"]) * 100 <= 1.0,
                      "asha_over_grid_device_s": round(asha["device_s"] / grid["device_s"], 3)}))


if __name__ == "__main__":
    main()
