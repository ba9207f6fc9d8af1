"""The MLflow store itself: where a sqlite store keeps its artefacts, the lock that keeps two sweeps
from creating one new database at once, the experiment found or created, MLflow's log lines
kept off the sweep's terminal."""

from __future__ import annotations

import contextlib
import os

from mlflow import MlflowClient


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
        # A database error's traceback, logged before MLflow raises it as TEMPORARILY_UNAVAILABLE:
        # the writer retries that, and a store that stays away is the sweep's one line at its end.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
