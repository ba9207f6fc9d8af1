"""The tracking writer's outage ends when the store takes a write (or answers with an MLflow error
of its own), never because a job that did nothing with the store ran: before, every such job (a
trial's record dropped, a write for a trial with no run) ended it, and the live view's "the
tracking store answers again" came and went. Plain jobs on a real BackgroundWriter thread; the
store's refusal is the error a gone server gives (a refused connection)."""

from __future__ import annotations

import threading

import pytest
from mlflow.exceptions import MlflowException

from orchestrator.tracking.writer import NOTHING_WRITTEN, BackgroundWriter, Recorder

REFUSED = ConnectionRefusedError(111, "Connection refused")


def job_raising(*errors):
    """A job that raises `errors` one per try, then writes (returns None)."""
    left = list(errors)

    def job():
        if left:
            raise left.pop(0)
    return job


def test_only_a_write_or_the_stores_own_answer_ends_an_outage():
    writer = BackgroundWriter()
    writer.RETRY_WAITS_S = (0.01,)
    seen = []

    def look():  # what the live view would read, between two jobs
        seen.append(writer.outage())
        return NOTHING_WRITTEN

    # Refused, then an error that is neither transient nor the store's (an artefact file gone):
    # the job is given up (its error kept), the store has not answered: the outage goes on.
    writer.submit(job_raising(REFUSED, FileNotFoundError("best_checkpoint")))
    writer.submit(look)
    writer.submit(lambda: NOTHING_WRITTEN)  # a trial's record dropped: says nothing of the store
    writer.submit(look)
    writer.submit(job_raising())  # a write the store takes
    writer.submit(look)
    writer.submit(job_raising(REFUSED, MlflowException("no such run", error_code="RESOURCE_DOES_NOT_EXIST")))
    writer.submit(look)  # the store answered (with an error): it is reachable
    with pytest.raises(FileNotFoundError):
        writer.flush(timeout_s=30)
    first, after_noop, after_write, after_answer = seen
    assert first is not None and "Connection refused" in first.why
    assert after_noop is not None and (after_noop.since, after_noop.why) == (first.since, first.why)  # the same outage
    assert after_write is None
    assert after_answer is None


def test_new_trials_are_held_while_more_ended_trials_wait_for_their_record_than_allowed():
    """Recorder.behind (what search.EntrySearch.HOLD asks through ray_train.record_behind): ended
    trials whose end the writer has not got to, counted while the store takes writes; a store
    that took nothing within wait_s is no reason to hold (the outage's wait decides then)."""
    recorder = Recorder(lambda: None)  # no trial here has a run: each end is bookkeeping only
    gate = threading.Event()
    recorder._writer.submit(lambda: gate.wait(30))  # a long write ahead of them (a model's upload)
    for i in range(5):
        recorder.ended(f"t{i}")
    assert recorder.behind(4, wait_s=60) and not recorder.behind(5, wait_s=60)
    assert not recorder.behind(4, wait_s=0.0)
    gate.set()
    assert recorder.flush(timeout_s=30) is None
    assert not recorder.behind(0, wait_s=60)
