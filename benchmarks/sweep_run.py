"""The one way the benchmarks run a sweep and read it back.

`run_sweep` runs a sweep (a sweep file, or its mapping) through `orchestrator.sweep.run`, the
entry `orchestrate sweep` calls, with its MLflow store and Ray storage in a folder of the
caller's, and returns what the store recorded, read through `orchestrator.runs` alone: each trial
run as `runs.Result` (the row `orchestrate compare` shows) with its start and end time.

In this process (the default), the sweep joins the Ray this process runs (start it once for
many sweeps) and Tune's own prints go to stderr, so a benchmark's stdout stays JSON lines. With
`own_process=True` the sweep runs as a user runs it: a fresh Python that loads the file, starts
its own Ray and stops it (`python -m benchmarks.sweep_run FILE TRACKING_URI STORAGE`, this
module's driver, makes the calls `orchestrate sweep` makes and then prints its own peak RSS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

# The line a sweep prints first ("2 trial(s) at a time on 2 CPUs (each trial holds 1 CPU)").
CONCURRENCY_LINE = re.compile(r"^(\d+) trial\(s\) at a time on ", re.MULTILINE)
PEAK_RSS_LINE = re.compile(r"^driver_peak_rss_kb (\d+)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class TrialRun:
    """One trial's child run: the compare row, and when MLflow started and ended the run."""

    result: Any  # orchestrator.runs.Result
    workers: int  # its world size
    start_s: float  # seconds since the epoch
    end_s: float | None  # None while the run is open

    @property
    def device_s(self) -> float:
        """Training seconds x workers (the run's `train_seconds` tag x world size)."""
        return self.result.device_hours * 3600.0

    @property
    def train_s(self) -> float:
        """The trial's training seconds: the sum of its epochs' `train_s` (evaluation not counted)."""
        return self.device_s / self.workers

    @property
    def span_s(self) -> float | None:
        return None if self.end_s is None else self.end_s - self.start_s


@dataclasses.dataclass(frozen=True)
class SweepRun:
    name: str  # the sweep's (its MLflow experiment)
    exit_code: int
    wall_s: float  # the whole of sweep.run (own_process: of the process, Ray's start included)
    concurrency: int | None  # trials at a time, as the sweep said
    trials: list[TrialRun]  # oldest first: the order the trials started in
    tracking_uri: str
    output: str  # what the sweep printed
    driver_peak_rss_mb: float | None = None  # own_process only

    @property
    def device_s(self) -> float:
        return sum(t.device_s for t in self.trials)

    def history(self, trial: TrialRun) -> list[dict[str, Any]]:
        """The trial's per-epoch metrics ([{"epoch": 1, "val_acc": ..., "epoch_s": ...}, ...])."""
        from orchestrator import runs

        return runs.history(client(self.tracking_uri), trial.result.run_id)


@contextlib.contextmanager
def local_ray():
    """A local Ray cluster for this process's sweeps (each joins it: Ray starts once for many);
    its workers' logs stay in Ray's files. Stopped on the way out."""
    import ray

    ray.init(log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        ray.shutdown()


def client(tracking_uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def log_spaced(lo: float, hi: float, count: int) -> list[float]:
    """`count` learning rates from `lo` to `hi`, evenly spaced in log scale (6 decimals)."""
    return [round(lo * (hi / lo) ** (i / max(count - 1, 1)), 6) for i in range(count)]


def write_sweep_file(folder: str, raw: dict[str, Any]) -> str:
    import yaml

    path = os.path.join(folder, f"{raw['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f, sort_keys=False)
    return path


def run_sweep(folder: str, sweep: dict[str, Any] | str, *, own_process: bool = False, tracking_uri: str | None = None,
              storage: str | None = None) -> SweepRun:
    """Run `sweep` (a sweep file's path, or a mapping written as `FOLDER/<name>.yaml`) with its
    tracking store `tracking_uri` (default `sqlite:///FOLDER/mlflow.db`) and storage `storage`
    (default `FOLDER/ray_results`); see the module's docstring for the two ways. Raises
    RuntimeError with the output's tail when the sweep fails (exit code other than 0)."""
    from orchestrator import config

    path = sweep if isinstance(sweep, str) else write_sweep_file(folder, sweep)
    tracking_uri = tracking_uri or f"sqlite:///{folder}/mlflow.db"
    storage = storage or os.path.join(folder, "ray_results")
    spec = config.load(path, {"tracking_uri": tracking_uri, "storage_path": storage})
    rss_mb = None
    start = time.perf_counter()
    if own_process:
        # `-m benchmarks.sweep_run` from the repository root, whatever the caller's cwd.
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        done = subprocess.run([sys.executable, "-m", "benchmarks.sweep_run", path, tracking_uri, storage],
                              cwd=root, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        code, output = done.returncode, done.stdout + done.stderr
        rss = PEAK_RSS_LINE.search(done.stdout)
        rss_mb = round(int(rss.group(1)) / 1024, 1) if rss else None
    else:
        from orchestrator import sweep as sweep_mod

        out = io.StringIO()
        with contextlib.redirect_stdout(sys.stderr):  # Tune's own prints; stdout stays the caller's
            code = sweep_mod.run(spec, out=out, verbosity=0)  # joins the Ray this process runs
        wall = time.perf_counter() - start
        output = out.getvalue()
    if code != 0:
        raise RuntimeError(f"sweep {spec.name!r} exited with {code}:\n{output[-4000:]}")
    slots = CONCURRENCY_LINE.search(output)
    return SweepRun(name=spec.name, exit_code=code, wall_s=wall, concurrency=int(slots.group(1)) if slots else None,
                    trials=read_trials(tracking_uri, spec.name), tracking_uri=tracking_uri, output=output,
                    driver_peak_rss_mb=rss_mb)


def read_trials(tracking_uri: str, experiment: str) -> list[TrialRun]:
    """The trial runs of `experiment`'s latest sweep in the store, oldest first."""
    from orchestrator import runs

    store = client(tracking_uri)
    exp = store.get_experiment_by_name(experiment)
    sweeps = runs.sweep_runs(store, exp.experiment_id) if exp else []
    if not sweeps:
        return []
    parent = sweeps[0].info.run_id
    trial_runs = runs.trial_runs(store, exp.experiment_id, parent)
    metric, _ = runs.selection(store, parent, trial_runs)
    trials = [TrialRun(runs.result(r, metric), runs.decode(r).resources.num_workers, r.info.start_time / 1000,
                       r.info.end_time / 1000 if r.info.end_time else None) for r in trial_runs]
    return sorted(trials, key=lambda t: t.start_s)


def main(argv: list[str]) -> int:
    """The own-process driver: what `orchestrate sweep FILE --tracking-uri URI --storage DIR`
    runs, then this process's peak RSS."""
    from orchestrator import config, sweep

    path, tracking_uri, storage = argv
    spec = config.load(path, {"tracking_uri": tracking_uri, "storage_path": storage})
    code = sweep.run(spec)
    print("driver_peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
