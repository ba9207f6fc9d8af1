"""Ray adapters: the Tune trainable every trial runs, the Ray Train worker function of a DDP trial,
and the Tune callback that writes MLflow. Ray stays here, at the edge; the engine underneath knows
nothing of it and only ever sees a reporter.

    Tuner ──trial──> run_trial(config): one schema.Trial, built once from the sampled point
        num_workers == 1: Engine(...).fit(TuneReporter) in the trial's own process
                          (ray.tune.report + Checkpoint, ray.tune.get_checkpoint() on a retry)
        num_workers >= 2: TorchTrainer(worker_loop, ScalingConfig, RunConfig)
                             └─ every worker: Engine(...).fit(TrainReporter) under DDP
                          reporting up through TuneReportCallback
    Tuner ──> MlflowCallback (the driver process alone writes MLflow)

A Ray actor is a cold Python process importing torch (seconds each): a single-worker trial starts
one (its trial actor), a TorchTrainer trial about seven (trial actor, controller, workers, ...).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import threading
import traceback
import warnings
from typing import Any

import ray
import ray.train
import ray.tune
import torch
from ray.exceptions import RayActorError
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2._internal.execution.controller.state import RestartingState
from ray.train.v2._internal.execution.failure_handling.default import _is_preemption_failure
from ray.train.v2._internal.execution.worker_group.poll import _is_preempted_actor
from ray.train.v2.api.exceptions import PreemptionError, TrainingFailedError, WorkerGroupError
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator import data, engine, pricing, runs, schema, storage
from orchestrator.config import SweepSpec
from orchestrator.schema import Resources, Tracking, Trial


# Set by the sweep (in this, the driver's, process) when SIGINT/SIGTERM stops it: trials that Tune
# ends from then on were stopped, not completed.
INTERRUPTED = threading.Event()
# Set when the Tune callback has seen the experiment end, every run recorded: an error Tune raises
# after that (reading back its own results) does not fail the sweep.
EXPERIMENT_ENDED = threading.Event()


@dataclasses.dataclass
class Ending:
    """How the sweep's record ended, set by the Tune callback at the experiment's end for the
    sweep to report: what the store did not take within `tracking.wait_s` (tracking.Unrecorded),
    and trials whose record could not be completed from Ray Tune's storage (one line each)."""

    unrecorded: Any = None
    missing: list[str] = dataclasses.field(default_factory=list)


ENDING = Ending()


# Ray Train V2's per-trial machinery, lighter where it costs a DDP trial time: the controller polls
# its workers every 0.2 s instead of 2 s (a finished trial is noticed sooner). Its preemption
# watcher (one more cold Python process per worker group) runs only where preemptions are
# restarted (failure.max_preemptions > 0): it sees a node drained for preemption and restarts the
# worker group from the last checkpoint by the drain's deadline, charged to the preemption budget.
# A value set in the nodes' environment wins. Measured: benchmarks/RESULTS.md.
TRAIN_ENV_DEFAULTS = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


class TuneReporter:
    """engine.Reporter for a trial training in its own Tune process."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=checkpoint)


class TrainReporter:
    """engine.Reporter for a Ray Train worker; rank 0 hands over the checkpoint directory."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)


def ship_data(spec: SweepSpec) -> tuple | None:
    """Data read from files (CIFAR batches, an imagefolder) is read once, here in the driver (the
    head on a cluster), and shipped to every trial through Ray's object store: a worker node
    needs no copy of the dataset, no download and no decoded-image cache, so it never needs the
    driver's paths. None for data every node builds itself (digits, synthetic). A one-item tuple,
    so that Tune's with_parameters passes the reference on unresolved (each trial fetches it)."""
    if spec.dataset.root is None:
        return None
    return (ray.put(data.load_splits(spec.dataset)),)


def _train(trial: Trial, reporter, checkpoint, device, prepare_model=None, source: tuple | None = None,
           price: dict | None = None) -> None:
    """Data (shipped by the driver, see ship_data, or loaded here), engine, restore from
    `checkpoint` if given, fit: the same on both paths. `price`: the model's costs, priced at the
    trial's start (run_trial), reported with its first epoch."""
    # Ray gives each actor OMP_NUM_THREADS from its CPU share; make torch agree.
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        torch.set_num_threads(threads)
    splits = ray.get(source[0]) if source else data.load_splits(trial.dataset)
    run = engine.Engine(trial.train, engine.ModelSpec(trial.arch, dict(trial.knobs)), splits,
                        device=device, prepare_model=prepare_model, price=price)
    if checkpoint is not None:
        restore(run, checkpoint)
    run.fit(reporter)


def restore(run: engine.Engine, checkpoint) -> None:
    """`run` continued from `checkpoint`, or, when that one cannot be read (cut short by a full
    disk or a kill while it was written), from the newest older checkpoint of the trial that can;
    from the first epoch when none can. Retrained epochs are not logged twice: the driver keeps
    each epoch's first report."""
    def candidates():  # the older ones are listed only when the newest cannot be read
        yield checkpoint
        for path in storage.older_checkpoints(checkpoint.filesystem, checkpoint.path):
            yield type(checkpoint)(path, filesystem=checkpoint.filesystem)

    for candidate in candidates():
        try:
            with candidate.as_directory() as directory:
                run.restore(directory)
            return
        except engine.CheckpointError as e:
            warnings.warn(f"{e}; trying an older checkpoint", stacklevel=2)
    warnings.warn(f"no checkpoint of {os.path.dirname(checkpoint.path)} can be read: training from the first epoch",
                  stacklevel=2)


def worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (one DDP rank)."""
    # Here, not at the top: a single-worker trial never loads Ray Train's torch side.
    from ray.train.torch import get_device, prepare_model

    _train(config["trial"], TrainReporter(), ray.train.get_checkpoint(), get_device(), prepare_model,
           config["source"], config.get("price"))


def trial_resources(resources: Resources) -> dict[str, float]:
    """What Tune reserves for the trial's own process: the whole worker when it trains there,
    else only the driver that waits on its TorchTrainer (the workers get their own bundle)."""
    if resources.in_process:
        return {k.lower(): v for k, v in resources.per_worker().items()}
    return {"cpu": resources.driver_cpus}


def run_trial(config: dict[str, Any], spec: SweepSpec, run_name: str, source: tuple | None = None) -> None:
    """One Tune trial (`source`: the shipped data, see ship_data). A TorchTrainer's run name is
    derived from the trial id, so a restored trial finds (and resumes from) its own checkpoints."""
    trial = spec.tune_trial(config, ray.tune.get_context().get_trial_id())
    price = price_trial(trial, spec, source)
    if price is None:
        return  # infeasible: reported, nothing trained
    if trial.resources.in_process:
        _train(trial, TuneReporter(), ray.tune.get_checkpoint(), "cuda" if trial.resources.use_gpu else "cpu",
               source=source, price=price)
        return

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer  # only multi-worker trials need Ray Train's torch side

    for key, value in TRAIN_ENV_DEFAULTS.items():  # read by the Train controller this trial starts
        os.environ.setdefault(key, value)
    os.environ.setdefault(PREEMPTION_WATCHER, "1" if trial.failure.max_preemptions > 0 else "0")
    res = trial.resources
    restarts = RestartCounts()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"trial": trial, "source": source, "price": price},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker=res.per_worker(),
                                     placement_strategy=res.placement_strategy),
        run_config=RunConfig(
            name=f"{run_name}-{trial.trial_id}",
            storage_path=spec.storage_path,
            checkpoint_config=checkpoint_config(CheckpointConfig, trial),
            failure_config=FailureConfig(max_failures=trial.failure.max_failures,
                                         max_preemption_failures=trial.failure.max_preemptions),
            callbacks=[restarts, ReportWithRestarts(restarts)],
        ),
    )
    try:
        trainer.fit()
    except TrainingFailedError as e:  # out of restarts: one line for the summary, not Ray's dump
        raise TrialFailedError(training_failure(e, trial.failure)) from None


def price_trial(trial: Trial, spec: SweepSpec, source: tuple | None) -> dict | None:
    """The trial's model priced on its deployment target before anything else of it starts (no
    data on the device, no worker group): from the sweep storage's cost cache, or measured here
    and put there (orchestrator/pricing.py). Its costs, for the engine to report with the first
    epoch; or None when they violate `search.constraints`: then the trial has reported them with
    `infeasible` (and the sweep's metric at its worst, as Tune wants it in every result) and ends,
    untrained."""
    num_classes = getattr(spec, "num_classes", 0) or (
        ray.get(source[0]) if source else data.load_splits(trial.dataset)).num_classes
    priced = pricing.price_trial(trial, num_classes, pricing.Cache(spec.storage_path))
    broken = pricing.violations(priced.costs, trial.search.constraints)
    if not broken:
        return priced.facts()
    search = trial.search
    ray.tune.report({**priced.facts(), runs.INFEASIBLE: "; ".join(broken),
                     search.metric: schema.worst(search.metric, search.mode)})
    return None


class TrialFailedError(RuntimeError):
    """A DDP trial's worker group failed past its restarts; the message is the reason, one line."""


def training_failure(error: TrainingFailedError, failure) -> str:
    """Why Ray Train gave up on a DDP trial, in one line: which budget ran out, and what each
    failed rank saw. A rank whose peer's node died usually fails first, on its broken connection,
    before Ray has noticed the dead node."""
    if isinstance(error, PreemptionError):
        return (f"preempted: node(s) {', '.join(error.preemption_info.preempted_node_ids)} drained for preemption, "
                f"and failure.max_preemptions ({failure.max_preemptions}) allows no more restarts")
    if not isinstance(error, WorkerGroupError):
        return f"Ray Train's controller failed: {_last_line(str(error))}"
    ranks = []
    for rank, e in sorted(error.worker_failures.items()):
        e = getattr(e, "health_check_failure", e)  # a worker that died: WorkerHealthCheckFailedError
        text = str(e)
        if isinstance(e, RayActorError):
            ranks.append(f"rank {rank}'s node was preempted" if e.preempted
                         else f"rank {rank}'s worker process or its node died")
        elif "Connection reset by peer" in text or "Connection closed by peer" in text:
            ranks.append(f"rank {rank} lost its connection to another rank (that rank's worker or node died)")
        else:
            ranks.append(f"rank {rank}: {_last_line(text)}")
    budget = (f"failure.max_preemptions ({failure.max_preemptions})"
              if any(_is_preempted_actor(e) for e in error.worker_failures.values())
              else f"failure.max_failures ({failure.max_failures})")
    return f"the DDP worker group failed and {budget} allows no more restarts: " + "; ".join(ranks)


class _IncompleteTrialsLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Trials did not complete")


def quiet_trial_failures() -> None:
    """Ray Tune's error log of each failed trial (its whole traceback) and of the trials that did
    not complete, off the terminal: the sweep's summary gives each failed trial's reason in one
    line, as does its run's `error` tag; the traceback stays in the trial's error.txt in the
    storage (and `-v` shows Ray's logs)."""
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # read when Tune's loop starts
    log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _IncompleteTrialsLog) for f in log.filters):
        log.addFilter(_IncompleteTrialsLog())


def _last_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[-1] if lines else "no message"
    return line if len(line) <= limit else line[:limit] + "..."


class RestartCounts(ControllerCallback):
    """Counts a DDP trial's worker-group restarts in its Train controller, by the budget Ray
    Train's failure policy charges each to (its own test: a PreemptionError, or a worker lost with
    its node drained for preemption, is a preemption; anything else a failure)."""

    def __init__(self):
        self.counts = dict.fromkeys(runs.RESTART_COUNTS, 0)

    def after_controller_state_update(self, previous_state, current_state):
        if isinstance(current_state, RestartingState):
            preempted = _is_preemption_failure(current_state.training_failed_error)
            self.counts["preemptions" if preempted else "restarts"] += 1


class ReportWithRestarts(TuneReportCallback):
    """Ray Tune's report callback; each epoch's metrics carry the restarts so far. (Pickled to the
    controller in one callback list with its RestartCounts, so both hold the same one.)"""

    def __init__(self, restarts: RestartCounts):
        super().__init__()
        self.restarts = restarts

    def after_report(self, run_context, metrics, checkpoint):
        super().after_report(run_context, [{**metrics[0], **self.restarts.counts}, *metrics[1:]], checkpoint)


def checkpoint_config(cls, trial_or_spec):
    """Retention by the sweep's metric and mode (the best checkpoint is never the one deleted)."""
    return cls(num_to_keep=trial_or_spec.failure.num_to_keep,
               checkpoint_score_attribute=trial_or_spec.search.metric,
               checkpoint_score_order=trial_or_spec.search.mode)


def record_behind() -> bool:
    """Whether the sweep's run record is so far behind its trials that no new trial should start
    (search.EntrySearch.HOLD): more ended trials wait for their finishing (model export, plots,
    end) than two waves of the trials that ran at once (at least RECORD_BEHIND_MIN), while the
    store takes writes. The writer is one thread; a sweep of tiny trials can end them faster than
    it records them (benchmarks/RESULTS.md: the 1,000-trial sweep), and its queue would then grow
    with the sweep, and the end wait for all of it."""
    callback = MlflowCallback.ACTIVE
    return callback is not None and callback.record_behind()


RECORD_BEHIND_MIN = 4


class MlflowCallback(ray.tune.Callback):
    """Forwards Tune's events to the sweep's run record (tracking.Recorder), which writes MLflow on
    its own thread: nothing here waits on the store. The driver process alone writes MLflow."""

    ACTIVE: MlflowCallback | None = None  # the one recording in this process (record_behind reads it)
    _most_running = 0  # the most trials seen running at once (a class default: a callback pickled before it)

    def __init__(self, spec: SweepSpec, parent_run_id: str, quiet: bool = False):
        self.spec, self.parent_run_id, self.quiet = spec, parent_run_id, quiet
        self._recorder = None

    # The callback is pickled into Tune's experiment state (a restored sweep gets it back from
    # there); the recorder's thread and MLflow client are not.
    def __getstate__(self):
        return {**self.__dict__, "_recorder": None}

    @property
    def recorder(self):
        if self._recorder is None:
            from orchestrator import tracking  # here: trial processes never import MLflow

            spec = self.spec
            self._recorder = tracking.Recorder(lambda: tracking.SweepRecord(
                spec.tracking_uri, spec.name, self.parent_run_id, spec.file, spec.storage_path))
            MlflowCallback.ACTIVE = self
        return self._recorder

    def record_behind(self) -> bool:
        wait_s = getattr(self.spec, "tracking_wait_s", Tracking.wait_s)
        return self._recorder is not None and self._recorder.behind(max(RECORD_BEHIND_MIN, 2 * self._most_running),
                                                                    wait_s)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._most_running = max(self._most_running, sum(t.status == "RUNNING" for t in trials))
        self.recorder.started(self.spec.tune_trial(trial.config, trial.trial_id), {t.trial_id for t in trials})

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result:
            self.recorder.result(trial.trial_id, result)
        elif result.get(runs.INFEASIBLE):  # priced over search.constraints at its start (price_trial)
            self.recorder.infeasible(trial.trial_id, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # A single-worker trial's checkpoint, stored by Tune right after its result.
        if trial.last_result and "epoch" in trial.last_result:
            self.recorder.checkpoint(trial.trial_id, int(trial.last_result["epoch"]), checkpoint.path)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if INTERRUPTED.is_set():
            # Ended by the sweep's interrupt: left running for the sweep to mark interrupted;
            # --resume continues it (or, had it truly finished, finishes its run).
            self.recorder.left_running(trial.trial_id)
        else:
            self.recorder.ended(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.recorder.ended(trial.trial_id, failed=True, error=_trial_error(trial))

    def on_experiment_end(self, trials, **info):
        """Every child run finished before the sweep's summary: what the recorder has queued,
        then any run whose trial Tune holds as ended but whose finishing was lost (a sweep killed
        with work queued, then resumed: Tune will not report that trial again; or the store was
        away when it ended), completed from what Tune kept in the storage. A store that takes
        nothing for `tracking.wait_s` (unreachable, full) is waited for no longer, nor is it after
        a Ctrl-C: ENDING says what it did not take."""
        if not INTERRUPTED.is_set():  # Tune's clean-up marks stopped trials TERMINATED: they did not end
            by_id = {t.trial_id: t for t in trials}
            self.recorder.finish_orphans({t.trial_id: t.status == "ERROR" for t in trials
                                          if t.status in ("TERMINATED", "ERROR")}, set(by_id),
                                         lambda trial_id: self._kept(by_id[trial_id]))
        wait_s = getattr(self.spec, "tracking_wait_s", Tracking.wait_s)  # (a sweep pickled before the setting)
        if outage := self.recorder.outage():
            self._say(f"{outage.line(self.spec.tracking_uri)}: waiting up to {wait_s:.0f} s (tracking.wait_s) "
                      f"for the store, Ctrl-C to stop waiting")
        interrupted = INTERRUPTED.is_set()  # a Ctrl-C from now on stops the wait
        ENDING.unrecorded = self.recorder.flush(wait_s, None if interrupted else INTERRUPTED.is_set)
        ENDING.missing = list(self.recorder.missing)
        EXPERIMENT_ENDED.set()

    def outage_line(self) -> str | None:
        """The live view's line while the store refuses the writes, e.g. "tracking store URI
        unreachable for 42 s ([Errno 111] Connection refused); 17 write(s) waiting"."""
        if self._recorder is None or (outage := self._recorder.outage()) is None:
            return None
        return outage.line(self.spec.tracking_uri)

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stdout, flush=True)

    def _kept(self, trial):
        """What Ray Tune kept of `trial` (ended) in the sweep's storage, for the record (tracking.Kept)."""
        from orchestrator import tracking

        results, checkpoints = storage.trial_results(self.spec.storage_path, trial.storage.experiment_dir_name,
                                                     trial.storage.trial_dir_name)
        failed = trial.status == "ERROR"
        return tracking.Kept(self.spec.tune_trial(trial.config, trial.trial_id), failed,
                             _trial_error(trial) if failed else None, results,
                             {e: path for e, (path, there) in checkpoints.items() if there},
                             {e: path for e, (path, there) in checkpoints.items() if not there})


def _trial_error(trial) -> str:
    """The last line of the trial's error file: the exception, e.g. 'Diverged: train_loss is nan'."""
    try:
        path = trial.error_file or ""
        if path and os.path.exists(path):
            lines = [ln for ln in open(path).read().splitlines() if ln.strip()]
            for ln in reversed(lines):
                if "Diverged" in ln or "Error" in ln or "Exception" in ln:
                    return re.sub(r"^orchestrator\.(?:\w+\.)*", "", ln.strip())  # our module path: noise
            return lines[-1] if lines else "failed"
    except Exception:  # noqa: BLE001
        return traceback.format_exc(limit=1)
    return "failed"
