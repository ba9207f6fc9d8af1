"""Sweep throughput: orchestration efficiency, per-trial overhead, and a long sweep's driver.

On this machine: how much of a sweep's wall time trains models, what one trial costs beyond its
training, and whether a long sweep's driver slows down or grows.

    python benchmarks/sweep_throughput.py [--sweep experiments/quickstart.yaml] [--repeats 2]
        [--epochs 1] [--many 100] [--env KEY=VALUE ...] [--skip-sweep] [--skip-overhead]
        [--skip-many] [--smoke]

Three parts, run one after the other (never two Ray clusters at once):

1. sweep: the sweep file run exactly as a user runs it, as a subprocess
   `python -m orchestrator sweep FILE --tracking-uri sqlite:///TMP/mlflow.db --storage TMP/ray_results`
   (cwd a temp folder, PYTHONPATH the repo). Reports the subprocess's wall seconds, the trials'
   device-seconds (per child run, tag `train_seconds` x param `world_size`), the concurrency (from
   the line the sweep prints first, "N trial(s) at a time on ..."), and the orchestration
   efficiency = (device_seconds / concurrency) / wall: 1.0 would be every slot training all the
   time. Each trial's name, status, val accuracy (`model_val_acc`, else `best_val_acc`) and
   training seconds are printed, and whether all reach 0.85 (the quickstart's promise).
2. overhead: in one local Ray cluster started here, one trial at a time, `--repeats` times each:
   - minimal Tune function trial: a Tune function trainable (1 CPU) that calls `ray.tune.report`
     once: the baseline of a 1-worker trial;
   - minimal Ray Train trial: a Tune trial that builds a 2-worker TorchTrainer (0.5 CPU each, as
     our 2-worker trial) whose workers only report once, through TuneReportCallback
     (benchmarks/overhead.py's `time_minimal`): the baseline of a DDP trial;
   - ours, 1 and 2 workers: a one-trial sweep through the real sweep path (benchmarks/sweep_run.py:
     Tune + Train + the MLflow callback writing a sqlite store; resnet18 width 0.125 on digits,
     `--epochs` epochs). Overhead = that sweep's wall seconds - the sum of its epochs' `epoch_s`
     (read from MLflow). `run_overhead_s` is the same for the child run alone (its MLflow end -
     start, which leaves out the parent run's set-up and summary).
   Medians over the repeats, and the ratio of our 2-worker overhead to the minimal TorchTrainer
   trial's wall time.
3. many: a `--many`-trial sweep (vgg11 width 0.125, synthetic data of 256 images, 1 epoch, batch
   64, one 1-CPU worker per trial, a grid of `--many` learning rates, FIFO) run as a subprocess
   whose driver (orchestrator.config.load + orchestrator.sweep.run) prints its own peak RSS.
   Reports the wall, the number of child runs in MLflow (must equal `--many`), and per-trial
   overhead of the first 20 vs the last 20 trials by start time (fewer when there are under 40),
   where a trial's overhead = (MLflow run end_time - start_time) - its `train_seconds` tag. The
   child run is created when Tune starts the trial, so this includes waiting only if the trial
   waited after it started (actor start, data, model, checkpoints, and the MLflow finishing:
   plots, checkpoint upload, model export). A growing overhead or RSS means the driver slows down
   or leaks as a sweep gets long.

`--smoke` shrinks everything to a few minutes: the sweep file's last two models (the quickstart
lists the slowest first) written to a temp folder, 1 repeat, 6 trials in the many-sweep.

`--env KEY=VALUE` (repeatable) is set in os.environ before anything starts, so it reaches the
local Ray cluster of every part (the subprocesses inherit it; Ray Train passes its own variables
from the process that builds a TorchTrainer to its controller and workers). E.g. compare
`--skip-sweep --skip-many` with and without `--env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2`.
Ray Train V2 (2.60) variables that plausibly change per-trial overhead, with their defaults
(ray/train/v2/_internal/constants.py unless noted):
- RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2.0: the controller polls the worker group at most this often;
  reports reach Tune, and the end of training is noticed, only at a poll (up to 2 s per trial end).
- RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1: a PreemptionWatcher actor (a fresh process) per worker
  group start, killed at its shutdown; RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S=5.0 is its poll.
- RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=60.0: how long the placement group and worker actors
  may take to start before the attempt fails (a bound, not a cost; on a busy 2-core machine a
  slow start past it becomes a restart).
- RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S=600: how long a hanging worker poll is tolerated.
- RAY_TRAIN_METRICS_ENABLED=1 (read where the TorchTrainer is built): controller and worker
  metrics callbacks.
- RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING=1, RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING=1,
  RAY_TRAIN_ENABLE_PRINT_PATCH=1: log file set-up in the controller and every worker.
- RAY_CHDIR_TO_TRIAL_DIR=1 (ray/train/constants.py): workers chdir to the trial folder.
- RAY_TRAIN_ENABLE_STATE_TRACKING=0 (ray/train/constants.py): 1 adds a state actor and callback;
  then RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION=1, RAY_TRAIN_STATE_ACTOR_RECONCILIATION_INTERVAL_S=30.
- TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S=30 (ray/train/constants.py): bound on the DDP process
  group's destroy at the end of a trial (a hang there costs up to this).
- RAY_TRAIN_COLLECTIVE_TIMEOUT_S=None, RAY_TRAIN_COLLECTIVE_WARN_INTERVAL_S=60,
  RAY_TRAIN_CHECKPOINT_UPLOAD_WARN_INTERVAL_S=60, RAY_TRAIN_ENABLE_NCCL_HANG_DETECTOR=0: timeouts,
  warnings and NCCL only; nothing on a healthy CPU trial.
Not settable: every TorchTrainer run also starts a detached PlacementGroupCleaner actor (check
interval 1 s, stop timeout 12 s) and a SynchronizationActor, and gives each worker 5 s to run
its shutdown hooks. Tune's own: TUNE_GLOBAL_CHECKPOINT_S=auto (how often the driver snapshots the
experiment state; its cost grows with the trial count), TUNE_RESULT_BUFFER_LENGTH=1.

Prints one JSON object per measurement and a final summary (`"summary": true`). CPU numbers on a
shared machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

CONCURRENCY_LINE = re.compile(r"^(\d+) trial\(s\) at a time on ", re.MULTILINE)
TARGET_VAL_ACC = 0.85

# The many-sweep's driver: the same calls `orchestrate sweep` makes, then its own peak RSS.
MANY_DRIVER = """
import resource, sys
from orchestrator import config, sweep
spec = config.load(sys.argv[1], {"tracking_uri": sys.argv[2], "storage_path": sys.argv[3]})
code = sweep.run(spec)
print("driver_peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
sys.exit(code)
"""


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def quiet():
    """Tune's own prints (experiment boxes, trial tables) go to stderr: stdout stays JSON lines."""
    return contextlib.redirect_stdout(sys.stderr)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def write_yaml(path: str, raw: dict) -> str:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def run_subprocess(argv: list[str], folder: str) -> tuple[float, str]:
    """Run `argv` with cwd `folder` and the repo on PYTHONPATH; returns (wall seconds, stdout).
    Exits with the output's tail if it fails."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        sys.exit(f"{' '.join(argv[:4])} ... exited with {result.returncode}")
    return wall, result.stdout


def concurrency(stdout: str) -> int | None:
    match = CONCURRENCY_LINE.search(stdout)
    return int(match.group(1)) if match else None


def trial_runs(folder: str, experiment: str) -> list:
    """The child (trial) runs of `experiment` in `folder`'s MLflow store, oldest first."""
    import mlflow

    from orchestrator import runs

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return sorted(runs.trial_runs(client, exp.experiment_id), key=lambda r: r.info.start_time)


def train_seconds(run) -> float:
    from orchestrator.runs import Tag

    return float(run.data.tags.get(Tag.TRAIN_SECONDS, 0) or 0)


# ---------------------------------------------------------------------------------------------
# 1. A sweep file as a user runs it


def smoke_sweep_file(sweep_file: str, folder: str) -> str:
    """The sweep file's last two models (the quickstart's fastest), as a file in `folder`."""
    import yaml

    with open(sweep_file) as f:
        raw = yaml.safe_load(f)
    raw["name"] = f"{raw['name']}-smoke"
    raw["models"] = raw["models"][-2:]
    return write_yaml(os.path.join(folder, "smoke.yaml"), raw)


def measure_sweep(sweep_file: str, smoke: bool) -> dict:
    import yaml

    with tempfile.TemporaryDirectory() as folder:
        if smoke:
            sweep_file = smoke_sweep_file(sweep_file, folder)
        with open(sweep_file) as f:
            experiment = yaml.safe_load(f)["name"]
        wall, stdout = run_subprocess([sys.executable, "-m", "orchestrator", "sweep", sweep_file,
                                       "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                                       "--storage", f"{folder}/ray_results"], folder)
        trials, device_s = [], 0.0
        for run in trial_runs(folder, experiment):
            m = run.data.metrics
            world = int(run.data.params.get("world_size", 1) or 1)
            device_s += train_seconds(run) * world
            trials.append({"part": "sweep", "trial": run.info.run_name, "status": run.data.tags.get("status", ""),
                           "val_acc": m.get("model_val_acc", m.get("best_val_acc")),
                           "train_seconds": train_seconds(run), "world_size": world})
    for t in trials:
        emit(t)
    slots = concurrency(stdout)
    accs = [t["val_acc"] for t in trials]
    result = {"part": "sweep", "sweep_file": os.path.relpath(sweep_file, REPO) if not smoke else "smoke.yaml",
              "trials": len(trials), "wall_s": round(wall, 2), "device_s": round(device_s, 2),
              "concurrency": slots,
              "efficiency": round(device_s / slots / wall, 3) if slots else None,
              "amortized_overhead_s": round((wall * slots - device_s) / max(1, len(trials)), 2) if slots else None,
              "min_val_acc": min((a for a in accs if a is not None), default=None),
              f"all_val_acc_ge_{TARGET_VAL_ACC}": bool(accs) and all(a is not None and a >= TARGET_VAL_ACC for a in accs)}
    emit(result)
    return result


# ---------------------------------------------------------------------------------------------
# 2. Per-trial overhead next to minimal trials, in one Ray cluster


def minimal_function(config):
    import ray.tune

    ray.tune.report({"epoch": 1, "val_acc": 0.0})


def time_minimal_tune(storage: str) -> float:
    """Wall seconds of a Tuner running one 1-CPU function trial that reports once."""
    from ray import tune

    trainable = tune.with_resources(minimal_function, {"CPU": 1})
    start = time.perf_counter()
    tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    return time.perf_counter() - start


def time_ours(workers: int, folder: str, epochs: int) -> dict:
    """A one-trial sweep through the real sweep path (as benchmarks/overhead.py's)."""
    from overhead import train_cfg
    from sweep_run import run_sweep

    raw = {"name": f"overhead-{workers}w", "dataset": {"name": "digits"}, "train": train_cfg(epochs),
           "resources": {"num_workers": workers, "cpus_per_worker": 1.0 / workers, "driver_cpus": 0.1},
           "search": {"scheduler": "fifo"}, "models": [{"arch": "resnet18", "knobs": {"width": 0.125}}]}
    wall, client, runs = run_sweep(folder, raw)
    run = runs[0]  # newest: this one
    epoch_s = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_s"))
    run_s = (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else float("nan")
    return {"wall_s": round(wall, 2), "epoch_s": round(epoch_s, 2), "overhead_s": round(wall - epoch_s, 2),
            "run_s": round(run_s, 2), "run_overhead_s": round(run_s - epoch_s, 2),
            "status": run.data.tags.get("status", "")}


def measure_overhead(repeats: int, epochs: int) -> dict:
    import ray
    from overhead import time_minimal

    samples = {"minimal_tune_s": [], "minimal_train_2w_s": [], "ours_1w_overhead_s": [], "ours_2w_overhead_s": [],
               "ours_1w_run_overhead_s": [], "ours_2w_run_overhead_s": []}
    ray.init(log_to_driver=False, logging_level=logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as folder:
            storage = os.path.join(folder, "minimal")
            for i in range(repeats):
                with quiet():
                    s = time_minimal_tune(storage)
                samples["minimal_tune_s"].append(round(s, 2))
                emit({"part": "overhead", "trial": "minimal_tune", "repeat": i, "wall_s": round(s, 2)})
                with quiet():
                    s = time_minimal(2, storage, cpus_per_worker=0.5)  # the CPUs our 2-worker trial asks
                samples["minimal_train_2w_s"].append(round(s, 2))
                emit({"part": "overhead", "trial": "minimal_train_2w", "repeat": i, "wall_s": round(s, 2)})
                for workers in (1, 2):
                    with quiet():
                        r = time_ours(workers, folder, epochs)
                    samples[f"ours_{workers}w_overhead_s"].append(r["overhead_s"])
                    samples[f"ours_{workers}w_run_overhead_s"].append(r["run_overhead_s"])
                    emit({"part": "overhead", "trial": f"ours_{workers}w", "repeat": i, **r})
    finally:
        ray.shutdown()
    m = {f"median_{k}": median(v) for k, v in samples.items()}
    result = {"part": "overhead", "repeats": repeats, "epochs": epochs, **m,
              "ours_2w_overhead_over_minimal_train_2w": round(m["median_ours_2w_overhead_s"] / m["median_minimal_train_2w_s"], 2),
              "ours_1w_overhead_over_minimal_tune": round(m["median_ours_1w_overhead_s"] / m["median_minimal_tune_s"], 2),
              **samples}
    emit(result)
    return result


# ---------------------------------------------------------------------------------------------
# 3. A long sweep of tiny trials


def many_spec(count: int) -> dict:
    lo, hi = 0.001, 0.1
    lrs = [round(lo * (hi / lo) ** (i / max(count - 1, 1)), 6) for i in range(count)]
    return {"name": "throughput-many", "dataset": {"name": "synthetic", "synthetic_size": 256},
            "train": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0.5},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "search": {"scheduler": "fifo"},
            "models": [{"arch": "vgg11", "knobs": {"width": 0.125}, "lr": {"grid": lrs}}]}


def measure_many(count: int) -> dict:
    raw = many_spec(count)
    with tempfile.TemporaryDirectory() as folder:
        path = write_yaml(os.path.join(folder, "many.yaml"), raw)
        wall, stdout = run_subprocess([sys.executable, "-c", MANY_DRIVER, path, f"sqlite:///{folder}/mlflow.db",
                                       f"{folder}/ray_results"], folder)
        runs = trial_runs(folder, raw["name"])
        overheads = [(r.info.end_time - r.info.start_time) / 1000 - train_seconds(r) for r in runs if r.info.end_time]
        statuses = [r.data.tags.get("status", "") for r in runs]
        device_s = sum(train_seconds(r) for r in runs)
        starts = sorted(r.info.start_time / 1000 for r in runs)
        gaps = [b - a for a, b in zip(starts, starts[1:])]  # how fast trials follow each other
    rss = re.search(r"^driver_peak_rss_kb (\d+)$", stdout, re.MULTILINE)
    k = min(20, len(overheads) // 2)
    result = {"part": "many", "trials": count, "child_runs": len(runs), "all_runs_logged": len(runs) == count,
              "completed": statuses.count("completed"), "wall_s": round(wall, 2), "concurrency": concurrency(stdout),
              "group": k, "median_first_overhead_s": median(overheads[:k]),
              "median_last_overhead_s": median(overheads[-k:]) if k else None,
              "driver_peak_rss_mb": round(int(rss.group(1)) / 1024, 1) if rss else None,
              # What a trial costs a slot beyond its training, averaged over the sweep (the run
              # spans above also count time a finished run waits on the background MLflow writer):
              "device_s": round(device_s, 2),
              "amortized_overhead_s": round((wall * (concurrency(stdout) or 1) - device_s) / max(1, len(runs)), 2),
              "median_first_start_gap_s": median(gaps[:k]), "median_last_start_gap_s": median(gaps[-k:]) if k else None}
    emit(result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default=os.path.join(REPO, "experiments", "quickstart.yaml"), help="part 1's sweep file")
    p.add_argument("--repeats", type=int, default=2, help="part 2: repeats of each trial kind")
    p.add_argument("--epochs", type=int, default=1, help="part 2: epochs of our trials")
    p.add_argument("--many", type=int, default=100, help="part 3: trials in the long sweep")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set in the environment before Ray starts (repeatable)")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-many", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a few minutes: 2-model sweep, 1 repeat, 6 trials")
    args = p.parse_args()
    env = {}
    for pair in args.env:
        if "=" not in pair:
            p.error(f"--env: {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        env[key] = value
    os.environ.update(env)
    if args.smoke:
        args.repeats, args.many = 1, 6

    summary = {"summary": True, "smoke": args.smoke, "env": env, "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv)}
    if not args.skip_sweep:
        summary["sweep"] = measure_sweep(os.path.abspath(args.sweep), args.smoke)
    if not args.skip_overhead:
        summary["overhead"] = measure_overhead(args.repeats, args.epochs)
    if not args.skip_many:
        summary["many"] = measure_many(args.many)
    emit(summary)


if __name__ == "__main__":
    main()
