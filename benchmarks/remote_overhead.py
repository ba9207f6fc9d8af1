"""Per-trial overhead on the remote path against the local one, the same trials side by side.

    python -m benchmarks.remote_overhead [--trials 4] [--epochs 2] [--order local,remote]

The same small sweep (`--trials` single-worker trials, a grid of learning rates, resnet18 width
0.125 on digits, `--epochs` epochs, FIFO, as many at a time as the CPUs allow) runs twice, each as
a user runs it (its own process that starts its own Ray: benchmarks/sweep_run.py's
`run_sweep(..., own_process=True)`):

- local: MLflow in a sqlite file, Ray's storage a local folder (the defaults);
- remote: MLflow through a real `mlflow server` whose backend store is PostgreSQL and whose
  artefacts go to S3, Ray's storage in S3 (moto's S3 API server); the services are
  tests/stores.py's, started here on 127.0.0.1 (Debian's postgresql and the `test` extra needed).

Per trial: overhead = (its MLflow child run's end - start) - the sum of its epochs' `epoch_s`:
what a trial costs beyond its epochs (start-up, data, model, checkpoints written to the storage,
the MLflow finishing: plots, checkpoint fetch, model log). Also each sweep's wall (its process,
Ray's start included). One JSON line per path and a side-by-side table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from benchmarks.sweep_run import log_spaced, run_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_file(name: str, trials: int, epochs: int) -> dict:
    return {"name": name, "dataset": {"name": "digits"},
            "train": {"epochs": epochs, "batch_size": 32, "warmup_epochs": 0.5, "seed": 0},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "search": {"scheduler": "fifo"},
            "models": [{"arch": "resnet18", "knobs": {"width": 0.125},
                        "lr": {"grid": log_spaced(0.02, 0.2, trials)}}]}


def measure(path: str, folder: str, raw: dict, **where) -> dict:
    done = run_sweep(folder, raw, own_process=True, **where)
    rows = []
    for trial in done.trials:
        epochs = done.history(trial)
        epoch_s = sum(e.get("epoch_s", 0.0) for e in epochs)
        rows.append({"trial": trial.result.name, "epochs": len(epochs), "span_s": round(trial.span_s, 2),
                     "epoch_s_sum": round(epoch_s, 2), "overhead_s": round(trial.span_s - epoch_s, 2)})
    rows.sort(key=lambda r: r["trial"])  # the same trials, matched by name across paths
    overheads = [r["overhead_s"] for r in rows]
    return {"path": path, "wall_s": round(done.wall_s, 1), "concurrency": done.concurrency, "trials": rows,
            "overhead_median_s": round(statistics.median(overheads), 2),
            "overhead_mean_s": round(statistics.fmean(overheads), 2)}


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
            saved = dict(os.environ)
            os.environ.update(s3.env)  # the sweep's process, its Ray and this one's S3 reads
            try:
                return measure("remote (mlflow server + PostgreSQL + S3 storage)", folder,
                               sweep_file("bench-remote", trials, epochs), tracking_uri=url,
                               storage=s3.storage_uri("bench", "ray"))
            finally:
                os.environ.clear()
                os.environ.update(saved)


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
        lo, re_ = results["local"], results["remote"]
        print("\n| trial | local span s | local overhead s | remote span s | remote overhead s |")
        print("|---|---|---|---|---|")
        for a, b in zip(lo["trials"], re_["trials"]):
            print(f"| {a['trial']} | {a['span_s']} | {a['overhead_s']} | {b['span_s']} | {b['overhead_s']} |")
        print(f"| median | | {lo['overhead_median_s']} | | {re_['overhead_median_s']} |")
        print(f"| sweep wall s | {lo['wall_s']} | | {re_['wall_s']} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
