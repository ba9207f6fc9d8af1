"""Ray adapters: the Train worker function, the Tune trial driver, and the Tune callback that
writes MLflow. Ray stays here, at the edge; the engine underneath knows nothing of it.

    Tuner ──trial──> trial_driver(config) ──> TorchTrainer(worker_loop, ScalingConfig, RunConfig)
                                                   └─ every worker: Engine(...).fit(RayReporter)
    Tuner <── TuneReportCallback (metrics + checkpoint path, per epoch) ──┘
    Tuner ──> MlflowCallback (the driver process alone writes MLflow)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import traceback
from typing import Any

import ray.train
import ray.train.torch
import ray.tune

from orchestrator import engine


class RayReporter:
    """engine.Reporter -> ray.train.report; rank 0 hands over the checkpoint directory."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (one DDP rank): data for this rank, the engine, report."""
    from orchestrator import data

    # Ray gives each worker OMP_NUM_THREADS from its CPU share; make torch agree.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    splits = data.load_splits(data.DataSpec(**config["dataset"]))
    run = engine.Engine(engine.TrainConfig(**config["train"]), engine.ModelSpec(config["arch"], config["knobs"]),
                        splits, device=ray.train.torch.get_device(), prepare_model=ray.train.torch.prepare_model)
    checkpoint = ray.train.get_checkpoint()  # set when Ray Train restarts a failed worker group
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            run.restore(directory)
    run.fit(RayReporter())


def trial_driver(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: a TorchTrainer over `resources.num_workers` DDP workers. Its run name is
    derived from the trial id, so a restored trial finds (and resumes from) its own checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    model = config["model"]
    train = {**setup["train"], **{k: v for k, v in model.items() if k not in ("arch", "knobs")}}
    res = setup["resources"]
    per_worker = {"CPU": res["cpus_per_worker"]}
    if res["use_gpu"]:
        per_worker["GPU"] = res["gpus_per_worker"]
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"dataset": setup["dataset"], "train": train, "arch": model["arch"],
                           "knobs": model.get("knobs") or {}},
        scaling_config=ScalingConfig(num_workers=res["num_workers"], use_gpu=res["use_gpu"],
                                     resources_per_worker=per_worker,
                                     placement_strategy=res["placement_strategy"]),
        run_config=RunConfig(
            name=f"{setup['run_name']}-{trial_id}",
            storage_path=setup["storage_path"],
            checkpoint_config=CheckpointConfig(num_to_keep=setup["failure"]["num_to_keep"],
                                               checkpoint_score_attribute="val_acc",
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=setup["failure"]["max_failures"]),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()


class MlflowCallback(ray.tune.Callback):
    """Writes each trial's child run from the Tuner's own process: params at start, one metric
    batch per reported epoch (never a step twice), artefacts and status at the end."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, setup: dict[str, Any]):
        self.uri, self.experiment, self.parent_run_id, self.sweep_setup = uri, experiment, parent_run_id, setup
        self._tracker = None
        self._trials: dict[str, dict[str, Any]] = {}

    # The callback is pickled into Tune's experiment state; the MLflow client is not.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tracker"], state["_trials"] = None, {}
        return state

    @property
    def tracker(self):
        if self._tracker is None:
            from orchestrator.tracking import SweepTracker

            self._tracker = SweepTracker(self.uri, self.experiment, self.parent_run_id)
        return self._tracker

    def _state(self, trial) -> dict[str, Any]:
        if trial.trial_id not in self._trials:
            model = trial.config["model"]
            train = {**self.sweep_setup["train"], **{k: v for k, v in model.items() if k not in ("arch", "knobs")}}
            run_id, last_epoch, finished = self.tracker.start_child(
                trial.trial_id, model, train, self.sweep_setup["dataset"], self.sweep_setup["resources"])
            self._trials[trial.trial_id] = {"run_id": run_id, "last_epoch": last_epoch, "finished": finished,
                                            "history": [],
                                            "best": None, "best_acc": -1.0, "last": None,
                                            "epochs": int(train.get("epochs", 10))}
        return self._trials[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._state(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        st = self._state(trial)
        if "epoch" not in result:
            return
        epoch = int(result["epoch"])
        path = result.get("checkpoint_path")
        if path:
            st["last"] = path
            if result["val_acc"] > st["best_acc"]:
                st["best"], st["best_acc"] = path, result["val_acc"]
        st["history"] = [m for m in st["history"] if m["epoch"] < epoch] + [dict(result)]
        if epoch > st["last_epoch"]:  # a restarted worker group re-reports nothing it already did
            self.tracker.log_epoch(st["run_id"], result)
            st["last_epoch"] = epoch

    def on_trial_complete(self, iteration, trials, trial, **info):
        st = self._state(trial)
        if st["finished"]:  # already complete in MLflow (restored sweep): untouched
            return
        done = st["history"][-1]["epoch"] if st["history"] else 0
        status = "completed" if done >= st["epochs"] else "early-stopped"
        with local_checkpoints(self.sweep_setup["storage_path"], st["last"], st["best"]) as (last, best):
            self.tracker.finish_child(st["run_id"], status, st["history"], last, best)
        self._trials.pop(trial.trial_id, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        st = self._state(trial)
        if st["finished"]:
            return
        error = _trial_error(trial)
        with local_checkpoints(self.sweep_setup["storage_path"], st["last"], st["best"]) as (last, best):
            self.tracker.finish_child(st["run_id"], "failed", st["history"], last, best, error=error)
        self._trials.pop(trial.trial_id, None)


@contextlib.contextmanager
def local_checkpoints(storage_path: str, *paths: str | None):
    """Local folders for reported checkpoint paths: as they are on a local/shared filesystem,
    downloaded to a temporary folder from remote storage (s3://...: Ray reports `bucket/key`)."""
    from orchestrator.sweep import storage_fs

    with tempfile.TemporaryDirectory(prefix="orchestrate-ckpt-") as tmp:
        out = []
        for i, path in enumerate(paths):
            if path is None or os.path.isdir(path):
                out.append(path)
                continue
            try:
                fs, _ = storage_fs(storage_path)
                out.append(ray.train.Checkpoint(path=path, filesystem=fs).to_directory(os.path.join(tmp, str(i))))
            except Exception:  # noqa: BLE001 - an unreachable checkpoint must not fail the sweep
                out.append(None)
        yield out


def _trial_error(trial) -> str:
    """The last line of the trial's error file: the exception, e.g. 'Diverged: train_loss is nan'."""
    try:
        path = trial.error_file or ""
        if path and os.path.exists(path):
            lines = [ln for ln in open(path).read().splitlines() if ln.strip()]
            for ln in reversed(lines):
                if "Diverged" in ln or "Error" in ln or "Exception" in ln:
                    return ln.strip()
            return lines[-1] if lines else "failed"
    except Exception:  # noqa: BLE001
        return traceback.format_exc(limit=1)
    return "failed"
