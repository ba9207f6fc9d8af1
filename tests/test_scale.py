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
from mlflow.entities import Metric, Param, RunTag

from orchestrator import config, runs
from orchestrator.runs import ROLE_SWEEP, Status, Tag
from support import run_cli

pytestmark = pytest.mark.slow

RUNS = int(__import__("os").environ.get("SCALE_RUNS", 6000))
ARCHS = ("resnet18", "vgg11", "mobilenet_v2")
SWEEP = """\
name: scale
dataset: {name: digits}
train: {epochs: 2}
search: {scheduler: fifo}
models:
  - {arch: resnet18, knobs: {width: 0.125}}
  - {arch: vgg11, knobs: {width: 0.125}}
  - {arch: mobilenet_v2, knobs: {width: 0.25}}
"""


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
    """One sweep of RUNS completed trial runs, spread over three model entries; each entry's best
    run is known. Made through MlflowClient (create_run, log_batch: two requests a run), in a store
    that skips the disk syncs (the commands under test open it afresh in their own processes)."""
    with unsynced_sqlite():
        return _fill_store(tmp_path_factory)


def _fill_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    uri = f"sqlite:///{folder}/mlflow.db"
    (folder / "scale.yaml").write_text(SWEEP)
    spec = config.load(str(folder / "scale.yaml"), {"tracking_uri": uri, "storage_path": str(folder / "storage")})
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("scale")
    parent = client.create_run(experiment_id, run_name="sweep", tags={Tag.ROLE: ROLE_SWEEP}).info.run_id
    client.log_batch(parent, params=[Param("search.metric", "val_acc"), Param("search.mode", "max")])
    started = time.time()
    best = {}
    for i in range(RUNS):
        entry = i % len(ARCHS)
        model = spec.models[entry]
        trial = spec.trial({"arch": model.arch, "knobs": model.knobs, "lr": 0.01 + i * 1e-6}, f"t{i:05d}",
                           entry=entry)
        params, tags = runs.encode(trial, dict(trial.knobs), model.arch)
        score = (i * 7919 % RUNS) / RUNS  # a permutation of 0..1: every run's score distinct
        run_id = client.create_run(experiment_id, run_name=trial.name, tags={
            **tags, Tag.PARENT: parent, Tag.STATUS: Status.COMPLETED, Tag.BEST_EPOCH: "2",
            Tag.EPOCHS_COMPLETED: "2", Tag.LOGGED_MODEL_ID: f"m-{i}"}).info.run_id
        client.log_batch(run_id, metrics=[Metric(runs.model_metric("val_acc"), score, 0, 2)],
                         params=[Param("arch", trial.arch)])
        if score > best.get(trial.arch, (-1.0, ""))[0]:
            best[trial.arch] = (score, run_id)
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
