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
import signal
import sys
import time
import types
import warnings
from typing import Callable


import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from orchestrator import extend as extension
from orchestrator import live, preflight, ray_train, runs, search, spend, storage, tracking
from orchestrator.config import SweepSpec
from orchestrator.tables import leaderboard_table, pareto_line, render
from orchestrator.runs import Status
from orchestrator.schema import Resources, Trial, cut, slug


def preview(spec: SweepSpec, limit: int | None = None) -> list[Trial]:
    """The first `limit` (default: all) search trials a sweep would run, in order, their random
    leaves drawn as the sweep will draw them (TPE's depend on results: drawn at random here).
    `search.seeds` re-trainings follow the search and are not listed."""
    searcher = search.EntrySearch(spec)
    count = spec.search_trial_count() if limit is None else min(limit, spec.search_trial_count())
    return [spec.tune_trial(searcher.suggest(f"preview_{i:05d}"), f"preview_{i:05d}") for i in range(count)]


def packing(resources: Resources, cluster: dict[str, float]) -> tuple[int, str]:
    """How many trials fit at once, counting everything a trial holds (its workers, and the
    driver of a DDP trial) against the cluster's CPUs and GPUs, and the line that says so."""
    need = resources.per_trial()
    fits = min(int(cluster.get(k, 0) / v + 1e-9) for k, v in need.items() if v > 0)
    have = ", ".join(f"{cluster.get(k, 0):g} {k}s" for k in need)
    each = ", ".join(f"{v:g} {k}" for k, v in need.items())
    return fits, f"{fits} trial(s) at a time on {have} (each trial holds {each})"


SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM where the sweep stops at once: outside Tune's loop, or a second signal
    within it. The CLI exits with 128 + signum (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# `ray job stop` sends a job's entrypoint SIGTERM, then SIGKILL this many seconds later (Ray's job
# supervisor reads the variable from the job's environment; Ray's default is 3 s). Stopping Tune and
# marking the runs takes seconds more than that on a busy head, so a sweep asks for JOB_STOP_WAIT_S.
JOB_STOP_WAIT_VAR, RAY_JOB_STOP_WAIT_S, JOB_STOP_WAIT_S = "RAY_JOB_STOP_WAIT_TIME_S", 3, 60


def job_stop_note() -> str | None:
    """When this sweep is a Ray job whose stop wait is shorter than JOB_STOP_WAIT_S: the line that
    says so, and how to give it more."""
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ:  # set by Ray's job supervisor for the entrypoint
        return None
    try:
        wait = float(os.environ.get(JOB_STOP_WAIT_VAR, RAY_JOB_STOP_WAIT_S))
    except ValueError:
        wait = RAY_JOB_STOP_WAIT_S
    if wait >= JOB_STOP_WAIT_S:
        return None
    return (f"note: `ray job stop` kills this sweep {wait:g} s after its SIGTERM ({JOB_STOP_WAIT_VAR}), which "
            f"may cut short the marking of its runs and the resume command; submit with --runtime-env-json "
            f"'{{\"env_vars\": {{\"{JOB_STOP_WAIT_VAR}\": \"{JOB_STOP_WAIT_S}\"}}}}', or with orchestrate submit")


def run(spec: SweepSpec, *, address: str | None = None, resume: bool = False, verbosity: int = 0,
        out=sys.stdout, extend: bool = False) -> int:
    """verbosity -1: only the summary; 0: our live trial view; 1: Ray's own trial reporter and
    every worker's log lines instead."""
    if verbosity <= 0:
        tracking.quiet_mlflow()
        ray_train.quiet_trial_failures()
    # Every place the sweep uses (store, storage, earlier run, cluster) is checked before Ray
    # starts and before any MLflow run exists.
    restore_name, address = preflight.check_sweep(spec, address=address, resume=resume)
    extend_from = extended(spec) if extend else None
    # A local cluster (started here, or already running in this process, e.g. a benchmark's)
    # cannot grow: refuse what it can never hold and never start more trials than fit. A cluster
    # joined by address may autoscale, so there only the user's cap applies.
    local = not address
    if verbosity >= 0 and (note := job_stop_note()):
        print(note, file=out, flush=True)
    started_here = local and not ray.is_initialized()
    if started_here:
        # Token auth stays on (Ray's default for local clusters); only its notice about that is
        # silenced, so a user error stays the one line on stderr it should be.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Worker logs stay in Ray's log files: the terminal shows the trial table, not every rank's prints.
    # The dashboard stays on (bound to 127.0.0.1): Ray Train's placement-group cleaner asks its
    # state API whether a trial's controller died, and without it an ASHA-stopped trial's workers'
    # resources are never released.
    before_ray = {s: signal.getsignal(s) for s in SIGNALS}
    if not ray.is_initialized():
        with warnings.catch_warnings():  # Ray <2.60's notice about GPU env vars, printed at every init
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            # The user's model files and packages reach every node through Ray's runtime_env.
            shipped = {"runtime_env": {"py_modules": spec.py_modules()}} if spec.py_modules() else {}
            ray.init(address=address, log_to_driver=verbosity > 0, configure_logging=True, logging_level="WARNING",
                     **shipped)
    # Ray's driver handler, installed by ray.init, turns SIGTERM into sys.exit(15): exit code 15, or
    # 0 where a finalizer or the wait for threads at exit swallows the SystemExit. Ours instead,
    # outside Tune's loop (stop_on_signals has that): the signal is kept and stops the sweep with
    # 128 + its number; during Ray's shutdown the first is only kept (a second one quits at once).
    late = types.SimpleNamespace(signum=None, in_shutdown=0)

    def stop(signum, frame):
        late.signum = late.signum or signum
        raise Stopped(signum)

    def keep(signum, frame):
        late.in_shutdown += 1
        if late.in_shutdown > 1:
            stop(signum, frame)
        late.signum = late.signum or signum

    for s in SIGNALS:
        signal.signal(s, stop)
    # A Stopped raised where Python cannot pass it on (a finalizer: matplotlib's weakref callbacks
    # while the report is drawn) is swallowed; `late` has the signal, so it is not printed either.
    unraisable = sys.unraisablehook
    sys.unraisablehook = lambda u: None if isinstance(u.exc_value, Stopped) else unraisable(u)
    code = None
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
        tracking.bound_requests()  # MLflow's retries of one request must not outlast tracking.wait_s
        code = _run_tuner(spec, restore_name, concurrent, out, verbosity, extend_from, lambda: late.signum)
    except Stopped as e:
        code = 128 + e.signum
    finally:
        sys.unraisablehook = unraisable
        for s in SIGNALS:
            signal.signal(s, keep)
        try:
            if started_here:
                ray.shutdown()
        finally:
            for s, handler in before_ray.items():
                signal.signal(s, handler)
    # A signal whose Stopped a finalizer swallowed, or one during the shutdown, still sets the code.
    return 128 + late.signum if late.signum and (code is None or code < 128) else code


def extended(spec: SweepSpec) -> str:
    """--extend: the experiment folder of the finished sweep `spec` extends (ConfigError, before
    Ray and before anything is written, when there is none or the file is not an extension)."""
    from orchestrator.config import ConfigError

    try:
        name = preflight.resumable(spec)
    except ConfigError as e:  # the same finding as for --resume, said of --extend
        raise ConfigError(spec.file, "--extend", e.message.replace("--resume", "--extend")) from None
    extension.check(spec, name, storage.read_state(spec.storage_path, name))
    with storage.searcher_state(spec.storage_path, name) as folder:
        if not os.listdir(folder):
            raise ConfigError(spec.file, "--extend", f"Ray Tune saved no searcher state in {name}; the sweep "
                                                     f"cannot go on from where it ended")
    return name


def _run_tuner(spec: SweepSpec, restore_name: str | None, max_concurrent: int, out, verbosity: int = 0,
               extend_from: str | None = None, signalled: Callable[[], int | None] = lambda: None) -> int:
    """The sweep on Ray Tune, then its record finished. `signalled`: the signal that came after
    Tune's loop, if any (its Stopped can be swallowed where it landed: see run)."""
    run_name = restore_name or f"{slug(spec.name, 'sweep')}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainable = tune.with_resources(tune.with_parameters(ray_train.run_trial, spec=spec, run_name=run_name,
                                                         source=ray_train.ship_data(spec)),
                                    ray_train.trial_resources(spec.resources))
    if restore_name:
        meta = storage.read_state(spec.storage_path, run_name)
        restore_path = storage.join(spec.storage_path, run_name)
        record = tracking.SweepRecord(spec.tracking_uri, spec.name, meta["parent_run_id"], spec.file, spec.storage_path)
        record.resume()
        tuner = tune.Tuner.restore(restore_path, trainable, resume_unfinished=True, resume_errored=True)
        if verbosity >= 0:
            print(f"resuming {restore_path} (MLflow parent run {meta['parent_run_id']})", file=out, flush=True)
    else:
        searcher = search.EntrySearch(spec)
        settings = {"search": dataclasses.asdict(spec.search), "resources": dataclasses.asdict(spec.resources),
                    "train": dataclasses.asdict(spec.train), "dataset": dataclasses.asdict(spec.dataset),
                    "failure": dataclasses.asdict(spec.failure), "trials": spec.trial_count()}
        if extend_from:  # the same parent run; the searcher where the finished sweep left it, asking for more
            parent = storage.read_state(spec.storage_path, extend_from)["parent_run_id"]
            record = tracking.SweepRecord(spec.tracking_uri, spec.name, parent, spec.file, spec.storage_path)
            with storage.searcher_state(spec.storage_path, extend_from) as folder:
                searcher.restore_from_dir(folder)  # Tune's own API for a saved searcher
            searcher.extend(spec)
            record.extend(settings, f"{extend_from} -> {run_name}")
        else:
            record = tracking.SweepRecord.start(spec.tracking_uri, spec.name, spec.file, spec.storage_path, settings)
            parent = record.parent_run_id
        storage.write_state(spec.storage_path, run_name, {
            "experiment": spec.name, "parent_run_id": parent, "tracking_uri": spec.tracking_uri,
            "created": time.time(), "sweep_file": os.path.abspath(spec.file),
            "code": {c.ref: c.sha256 for c in spec.code()}, "settings": extension.settings(spec),
            **({"extends": extend_from} if extend_from else {})})
        s = spec.search
        todo = max(1, spec.trial_count() - len(searcher.outcomes))  # an extension's new trials at most
        recording = ray_train.MlflowCallback(spec, parent, quiet=verbosity < 0)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric=s.metric, mode=s.mode, num_samples=todo,
                scheduler=search.EntryScheduler(spec) if s.scheduler == "asha" else FIFOScheduler(),
                search_alg=search.StagedSearchGenerator(
                    ConcurrencyLimiter(searcher, max_concurrent) if max_concurrent else searcher),
                # A finished trial's process (torch, Ray Train and the data set's modules already
                # imported) runs the next trial: every trial of a sweep asks for the same resources.
                reuse_actors=True,
                trial_name_creator=trial_dirname, trial_dirname_creator=trial_dirname),
            run_config=tune.RunConfig(
                name=run_name, storage_path=spec.storage_path,
                callbacks=[recording] + (
                    [live.LiveView(lambda t: _describe(spec, t), todo, max(1, max_concurrent), out,
                                   notice=recording.outage_line)] if verbosity == 0 else []),
                checkpoint_config=ray_train.checkpoint_config(tune.CheckpointConfig, spec),
                # Single-worker trials are retried by Tune from their last checkpoint; a DDP
                # trial's worker group is restarted by Ray Train's own FailureConfig instead.
                failure_config=tune.FailureConfig(
                    max_failures=spec.failure.max_failures if spec.resources.in_process else 0),
                verbose=1 if verbosity > 0 else 0),  # Ray's own reporter only with -v
        )
        if verbosity >= 0:
            print(f"sweep {spec.name!r}: {todo} {'more ' if extend_from else ''}trial(s) on Ray, tracked in "
                  f"{preflight.show_uri(spec.tracking_uri)} (parent run {parent})", file=out, flush=True)
    if verbosity <= 0:
        # Ray's own console output off: its experiment box and snapshot warnings would break up
        # the live view (`-v` brings them back, with the worker logs).
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray_train.EXPERIMENT_ENDED.clear()
    ray_train.ENDING.unrecorded, ray_train.ENDING.missing = None, []
    # New trials wait while the run record is far behind (the recording callback, Tune's own copy
    # on a resume, says when).
    search.EntrySearch.HOLD, ray_train.MlflowCallback.ACTIVE = ray_train.record_behind, None
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
        finally:  # nothing of this sweep's record held past its loop
            search.EntrySearch.HOLD, ray_train.MlflowCallback.ACTIVE = None, None
    ending = ray_train.ENDING
    if ending.unrecorded is not None or ending.missing:
        # The record disagrees with what trained: never exit 0 with it (nor mark runs on a store
        # that is away); say what is missing and how to record it.
        print(not_recorded(spec, run_name, ending.unrecorded, ending.missing), file=sys.stderr, flush=True)
        return 128 + stopped.signum if stopped.signum is not None else 1
    spent = search.EntrySearch.ACTIVE
    spent = spent and spend.of(spec.search.budget and spec.search.budget.device_hours, spent.budget_reached,
                               spent.spend())
    if stopped.signum is None:
        try:  # the best model registered, the comparison and the report on the parent run
            if spent is not None:
                spend.log(record.client, record.parent_run_id, spent)
            results, version = record.finish(register_as=spec.registered_model)
            if signalled() is not None:  # its Stopped was swallowed: stopped all the same
                raise Stopped(signalled())
            ended = {"ended": time.time(), "budget_reached": bool(spent and spent.reached)}  # what --extend reads
            storage.write_state(spec.storage_path, run_name, {**(storage.read_state(spec.storage_path, run_name) or {}),
                                                              **ended})
        except Stopped as e:  # a signal meanwhile: the parent run is marked, the resume command printed
            stopped.signum = e.signum
    if stopped.signum is not None:
        record.interrupt()
        print(f"\n{signal.Signals(stopped.signum).name}: the sweep stopped; its trials and MLflow runs are "
              f"marked interrupted. Continue it with:\n  " + preflight.command_line(
                  "orchestrate", "sweep", spec.file, "--resume", "--tracking-uri", spec.tracking_uri,
                  "--storage", spec.storage_path), file=out, flush=True)
        return 128 + stopped.signum
    # A diverged learning rate is a normal outcome of an lr sweep: the sweep succeeded if any
    # trial trained to a model (ASHA's early stops included).
    trained = any(r.has_model for r in results)
    print_summary(results, spec, trained, out, record.experiment_id, spent)
    if version is not None:
        print(f"Best model registered: {version.name} version {version.version}, alias 'best' "
              f"(mlflow.pytorch.load_model('models:/{version.name}@best'))", file=out, flush=True)
    return 0 if trained else 1


def trial_dirname(trial) -> str:
    """A trial's name and folder: its arch and Tune's id (a folder name: a user's
    `nets/tiny.py:TinyNet` becomes nets-tiny.py-TinyNet). A module's function, not a lambda: Tune
    keeps it in every trial's saved state, where a lambda is pickled whole (~1.5 KB a trial, twice)."""
    return f"{slug(trial.config['model']['arch'], 'model')}_{trial.trial_id}"


def not_recorded(spec: SweepSpec, run_name: str, unrecorded, missing: list[str]) -> str:
    """The one line of a sweep whose record is not complete: what is not recorded, where the
    checkpoints are, and the command that records them."""
    resume = preflight.command_line("orchestrate", "sweep", spec.file, "--resume", "--tracking-uri", spec.tracking_uri,
                                    "--storage", spec.storage_path)
    where = spec.storage_path.rstrip("/") + "/" + run_name
    if unrecorded is None:
        return (f"not recorded in {preflight.show_uri(spec.tracking_uri)}: {'; '.join(missing)}; the rest of the "
                f"sweep is in {where}; after restoring what is missing, run: {resume}")
    outage = unrecorded.outage
    state = (f"unreachable for {time.time() - outage.since:.0f} s ({outage.why})" if outage
             else f"took nothing for tracking.wait_s ({spec.tracking_wait_s:g} s)")
    return (f"tracking store {preflight.show_uri(spec.tracking_uri)} {state}: {unrecorded.counts()} not recorded; "
            f"the checkpoints and results are in {where}; once the store is back, record them with: {resume}")


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
            raise Stopped(signum)  # the second signal, or Tune's loop not running yet
        state.signum = signum
        ray_train.INTERRUPTED.set()
        print(f"{signal.Signals(signum).name}: stopping the trials and saving the sweep's state "
              f"(Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    ray_train.INTERRUPTED.clear()
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    try:
        yield state
    finally:
        os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        for s, h in previous.items():
            signal.signal(s, h)


def print_summary(results: list, spec: SweepSpec, trained: bool, out, experiment_id: str | None = None,
                  spent: spend.Spend | None = None) -> None:
    print("", file=out)
    print(render(results, "table"), end="", file=out)
    if results and results[0].objectives:
        print(pareto_line(results), file=out)
    standings = runs.leaderboard(results, spec.search.mode)
    if standings:
        print(f"\nPer model entry ({spec.search.metric}, {spec.search.mode}; mean of the best configuration's "
              f"seed runs with a 95% interval where search.seeds > 1, inside the metric's range):", file=out)
        print(leaderboard_table(standings).render("table"), end="", file=out)
    if spent is not None and spent.limit is not None:
        print("\n" + "\n".join(spend.lines(spent)), file=out)
    failed = [r for r in results if r.status == Status.FAILED]
    if failed:
        print(f"\n{len(failed)} of {len(results)} trial(s) failed:", file=out)
        for r in failed:
            print(f"  {r.name} ({r.run_id}): {r.error or 'see its run'}", file=out)
    infeasible = [r for r in results if r.status == Status.INFEASIBLE]
    if infeasible:
        print(f"\n{len(infeasible)} of {len(results)} trial(s) infeasible (priced over search.constraints at their "
              f"start, never trained):", file=out)
        for r in infeasible:
            print(f"  {r.name} ({r.run_id}): {r.error or 'see its run'}", file=out)
    if not trained:
        print("\nNo trial completed (exit code 1).", file=out)
    print("\nOpen the MLflow UI:  " + preflight.command_line("orchestrate", "ui", "--tracking-uri", spec.tracking_uri),
          file=out)
    if results and experiment_id:
        more = f" (the best {runs.COMPARE_MAX_RUNS})" if len(results) > runs.COMPARE_MAX_RUNS else ""
        print(f"Compare the trials there{more}:  "
              + runs.compare_url(spec.tracking_uri, experiment_id, [r.run_id for r in results]), file=out)
    if trained:
        print("The report (leaderboard, Pareto frontiers, answers; also report.html on the parent run):  "
              + preflight.command_line("orchestrate", "report", spec.name, "--tracking-uri", spec.tracking_uri),
              file=out)
    out.flush()
