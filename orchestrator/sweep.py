"""`orchestrate sweep`: validated spec -> Ray cluster -> MLflow parent run -> Tuner -> summary.

Everything that can be wrong with the user's input is found before anything is written: the file
(config.py), the tracking server (a health probe) and whether the cluster can ever hold one trial.
Only then is the parent run created and the Tuner started. A local Ray cluster started here is
shut down on every exit path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from typing import Any

from orchestrator.config import ConfigError, SweepSpec

STATE_FILE = "orchestrate_sweep.json"  # beside Tune's experiment state: parent run id, experiment


def to_tune(value: Any):
    """One sweep-file leaf -> the ray.tune primitive it names (dicts recurse)."""
    from ray import tune

    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in (
            "grid", "choice", "uniform", "loguniform", "randint"):
        kind, args = next(iter(value.items()))
        return {"grid": lambda a: tune.grid_search(list(a)), "choice": lambda a: tune.choice(list(a)),
                "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
                "randint": lambda a: tune.randint(*a)}[kind](args)
    if isinstance(value, dict):
        return {k: to_tune(v) for k, v in value.items()}
    return value


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """An arch dimension: a grid over the model entries, each carrying its own knob/lr space."""
    from ray import tune

    entries = []
    for m in spec.models:
        entry = {"arch": m.arch, **to_tune(m.space)}
        entry.setdefault("lr", spec.train.get("lr", 0.1))
        entries.append(entry)
    return {"model": tune.grid_search(entries)}


def setup_dict(spec: SweepSpec, run_name: str) -> dict[str, Any]:
    """The static part of every trial (passed with tune.with_parameters, not in the space)."""
    return {"dataset": spec.dataset, "train": spec.train, "resources": dataclasses.asdict(spec.resources),
            "failure": dataclasses.asdict(spec.failure), "storage_path": spec.storage_path,
            "run_name": run_name}


def preview(spec: SweepSpec) -> list[dict[str, Any]]:
    """The trials a sweep would run (random dimensions sampled with the sweep's seed)."""
    from ray.tune.search.variant_generator import generate_variants
    import random

    import numpy as np

    random.seed(spec.search.seed)
    np.random.seed(spec.search.seed)
    rows = []
    for _ in range(spec.search.num_samples):
        for _, cfg in generate_variants(param_space(spec)):
            rows.append(cfg["model"])
    return rows


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "sweep"


def storage_fs(uri: str):
    """(pyarrow filesystem, path) for the storage path: a local folder or any URI Ray's storage
    accepts (s3://, gs://, ...), so the sweep's state file lives beside Tune's own state."""
    import pyarrow.fs

    if "://" in uri:
        return pyarrow.fs.FileSystem.from_uri(uri)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(uri)


def write_state(spec: SweepSpec, run_name: str, meta: dict[str, Any]) -> None:
    fs, root = storage_fs(spec.storage_path)
    fs.create_dir(f"{root}/{run_name}", recursive=True)
    with fs.open_output_stream(f"{root}/{run_name}/{STATE_FILE}") as f:
        f.write(json.dumps(meta).encode())


def read_state(spec: SweepSpec, run_name: str) -> dict[str, Any] | None:
    import pyarrow

    fs, root = storage_fs(spec.storage_path)
    try:
        with fs.open_input_stream(f"{root}/{run_name}/{STATE_FILE}") as f:
            return json.loads(f.read().decode())
    except (FileNotFoundError, OSError, pyarrow.ArrowException):
        return None


def find_resumable(spec: SweepSpec) -> str | None:
    """The newest experiment folder (its name) of this sweep under the storage path."""
    import pyarrow.fs

    fs, root = storage_fs(spec.storage_path)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None
    found = []
    for entry in entries:
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        meta = read_state(spec, entry.base_name)
        if meta and meta.get("experiment") == spec.name:
            found.append((meta.get("created", 0), entry.base_name))
    return max(found)[1] if found else None


def cluster_fits(spec: SweepSpec, resources: dict[str, float]) -> str | None:
    """None if one trial fits the cluster's total resources, else why not."""
    r = spec.resources
    need_cpu = r.driver_cpus + r.num_workers * r.cpus_per_worker
    have_cpu = resources.get("CPU", 0)
    if need_cpu > have_cpu + 1e-9:
        return (f"{r.num_workers} workers x {r.cpus_per_worker} CPU + {r.driver_cpus} driver CPU = {need_cpu:g} CPUs, "
                f"but the cluster has {have_cpu:g}")
    if r.use_gpu:
        need_gpu, have_gpu = r.num_workers * r.gpus_per_worker, resources.get("GPU", 0)
        if need_gpu > have_gpu + 1e-9:
            return f"{r.num_workers} workers x {r.gpus_per_worker} GPU = {need_gpu:g} GPUs, but the cluster has {have_gpu:g}"
    if r.placement_strategy == "STRICT_SPREAD":
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if len(nodes) < r.num_workers:
            return f"STRICT_SPREAD needs {r.num_workers} nodes, the cluster has {len(nodes)}"
    return None


def run(spec: SweepSpec, *, address: str | None = None, resume: bool = False, out=sys.stdout) -> int:
    import ray

    from orchestrator import tracking

    reason = tracking.check_reachable(spec.tracking_uri)
    if reason:
        raise ConfigError(spec.file, "tracking.uri", reason)
    restore_path = find_resumable(spec) if resume else None
    if resume and restore_path is None:
        raise ConfigError(spec.file, "name", f"--resume: no earlier run of {spec.name!r} under {spec.storage_path}")

    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not address
    if started_here:
        # Token auth stays on (Ray's default for local clusters); only its notice about that is
        # silenced, so a user error stays the one line on stderr it should be.
        import logging

        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Worker logs stay in Ray's log files: the terminal shows the trial table, not every rank's prints.
    # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner asks its
    # state API whether a trial's controller died, and without it an ASHA-stopped trial's workers'
    # resources are never released.
    ray.init(address=address, log_to_driver=False, configure_logging=True, logging_level="WARNING")
    try:
        if started_here:  # a cluster we started cannot grow: refuse what it can never hold
            why = cluster_fits(spec, ray.cluster_resources())
            if why:
                raise ConfigError(spec.file, "resources.num_workers", why)
        return _run_tuner(spec, restore_path, out)
    finally:
        if started_here:
            ray.shutdown()


def _run_tuner(spec: SweepSpec, restore_path: str | None, out) -> int:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from orchestrator import ray_train, tracking

    if restore_path:
        run_name = restore_path
        meta = read_state(spec, run_name)
        restore_path = spec.storage_path.rstrip("/") + "/" + run_name
        tracker = tracking.SweepTracker(spec.tracking_uri, spec.name, meta["parent_run_id"])
        tracker.client.update_run(meta["parent_run_id"], status="RUNNING")
        setup = setup_dict(spec, run_name)
        trainable = tune.with_resources(tune.with_parameters(ray_train.trial_driver, setup=setup),
                                        {"CPU": spec.resources.driver_cpus})
        tuner = tune.Tuner.restore(restore_path, trainable, resume_unfinished=True, resume_errored=True)
        print(f"resuming {restore_path} (MLflow parent run {meta['parent_run_id']})", file=out, flush=True)
    else:
        run_name = f"{slug(spec.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
        setup = setup_dict(spec, run_name)
        tracker = tracking.SweepTracker(spec.tracking_uri, spec.name)
        parent = tracker.start_parent(spec.file, {"search": dataclasses.asdict(spec.search),
                                                  "resources": dataclasses.asdict(spec.resources),
                                                  "train": spec.train, "dataset": spec.dataset,
                                                  "failure": dataclasses.asdict(spec.failure),
                                                  "trials": spec.trial_count()})
        write_state(spec, run_name, {"experiment": spec.name, "parent_run_id": parent,
                                     "tracking_uri": spec.tracking_uri, "created": time.time(),
                                     "sweep_file": os.path.abspath(spec.file)})
        max_epochs = max([spec.train.get("epochs", 10)] + [
            v for m in spec.models for v in _values(m.space.get("epochs"))])
        s = spec.search
        scheduler = (ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=s.grace_period,
                                   reduction_factor=s.reduction_factor)
                     if s.scheduler == "asha" else FIFOScheduler())
        trainable = tune.with_resources(tune.with_parameters(ray_train.trial_driver, setup=setup),
                                        {"CPU": spec.resources.driver_cpus})
        callback = ray_train.MlflowCallback(spec.tracking_uri, spec.name, parent, setup)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, scheduler=scheduler, num_samples=s.num_samples,
                search_alg=BasicVariantGenerator(random_state=s.seed,
                                                 max_concurrent=s.max_concurrent_trials),
                trial_name_creator=lambda t: f"{t.config['model']['arch']}_{t.trial_id}",
                trial_dirname_creator=lambda t: f"{t.config['model']['arch']}_{t.trial_id}"),
            run_config=tune.RunConfig(
                name=run_name, storage_path=spec.storage_path, callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1),  # Ray's trial table, refreshed as results arrive
        )
        print(f"sweep {spec.name!r}: {spec.trial_count()} trial(s) on Ray, tracked in {spec.tracking_uri} "
              f"(parent run {parent})", file=out, flush=True)
    tuner.fit()
    rows = tracker.finish_parent()
    print_summary(rows, spec, out)
    return 0


def _values(leaf: Any) -> list[int]:
    if leaf is None:
        return []
    if isinstance(leaf, dict):
        kind, args = next(iter(leaf.items()))
        return list(args) if kind in ("grid", "choice") else [max(args)]
    return [leaf]


def print_summary(rows: list[dict], spec: SweepSpec, out) -> None:
    from orchestrator.cli import print_table
    from orchestrator.tracking import COMPARE_COLUMNS, format_rows

    cols = COMPARE_COLUMNS[:-1]
    print("", file=out)
    print_table([cols] + [r[:-1] for r in format_rows(rows)], stream=out)
    uri = spec.tracking_uri
    print(f"\nOpen the MLflow UI:  orchestrate ui --tracking-uri '{uri}'", file=out, flush=True)
