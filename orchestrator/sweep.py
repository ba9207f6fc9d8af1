"""`orchestrate sweep`: validated spec -> Ray cluster -> MLflow parent run -> Tuner -> summary.

Everything that can be wrong with the user's input is found before anything is written: the file
(config.py), and every place the sweep uses (preflight.py: the tracking store, the storage, an
earlier run to resume, the Ray address, whether this machine can ever hold one trial). Only then
is the parent run created and the Tuner started. A local Ray cluster started here is shut down on
every exit path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import time
import types
import warnings


import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from orchestrator import live, preflight, ray_train, runs, search, storage, tracking
from orchestrator.config import SweepSpec
from orchestrator.reports import leaderboard_table, render
from orchestrator.runs import Status
from orchestrator.schema import Resources, Trial, cut


def preview(spec: SweepSpec, limit: int | None = None) -> list[Trial]:
    """The first `limit` (default: all) search trials a sweep would run, in order, their random
    leaves drawn as the sweep will draw them (TPE's depend on results: drawn at random here).
    `search.seeds` re-trainings follow the search and are not listed."""
    searcher = search.EntrySearch(spec)
    count = spec.search_trial_count() if limit is None else min(limit, spec.search_trial_count())
    return [spec.tune_trial(searcher.suggest(f"preview_{i:05d}"), f"preview_{i:05d}") for i in range(count)]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "sweep"


def packing(resources: Resources, cluster: dict[str, float]) -> tuple[int, str]:
    """How many trials fit at once, counting everything a trial holds (its workers, and the
    driver of a DDP trial) against the cluster's CPUs and GPUs, and the line that says so."""
    need = resources.per_trial()
    fits = min(int(cluster.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0)
    have = ", ".join(f"{cluster.get(k, 0):g} {k}s" for k in need)
    each = ", ".join(f"{v:g} {k}" for k, v in need.items())
    return fits, f"{fits} trial(s) at a time on {have} (each trial holds {each})"


def run(spec: SweepSpec, *, address: str | None = None, resume: bool = False, verbosity: int = 0,
        out=sys.stdout) -> int:
    """verbosity -1: only the summary; 0: our live trial view; 1: Ray's own trial reporter and
    every worker's log lines instead."""
    if verbosity <= 0:
        tracking.quiet_mlflow()
        ray_train.quiet_trial_failures()
    # Every place the sweep uses (store, storage, earlier run, cluster) is checked before Ray
    # starts and before any MLflow run exists.
    restore_name, address = preflight.check_sweep(spec, address=address, resume=resume)
    # A local cluster (started here, or already running in this process, e.g. a benchmark's)
    # cannot grow: refuse what it can never hold and never start more trials than fit. A cluster
    # joined by address may autoscale, so there only the user's cap applies.
    local = not address
    started_here = local and not ray.is_initialized()
    if started_here:
        # Token auth stays on (Ray's default for local clusters); only its notice about that is
        # silenced, so a user error stays the one line on stderr it should be.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Worker logs stay in Ray's log files: the terminal shows the trial table, not every rank's prints.
    # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner asks its
    # state API whether a trial's controller died, and without it an ASHA-stopped trial's workers'
    # resources are never released.
    if not ray.is_initialized():
        with warnings.catch_warnings():  # Ray <2.60's notice about GPU env vars, printed at every init
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            ray.init(address=address, log_to_driver=verbosity > 0, configure_logging=True, logging_level="WARNING")
    try:
        cluster = ray.cluster_resources()
        fits, line = packing(spec.resources, cluster)
        if verbosity >= 0:
            print(line, file=out, flush=True)
        asked = spec.search.max_concurrent_trials
        if asked > fits and local and verbosity >= 0:
            print(f"search.max_concurrent_trials {asked} is more than fits: {fits} train at once, the rest wait "
                  f"for resources", file=out, flush=True)
        # A DDP trial's driver would otherwise hold a slot while its workers wait for a placement group.
        concurrent = (min(asked, fits) if asked else fits) if local else asked
        return _run_tuner(spec, restore_name, concurrent, out, verbosity)
    finally:
        if started_here:
            ray.shutdown()


def _run_tuner(spec: SweepSpec, restore_name: str | None, max_concurrent: int, out, verbosity: int = 0) -> int:
    run_name = restore_name or f"{slug(spec.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainable = tune.with_resources(tune.with_parameters(ray_train.run_trial, spec=spec, run_name=run_name),
                                    ray_train.trial_resources(spec.resources))
    if restore_name:
        meta = storage.read_state(spec.storage_path, run_name)
        restore_path = spec.storage_path.rstrip("/") + "/" + run_name
        record = tracking.SweepRecord(spec.tracking_uri, spec.name, meta["parent_run_id"], spec.file, spec.storage_path)
        record.resume()
        tuner = tune.Tuner.restore(restore_path, trainable, resume_unfinished=True, resume_errored=True)
        if verbosity >= 0:
            print(f"resuming {restore_path} (MLflow parent run {meta['parent_run_id']})", file=out, flush=True)
    else:
        record = tracking.SweepRecord.start(spec.tracking_uri, spec.name, spec.file, spec.storage_path, {
            "search": dataclasses.asdict(spec.search), "resources": dataclasses.asdict(spec.resources),
            "train": dataclasses.asdict(spec.train), "dataset": dataclasses.asdict(spec.dataset),
            "failure": dataclasses.asdict(spec.failure), "trials": spec.trial_count()})
        parent = record.parent_run_id
        storage.write_state(spec.storage_path, run_name, {
            "experiment": spec.name, "parent_run_id": parent, "tracking_uri": spec.tracking_uri,
            "created": time.time(), "sweep_file": os.path.abspath(spec.file)})
        s = spec.search
        searcher = search.EntrySearch(spec)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, num_samples=spec.trial_count(),
                scheduler=search.EntryScheduler(spec) if s.scheduler == "asha" else FIFOScheduler(),
                search_alg=ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher,
                # A finished trial's process (torch, Ray Train and the data set's modules already
                # imported) runs the next trial: every trial of a sweep asks for the same resources.
                reuse_actors=True,
                trial_name_creator=lambda t: f"{t.config['model']['arch']}_{t.trial_id}",
                trial_dirname_creator=lambda t: f"{t.config['model']['arch']}_{t.trial_id}"),
            run_config=tune.RunConfig(
                name=run_name, storage_path=spec.storage_path,
                callbacks=[ray_train.MlflowCallback(spec, parent)] + (
                    [live.LiveView(lambda t: _describe(spec, t), spec.trial_count(), max(1, max_concurrent), out)] if verbosity == 0 else []),
                checkpoint_config=ray_train.checkpoint_config(tune.CheckpointConfig, spec),
                # Single-worker trials are retried by Tune from their last checkpoint; a DDP
                # trial's worker group is restarted by Ray Train's own FailureConfig instead.
                failure_config=tune.FailureConfig(
                    max_failures=spec.failure.max_failures if spec.resources.in_process else 0),
                verbose=1 if verbosity > 0 else 0),  # Ray's own reporter only with -v
        )
        if verbosity >= 0:
            print(f"sweep {spec.name!r}: {spec.trial_count()} trial(s) on Ray, tracked in "
                  f"{preflight.show_uri(spec.tracking_uri)} (parent run {parent})", file=out, flush=True)
    if verbosity <= 0:
        # Ray's own console output off: its experiment box and snapshot warnings would break up
        # the live view (`-v` brings them back, with the worker logs).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray_train.EXPERIMENT_ENDED.clear()
    with stop_on_signals() as stopped:
        try:
            tuner.fit()
        except KeyboardInterrupt:
            if stopped.signum is None:  # before Tune's loop ran: nothing to stop or mark
                raise
            # The second signal: Tune's stopping (its last state save, its clean-up) cut short.
            # The runs are still marked and the resume command printed; Ray is shut down on the way out.
        except Exception as e:  # noqa: BLE001 - only after the experiment ended, see below
            if not ray_train.EXPERIMENT_ENDED.is_set():
                raise
            # Every trial ended and every run is recorded; what failed is Tune gathering its own
            # results from the storage (an error file cut short by a full disk): the sweep's
            # results are MLflow's, so it still finishes.
            print(f"Ray Tune could not read back its results ({type(e).__name__}: {cut(str(e))}); "
                  f"the summary is MLflow's", file=sys.stderr, flush=True)
    if stopped.signum is not None:
        record.interrupt()
        print(f"\n{signal.Signals(stopped.signum).name}: the sweep stopped; its trials and MLflow runs are "
              f"marked interrupted. Continue it with:\n  " + preflight.command_line(
                  "orchestrate", "sweep", spec.file, "--resume", "--tracking-uri", spec.tracking_uri,
                  "--storage", spec.storage_path), file=out, flush=True)
        return 128 + stopped.signum
    results, version = record.finish(register_as=spec.registered_model)
    # A diverged learning rate is a normal outcome of an lr sweep: the sweep succeeded if any
    # trial trained to a model (ASHA's early stops included).
    trained = any(r.has_model for r in results)
    print_summary(results, spec, trained, out)
    if version is not None:
        print(f"Best model registered: {version.name} version {version.version}, alias 'best' "
              f"(mlflow.pytorch.load_model('models:/{version.name}@best'))", file=out, flush=True)
    return 0 if trained else 1


def _describe(spec: SweepSpec, tune_trial) -> tuple[str, int]:
    trial = spec.tune_trial(tune_trial.config, tune_trial.trial_id)
    return trial.name, trial.train.epochs


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT (Ctrl-C) and SIGTERM stop the sweep the way Tune stops itself: its own interrupt
    handler (on SIGUSR1; its SIGINT one is turned off so SIGTERM gets the same treatment) ends the
    trials and saves the experiment state for --resume. The signal is recorded, so the sweep can
    exit 130 / 143; a second one exits at once."""
    state = types.SimpleNamespace(signum=None)

    def handler(signum, frame):
        if state.signum is not None or signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            raise KeyboardInterrupt  # the second signal, or Tune's loop not running yet
        state.signum = signum
        ray_train.INTERRUPTED.set()
        print(f"{signal.Signals(signum).name}: stopping the trials and saving the sweep's state "
              f"(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    ray_train.INTERRUPTED.clear()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield state
    finally:
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        for s, h in previous.items():
            signal.signal(s, h)


def print_summary(results: list, spec: SweepSpec, trained: bool, out) -> None:
    print("", file=out)
    print(render(results, "table"), end="", file=out)
    standings = runs.leaderboard(results, spec.search.mode)
    if standings:
        print(f"\nPer model entry ({spec.search.metric}, {spec.search.mode}; mean of the best configuration's "
              f"seed runs with a 95% interval where search.seeds > 1):", file=out)
        print(leaderboard_table(standings).render("table"), end="", file=out)
    failed = [r for r in results if r.status == Status.FAILED]
    if failed:
        print(f"\n{len(failed)} of {len(results)} trial(s) failed:", file=out)
        for r in failed:
            print(f"  {r.name} ({r.run_id}): {r.error or 'see its run'}", file=out)
    if not trained:
        print("\nNo trial completed (exit code 1).", file=out)
    print("\nOpen the MLflow UI:  " + preflight.command_line("orchestrate", "ui", "--tracking-uri", spec.tracking_uri),
          file=out)
    if trained:
        print("The report (leaderboard, Pareto frontiers, answers; also report.html on the parent run):  "
              + preflight.command_line("orchestrate", "report", spec.name, "--tracking-uri", spec.tracking_uri),
              file=out)
    out.flush()
