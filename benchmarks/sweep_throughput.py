"""Sweep throughput: orchestration efficiency, per-trial overhead, a long sweep's driver, and
training speed inside a trial against the bare engine.

On this machine: how much of a sweep's wall time trains models, what one trial costs beyond its
training, whether a long sweep's driver slows down or grows, and how fast a trial trains next to
the same engine run alone.

    python -m benchmarks.sweep_throughput [--sweep experiments/quickstart.yaml] [--repeats 2]
        [--epochs 1] [--many 100] [--bare-epochs 3] [--env KEY=VALUE ...] [--skip-sweep]
        [--skip-overhead] [--skip-many] [--skip-bare] [--smoke]

Four parts, run one after the other (never two Ray clusters at once). Every sweep runs through
benchmarks/sweep_run.py's `run_sweep` (orchestrator.sweep.run, the store a sqlite file in a temp
folder) and is read back through orchestrator.runs.

1. sweep: the sweep file run as a user runs it, in its own process that starts its own Ray
   (`run_sweep(..., own_process=True)`: the calls `orchestrate sweep FILE --tracking-uri ...
   --storage ...` makes). Reports that process's wall seconds, the trials' device-seconds (per
   child run, its training seconds x world size), the concurrency (from the line the sweep prints
   first, "N trial(s) at a time on ..."), and the orchestration efficiency =
   (device_seconds / concurrency) / wall: 1.0 would be every slot training all the time. Each
   trial's name, status, val accuracy (at its logged model) and training seconds are printed, and
   whether all reach 0.85 (the quickstart's promise).
2. overhead: in one local Ray cluster started here, one trial at a time, `--repeats` times each:
   - minimal Tune function trial: a Tune function trainable (1 CPU) that calls `ray.tune.report`
     once: the baseline of a 1-worker trial;
   - minimal Ray Train trial: a Tune trial that builds a 2-worker TorchTrainer (0.5 CPU each, as
     our 2-worker trial) whose workers only report once, through TuneReportCallback: the baseline
     of a DDP trial;
   - ours, 1 and 2 workers: a one-trial sweep (Tune + Train + the MLflow callback writing a
     sqlite store; resnet18 width 0.125 on digits, `--epochs` epochs). Overhead = that sweep's
     wall seconds - the sum of its epochs' `epoch_s`. `run_overhead_s` is the same for the child
     run alone (its MLflow end - start, which leaves out the parent run's set-up and summary).
   Medians over the repeats, and the ratio of our 2-worker overhead to the minimal TorchTrainer
   trial's wall time.
3. many: a `--many`-trial sweep (vgg11 width 0.125, synthetic data of 256 images, 1 epoch, batch
   64, one 1-CPU worker per trial, a grid of `--many` learning rates, FIFO) in its own process,
   whose driver prints its own peak RSS. Reports the wall, the number of child runs in MLflow
   (must equal `--many`), and per-trial overhead of the first 20 vs the last 20 trials by start
   time (fewer when there are under 40), where a trial's overhead = (MLflow run end - start) - its
   training seconds. The child run is created when Tune starts the trial, so this includes
   waiting only if the trial waited after it started (data, model, checkpoints, and the MLflow
   finishing: plots, checkpoint upload, model export). A growing overhead or RSS means the
   driver slows down or leaks as a sweep gets long.
4. bare: training img/s inside a trial against the bare engine. In one local Ray cluster,
   `--repeats` one-trial sweeps of the overhead part's 1-worker trial with `--bare-epochs` epochs
   (the trial's own process, 1 CPU: Ray gives it one torch thread); their epochs 2.. `imgs_per_s`
   (epoch 1 holds the warm-up) against the same engine, config and data run in this process with
   no Ray and no MLflow, with one torch thread, `--repeats` times. `ray_over_bare_imgs_per_s` is
   the ratio of the medians: what the trial's process loses to the Tune driver, Ray's processes
   and the MLflow writer that share this machine's cores.

`--smoke` shrinks everything to a few minutes: the sweep file's last two models (the quickstart
lists the slowest first) written to a temp folder, 1 repeat, 6 trials in the many-sweep, 2 epochs
in the bare part.

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
import os
import statistics
import sys
import tempfile
import time

from benchmarks.sweep_run import SweepRun, local_ray, log_spaced, run_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_VAL_ACC = 0.85


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def quiet():
    """Tune's own prints (experiment boxes, trial tables) go to stderr: stdout stays JSON lines."""
    return contextlib.redirect_stdout(sys.stderr)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


# ---------------------------------------------------------------------------------------------
# 1. A sweep file as a user runs it


def smoke_sweep(sweep_file: str) -> dict:
    """The sweep file's last two models (the quickstart's fastest), as a mapping."""
    import yaml

    with open(sweep_file) as f:
        raw = yaml.safe_load(f)
    raw["name"] = f"{raw['name']}-smoke"
    raw["models"] = raw["models"][-2:]
    return raw


def measure_sweep(sweep_file: str, smoke: bool) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        done = run_sweep(folder, smoke_sweep(sweep_file) if smoke else sweep_file, own_process=True)
    trials = [{"part": "sweep", "trial": t.result.name, "status": t.result.status, "val_acc": t.result.val_acc,
               "train_seconds": round(t.train_s, 3), "world_size": t.workers} for t in done.trials]
    for t in trials:
        emit(t)
    slots, wall, device_s = done.concurrency, done.wall_s, done.device_s
    accs = [t["val_acc"] for t in trials]
    result = {"part": "sweep", "sweep_file": "smoke.yaml" if smoke else os.path.relpath(sweep_file, REPO),
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


def minimal_worker(config):
    import ray.train

    ray.train.report({"epoch": 1, "val_acc": 0.0})


def minimal_driver(config, workers, storage, cpus_per_worker):
    import ray.tune
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    TorchTrainer(minimal_worker, scaling_config=ScalingConfig(num_workers=workers,
                                                              resources_per_worker={"CPU": cpus_per_worker}),
                 run_config=RunConfig(name=f"minimal-{ray.tune.get_context().get_trial_id()}", storage_path=storage,
                                      callbacks=[TuneReportCallback()])).fit()


def time_minimal_train(workers: int, storage: str) -> float:
    """Wall seconds of a Tuner running one trial that builds a `workers`-worker TorchTrainer whose
    workers report once. The workers ask 1 / workers CPU each, as our DDP trial's, so they fit
    beside the trial's 0.1-CPU driver on a 2-CPU machine."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(minimal_driver, workers=workers, storage=storage,
                                                         cpus_per_worker=1.0 / workers), {"CPU": 0.1})
    start = time.perf_counter()
    tune.Tuner(trainable, run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    return time.perf_counter() - start


def one_trial_sweep(workers: int, epochs: int) -> dict:
    """resnet18 width 0.125 on digits, one trial of `workers` workers sharing one CPU."""
    return {"name": f"overhead-{workers}w", "dataset": {"name": "digits"},
            "train": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "warmup_epochs": 0.5, "data_path": "device"},
            "resources": {"num_workers": workers, "cpus_per_worker": 1.0 / workers, "driver_cpus": 0.1},
            "search": {"scheduler": "fifo"}, "models": [{"arch": "resnet18", "knobs": {"width": 0.125}}]}


def run_one_trial(folder: str, workers: int, epochs: int) -> tuple[SweepRun, list[dict]]:
    """The one-trial sweep through the real path, and its trial's per-epoch metrics."""
    done = run_sweep(folder, one_trial_sweep(workers, epochs))
    return done, done.history(done.trials[0])


def time_ours(workers: int, folder: str, epochs: int) -> dict:
    done, epochs_run = run_one_trial(folder, workers, epochs)
    trial = done.trials[0]
    epoch_s = sum(e["epoch_s"] for e in epochs_run)
    run_s = trial.span_s if trial.span_s is not None else float("nan")
    return {"wall_s": round(done.wall_s, 2), "epoch_s": round(epoch_s, 2), "overhead_s": round(done.wall_s - epoch_s, 2),
            "run_s": round(run_s, 2), "run_overhead_s": round(run_s - epoch_s, 2), "status": trial.result.status}


def measure_overhead(repeats: int, epochs: int) -> dict:
    samples = {"minimal_tune_s": [], "minimal_train_2w_s": [], "ours_1w_overhead_s": [], "ours_2w_overhead_s": [],
               "ours_1w_run_overhead_s": [], "ours_2w_run_overhead_s": []}
    with local_ray(), tempfile.TemporaryDirectory() as folder:
        storage = os.path.join(folder, "minimal")
        for i in range(repeats):
            with quiet():
                s = time_minimal_tune(storage)
            samples["minimal_tune_s"].append(round(s, 2))
            emit({"part": "overhead", "trial": "minimal_tune", "repeat": i, "wall_s": round(s, 2)})
            with quiet():
                s = time_minimal_train(2, storage)
            samples["minimal_train_2w_s"].append(round(s, 2))
            emit({"part": "overhead", "trial": "minimal_train_2w", "repeat": i, "wall_s": round(s, 2)})
            for workers in (1, 2):
                r = time_ours(workers, folder, epochs)
                samples[f"ours_{workers}w_overhead_s"].append(r["overhead_s"])
                samples[f"ours_{workers}w_run_overhead_s"].append(r["run_overhead_s"])
                emit({"part": "overhead", "trial": f"ours_{workers}w", "repeat": i, **r})
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
    lrs = log_spaced(0.001, 0.1, count)
    return {"name": "throughput-many", "dataset": {"name": "synthetic", "synthetic_size": 256},
            "train": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0.5},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "search": {"scheduler": "fifo"},
            "models": [{"arch": "vgg11", "knobs": {"width": 0.125}, "lr": {"grid": lrs}}]}


def measure_many(count: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        done = run_sweep(folder, many_spec(count), own_process=True)
    trials = done.trials
    overheads = [t.span_s - t.train_s for t in trials if t.span_s is not None]
    statuses = [t.result.status for t in trials]
    starts = [t.start_s for t in trials]
    gaps = [b - a for a, b in zip(starts, starts[1:])]  # how fast trials follow each other
    k = min(20, len(overheads) // 2)
    result = {"part": "many", "trials": count, "child_runs": len(trials), "all_runs_logged": len(trials) == count,
              "completed": statuses.count("completed"), "wall_s": round(done.wall_s, 2),
              "concurrency": done.concurrency,
              "group": k, "median_first_overhead_s": median(overheads[:k]),
              "median_last_overhead_s": median(overheads[-k:]) if k else None,
              "driver_peak_rss_mb": done.driver_peak_rss_mb,
              # What a trial costs a slot beyond its training, averaged over the sweep (the run
              # spans above also count time a finished run waits on the background MLflow writer):
              "device_s": round(done.device_s, 2),
              "amortized_overhead_s": round((done.wall_s * (done.concurrency or 1) - done.device_s) / max(1, len(trials)), 2),
              "median_first_start_gap_s": median(gaps[:k]), "median_last_start_gap_s": median(gaps[-k:]) if k else None}
    emit(result)
    return result


# ---------------------------------------------------------------------------------------------
# 4. Training img/s inside a trial against the bare engine


def bare_engine_imgs_per_s(epochs: int) -> list[float]:
    """Per-epoch img/s of the 1-worker trial's engine, config and data, run in this process with
    one torch thread (what Ray gives a 1-CPU trial) and no Ray or MLflow."""
    import torch

    from orchestrator import config, data, engine

    trial = config.parse(one_trial_sweep(1, epochs)).trial({"arch": "resnet18", "knobs": {"width": 0.125}}, "bare")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reporter = engine.CollectingReporter()
        engine.Engine(trial.train, engine.ModelSpec(trial.arch, trial.knobs), data.load_splits(trial.dataset),
                      device="cpu").fit(reporter)
        return [m["imgs_per_s"] for m in reporter.history]
    finally:
        torch.set_num_threads(threads)


def measure_bare(repeats: int, epochs: int) -> dict:
    ray_imgs, bare_imgs = [], []
    with local_ray(), tempfile.TemporaryDirectory() as folder:
        for i in range(repeats):
            _, epochs_run = run_one_trial(folder, 1, epochs)
            imgs = [round(e["imgs_per_s"], 1) for e in epochs_run]
            ray_imgs += imgs[1:]  # epoch 1 includes the warm-up
            emit({"part": "bare", "trial": "ours_1w", "repeat": i, "imgs_per_s": imgs})
    for i in range(repeats):
        imgs = [round(v, 1) for v in bare_engine_imgs_per_s(epochs)]
        bare_imgs += imgs[1:]
        emit({"part": "bare", "trial": "bare_engine", "repeat": i, "threads": 1, "imgs_per_s": imgs})
    result = {"part": "bare", "repeats": repeats, "epochs": epochs,
              "median_ray_imgs_per_s": median(ray_imgs), "median_bare_imgs_per_s": median(bare_imgs),
              "ray_over_bare_imgs_per_s": round(statistics.median(ray_imgs) / statistics.median(bare_imgs), 3),
              "ray_imgs_per_s": ray_imgs, "bare_imgs_per_s": bare_imgs}
    emit(result)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default=os.path.join(REPO, "experiments", "quickstart.yaml"), help="part 1's sweep file")
    p.add_argument("--repeats", type=int, default=2, help="parts 2 and 4: repeats of each trial kind")
    p.add_argument("--epochs", type=int, default=1, help="part 2: epochs of our trials")
    p.add_argument("--many", type=int, default=100, help="part 3: trials in the long sweep")
    p.add_argument("--bare-epochs", type=int, default=3, help="part 4: epochs of each run (at least 2)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="set in the environment before Ray starts (repeatable)")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-many", action="store_true")
    p.add_argument("--skip-bare", action="store_true")
    p.add_argument("--smoke", action="store_true", help="a few minutes: 2-model sweep, 1 repeat, 6 trials, 2 epochs")
    args = p.parse_args()
    env = {}
    for pair in args.env:
        if "=" not in pair:
            p.error(f"--env: {pair[:80]!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        env[key] = value
    os.environ.update(env)
    if args.smoke:
        args.repeats, args.many, args.bare_epochs = 1, 6, 2
    if args.bare_epochs < 2:
        p.error(f"--bare-epochs: {args.bare_epochs} leaves no epoch after the first (the warm-up); give at least 2")

    summary = {"summary": True, "smoke": args.smoke, "env": env, "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python -m benchmarks.sweep_throughput", *sys.argv[1:]])}
    if not args.skip_sweep:
        summary["sweep"] = measure_sweep(os.path.abspath(args.sweep), args.smoke)
    if not args.skip_overhead:
        summary["overhead"] = measure_overhead(args.repeats, args.epochs)
    if not args.skip_many:
        summary["many"] = measure_many(args.many)
    if not args.skip_bare:
        summary["bare"] = measure_bare(args.repeats, args.bare_epochs)
    emit(summary)


if __name__ == "__main__":
    main()
