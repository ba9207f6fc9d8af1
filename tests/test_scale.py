"""The record at scale: an experiment holding more trial runs than one MLflow search page
(runs.PAGE_SIZE) and more than the old single-request cap of 5,000. `compare`, `compare --by arch`
and `report` must see every one of them. The runs are made through MLflowClient against a real
sqlite store, as a sweep's recorder would leave them (no training)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time

import pytest
import sqlalchemy
from mlflow import MlflowClient

from orchestrator import runs
from support import run_cli

pytestmark = pytest.mark.slow

RUNS = int(__import__("os").environ.get("SCALE_RUNS", 6000))
ARCHS = ("resnet18", "vgg11", "mobilenet_v2")  # benchmarks.record_at_scale.SWEEP's model entries


@contextlib.contextmanager
def unsynced_sqlite():
    """SQLite connections opened meanwhile in this process neither sync to disk nor keep a journal
    file (PRAGMA synchronous=OFF, journal_mode=MEMORY): a throw-away store is written ~2x faster.
    What is written, and how MLflow writes it, is the same."""
    def unsynced(connection, _record):
        if isinstance(connection, sqlite3.Connection):
            connection.execute("PRAGMA synchronous=OFF")
            connection.execute("PRAGMA journal_mode=MEMORY")

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", unsynced)
    try:
        yield
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", unsynced)


@pytest.fixture(scope="module")
def big_store(tmp_path_factory):
    """One sweep of RUNS completed trial runs (record_at_scale.populate: as a sweep's recorder
    leaves them, no epoch histories), spread over three model entries; each entry's best run is known.
    Made through MlflowClient in a store that skips the disk syncs (the commands under test open it
    afresh in their own processes)."""
    with unsynced_sqlite():
        return _fill_store(tmp_path_factory)


def _fill_store(tmp_path_factory):
    from benchmarks.record_at_scale import populate

    folder = tmp_path_factory.mktemp("scale")
    uri = f"sqlite:///{folder}/mlflow.db"
    started = time.time()
    best = populate(uri, "scale", RUNS, str(folder), histories=False)
    print(f"{RUNS} runs made in {time.time() - started:.1f} s")
    return folder, uri, best


def test_compare_lists_every_trial_run_of_a_6000_run_experiment(big_store):
    folder, uri, best = big_store
    result = run_cli(["compare", "scale", "--tracking-uri", uri, "--format", "json"], cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert len(rows) == RUNS
    assert len({r["run_id"] for r in rows}) == RUNS
    top = max(best.values())
    assert rows[0]["run_id"] == top[1]  # ranked over all of them, not over a first page


def test_compare_by_arch_counts_every_trial_run(big_store):
    folder, uri, best = big_store
    result = run_cli(["compare", "scale", "--tracking-uri", uri, "--by", "arch", "--format", "json"], cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)
    assert sum(r["trials"] for r in rows) == RUNS
    assert {r["arch"]: r["mean"] for r in rows} == pytest.approx({a: s for a, (s, _) in best.items()})


def test_report_sees_every_trial_run(big_store):
    folder, uri, best = big_store
    out = folder / "report.html"
    result = run_cli(["report", "scale", "--tracking-uri", uri, "--out", str(out)], cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    page = out.read_text()
    counts = [int(n) for n in re.findall(r"<td>(\d+)</td><td class=\"t wrap\">", page)]
    assert sum(counts) == RUNS, counts  # each entry's trials column


def test_a_request_per_page_and_a_history_per_drawn_curve(big_store, monkeypatch):
    """At scale the queries stay flat: the trial runs are read a page (runs.PAGE_SIZE) per request,
    the latest sweep with one request, and metric histories only for the report's curves (one per
    model entry), none per run. The store is real; the client's calls are only counted."""
    import collections
    import math

    from orchestrator import report

    folder, uri, best = big_store
    client = MlflowClient(tracking_uri=uri)
    calls = collections.Counter()
    for name in ("search_runs", "get_metric_history", "get_run"):
        method = getattr(client, name)
        monkeypatch.setattr(client, name, lambda *a, _m=method, _n=name, **k: calls.update([_n]) or _m(*a, **k))
    experiment_id = client.get_experiment_by_name("scale").experiment_id
    parent = runs.latest_sweep(client, experiment_id).info.run_id
    assert calls == {"search_runs": 1}
    pages = math.ceil(RUNS / runs.PAGE_SIZE)
    calls.clear()
    results, mode = runs.ranking(client, experiment_id, parent)
    assert len(results) == RUNS and mode == "max"
    assert calls == {"search_runs": pages, "get_run": 1}  # the pages, and the parent's search.* params
    calls.clear()
    data = report.collect(client, experiment_id, parent)
    assert sum(e.standing.trials for e in data.entries) == RUNS
    assert calls["search_runs"] == pages and calls["get_metric_history"] == len(data.entries) == len(ARCHS)
    assert calls["get_run"] <= 2
