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

    from orchestrator import config, sweep

    path = os.path.join(folder, f"{raw['name']}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(raw, f)
    spec = config.load(path, {"tracking_uri": f"sqlite:///{folder}/mlflow.db", "storage_path": f"{folder}/ray_results"})
    import ray

    start = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        sweep._run_tuner(spec, None, sweep.packing(spec.resources, ray.cluster_resources())[0], devnull)
    wall = time.perf_counter() - start
    client = mlflow.MlflowClient(tracking_uri=spec.tracking_uri)
    exp = client.get_experiment_by_name(raw["name"])
    trials = client.search_runs([exp.experiment_id], "tags.`orchestrate.role` = 'trial'",
                                order_by=["attributes.start_time DESC"])
    return wall, client, trials
