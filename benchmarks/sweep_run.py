"""Shared by the sweep benchmarks: run a sweep spec through the real path, read it back from MLflow."""

from __future__ import annotations

import os
import time


def run_sweep(folder: str, raw: dict):
    """Write `raw` as `<name>.yaml` in `folder`, run it through the real sweep path (Tune + Train +
    MLflow; Ray must already be initialised) with its store and storage in `folder`. Returns the
    wall seconds, the MLflow client and the trial runs, newest first."""
    import mlflow
    import yaml

    from orchestrator import config, runs, sweep

    path = os.path.join(folder, f"{raw['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    spec = config.load(path, {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "storage_path": f"{folder}/ray_results"})
    start = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        sweep.run(spec, out=devnull, verbosity=-1)  # joins the Ray this process already runs
    wall = time.perf_counter() - start
    client = mlflow.MlflowClient(tracking_uri=spec.tracking_uri)
    exp = client.get_experiment_by_name(raw["name"])
    trials = sorted(runs.trial_runs(client, exp.experiment_id), key=lambda r: -r.info.start_time)
    return wall, client, trials
