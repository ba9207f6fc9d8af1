"""A sweep's runs: the parent run (`SweepRecord`) and one `TrialRecord` per trial that owns its run's
state (epochs logged, best checkpoint, model, status); `Kept`, what Ray Tune kept of an ended
trial, from which the sweep's end completes a record the store did not take.

Names and shapes (tags, params, metrics, artefacts; Trial <-> run) are runs.py's."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Collection, Mapping

from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from orchestrator import preflight, runs, storage, tables
from orchestrator.runs import Artifact, Status, Tag
from orchestrator.schema import EPOCH_METRICS, CheckpointFile, Trial
from orchestrator.tracking.context import context_tags, dataset_input, library_versions
from orchestrator.tracking.logged_model import log_code, log_model
from orchestrator.tracking.store import get_or_create_experiment, store_creation_lock


def encode(trial: Trial) -> tuple[dict[str, str], dict[str, str]]:
    """runs.encode with the arch's full knobs and family from the registry."""
    import archs  # torch: only the sweep driver pays for it, `orchestrate compare` does not

    arch = archs.get(trial.arch)
    return runs.encode(trial, archs.validate(trial.arch, dict(trial.knobs)), arch.family,
                       *((arch.code.sha256, arch.code.file) if arch.code else ()))


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
        self.infeasible_why: str | None = None  # priced over search.constraints: see infeasible()

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
        log_code(client, run_id, trial.arch)
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
            if "arch" not in record.logged:  # created, then the store went away before `create` logged the rest
                params = {**encode(record.trial)[0], **library_versions()}
                client.log_batch(record.run_id, params=[Param(k, v) for k, v in params.items()])
                client.log_dict(record.run_id, runs.trial_to_dict(record.trial), Artifact.TRIAL)
                record.logged.update(params)
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

    def infeasible(self, metrics: dict[str, Any]) -> None:
        """The trial was priced over `search.constraints` at its start and ends untrained
        (ray_train.price_trial): its costs (MODEL_FACTS and the inference settings as params, the
        inference metrics at step 0) and why (the error tag); `finish` then ends it `infeasible`."""
        why = str(metrics.get(runs.INFEASIBLE))
        facts = {k: str(int(v) if k in runs.MODEL_FACTS else v) for k in runs.MODEL_FACTS + runs.INFERENCE_PARAMS
                 if k not in self.logged and (v := metrics.get(k)) is not None}
        now = self._stamps_ms.setdefault("price", int(time.time() * 1000))
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(metrics[k]), now, 0, model_id=self.model_id or None)
                                                    for k in runs.INFERENCE_METRICS if k in metrics],
                              params=[Param(k, v) for k, v in facts.items()], tags=[RunTag(Tag.ERROR, why[:4000])])
        self.logged.update(facts)
        self.infeasible_why = why

    def end_status(self, failed: bool = False) -> str:
        if self.infeasible_why is not None:
            return Status.INFEASIBLE
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
                tables.plot_curves(history, path, self.trial.name)
                client.log_artifact(self.run_id, path)
            if local and os.path.isdir(local):
                eval_file = os.path.join(local, CheckpointFile.EVAL)
                if os.path.exists(eval_file):
                    with open(eval_file) as f:
                        info = json.load(f)
                    path = os.path.join(tmp, Artifact.CONFUSION)
                    tables.plot_confusion(info, path, f"{self.trial.name} (epoch {best.epoch}, val)")
                    client.log_artifact(self.run_id, path)
                    client.log_dict(self.run_id, info, Artifact.PER_CLASS)
                client.log_artifacts(self.run_id, local, Artifact.BEST_CHECKPOINT)
            self.sweep.alive()
            if local and os.path.isdir(local) and status != Status.FAILED:
                log_model(client, self.run_id, self.model_id, local, best.epoch)
                self.sweep.alive()
            elif self.model_id:
                client.finalize_logged_model(self.model_id, LoggedModelStatus.FAILED)
        at_best = next((m for m in history if best and int(m["epoch"]) == best.epoch), None)
        if at_best is not None:
            now = self._stamps_ms.setdefault("model", int(time.time() * 1000))
            objectives = [k for k in self.trial.search.objective_names() if k in EPOCH_METRICS]  # the metric first
            keys = dict.fromkeys(("val_acc", "val_loss", "val_top5", *objectives))
            client.log_batch(self.run_id, metrics=[Metric(runs.model_metric(k), float(at_best[k]), now, best.epoch,
                                                          model_id=self.model_id or None)
                                                   for k in keys if k in at_best])
        client.set_tag(self.run_id, Tag.STATUS, status)  # last: the run is finished only when all is in
        client.set_terminated(self.run_id, "FAILED" if status == Status.FAILED else "FINISHED")
        self.status = status


# ---------------------------------------------------------------------------------------------
# The sweep's run


@dataclasses.dataclass(frozen=True)
class Kept:
    """What Ray Tune kept in the storage of one ended trial: its results in the order it reported
    them (those with an epoch; a retried trial's re-reported epochs included), and the checkpoints
    they name, by epoch: `checkpoints` still there, `gone` no longer (Tune's retention deletes all
    but the best `failure.num_to_keep`, so the best one is only gone if someone deleted it)."""

    trial: Trial
    failed: bool
    error: str | None
    results: list[dict[str, Any]]
    checkpoints: dict[int, str]
    gone: dict[int, str] = dataclasses.field(default_factory=dict)

    def missing(self) -> str | None:
        """Why this trial's record cannot be made to agree with what it trained, or None."""
        if self.failed:
            return None  # a failed trial has no model; its epochs, whatever is kept of them, are logged
        if not self.results:
            return "no results of it are left in the storage"
        search, best = self.trial.search, None
        for metrics in self.results:  # the best checkpointed epoch, as TrialRecord.checkpoint picks it
            epoch, value = int(metrics["epoch"]), metrics.get(search.metric)
            if (epoch in self.checkpoints or epoch in self.gone) and value is not None \
                    and search.better(float(value), best[1] if best else None):
                best = (epoch, float(value))
        if best is not None and best[0] not in self.checkpoints:
            return f"its best checkpoint (epoch {best[0]}) is gone from the storage: {self.gone[best[0]]}"
        return None


LOST_TRIAL = ("lost: the sweep's driver died before Ray Tune saved this trial, and the resumed sweep did not "
              "draw its point again")


class SweepRecord:
    """The parent run of one sweep: its child runs' records are opened here, and at the end the
    comparison table, the plots and the best model's registration go on it."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, sweep_file: str, storage_path: str):
        self.uri, self.experiment, self.parent_run_id = uri, experiment, parent_run_id
        self._left_unfinished: list | None = None  # runs an earlier driver left unfinished (open_trial)
        self.sweep_file, self.storage_path = sweep_file, storage_path
        self.alive: Callable[[], None] = lambda: None  # told after each long step (the writer's clock)
        with store_creation_lock(uri):  # the client opens (and may create) the store; a second sweep waits
            self.client = MlflowClient(tracking_uri=uri)
            self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        self.context = context_tags(sweep_file) if sweep_file else {}

    @classmethod
    def start(cls, uri: str, experiment: str, sweep_file: str, storage_path: str,
              params: dict[str, Any]) -> SweepRecord:
        """A new parent run `sweep-<timestamp>` with the sweep's settings (`params`: a dict of
        runs.SweepSettings' fields) as its record (runs.encode_sweep, sweep.json) and its file."""
        record = cls(uri, experiment, "", sweep_file, storage_path)
        client, settings = record.client, runs.sweep_from_dict(params)
        params, tags = runs.encode_sweep(settings)
        run = client.create_run(record.experiment_id, run_name=time.strftime("sweep-%Y%m%d-%H%M%S"), tags={
            **record.context, **tags, Tag.SWEEP_FILE: os.path.abspath(sweep_file)})
        record.parent_run_id = run.info.run_id
        params = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(params), 100):
            client.log_batch(record.parent_run_id, params=params[i:i + 100])
        client.log_dict(record.parent_run_id, runs.sweep_to_dict(settings), Artifact.SWEEP)
        record._log_file()
        return record

    def _log_file(self) -> None:
        """The sweep file as it is, but for any password in a URI (a tracking.uri with credentials
        must not land in the store it unlocks)."""
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, os.path.basename(self.sweep_file))
            with open(copy, "w", encoding="utf-8") as f:
                f.write(preflight.masked_sweep_text(self.sweep_file))
            self.client.log_artifact(self.parent_run_id, copy)

    def resume(self) -> None:
        self.client.update_run(self.parent_run_id, status="RUNNING")

    def extend(self, params: dict[str, Any], note: str) -> None:
        """`orchestrate sweep --extend`: the parent run running again, its record (Tag.SWEEP,
        sweep.json) and its sweep file the extended sweep's, Tag.EXTENDED `note`. Its params keep
        the first run's values (MLflow never changes a logged param)."""
        settings = runs.sweep_from_dict(params)
        _, tags = runs.encode_sweep(settings)
        self.client.log_batch(self.parent_run_id, tags=[RunTag(Tag.SWEEP, tags[Tag.SWEEP]), RunTag(Tag.EXTENDED, note)])
        self.client.log_dict(self.parent_run_id, runs.sweep_to_dict(settings), Artifact.SWEEP)
        self._log_file()
        self.resume()

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
            file = os.path.join(local, CheckpointFile.HISTORY) if local else None
            if not file or not os.path.exists(file):
                return []
            with open(file) as f:
                return json.load(f)

    def unfinished(self) -> list:
        """Child runs that have not ended (no final status yet)."""
        return [r for r in runs.trial_runs(self.client, self.experiment_id, self.parent_run_id)
                if r.data.tags.get(Tag.STATUS) not in runs.FINISHED_STATUSES]

    def finish_orphans(self, ended: dict[str, bool], tune_trial_ids: Collection[str] | None = None,
                       kept: Callable[[str], Kept | None] | None = None) -> list[str]:
        """At the sweep's end: trials Tune holds as ended ({trial_id: failed}) whose run was never
        finished (the sweep died with their finishing queued, or the store was away when they
        ended), or never created (the store was away when they started), are recorded now. Given
        `kept` (what Tune kept of a trial in the storage: Kept), from that: the missing run, every
        epoch it does not hold, the best checkpoint as its model, then its end (see `fill_in`);
        without, from what MLflow and the storage hold. Given every id Tune knows, a lost trial's
        run that no new trial continued (its point was not drawn again) ends failed, saying so:
        nothing will ever continue it. Returns what could not be recorded, one line per trial."""
        children = runs.trial_runs(self.client, self.experiment_id, self.parent_run_id)
        by_trial = {r.data.tags.get(Tag.TRIAL_ID, ""): r for r in children}
        missing = []
        for trial_id, failed in ended.items():
            run = by_trial.get(trial_id)
            if run is not None and run.data.tags.get(Tag.STATUS) in runs.FINISHED_STATUSES:
                continue
            what = kept(trial_id) if kept else None
            if what is not None and (what.results or run is None):  # none kept: what MLflow holds stands
                if problem := self.fill_in(what, run):
                    missing.append(problem)
            elif run is not None:
                TrialRecord.reopen(self, run).finish(failed=failed)
            self.alive()
        for run in children:
            trial_id = run.data.tags.get(Tag.TRIAL_ID, "")
            if (trial_id not in ended and tune_trial_ids is not None and trial_id not in tune_trial_ids
                    and run.data.tags.get(Tag.STATUS) not in runs.FINISHED_STATUSES):
                TrialRecord.reopen(self, run).finish(failed=True, error=LOST_TRIAL)
        return missing

    def fill_in(self, kept: Kept, run=None) -> str | None:
        """One ended trial's record completed from what Ray Tune kept (`kept`), its run `run` or
        none yet: every reported epoch the run does not hold (TrialRecord skips those it has, so
        none twice), each epoch's checkpoint still in the storage, then the best checkpoint as its
        model and its end. None when done; else what is missing (its best checkpoint gone from the
        storage, no results kept), and the run is left as it is."""
        trial = kept.trial
        if problem := kept.missing():
            return f"{trial.name} (trial {trial.trial_id}): {problem}"
        record = TrialRecord.reopen(self, run, trial) if run is not None else self.open_trial(trial)
        if record.trained:
            return None
        for metrics in kept.results:
            epoch = int(metrics["epoch"])
            record.epoch(metrics)
            if epoch in kept.checkpoints:
                record.checkpoint(epoch, kept.checkpoints[epoch])
        record.finish(failed=kept.failed, error=kept.error)
        return None

    def interrupt(self) -> None:
        """SIGINT/SIGTERM: every child run still running and the parent end KILLED, `interrupted`."""
        for run in self.unfinished():
            self.client.set_tag(run.info.run_id, Tag.STATUS, Status.INTERRUPTED)
            self.client.set_terminated(run.info.run_id, "KILLED")
        self.client.set_terminated(self.parent_run_id, "KILLED")

    def finish(self, register_as: str | None = None) -> tuple[list[runs.Result], Any]:
        """Comparison table and plots on the parent run, the best trial's model registered as
        `register_as` with the alias `best`, the parent finished. Returns (results, model version)."""
        # One read of the trial runs serves the ranking, the registration, the tables and the report.
        trial_runs = runs.trial_runs(self.client, self.experiment_id, self.parent_run_id)
        metric, mode = runs.selection(self.client, self.parent_run_id, trial_runs)
        results = runs.read_results(trial_runs, metric, mode)
        version = self.register_best(results, register_as) if register_as else None
        with tempfile.TemporaryDirectory() as tmp:
            for path in tables.write_comparison(results, runs.leaderboard(results, mode), tmp):
                self.client.log_artifact(self.parent_run_id, path)
        counts: dict[str, int] = {}
        for r in results:
            counts[r.status] = counts.get(r.status, 0) + 1
        self.client.log_batch(self.parent_run_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in counts.items()])
        from orchestrator import report  # matplotlib, jinja2: only a finishing sweep draws the report

        try:  # report.html on the parent run, the frontier runs tagged
            report.publish(self.client, self.experiment_id, self.parent_run_id, trial_runs)
        except Exception as e:  # noqa: BLE001 - the trained sweep stands; `orchestrate report` redraws it
            warnings.warn(f"the sweep's report was not written ({type(e).__name__}: {e}); "
                          f"`orchestrate report {self.experiment}` writes it", stacklevel=2)
        self.client.set_terminated(self.parent_run_id, "FINISHED")
        return results, version

    def register_best(self, results: list[runs.Result], name: str):
        """The first result (best first, by the sweep's metric and mode) that holds a model — with
        search.objectives the one search.select picked from their Pareto set — in the Model
        Registry as `name`, alias `best`. None if no trial has a model."""
        best = next((r for r in results if r.selected and r.model_id), None) or next(
            (r for r in results if r.has_model and r.model_id), None)
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



def record_evaluation(uri: str, run_id: str, split: str, result: dict[str, Any]) -> None:
    """`orchestrate evaluate --log`: the scores as `<split>_loss`, `<split>_acc`, `<split>_top5`
    on the run, linked to its model."""
    client = MlflowClient(tracking_uri=uri)
    model_id = client.get_run(run_id).data.tags.get(Tag.LOGGED_MODEL_ID)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"{split}_{k}", float(result[k]), now, 0, model_id=model_id)
                                      for k in ("loss", "acc", "top5")])
