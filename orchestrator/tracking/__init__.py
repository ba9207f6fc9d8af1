"""A sweep's life in MLflow: the parent run (`SweepRecord`), one `TrialRecord` per trial that owns
its run's state (epochs logged, best checkpoint, model, status), and the `Recorder` that feeds
them from Tune's events on one background thread. No Ray here: the Tune callback in ray_train.py
only forwards events, so every rule about restarted, resumed, interrupted or orphaned trials is
tested by replaying events against a real store (tests/test_record_replay.py).

    writer        off Tune's loop: `Recorder` (Tune's events -> the records), `BackgroundWriter`
                  and its retries (`transient`, `Outage`, `Unrecorded`, `bound_requests`);
    records       the records: `SweepRecord`, `TrialRecord`, `Best`, `Kept` (what Tune kept of a
                  trial), `record_evaluation` (`orchestrate evaluate --log`);
    logged_model  the trial's model: `save_model` (pt2, else pickle), `log_model`, `log_code`;
    context       what a run records about where it ran (versions, git commit, the dataset input);
    store         the store itself (an experiment found or created, the sqlite creation lock).

Each imports only the ones below it. Names and shapes (tags, params, metrics, artefacts; Trial <->
run) are runs.py's. MLflow is reached through one explicit `MlflowClient(tracking_uri)`, never the
process-global tracking URI, and only the sweep driver writes: workers never talk to MLflow, so on
a cluster only the head needs to reach the tracking server.
"""

from orchestrator.tracking.logged_model import save_model
from orchestrator.tracking.records import LOST_TRIAL, Kept, SweepRecord, TrialRecord, record_evaluation
from orchestrator.tracking.store import quiet_mlflow
from orchestrator.tracking.writer import (REQUEST_RETRIES, BackgroundWriter, Outage, Recorder, Unrecorded,
                                          bound_requests, transient)

__all__ = ["LOST_TRIAL", "REQUEST_RETRIES", "BackgroundWriter", "Kept", "Outage", "Recorder", "SweepRecord",
           "TrialRecord", "Unrecorded", "bound_requests", "quiet_mlflow", "record_evaluation", "save_model",
           "transient"]
