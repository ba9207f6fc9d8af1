"""A sweep's life in MLflow: the parent run (`SweepRecord`), one `TrialRecord` per trial that owns
its run's state (epochs logged, best checkpoint, model, status), and the `Recorder` that feeds
them from Tune's events on one background thread. No Ray here: the Tune callback in ray_train.py
only forwards events, so every rule about restarted, resumed, interrupted or orphaned trials is
tested by replaying events against a real store (tests/test_record_replay.py).

Names and shapes (tags, params, metrics, artefacts; Trial <-> run) are runs.py's. MLflow is
reached through one explicit `MlflowClient(tracking_uri)`, never the process-global tracking URI,
and only the sweep driver writes: workers never talk to MLflow, so on a cluster only the head
needs to reach the tracking server.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Collection, Mapping

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from orchestrator import preflight, reports, runs, storage
from orchestrator.runs import Artifact, Status, Tag
from orchestrator.schema import EPOCH_METRICS, DataSpec, Trial


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def library_versions() -> dict[str, str]:
    import mlflow
    import ray  # here, like torch: `orchestrate compare` loads neither
    import torch
    import torchvision

    return dict(zip(runs.LIBRARY_VERSIONS, (torch.__version__, torchvision.__version__, ray.__version__,
                                            mlflow.__version__)))


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


def dataset_input(spec: DataSpec, digest: str, sizes: dict[str, int]):
    """The trial's dataset as an MLflow input (`log_inputs`' entity): name, source, the digest of
    its content (data.Splits.digest), and the split sizes as input tags."""
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
    dataset = MetaDataset(source, name=spec.name, digest=digest)
    tags = [InputTag("mlflow.data.context", "training")] + [InputTag(k, str(v)) for k, v in sizes.items()]
    return DatasetInput(dataset._to_mlflow_entity(), tags)


def _sqlite_file(uri: str) -> str | None:
    """The database file of a sqlite:/// store (absolute), or None for any other store."""
    return os.path.abspath(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_location_for(uri: str) -> str | None:
    """For a local sqlite store, keep artefacts beside the database (not in whatever directory the
    process happened to start in)."""
    if db := _sqlite_file(uri):
        return "file://" + os.path.join(os.path.dirname(db), "mlartifacts")
    return None  # a server decides (proxied artefacts)


@contextlib.contextmanager
def store_creation_lock(uri: str):
    """Held while this process may create a sqlite store's tables: MLflow migrates a new database
    on first use, and two sweeps starting on one new file would run the same migrations at once
    ("table _alembic_tmp_... already exists", a store no one can open). An flock on a file beside
    the database makes the second wait for the first. Other stores need nothing."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl

    os.makedirs(os.path.dirname(db), exist_ok=True)
    with open(db + ".init-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(uri))


def quiet_mlflow() -> None:
    """MLflow's INFO lines ("Creating initial MLflow database tables...") off the sweep's terminal:
    the live view and the summary are the output. MLFLOW_LOGGING_LEVEL set by the user wins."""
    import logging

    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# The model


def save_model(model, path: str, pip_requirements: list[str], metadata: dict[str, Any],
               mlflow_model=None) -> str:
    """Save `model` (eval mode, CPU, 32x32 RGB input) as an MLflow model folder at `path`.
    Preferred format: MLflow's "pt2" (torch.export): no pickle, loads with torch alone, and the
    batch dimension stays dynamic because the example holds two images. A model torch.export
    cannot trace falls back to the pickled module, with a warning. Returns the format used."""
    import shutil

    import mlflow.pytorch  # imports torch: only the sweep driver pays for it

    example = np.zeros((2, 3, 32, 32), dtype=np.float32)  # batch 2: a size-1 batch would be exported static
    common = dict(input_example=example, pip_requirements=pip_requirements, metadata=metadata,
                  mlflow_model=mlflow_model)
    try:
        mlflow.pytorch.save_model(model, path, serialization_format="pt2", **common)
        return "pt2"
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; the pickled module still works
        warnings.warn(f"torch.export could not trace {type(model).__name__} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); logging the pickled module instead", stacklevel=2)
        shutil.rmtree(path, ignore_errors=True)
    mlflow.pytorch.save_model(model, path, serialization_format="pickle", **common)
    return "pickle"


def log_model(client: MlflowClient, run_id: str, model_id: str, checkpoint_dir: str, step: int) -> str:
    """The checkpoint's model as the run's LoggedModel `model_id` (runs:/<run_id>/model and
    models:/<model_id> both load it), linked to the run at `step`. Returns the format."""
    import torch
    import torchvision
    from mlflow.models import Model

    from orchestrator import engine  # torch: only the sweep driver pays for it

    model, meta = engine.load_model(checkpoint_dir)
    logged = client.get_logged_model(model_id)
    # Explicit requirements: MLflow's inference imports the model in a subprocess (slow).
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    with tempfile.TemporaryDirectory(prefix="orchestrate-model-") as tmp:
        local = os.path.join(tmp, Artifact.MODEL)
        description = Model(artifact_path=logged.artifact_location, model_uuid=model_id, run_id=run_id,
                            model_id=model_id)
        fmt = save_model(model, local, reqs, {k: meta[k] for k in ("arch", "knobs", "classes", "mean", "std", "epoch")},
                         mlflow_model=description)
        client.log_model_artifacts(model_id, local)
    outputs = client.get_run(run_id).outputs
    if not any(o.model_id == model_id for o in (outputs.model_outputs if outputs else ())):  # a retry: once
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    client.log_batch(run_id, tags=[RunTag(Tag.MODEL_FORMAT, fmt)])
    client.log_dict(run_id, meta, Artifact.MODEL_META)
    return fmt


# ---------------------------------------------------------------------------------------------
# One trial's run


def encode(trial: Trial) -> tuple[dict[str, str], dict[str, str]]:
    """runs.encode with the arch's full knobs and family from the registry."""
    import archs  # torch: only the sweep driver pays for it, `orchestrate compare` does not

    return runs.encode(trial, archs.validate(trial.arch, dict(trial.knobs)), archs.get(trial.arch).family)


@dataclasses.dataclass(frozen=True)
class Best:
    """The best checkpoint so far by the sweep's metric and mode: the run's model-to-be."""

    epoch: int
    value: float
    path: str


class TrialRecord:
    """One trial's child run and everything known about it. Its methods are Tune's events:

        open/reopen -> epoch(metrics, checkpoint_path?) ... -> checkpoint(epoch, path) ... -> finish()

    Each epoch is logged once (a retried or resumed trial re-reports nothing it already logged;
    a gap left by a driver that died is filled from the checkpoint's history); the best checkpoint
    by the trial's `search.metric`/`mode` becomes the model; `finish` writes the status last, so a
    run whose finishing was lost still says `running` and `SweepRecord.finish_orphans` ends it."""

    def __init__(self, sweep: SweepRecord, trial: Trial, run_id: str, model_id: str, *,
                 history: list[dict[str, Any]] | None = None, best: Best | None = None,
                 status: str = Status.RUNNING, logged: Mapping[str, str] | None = None):
        self.sweep, self.trial, self.run_id, self.model_id = sweep, trial, run_id, model_id
        self.history = list(history or [])
        self.best, self.status = best, status
        self.logged = dict(logged or {})  # params already on the run: facts are logged once
        # One timestamp per metric batch, kept: a batch sent again (the writer's retry after a lost
        # answer) is then the same rows, which the store keeps once, not a second point per step.
        self._stamps_ms: dict[Any, int] = {}

    @property
    def client(self) -> MlflowClient:
        return self.sweep.client

    @property
    def dataset_digest(self) -> str | None:
        """Of the data's content, as the engine reported it in the trial's first epoch."""
        return self.logged.get("dataset_digest")

    @property
    def last_epoch(self) -> int:
        return int(self.history[-1]["epoch"]) if self.history else 0

    @property
    def trained(self) -> bool:
        """Already ended with a model (a restored sweep): nothing more is written to it."""
        return self.status in runs.MODEL_STATUSES

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, sweep: SweepRecord, trial: Trial) -> TrialRecord:
        params, tags = encode(trial)
        client = sweep.client
        run = client.create_run(sweep.experiment_id, run_name=trial.name, tags={
            **sweep.context, **tags, Tag.PARENT: sweep.parent_run_id, Tag.STATUS: Status.RUNNING})
        run_id = run.info.run_id
        # The model exists from the start (MLflow 3's LoggedModel, pending until its files are
        # logged), so every epoch's metrics are linked to it and it shows with its accuracy.
        model_id = client.create_logged_model(sweep.experiment_id, name=Artifact.MODEL, source_run_id=run_id).model_id
        params.update(library_versions())
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(Tag.LOGGED_MODEL_ID, model_id)])
        client.log_dict(run_id, runs.trial_to_dict(trial), Artifact.TRIAL)
        return cls(sweep, trial, run_id, model_id, logged=params)

    @classmethod
    def adopt(cls, sweep: SweepRecord, run, trial: Trial) -> TrialRecord:
        """A lost trial's run (see SweepRecord.open_trial) continued by `trial`, the same point
        under a new Tune trial id: the run takes the new id, then goes on as a reopened one."""
        tags = encode(trial)[1]
        sweep.client.log_batch(run.info.run_id, tags=[RunTag(k, tags[k]) for k in (Tag.TRIAL_ID, Tag.TRIAL)])
        return cls.reopen(sweep, run, trial)

    @classmethod
    def reopen(cls, sweep: SweepRecord, run, trial: Trial | None = None) -> TrialRecord:
        """The record of an existing run (a resumed sweep, an orphan), its curves and best
        checkpoint read back from MLflow. A run that has not ended with a model goes on RUNNING
        with a fresh LoggedModel: an interrupted attempt may have half-logged the old one."""
        client, tags = sweep.client, run.data.tags
        best = None
        if tags.get(Tag.BEST_EPOCH):
            best = Best(int(tags[Tag.BEST_EPOCH]), float(tags[Tag.BEST_VALUE]), tags[Tag.BEST_CHECKPOINT])
        record = cls(sweep, trial or runs.decode(run), run.info.run_id, tags.get(Tag.LOGGED_MODEL_ID, ""),
                     history=runs.history(client, run.info.run_id), best=best,
                     status=tags.get(Tag.STATUS, Status.RUNNING), logged=run.data.params)
        if not record.trained:
            if run.info.status != "RUNNING":
                client.update_run(record.run_id, status="RUNNING")
            record.status = Status.RUNNING
            record.model_id = record._fresh_model()
            client.log_batch(record.run_id, tags=[RunTag(Tag.STATUS, Status.RUNNING),
                                                  RunTag(Tag.LOGGED_MODEL_ID, record.model_id)])
        return record

    def _fresh_model(self) -> str:
        if self.model_id:
            try:  # a model no one can load any more; `runs:/<run>/model` must find the new one
                if self.client.get_logged_model(self.model_id).status != LoggedModelStatus.READY:
                    self.client.delete_logged_model(self.model_id)
            except MlflowException:
                pass
        return self.client.create_logged_model(self.sweep.experiment_id, name=Artifact.MODEL,
                                               source_run_id=self.run_id).model_id

    # -- events -------------------------------------------------------------------------------

    def epoch(self, metrics: dict[str, Any], checkpoint_path: str | None = None) -> None:
        """One reported epoch. Logged only if it is new; a DDP trial resumed from a checkpoint its
        workers wrote after the driver last logged (the driver died in between) skips epochs,
        and those come from the checkpoint's own history."""
        epoch = int(metrics["epoch"])
        if epoch <= self.last_epoch:
            return  # a retried trial re-reports what it already did: the first report stands
        if epoch > self.last_epoch + 1 and checkpoint_path:
            for missed in self.sweep.checkpoint_history(checkpoint_path):
                if self.last_epoch < int(missed["epoch"]) < epoch:
                    self._log_epoch(missed)
        self._log_epoch(dict(metrics))

    def _log_epoch(self, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        now = self._stamps_ms.setdefault(step, int(time.time() * 1000))
        dataset = self.trial.dataset
        facts = {k: str(int(v) if k in runs.MODEL_FACTS + runs.SPLIT_SIZES else v)
                 for k in runs.ONCE_PARAMS if k not in self.logged and (v := metrics.get(k)) is not None}
        keys = EPOCH_METRICS + runs.RESTART_COUNTS + (runs.INFERENCE_METRICS if "infer_precision" in facts else ())
        digest = facts.get("dataset_digest") or self.dataset_digest
        if "dataset_digest" in facts:
            # The first report (engine.describe): the data's content digest, and the dataset as
            # the run's input with it, before any metric is linked to that dataset.
            self.client.log_inputs(self.run_id, datasets=[dataset_input(
                dataset, digest, {k: int(metrics[k]) for k in runs.SPLIT_SIZES if k in metrics})])
        batch = [Metric(k, float(metrics[k]), now, step, model_id=self.model_id or None, dataset_name=dataset.name,
                        dataset_digest=digest)
                 for k in keys if k in metrics]
        self.client.log_batch(self.run_id, metrics=batch, params=[Param(k, v) for k, v in facts.items()])
        self.logged.update(facts)
        self.history.append(metrics)

    def checkpoint(self, epoch: int, path: str) -> None:
        """Epoch `epoch`'s checkpoint, kept as the model-to-be if it is the best so far (tags
        too, so a resumed sweep still knows which checkpoint is the model)."""
        at = next((m for m in self.history if int(m["epoch"]) == epoch), None)
        metric = self.trial.search.metric
        if at is None or metric not in at:
            return
        value = float(at[metric])
        if self.best and epoch == self.best.epoch and path != self.best.path:
            # The best epoch trained again (its trial restored from an older checkpoint, the newer
            # ones unreadable or unknown to Tune): the model comes from the copy written last.
            value = self.best.value
        elif not self.trial.search.better(value, self.best.value if self.best else None):
            return
        self.best = Best(epoch, value, path)
        self.client.log_batch(self.run_id, tags=[RunTag(Tag.BEST_CHECKPOINT, path), RunTag(Tag.BEST_EPOCH, str(epoch)),
                                                 RunTag(Tag.BEST_VALUE, repr(value))])

    def end_status(self, failed: bool = False) -> str:
        if failed:
            return Status.FAILED
        return Status.COMPLETED if self.last_epoch >= self.trial.train.epochs else Status.EARLY_STOPPED

    def finish(self, failed: bool = False, error: str | None = None) -> None:
        """Curves, confusion matrix, best checkpoint and its model; then the status and the run's
        end, last, so a run whose finishing was cut short is still `running`."""
        status, client, history = self.end_status(failed), self.client, self.history
        tags = []
        if history:
            tags.append(RunTag(Tag.TRAIN_SECONDS, f"{sum(m.get('train_s', 0.0) for m in history):.3f}"))
            tags.append(RunTag(Tag.EPOCHS_COMPLETED, str(self.last_epoch)))
        if error:
            tags.append(RunTag(Tag.ERROR, error[:4000]))
        if tags:
            client.log_batch(self.run_id, tags=tags)
        best = self.best
        with tempfile.TemporaryDirectory() as tmp, \
                storage.local_checkpoint(self.sweep.storage_path, best.path if best else None) as local:
            if history:
                path = os.path.join(tmp, Artifact.CURVES)
                reports.plot_curves(history, path, self.trial.name)
                client.log_artifact(self.run_id, path)
            if local and os.path.isdir(local):
                eval_file = os.path.join(local, "eval.json")
                if os.path.exists(eval_file):
                    with open(eval_file) as f:
                        info = json.load(f)
                    path = os.path.join(tmp, Artifact.CONFUSION)
                    reports.plot_confusion(info, path, f"{self.trial.name} (epoch {best.epoch}, val)")
                    client.log_artifact(self.run_id, path)
                    client.log_dict(self.run_id, info, Artifact.PER_CLASS)
                client.log_artifacts(self.run_id, local, Artifact.BEST_CHECKPOINT)
            if local and os.path.isdir(local) and status != Status.FAILED:
                log_model(client, self.run_id, self.model_id, local, best.epoch)
            elif self.model_id:
                client.finalize_logged_model(self.model_id, LoggedModelStatus.FAILED)
        at_best = next((m for m in history if best and int(m["epoch"]) == best.epoch), None)
        if at_best is not None:
            now = self._stamps_ms.setdefault("model", int(time.time() * 1000))
            keys = dict.fromkeys(("val_acc", "val_loss", "val_top5", self.trial.search.metric))
            client.log_batch(self.run_id, metrics=[Metric(runs.model_metric(k), float(at_best[k]), now, best.epoch,
                                                          model_id=self.model_id or None)
                                                   for k in keys if k in at_best])
        client.set_tag(self.run_id, Tag.STATUS, status)  # last: the run is finished only when all is in
        client.set_terminated(self.run_id, "FAILED" if status == Status.FAILED else "FINISHED")
        self.status = status


# ---------------------------------------------------------------------------------------------
# The sweep's run


LOST_TRIAL = ("lost: the sweep's driver died before Ray Tune saved this trial, and the resumed sweep did not "
              "draw its point again")


class SweepRecord:
    """The parent run of one sweep: its child runs' records are opened here, and at the end the
    comparison table, the plots and the best model's registration go on it."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, sweep_file: str, storage_path: str):
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self._left_unfinished: list | None = None  # runs an earlier driver left unfinished (open_trial)
        self.sweep_file, self.storage_path = sweep_file, storage_path
        with store_creation_lock(uri):  # the client opens (and may create) the store; a second sweep waits
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        self.context = context_tags(sweep_file) if sweep_file else {}

    @classmethod
    def start(cls, uri: str, experiment: str, sweep_file: str, storage_path: str,
              params: dict[str, Any]) -> SweepRecord:
        """A new parent run `sweep-<timestamp>` with the sweep's settings as params and its file."""
        record = cls(uri, experiment, "", sweep_file, storage_path)
        client = record.client
        run = client.create_run(record.experiment_id, run_name=time.strftime("sweep-%Y%m%d-%H%M%S"), tags={
            **record.context, Tag.ROLE: runs.ROLE_SWEEP, Tag.SWEEP_FILE: os.path.abspath(sweep_file)})
        record.parent_run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(params), 100):
            client.log_batch(record.parent_run_id, params=params[i:i + 100])
        # The file as it is, but for any password in a URI (a tracking.uri with credentials must
        # not land in the store it unlocks).
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, os.path.basename(sweep_file))
            with open(copy, "w", encoding="utf-8") as f:
                f.write(preflight.masked_sweep_text(sweep_file))
            client.log_artifact(record.parent_run_id, copy)
        return record

    def resume(self) -> None:
        self.client.update_run(self.parent_run_id, status="RUNNING")

    def open_trial(self, trial: Trial, tune_trial_ids: Collection[str] | None = None) -> TrialRecord:
        """The trial's record: its run created, or found again after a restore. Tune saves its
        state every 10 s or more, so a driver killed soon after a trial started leaves a run whose
        trial the restored Tune never heard of, and the restored searcher draws that point again
        under a new id: given the ids Tune knows (`tune_trial_ids`), that lost run with the same
        Trial is continued, not left running beside a second run of the same point."""
        existing = runs.trial_runs(self.client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if existing:
            return TrialRecord.reopen(self, existing[0], trial)
        lost = self._lost_run(trial, tune_trial_ids) if tune_trial_ids is not None else None
        if lost is not None:
            return TrialRecord.adopt(self, lost, trial)
        return TrialRecord.create(self, trial)

    def _lost_run(self, trial: Trial, tune_trial_ids: Collection[str]):
        if self._left_unfinished is None:  # once per driver: a lost run was made by an earlier one
            self._left_unfinished = self.unfinished()
        for run in self._left_unfinished:
            if run.data.tags.get(Tag.TRIAL_ID) in tune_trial_ids:
                continue
            try:
                same = dataclasses.replace(runs.decode(run), trial_id=trial.trial_id) == trial
            except (runs.NotATrialRun, ValueError, TypeError, KeyError):
                continue
            if same:
                self._left_unfinished.remove(run)
                return run
        return None

    def checkpoint_history(self, path: str) -> list[dict[str, Any]]:
        """The per-epoch metrics a checkpoint carries (the engine's history.json), or []."""
        with storage.local_checkpoint(self.storage_path, path) as local:
            file = os.path.join(local, "history.json") if local else None
            if not file or not os.path.exists(file):
                return []
            with open(file) as f:
                return json.load(f)

    def unfinished(self) -> list:
        """Child runs that have not ended (no final status yet)."""
        return [r for r in runs.trial_runs(self.client, self.experiment_id, self.parent_run_id)
                if r.data.tags.get(Tag.STATUS) not in runs.FINISHED_STATUSES]

    def finish_orphans(self, ended: dict[str, bool], tune_trial_ids: Collection[str] | None = None) -> None:
        """After a restore: child runs whose trial Tune already holds as ended ({trial_id:
        failed}) but whose run was never finished (the sweep died with their finishing queued)
        are finished now, from what MLflow and the storage still hold. Given every id Tune knows,
        a lost trial's run that no new trial continued (its point was not drawn again) ends
        failed, saying so: nothing will ever continue it."""
        for run in self.unfinished():
            trial_id = run.data.tags.get(Tag.TRIAL_ID, "")
            if trial_id in ended:
                TrialRecord.reopen(self, run).finish(failed=ended[trial_id])
            elif tune_trial_ids is not None and trial_id not in tune_trial_ids:
                TrialRecord.reopen(self, run).finish(failed=True, error=LOST_TRIAL)

    def interrupt(self) -> None:
        """SIGINT/SIGTERM: every child run still running and the parent end KILLED, `interrupted`."""
        for run in self.unfinished():
            self.client.set_tag(run.info.run_id, Tag.STATUS, Status.INTERRUPTED)
            self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.set_terminated(self.parent_run_id, "KILLED")

    def finish(self, register_as: str | None = None) -> tuple[list[runs.Result], Any]:
        """Comparison table and plots on the parent run, the best trial's model registered as
        `register_as` with the alias `best`, the parent finished. Returns (results, model version)."""
        results = runs.results(self.client, self.experiment_id, self.parent_run_id)
        version = self.register_best(results, register_as) if register_as else None
        mode = runs.selection(self.client, self.parent_run_id)[1]
        with tempfile.TemporaryDirectory() as tmp:
            for path in reports.write_comparison(results, runs.leaderboard(results, mode), tmp):
                self.client.log_artifact(self.parent_run_id, path)
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        self.client.log_batch(self.parent_run_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in counts.items()])
        from orchestrator import sweep_report  # matplotlib: only a finishing sweep draws the report

        try:  # report.html on the parent run, the frontier runs tagged
            sweep_report.publish(self.client, self.experiment_id, self.parent_run_id)
        except Exception as e:  # noqa: BLE001 - the trained sweep stands; `orchestrate report` redraws it
            warnings.warn(f"the sweep's report was not written ({type(e).__name__}: {e}); "
                          f"`orchestrate report {self.experiment}` writes it", stacklevel=2)
        self.client.set_terminated(self.parent_run_id, "FINISHED")
        return results, version

    def register_best(self, results: list[runs.Result], name: str):
        """The first result (best first, by the sweep's metric and mode) that holds a model, in the
        Model Registry as `name`, alias `best`. None if no trial has a model."""
        best = next((r for r in results if r.has_model and r.model_id), None)
        if best is None:
            return None
        try:
            self.client.create_registered_model(name)
        except MlflowException as e:
            if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # The model's own artifact location as the source: a `models:/<id>` source is resolved
        # by a sqlite registry through the process-global tracking URI, not this client's.
        location = self.client.get_logged_model(best.model_id).artifact_location
        version = self.client.create_model_version(
            name, source=location, run_id=best.run_id, model_id=best.model_id,
            tags={"sweep_run_id": self.parent_run_id, "trial": best.name})
        self.client.set_registered_model_alias(name, "best", version.version)
        self.client.set_tag(self.parent_run_id, Tag.REGISTERED_MODEL, f"{name}/{version.version}")
        return version


# ---------------------------------------------------------------------------------------------
# Off Tune's loop


def transient(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) is a store briefly out of reach: a connection
    refused or cut mid-response (a tracking server restarting), a timeout, a database busy with
    another writer (MLflow's TEMPORARILY_UNAVAILABLE). MLflow retries a refused connection itself;
    a response cut after its headers, or a sqlite lock held past its timeout, reach us."""
    import requests

    seen = error
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                             requests.exceptions.Timeout, ConnectionError, TimeoutError)):
            return True
        if isinstance(seen, MlflowException) and seen.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class BackgroundWriter:
    """One thread that runs MLflow work in submission order, so the caller (Tune's event loop)
    never waits on a store. `flush()` returns when everything submitted has run. A job that fails
    on a transient store error is run again after RETRY_WAITS_S (every job can be: an epoch or a
    tag is written once however often it is sent, a run is found again before one is created);
    any other error is kept (and re-raised by `flush`) without stopping the jobs after it."""

    RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0)

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="orchestrate-mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                self._run_job(job)
            except BaseException as e:  # noqa: BLE001 - reported by flush()
                self._errors.append(e)
            finally:
                self._jobs.task_done()

    def _run_job(self, job: Callable[[], None]) -> None:
        for wait_s in self.RETRY_WAITS_S:
            try:
                return job()
            except Exception as e:  # noqa: BLE001 - only a transient one is tried again
                if not transient(e):
                    raise
                time.sleep(wait_s)
        job()

    def flush(self) -> None:
        self._jobs.join()
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]


class Recorder:
    """Tune's events -> the sweep's TrialRecords, every MLflow call on one background writer, in
    the order the events came. The caller only queues: no event waits on the store."""

    def __init__(self, sweep: Callable[[], SweepRecord]):
        self._sweep_factory, self._sweep = sweep, None
        self._records: dict[str, TrialRecord] = {}
        self._writer = BackgroundWriter()

    @property
    def sweep(self) -> SweepRecord:  # made on the writer thread: even the first connection is off the loop
        if self._sweep is None:
            self._sweep = self._sweep_factory()
        return self._sweep

    def _on(self, trial_id: str, action: Callable[[TrialRecord], None]) -> None:
        def job():
            record = self._records.get(trial_id)
            if record is not None and not record.trained:
                action(record)
        self._writer.submit(job)

    def started(self, trial: Trial, tune_trial_ids: Collection[str] | None = None) -> None:
        def job():
            if trial.trial_id not in self._records:
                self._records[trial.trial_id] = self.sweep.open_trial(trial, tune_trial_ids)
        self._writer.submit(job)

    def result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        metrics = dict(metrics)
        self._on(trial_id, lambda r: r.epoch(metrics, metrics.get("checkpoint_path")))
        if metrics.get("checkpoint_path"):  # a TorchTrainer trial: Ray Train already stored it
            self.checkpoint(trial_id, int(metrics["epoch"]), metrics["checkpoint_path"])

    def checkpoint(self, trial_id: str, epoch: int, path: str) -> None:
        self._on(trial_id, lambda r: r.checkpoint(epoch, path))

    def ended(self, trial_id: str, failed: bool = False, error: str | None = None) -> None:
        self._on(trial_id, lambda r: r.finish(failed, error))
        self._writer.submit(lambda: self._records.pop(trial_id, None))

    def left_running(self, trial_id: str) -> None:
        """A trial Tune ended because the sweep is being interrupted: not finished here."""
        self._writer.submit(lambda: self._records.pop(trial_id, None))

    def finish_orphans(self, ended: dict[str, bool], tune_trial_ids: Collection[str] | None = None) -> None:
        self._writer.submit(lambda: self.sweep.finish_orphans(ended, tune_trial_ids))

    def flush(self) -> None:
        self._writer.flush()


def record_evaluation(uri: str, run_id: str, split: str, result: dict[str, Any]) -> None:
    """`orchestrate evaluate --log`: the scores as `<split>_loss`, `<split>_acc`, `<split>_top5`
    on the run, linked to its model."""
    client = MlflowClient(tracking_uri=uri)
    model_id = client.get_run(run_id).data.tags.get(Tag.LOGGED_MODEL_ID)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"{split}_{k}", float(result[k]), now, 0, model_id=model_id)
                                      for k in ("loss", "acc", "top5")])
