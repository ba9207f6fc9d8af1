"""Per-trial overhead on the remote path against the local one, the same trials side by side.

    python -m benchmarks.remote_overhead [--trials 4] [--epochs 2] [--order local,remote]

The same small sweep (`--trials` single-worker trials one at a time, a grid of learning rates,
resnet18 width 0.125 on digits, `--epochs` epochs, FIFO) runs twice, each as a user runs it (its
own process that starts its own Ray in a private RAY_TMPDIR: benchmarks/sweep_run.py's
`run_sweep(..., own_process=True)`):

- local: MLflow in a sqlite file, Ray's storage a local folder (the defaults);
- remote: MLflow through a real `mlflow server` whose backend store is PostgreSQL and whose
  artefacts go to S3, Ray's storage in S3 (moto's S3 API server); the services are
  tests/stores.py's, started here on 127.0.0.1 (Debian's postgresql and the `test` extra needed).

Per-trial overhead = (the parent run's wall: its MLflow end - start, from the sweep's record to its
registered best model) - the sum of every trial's epochs' `epoch_s`, divided by the trials: what a
trial costs beyond its epochs (its start, data, model, checkpoints written to the storage, the
MLflow finishing: plots, checkpoint fetch, model log; the sweep's own start and end shared out).
Each trial's child run span (MLflow end - start) and summed `epoch_s` are listed too, and each
sweep's process wall (Ray's start included). One JSON line per path, then a side-by-side table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile

from benchmarks.sweep_run import client as mlflow_client
from benchmarks.sweep_run import log_spaced, run_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_file(name: str, trials: int, epochs: int) -> dict:
    return {"name": name, "dataset": {"name": "digits"},
            "train": {"epochs": epochs, "batch_size": 32, "warmup_epochs": 0.5, "seed": 0},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "search": {"scheduler": "fifo", "max_concurrent_trials": 1},
            "models": [{"arch": "resnet18", "knobs": {"width": 0.125},
                        "lr": {"grid": log_spaced(0.02, 0.2, trials)}}]}


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` set (the sweep's own process inherits it), restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def measure(path: str, folder: str, raw: dict, **where) -> dict:
    from orchestrator import runs

    ray_tmpdir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # a Ray of its own, never another's
    try:
        with environment({"RAY_TMPDIR": ray_tmpdir}):
            done = run_sweep(folder, raw, own_process=True, **where)
    finally:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    client = mlflow_client(done.tracking_uri)
    parent = runs.sweep_runs(client, client.get_experiment_by_name(done.name).experiment_id)[0].info
    parent_s = (parent.end_time - parent.start_time) / 1000
    rows = []
    for trial in done.trials:
        epochs = done.history(trial)
        rows.append({"trial": trial.result.name, "epochs": len(epochs), "span_s": round(trial.span_s, 2),
                     "epoch_s_sum": round(sum(e.get("epoch_s", 0.0) for e in epochs), 2)})
    rows.sort(key=lambda r: r["trial"])  # the same trials, matched by name across paths
    epoch_s = sum(r["epoch_s_sum"] for r in rows)
    return {"path": path, "process_wall_s": round(done.wall_s, 1), "parent_run_s": round(parent_s, 1),
            "epoch_s_sum": round(epoch_s, 1), "overhead_per_trial_s": round((parent_s - epoch_s) / len(rows), 2),
            "trials": rows}


def local(trials: int, epochs: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-local-") as folder:
        return measure("local (sqlite + local storage)", folder, sweep_file("bench-local", trials, epochs))


def remote(trials: int, epochs: int) -> dict:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import stores

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as folder, stores.postgres() as pg, \
            stores.s3_server(folder) as s3:
        s3.create_bucket("bench")
        backend = pg.create_database("bench")
        with stores.mlflow_server(os.path.join(folder, "server"), backend=backend,
                                  artifacts="s3://bench/mlartifacts", env=s3.env) as url:
            with environment(s3.env):  # the sweep's process and its Ray reach the S3 server
                return measure("remote (mlflow server + PostgreSQL + S3 storage)", folder,
                               sweep_file("bench-remote", trials, epochs), tracking_uri=url,
                               storage=s3.storage_uri("bench", "ray"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--order", default="local,remote", help="which path runs first (comma-separated)")
    args = p.parse_args(argv)
    paths = {"local": local, "remote": remote}
    results = {}
    for name in args.order.split(","):
        results[name] = paths[name](args.trials, args.epochs)
        print(json.dumps(results[name]), flush=True)
    if {"local", "remote"} <= results.keys():
        lo, rem = results["local"], results["remote"]
        print("\n| | local | remote |\n|---|---|---|")
        for a, b in zip(lo["trials"], rem["trials"]):
            print(f"| {a['trial']}: run span s / epochs s | {a['span_s']} / {a['epoch_s_sum']} | "
                  f"{b['span_s']} / {b['epoch_s_sum']} |")
        for key in ("parent_run_s", "epoch_s_sum", "overhead_per_trial_s", "process_wall_s"):
            print(f"| {key} | {lo[key]} | {rem[key]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
