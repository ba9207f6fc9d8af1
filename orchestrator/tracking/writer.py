"""Off Tune's loop: the `Recorder` feeds Tune's events to the sweep's records on one
`BackgroundWriter` thread, which retries a write for as long as the store is away (`transient`),
says since when (`Outage`), and at the sweep's end what the store did not take (`Unrecorded`).
`bound_requests` keeps MLflow's own per-request retries short in the sweep driver."""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import threading
import time
from typing import Any, Callable, Collection

from mlflow.exceptions import MlflowException

from orchestrator import preflight
from orchestrator.runs import Status
from orchestrator.schema import Trial, cut
from orchestrator.tracking.records import Kept, SweepRecord, TrialRecord


def transient(error: BaseException) -> bool:
    """Whether `error` (or one it was raised from) is a store out of reach for now: a connection
    refused or cut mid-response (a tracking server restarting or gone), a timeout, a server that
    answers 5xx past MLflow's own retries (its database down), a database busy with another writer
    or whose disk is full (MLflow's TEMPORARILY_UNAVAILABLE: any SQLAlchemy OperationalError), an
    artefact written to a full disk. Each can pass; none is a wrong write."""
    import errno

    import requests

    seen = error
    while seen is not None:
        if isinstance(seen, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                             requests.exceptions.Timeout, requests.exceptions.RetryError, ConnectionError,
                             TimeoutError)):
            return True
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(seen, MlflowException) and seen.error_code == "TEMPORARILY_UNAVAILABLE":
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Per-request retries of MLflow's HTTP client in the sweep driver. MLflow's own defaults
# (MLFLOW_HTTP_REQUEST_MAX_RETRIES 7, _BACKOFF_FACTOR 2, urllib3's back-off capped at 120 s) hold
# one request for about 4 minutes against a server that is gone, and the writer's retries came on
# top: a queue of a few jobs took a quarter of an hour. In the driver each request gives up after
# 3 quick retries (about 7 s); the writer retries the job for as long as the store stays away, and
# the sweep's end waits for it `tracking.wait_s` by the clock. A value the user set wins.
REQUEST_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}


def bound_requests() -> None:
    """REQUEST_RETRIES for this process (the sweep driver: the only one that writes MLflow)."""
    for key, value in REQUEST_RETRIES.items():
        os.environ.setdefault(key, value)


def reason(error: BaseException) -> str:
    """What a store's error comes down to, short: '[Errno 111] Connection refused', 'too many 503
    error responses', 'database or disk is full', ..."""
    import re

    texts, seen = [], error
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    text = " ".join(texts)
    for pattern in (r"\[Errno -?\d+\] [^'\"()\]]+", r"too many \d+ error responses", r"database or disk is full",
                    r"database is locked", r"[Rr]ead timed out", r"No space left on device"):
        if found := re.search(pattern, text):
            return found.group(0).strip()
    return cut(f"{type(error).__name__}: {texts[-1].splitlines()[0] if texts[-1] else ''}", 100)


@dataclasses.dataclass(frozen=True)
class Outage:
    """The store has refused every write since `since` (time.time()), for `why`; `waiting`
    writes are queued behind the one being tried."""

    since: float
    waiting: int
    why: str

    def line(self, uri: str, now: float | None = None) -> str:
        seconds = (now or time.time()) - self.since
        return (f"tracking store {preflight.show_uri(uri)} unreachable for {seconds:.0f} s ({self.why}); "
                f"{self.waiting} write(s) waiting")


NOTHING_WRITTEN = "nothing written"  # what a BackgroundWriter job returns when it did nothing with the store


class BackgroundWriter:
    """One thread that runs MLflow work in submission order, so the caller (Tune's event loop)
    never waits on a store. A job that fails on a transient store error is run again, after
    RETRY_WAITS_S and then every RETRY_WAITS_S[-1], for as long as the store stays away (every job
    can be: an epoch or a tag is written once however often it is sent, a run is found again
    before one is created), so an outage loses nothing and keeps the order; `outage()` says
    since when. Any other error is kept (and re-raised by `flush`) without stopping the jobs after
    it. `flush(timeout_s)` waits until the store has taken nothing for that long (no job ended,
    no `alive()` from a long one); then the writer gives up (no job runs again).

    A job returns NOTHING_WRITTEN when it did nothing with the store (a trial's bookkeeping, a
    write for a trial that has no run): that says nothing of the store, so it neither ends an
    outage (the live view's "answers again" would come and go with every such job) nor counts as
    the store taking something. An MLflow error that is not transient is the store's answer: it
    ends the outage (the error is kept)."""

    RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0, 15.0)

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()
        self._errors: list[BaseException] = []
        self._given_up = threading.Event()
        self._failing: tuple[float, BaseException] | None = None  # (first failed try, last error)
        self._progress = time.monotonic()  # when the store last took something
        self._thread = threading.Thread(target=self._run, name="orchestrate-mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], Any]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                if not self._given_up.is_set():
                    self._run_job(job)
            except BaseException as e:  # noqa: BLE001 - reported by flush()
                self._errors.append(e)
            finally:
                self._jobs.task_done()

    def _run_job(self, job: Callable[[], Any]) -> None:
        for attempt in itertools.count():
            tried = time.time()
            try:
                if job() is not NOTHING_WRITTEN:
                    self._failing = None
                    self.alive()
                return
            except Exception as e:  # noqa: BLE001 - only a transient one is tried again
                if not transient(e) or self._given_up.is_set():
                    if isinstance(e, MlflowException) and not transient(e):
                        self._failing = None
                    raise
                self._failing = (self._failing[0] if self._failing else tried, e)
                if self._given_up.wait(self.RETRY_WAITS_S[min(attempt, len(self.RETRY_WAITS_S) - 1)]):
                    raise

    def alive(self) -> None:
        """The store took a write: a long job (a trial's finishing, its model's upload) says so."""
        self._progress = time.monotonic()

    def outage(self) -> Outage | None:
        """Since when the store has refused the writes, or None while it takes them."""
        failing = self._failing
        if failing is None:
            return None
        return Outage(failing[0], self.pending, reason(failing[1]))

    def flush(self, timeout_s: float | None = None, stop: Callable[[], bool] | None = None) -> bool:
        """Wait until everything submitted has run (True), re-raising the first error kept. Once
        the store has taken nothing for `timeout_s` (counted from this call at the earliest: a
        store that answers goes on being waited for), or when `stop()` turns true (a Ctrl-C),
        stop waiting, give up and return False: a job in flight is left to end on its own, none
        after it runs."""
        started = time.monotonic()
        with self._jobs.all_tasks_done:
            while self._jobs.unfinished_tasks:
                left = None if timeout_s is None else max(started, self._progress) + timeout_s - time.monotonic()
                if (left is not None and left <= 0) or (stop is not None and stop()):
                    self._given_up.set()
                    return False
                self._jobs.all_tasks_done.wait(0.2 if left is None else min(0.2, left))
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]
        return True

    def give_up(self) -> None:
        self._given_up.set()

    def idle_s(self) -> float:
        """Seconds since the store last took something."""
        return time.monotonic() - self._progress

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet run (the one running included)."""
        return self._jobs.unfinished_tasks


@dataclasses.dataclass
class _Progress:
    """One trial: what Tune reported of it, and what the store has taken."""

    epochs_reported: int = 0
    ended: str | None = None  # "completed" (trained to its end) or "failed", as Tune reported it
    run: bool = False
    epochs_logged: int = 0
    ended_logged: bool = False
    ending: bool = False  # its end is queued: the writer has not got to it yet


@dataclasses.dataclass(frozen=True)
class Unrecorded:
    """What the store did not take by the sweep's end: trials with no run, epochs trained and
    not logged, trials ended whose model (and end) is not logged, and the writes left queued."""

    runs: int
    epochs: int
    models: int
    writes: int
    outage: Outage | None

    def counts(self) -> str:
        parts = [f"{n} {what}{'' if n == 1 else 's'}" for n, what in
                 ((self.runs, "run"), (self.epochs, "epoch"), (self.models, "model")) if n]
        listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else "".join(parts)
        return listed or f"{self.writes} write{'' if self.writes == 1 else 's'}"


class Recorder:
    """Tune's events -> the sweep's TrialRecords, every MLflow call on one background writer, in
    the order the events came. The caller only queues: no event waits on the store."""

    def __init__(self, sweep: Callable[[], SweepRecord]):
        self._sweep_factory, self._sweep = sweep, None
        self._records: dict[str, TrialRecord] = {}
        self._progress: dict[str, _Progress] = {}
        self.missing: list[str] = []  # what the end's fill-in could not record (finish_orphans)
        self._writer = BackgroundWriter()

    @property
    def sweep(self) -> SweepRecord:  # made on the writer thread: even the first connection is off the loop
        if self._sweep is None:
            self._sweep = self._sweep_factory()
            self._sweep.alive = self._writer.alive
        return self._sweep

    def _on(self, trial_id: str, action: Callable[[TrialRecord], None]) -> None:
        def job():
            record = self._records.get(trial_id)
            if record is None or record.trained:
                return NOTHING_WRITTEN
            action(record)
            self._progress.setdefault(trial_id, _Progress()).epochs_logged = record.last_epoch
        self._writer.submit(job)

    def started(self, trial: Trial, tune_trial_ids: Collection[str] | None = None) -> None:
        progress = self._progress.setdefault(trial.trial_id, _Progress())

        def job():
            if trial.trial_id in self._records:
                return NOTHING_WRITTEN
            record = self._records[trial.trial_id] = self.sweep.open_trial(trial, tune_trial_ids)
            progress.run, progress.epochs_logged, progress.ended_logged = True, record.last_epoch, record.trained
        self._writer.submit(job)

    def result(self, trial_id: str, metrics: dict[str, Any]) -> None:
        metrics = dict(metrics)
        progress = self._progress.setdefault(trial_id, _Progress())
        progress.epochs_reported = max(progress.epochs_reported, int(metrics["epoch"]))
        self._on(trial_id, lambda r: r.epoch(metrics, metrics.get("checkpoint_path")))
        if metrics.get("checkpoint_path"):  # a TorchTrainer trial: Ray Train already stored it
            self.checkpoint(trial_id, int(metrics["epoch"]), metrics["checkpoint_path"])

    def checkpoint(self, trial_id: str, epoch: int, path: str) -> None:
        self._on(trial_id, lambda r: r.checkpoint(epoch, path))

    def infeasible(self, trial_id: str, result: dict[str, Any]) -> None:
        """The trial's price broke search.constraints: its costs and why (TrialRecord.infeasible)."""
        result = dict(result)
        self._on(trial_id, lambda r: r.infeasible(result))

    def ended(self, trial_id: str, failed: bool = False, error: str | None = None) -> None:
        progress = self._progress.setdefault(trial_id, _Progress())
        progress.ended = Status.FAILED if failed else Status.COMPLETED

        def finish(record: TrialRecord) -> None:
            record.finish(failed, error)
            progress.ended_logged = True
        progress.ending = True
        self._on(trial_id, finish)
        self._forget(trial_id)

    def left_running(self, trial_id: str) -> None:
        """A trial Tune ended because the sweep is being interrupted: not finished here."""
        self._forget(trial_id)

    def _forget(self, trial_id: str) -> None:
        """The trial's record dropped, in the writer's order (after its last write)."""
        def job():
            self._records.pop(trial_id, None)
            if trial_id in self._progress:
                self._progress[trial_id].ending = False
            return NOTHING_WRITTEN
        self._writer.submit(job)

    def finish_orphans(self, ended: dict[str, bool], tune_trial_ids: Collection[str] | None = None,
                       kept: Callable[[str], Kept | None] | None = None) -> None:
        self._writer.submit(lambda: self.missing.extend(self.sweep.finish_orphans(ended, tune_trial_ids, kept)))

    def outage(self) -> Outage | None:
        return self._writer.outage()

    def behind(self, trials: int, wait_s: float) -> bool:
        """More than `trials` ended trials whose end (model, plots, status) is still queued while
        the store is taking writes: no outage, something taken within `wait_s`. (A store that is
        away or stuck is the outage's and tracking.wait_s's business, not a reason to hold.)"""
        if self._writer.outage() is not None or self._writer.idle_s() >= wait_s:
            return False
        return sum(p.ending for p in list(self._progress.values())) > trials

    def unrecorded(self) -> Unrecorded:
        progress = list(self._progress.values())
        return Unrecorded(runs=sum(not p.run for p in progress),
                          epochs=sum(max(0, p.epochs_reported - p.epochs_logged) for p in progress),
                          models=sum(p.ended == Status.COMPLETED and not p.ended_logged for p in progress),
                          writes=self._writer.pending, outage=self._writer.outage())

    def flush(self, timeout_s: float | None = None, stop: Callable[[], bool] | None = None) -> Unrecorded | None:
        """Everything queued written (None), or, past `timeout_s` or once `stop()` (or on a second
        Ctrl-C), what the store did not take: the writer gives up, the sweep says so and exits."""
        try:
            if self._writer.flush(timeout_s, stop):
                return None
        except KeyboardInterrupt:
            self._writer.give_up()
        return self.unrecorded()
