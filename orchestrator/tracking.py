"""Everything MLflow, and nothing else. One process writes: the sweep driver, through a Ray Tune
callback that sees every trial's per-epoch results (and checkpoint paths) as Tune receives them.
Workers never talk to MLflow, so a run on a many-node cluster needs only the driver to reach the
tracking server. Slow work (model export, plots, artefact uploads) runs on a background writer
thread, so Tune's event loop never waits on it.

Layout (what a user sees in the UI):
- experiment = the sweep file's `name`;
- parent run `sweep-<timestamp>`: the sweep file, comparison table (CSV + markdown), plots of
  accuracy vs params and vs img/s;
- one nested child run per trial, `<arch>-<knobs>-lr<lr>`: params, per-epoch metrics (step =
  epoch, each logged once), tags (arch, trial_id, status, best_epoch), learning curves, confusion
  matrix, the best checkpoint by the sweep's metric and mode, and that checkpoint's model
  (mlflow.pytorch), so ranking, model and `orchestrate evaluate` agree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import warnings
from typing import Any, Callable

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag

from orchestrator import reports, storage

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "imgs_per_s", "train_s", "epoch_s")
STATUS_TAG = "status"  # completed | early-stopped | failed | running | interrupted
MODEL_STATUSES = ("completed", "early-stopped")  # the trial trained to a model
FINISHED_STATUSES = MODEL_STATUSES + ("failed",)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_torch_model(model, pip_requirements: list[str], metadata: dict[str, Any], model_id: str | None = None) -> str:
    """Log `model` (eval mode, CPU, 32x32 RGB input) as the active run's `model`. Preferred format:
    MLflow's "pt2" (torch.export): no pickle, loads with torch alone (no `archs` import), and the
    batch dimension stays dynamic because the example holds two images. A model torch.export cannot
    trace falls back to the pickled module, with a warning. Returns the format used."""
    import mlflow.pytorch  # imports torch: only the sweep driver pays for it

    example = np.zeros((2, 3, 32, 32), dtype=np.float32)  # batch 2: a size-1 batch would be exported static
    try:
        mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=pip_requirements,
                                 serialization_format="pt2", metadata=metadata, model_id=model_id)
        return "pt2"
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; the pickled module still works
        warnings.warn(f"torch.export could not trace {type(model).__name__} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); logging the pickled module instead", stacklevel=2)
    mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=pip_requirements,
                             serialization_format="pickle", metadata=metadata, model_id=model_id)
    return "pickle"


def library_versions() -> dict[str, str]:
    import ray  # here, like torch: `orchestrate compare` loads neither
    import torch
    import torchvision

    return {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "ray_version": ray.__version__, "mlflow_version": mlflow.__version__}


def git_commit(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(path)) or ".", "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def context_tags(sweep_file: str) -> dict[str, str]:
    """MLflow's standard context tags (mlflow.user, mlflow.source.name/type), with the source and
    its git commit being the sweep file's, not the `orchestrate` script's."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {**resolve_tags(), "mlflow.source.name": os.path.abspath(sweep_file)}
    commit = git_commit(sweep_file)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def dataset_digest(spec) -> str:
    """A short digest of what a trial trained on: the data spec, and a file source's size and
    modification time (so a changed zip is a different dataset)."""
    import hashlib

    identity = json.dumps(dataclasses.asdict(spec), sort_keys=True)
    if spec.root and os.path.exists(spec.root):
        stat = os.stat(spec.root)
        identity += f"{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def dataset_input(spec, sizes: dict[str, int]):
    """The trial's dataset as an MLflow input (`mlflow.log_input`'s entity): name, source, digest,
    and the split sizes as input tags."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    if spec.root:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path is
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(spec.root)
    else:
        source = CodeDatasetSource({"mlflow.source.name": {"digits": "sklearn.datasets.load_digits"}.get(
            spec.name, "orchestrator.data (seeded synthetic)")})
    dataset = MetaDataset(source, name=spec.name, digest=dataset_digest(spec))
    tags = [InputTag("mlflow.data.context", "training")] + [InputTag(k, str(v)) for k, v in sizes.items()]
    return DatasetInput(dataset._to_mlflow_entity(), tags)


def check_reachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """None if the tracking store answers, else a one-line reason. HTTP servers get a health
    probe with a short timeout (MLflow's own client retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                return None if r.status == 200 else f"{uri}/health answered {r.status}"
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            return f"{uri} is unreachable ({getattr(e, 'reason', e)})"
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///"):]) or "."
        if not os.path.isdir(folder):
            return f"{uri}: folder {folder} does not exist"
    return None


def artifact_location_for(uri: str, experiment: str) -> str | None:
    """For a local sqlite store, keep artefacts beside the database (not in whatever directory the
    process happened to start in)."""
    if uri.startswith("sqlite:///"):
        root = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):]))
        return "file://" + os.path.join(root, "mlartifacts")
    return None  # a server decides (proxied artefacts)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(uri, name))


# ---------------------------------------------------------------------------------------------
# The comparison table's rows (formatted and drawn by reports.py)


def comparison_rows(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None) -> list[dict]:
    """One row per trial run (child runs; of `parent_run_id` when given), best first: by the
    sweep's own metric (val_loss ascending when the sweep selected on it, else val accuracy
    descending), both read at the logged model's epoch."""
    query = "tags.`orchestrate.role` = 'trial'"
    lower_is_better = False
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
        lower_is_better = client.get_run(parent_run_id).data.params.get("search.metric") in ("val_loss", "train_loss")
    runs = client.search_runs([experiment_id], filter_string=query, max_results=5000)
    rows = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        knobs = {k[len("knobs."):]: v for k, v in p.items() if k.startswith("knobs.")}
        seconds = float(t.get("train_seconds", 0) or 0)
        world = float(p.get("world_size", 1) or 1)
        rows.append({
            "name": r.info.run_name, "arch": t.get("arch", ""),
            "knobs": " ".join(f"{k}={v}" for k, v in sorted(knobs.items())),
            "lr": float(p["lr"]) if "lr" in p else None,
            "params": int(p["param_count"]) if "param_count" in p else None,
            "flops": int(p["flops"]) if "flops" in p else None,
            "val_acc": m.get("model_val_acc", m.get("best_val_acc")), "val_loss": m.get("model_val_loss"),
            "epoch": int(t["best_epoch"]) if t.get("best_epoch") else None,
            "imgs_per_s": m.get("imgs_per_s"),
            "device_hours": seconds * world / 3600.0, "status": t.get(STATUS_TAG, ""),
            "run_id": r.info.run_id, "error": t.get("error"), "model_id": t.get("logged_model_id"),
        })
    if lower_is_better:
        rows.sort(key=lambda row: row["val_loss"] if row["val_loss"] is not None else float("inf"))
    else:
        rows.sort(key=lambda row: -(row["val_acc"] if row["val_acc"] is not None else -1.0))
    return rows


# ---------------------------------------------------------------------------------------------
# The background writer


class BackgroundWriter:
    """One thread that runs slow MLflow work in submission order. The queue is bounded, so a
    sweep that finishes trials faster than their models export waits here rather than piling up
    work; `flush()` returns when everything submitted has run. An error in one job is kept (and
    re-raised by `flush`) without stopping the jobs after it."""

    def __init__(self, max_queued: int = 8):
        self._jobs: queue.Queue = queue.Queue(maxsize=max_queued)
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="orchestrate-mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except BaseException as e:  # noqa: BLE001 - reported by flush()
                self._errors.append(e)
            finally:
                self._jobs.task_done()

    def flush(self) -> None:
        self._jobs.join()
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChildRun:
    """What the tracker knows of one trial's child run while the trial is running."""

    run_id: str
    last_epoch: int  # epochs already logged: a restarted trial never logs a step twice
    finished: bool  # already completed in MLflow (a restored sweep): left as it is
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_checkpoint: str | None = None  # by the sweep's metric and mode
    best_value: float | None = None
    best_epoch: int | None = None
    sized: bool = False  # param_count, flops and the dataset input logged
    model_id: str | None = None  # the run's LoggedModel: epoch metrics are linked to it
    dataset_digest: str | None = None


class SweepTracker:
    """The parent run of one sweep and the bookkeeping for its child runs."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None, sweep_file: str = ""):
        self.uri, self.experiment, self.sweep_file = uri, experiment, sweep_file
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        self.parent_run_id = parent_run_id
        self._writer: BackgroundWriter | None = None

    @property
    def writer(self) -> BackgroundWriter:
        if self._writer is None:
            self._writer = BackgroundWriter()
        return self._writer

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def start_parent(self, sweep_file: str, spec_params: dict[str, Any]) -> str:
        name = time.strftime("sweep-%Y%m%d-%H%M%S")
        tags = {**context_tags(sweep_file), "orchestrate.role": "sweep", "sweep_file": os.path.abspath(sweep_file)}
        self.sweep_file = sweep_file
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(spec_params).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_run_id, params=params[i:i + 100])
        self.client.log_artifact(self.parent_run_id, sweep_file)
        return self.parent_run_id

    def finish_parent(self, register_as: str | None = None) -> tuple[list[dict], Any]:
        """Comparison table and plots on the parent run, the best trial's model registered as
        `register_as` with the alias `best`, the parent finished. Returns (rows, model version)."""
        self.flush()  # every child's model and plots are in before the table is made
        rows = comparison_rows(self.client, self.experiment_id, self.parent_run_id)
        version = self.register_best(rows, register_as) if register_as else None
        with tempfile.TemporaryDirectory() as tmp:
            for path in reports.write_comparison(rows, tmp):
                self.client.log_artifact(self.parent_run_id, path)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        self.client.log_batch(self.parent_run_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in counts.items()])
        self.client.set_terminated(self.parent_run_id, "FINISHED")
        return rows, version

    def register_best(self, rows: list[dict], name: str):
        """The first row (rows come best first, by the sweep's metric) that holds a model, in the
        Model Registry as `name`, alias `best`. None if no trial has a model."""
        best = next((r for r in rows if r["status"] in MODEL_STATUSES), None)
        if best is None:
            return None
        mlflow.set_tracking_uri(self.uri)
        uri = f"models:/{best['model_id']}" if best["model_id"] else f"runs:/{best['run_id']}/model"
        version = mlflow.register_model(uri, name,
                                        tags={"sweep_run_id": self.parent_run_id, "trial": best["name"]})
        self.client.set_registered_model_alias(name, "best", version.version)
        self.client.set_tag(self.parent_run_id, "registered_model", f"{name}/{version.version}")
        return version

    def interrupt(self) -> None:
        """A sweep stopped by SIGINT/SIGTERM: child runs still running end KILLED with status
        `interrupted` (a resumed sweep continues them), and so does the parent."""
        self.flush()
        for run in self.children():
            if run.data.tags.get(STATUS_TAG) not in FINISHED_STATUSES:
                self.client.set_tag(run.info.run_id, STATUS_TAG, "interrupted")
                self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.set_terminated(self.parent_run_id, "KILLED")

    def children(self) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=5000)

    def find_child(self, trial_id: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.trial_id = '{trial_id}'",
            max_results=1)
        return runs[0] if runs else None

    def start_child(self, trial) -> ChildRun:
        """The child run of `trial` (a schema.Trial): created, or found again after a restore
        with the epochs it already holds (so a resumed trial never logs a step twice)."""
        existing = self.find_child(trial.trial_id)
        if existing is not None:
            return self._reopen(existing, trial)
        import archs  # torch: only the sweep driver pays for it, `orchestrate compare` does not

        knobs = archs.validate(trial.arch, dict(trial.knobs))  # the arch's defaults filled in
        tags = {**context_tags(self.sweep_file), "mlflow.parentRunId": self.parent_run_id, "orchestrate.role": "trial",
                "arch": trial.arch, "family": archs.get(trial.arch).family, "trial_id": trial.trial_id,
                STATUS_TAG: "running"}
        run = self.client.create_run(self.experiment_id, run_name=trial.name, tags=tags)
        # The model exists from the start (MLflow 3's LoggedModel, pending until its files are
        # logged), so every epoch's metrics are linked to it and it shows with its accuracy.
        model = self.client.create_logged_model(self.experiment_id, name="model", source_run_id=run.info.run_id)
        self.client.set_tag(run.info.run_id, "logged_model_id", model.model_id)
        params = {"arch": trial.arch, **{f"knobs.{k}": v for k, v in knobs.items()},
                  **dataclasses.asdict(trial.train),
                  **{f"dataset.{k}": v for k, v in dataclasses.asdict(trial.dataset).items()},
                  **{f"resources.{k}": v for k, v in dataclasses.asdict(trial.resources).items()},
                  "world_size": trial.resources.num_workers, **library_versions()}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return ChildRun(run.info.run_id, 0, False, model_id=model.model_id, dataset_digest=dataset_digest(trial.dataset))

    def _reopen(self, existing, trial) -> ChildRun:
        run_id, tags = existing.info.run_id, existing.data.tags
        history = self.history(run_id)  # its curves go on from what MLflow holds
        child = ChildRun(run_id, history[-1]["epoch"] if history else 0, tags.get(STATUS_TAG) in MODEL_STATUSES,
                         history=history,
                         best_checkpoint=tags.get("best_checkpoint"),
                         best_epoch=int(tags["best_epoch"]) if tags.get("best_epoch") else None,
                         best_value=float(tags["best_value"]) if tags.get("best_value") else None,
                         sized="param_count" in existing.data.params, model_id=tags.get("logged_model_id"),
                         dataset_digest=dataset_digest(trial.dataset))
        if not child.finished:
            if existing.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            self.client.set_tag(run_id, STATUS_TAG, "running")
            child.model_id = self._fresh_model(run_id, child.model_id)
        return child

    def _fresh_model(self, run_id: str, model_id: str | None) -> str:
        """The LoggedModel a continued run goes on with: a new one, since an interrupted attempt
        may have half-logged the old (its files, or its link to the run); the old is marked FAILED."""
        if model_id:
            try:
                if self.client.get_logged_model(model_id).status != LoggedModelStatus.READY:
                    self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            except Exception:  # noqa: BLE001 - a model that cannot be read is simply replaced
                pass
        model = self.client.create_logged_model(self.experiment_id, name="model", source_run_id=run_id)
        self.client.set_tag(run_id, "logged_model_id", model.model_id)
        return model.model_id

    def log_epoch(self, child: ChildRun, metrics: dict[str, Any], dataset) -> None:
        """One epoch's metrics (step = epoch; linked to the run's model and dataset), and on the
        first, the model's true size as the engine measured it for this data set's classes and
        the dataset input with its split sizes."""
        step = int(metrics["epoch"])
        now = int(time.time() * 1000)
        batch = [Metric(k, float(metrics[k]), now, step, model_id=child.model_id, dataset_name=dataset.name,
                        dataset_digest=child.dataset_digest)
                 for k in EPOCH_METRICS + ("best_val_acc",) if k in metrics]
        params = []
        if not child.sized and "param_count" in metrics:
            params = [Param("param_count", str(int(metrics["param_count"]))), Param("flops", str(int(metrics["flops"])))]
            self.client.log_inputs(child.run_id, datasets=[dataset_input(
                dataset, {k: int(metrics[k]) for k in ("train_size", "val_size") if k in metrics})])
            child.sized = True
        self.client.log_batch(child.run_id, metrics=batch, params=params)

    def checkpoint_history(self, storage_path: str, path: str) -> list[dict[str, Any]]:
        """The per-epoch metrics a checkpoint carries (the engine's history.json), or []."""
        with storage.local_checkpoint(storage_path, path) as local:
            file = os.path.join(local, "history.json") if local else None
            if not file or not os.path.exists(file):
                return []
            with open(file) as f:
                return json.load(f)

    def note_checkpoint(self, child: ChildRun, epoch: int, value: float, path: str, better: bool) -> None:
        """Remember epoch `epoch`'s checkpoint if it is the best so far (`better`); kept as tags too,
        so a resumed sweep still knows which checkpoint is the model."""
        if not better:
            return
        child.best_checkpoint, child.best_value, child.best_epoch = path, value, epoch
        self.client.log_batch(child.run_id, tags=[RunTag("best_checkpoint", path), RunTag("best_epoch", str(epoch)),
                                                  RunTag("best_value", repr(float(value)))])

    def finish_child(self, child: ChildRun, status: str, storage_path: str, error: str | None = None) -> None:
        """Hand the child run's end to the background writer: plots, best checkpoint, model, then
        the status tag and the run's end last, so a run whose finishing was cut short is still
        `running` and a resumed sweep finishes it again (`finish_orphans`)."""
        history = list(child.history)
        self.writer.submit(lambda: self._finish_child(child.run_id, status, history, storage_path,
                                                      child.best_checkpoint, child.best_epoch, error, child.model_id))

    def finish_orphans(self, trial_statuses: dict[str, str], storage_path: str) -> None:
        """After a restore: child runs whose trial Tune already holds as ended ({trial_id:
        status}) but whose MLflow run was never finished (the sweep died with their finishing
        queued) are finished now, from what MLflow and the storage still hold."""
        for run in self.children():
            tags = run.data.tags
            status = trial_statuses.get(tags.get("trial_id", ""))
            if status is None or tags.get(STATUS_TAG) in FINISHED_STATUSES:
                continue
            history = self.history(run.info.run_id)
            best_epoch = int(tags["best_epoch"]) if tags.get("best_epoch") else None
            model_id = self._fresh_model(run.info.run_id, tags.get("logged_model_id"))
            self.writer.submit(lambda r=run.info.run_id, s=status, h=history, t=tags, e=best_epoch, m=model_id:
                               self._finish_child(r, s, h, storage_path, t.get("best_checkpoint"), e, None, m))

    def history(self, run_id: str) -> list[dict[str, Any]]:
        """Per-epoch metrics of a run, rebuilt from MLflow."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for key in EPOCH_METRICS:
            for m in self.client.get_metric_history(run_id, key):
                by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
        return [by_epoch[e] for e in sorted(by_epoch)]

    def _finish_child(self, run_id: str, status: str, history: list[dict[str, Any]], storage_path: str,
                      best_checkpoint: str | None, best_epoch: int | None, error: str | None,
                      model_id: str | None) -> None:
        tags = []
        if history:
            tags.append(RunTag("train_seconds", f"{sum(m.get('train_s', 0.0) for m in history):.3f}"))
            tags.append(RunTag("epochs_completed", str(int(history[-1]["epoch"]))))
        if error:
            tags.append(RunTag("error", error[:4000]))
        if tags:
            self.client.log_batch(run_id, tags=tags)
        with tempfile.TemporaryDirectory() as tmp, storage.local_checkpoint(storage_path, best_checkpoint) as best:
            title = self.client.get_run(run_id).info.run_name
            if history:
                path = os.path.join(tmp, "curves.png")
                reports.plot_curves(history, path, title)
                self.client.log_artifact(run_id, path)
            if best and os.path.isdir(best):
                eval_file = os.path.join(best, "eval.json")
                if os.path.exists(eval_file):
                    with open(eval_file) as f:
                        info = json.load(f)
                    path = os.path.join(tmp, "confusion_matrix.png")
                    reports.plot_confusion(info, path, f"{title} (epoch {best_epoch}, val)")
                    self.client.log_artifact(run_id, path)
                    self.client.log_dict(run_id, info, "per_class_accuracy.json")
                self.client.log_artifacts(run_id, best, "best_checkpoint")
            if best and os.path.isdir(best) and status != "failed":
                self.log_model(run_id, best, model_id)
            elif model_id:
                self.client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
            at_best = next((m for m in history if m["epoch"] == best_epoch), None)
            if at_best is not None:
                self.client.log_batch(run_id, metrics=[
                    Metric(f"model_{k}", float(at_best[k]), int(time.time() * 1000), best_epoch, model_id=model_id)
                    for k in ("val_acc", "val_loss") if k in at_best])
        self.client.set_tag(run_id, STATUS_TAG, status)  # last: the run is finished only when all is in
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def log_model(self, run_id: str, checkpoint_dir: str, model_id: str | None = None) -> None:
        import torch
        import torchvision

        from orchestrator import engine  # torch: only the sweep driver pays for it

        model, meta = engine.load_model(checkpoint_dir)
        # Explicit requirements: MLflow's inference imports the model in a subprocess (slow).
        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            fmt = log_torch_model(model, reqs, {k: meta[k] for k in ("arch", "knobs", "classes", "mean", "std", "epoch")},
                                  model_id)
            mlflow.set_tag("model_format", fmt)
            mlflow.log_dict(meta, "model_meta.json")


def record_evaluation(uri: str, run_id: str, split: str, result: dict[str, Any]) -> None:
    """`orchestrate evaluate --log`: the scores as `<split>_loss`, `<split>_acc`, `<split>_top5`
    on the run, linked to its model."""
    client = MlflowClient(tracking_uri=uri)
    model_id = client.get_run(run_id).data.tags.get("logged_model_id")
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"{split}_{k}", float(result[k]), now, 0, model_id=model_id)
                                      for k in ("loss", "acc", "top5")])
