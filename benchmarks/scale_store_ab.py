"""test_scale's store: N runs made as its fixture makes them (create_run with a trial's tags, then
log_batch with one metric and one param, through MlflowClient into a fresh sqlite store), with
SQLite's disk syncs on (as MLflow opens it) and off (PRAGMA synchronous=OFF, journal_mode=MEMORY,
as the fixture opens it), alternated twice: seconds each.

    python -m benchmarks.scale_store_ab [N]      # default 300
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
import time

import sqlalchemy
from mlflow import MlflowClient
from mlflow.entities import Metric, Param


def unsynced(connection, _record):
    if isinstance(connection, sqlite3.Connection):
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA journal_mode=MEMORY")


def make(n: int, synced: bool) -> float:
    folder = tempfile.mkdtemp(dir="/tmp")
    if not synced:
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", unsynced)
    try:
        client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
        experiment = client.create_experiment("x")
        start = time.time()
        for i in range(n):
            run = client.create_run(experiment, run_name=f"t{i}", tags={f"k{j}": "v" for j in range(12)}).info.run_id
            client.log_batch(run, metrics=[Metric("model_val_acc", 0.5, 0, 2)], params=[Param("arch", "a")])
        return time.time() - start
    finally:
        if not synced:
            sqlalchemy.event.remove(sqlalchemy.engine.Engine, "connect", unsynced)


if __name__ == "__main__":
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    for _ in range(2):
        for synced in (True, False):
            print(f"{runs} runs, disk syncs {'on ' if synced else 'off'}: {make(runs, synced):.1f} s", flush=True)
