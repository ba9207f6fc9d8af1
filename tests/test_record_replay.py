"""The run record replayed: the event sequences Ray Tune produces for a trial (start, results,
checkpoints, complete / error; a retry, a resume after a dead driver, an interrupt, an orphan)
driven straight into tracking.SweepRecord / TrialRecord / Recorder against a real sqlite MLflow
store, without Ray. The checkpoints are real: the engine trains a tiny model once per module.
What a whole sweep does with these pieces is proven by the end-to-end sweeps (test_sweep.py)."""

from __future__ import annotations

import json
import os
import shutil
import threading

import pytest
import torch

from orchestrator import cli, config, engine, evaluate, runs, tracking
from orchestrator.data import load_splits
from orchestrator.runs import Status, Tag
from orchestrator.schema import DataSpec, TrainConfig

SWEEP = """\
name: replay
dataset: {name: synthetic, synthetic_size: 64, num_classes: 4}
train: {epochs: 3, batch_size: 16, lr: 0.05, warmup_epochs: 0.5}
search: {scheduler: fifo, metric: METRIC, mode: MODE}
models:
  - {arch: vgg11, knobs: {width: 0.125}}
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Three real epochs of vgg11 (width 0.125) on synthetic data: [(metrics, checkpoint dir)]."""
    folder = tmp_path_factory.mktemp("storage")
    torch.set_num_threads(1)
    splits = load_splits(DataSpec(name="synthetic", synthetic_size=64, num_classes=4))
    run = engine.Engine(TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=0.5, data_path="device"),
                        engine.ModelSpec("vgg11", {"width": 0.125}), splits, device="cpu")
    reporter = engine.CollectingReporter()

    class Keep:
        def report(self, metrics, checkpoint_dir):
            reporter.report(metrics, shutil.copytree(checkpoint_dir, folder / f"epoch{metrics['epoch']}"))

    run.fit(Keep())
    return folder, list(zip(reporter.history, reporter.checkpoints))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    return f"sqlite:///{folder}/mlflow.db", folder


class Replay:
    """A sweep (its file, spec and parent run) in the module's store, one per test."""

    def __init__(self, store, storage, name: str, metric: str = "val_acc", mode: str = "max"):
        uri, folder = store
        self.file = folder / f"{name}.yaml"
        self.file.write_text(SWEEP.replace("replay", name).replace("METRIC", metric).replace("MODE", mode))
        self.spec = config.load(str(self.file), {"tracking_uri": uri, "storage_path": str(storage)})
        self.sweep = tracking.SweepRecord.start(uri, self.spec.name, str(self.file), str(storage), {
            "search": {"metric": metric, "mode": mode}})
        self.client = self.sweep.client

    def trial(self, trial_id: str, lr: float = 0.05):
        return self.spec.trial({"arch": "vgg11", "knobs": {"width": 0.125}, "lr": lr}, trial_id)

    def again(self) -> tracking.SweepRecord:
        """The same sweep as a resumed driver sees it: a new record of the same parent run."""
        return tracking.SweepRecord(self.sweep.uri, self.spec.name, self.sweep.parent_run_id, str(self.file),
                                    self.sweep.storage_path)

    def run(self, record):
        return self.client.get_run(record.run_id)

    def steps(self, record, metric="val_acc"):
        return sorted(m.step for m in self.client.get_metric_history(record.run_id, metric))


def single_worker_epochs(record, checkpoints, epochs):
    """Tune's events for a trial training in its own process: a result, then its checkpoint."""
    for metrics, path in checkpoints[1][epochs[0] - 1:epochs[-1]]:
        record.epoch(metrics)
        record.checkpoint(metrics["epoch"], str(path))


def test_a_trial_that_runs_to_the_end_logs_each_epoch_once_and_its_best_epochs_model(store, checkpoints):
    replay = Replay(store, checkpoints[0], "plain")
    record = replay.sweep.open_trial(replay.trial("t1"))
    single_worker_epochs(record, checkpoints, [1, 2, 3])
    record.finish()

    run = replay.run(record)
    assert run.data.tags[Tag.STATUS] == Status.COMPLETED and run.info.status == "FINISHED"
    assert replay.steps(record) == [1, 2, 3] and replay.steps(record, "train_loss") == [1, 2, 3]
    accs = [m["val_acc"] for m, _ in checkpoints[1]]
    best = max(range(3), key=lambda i: (accs[i], -i)) + 1  # the first epoch with the best val_acc
    assert run.data.tags[Tag.BEST_EPOCH] == str(best)
    assert run.data.metrics[runs.model_metric("val_acc")] == pytest.approx(accs[best - 1])
    assert run.data.params["param_count"] == str(checkpoints[1][0][0]["param_count"])
    assert runs.decode(run) == replay.trial("t1")  # the exact Trial, from the run alone
    files = {a.path for a in replay.client.list_artifacts(record.run_id)}
    assert {"curves.png", "confusion_matrix.png", "best_checkpoint", "trial.json", "model_meta.json"} <= files
    model, meta = evaluate.load_logged_model(replay.client, replay.run(record))  # pt2: no pickle
    assert meta["epoch"] == best and model(torch.zeros(3, 3, 32, 32)).shape == (3, 4)
    assert replay.client.get_logged_model(run.data.tags[Tag.LOGGED_MODEL_ID]).status.to_int() == 2  # READY


def test_a_retried_trial_that_re_reports_epochs_logs_each_epoch_once_first_report_standing(store, checkpoints):
    replay = Replay(store, checkpoints[0], "retried")
    record = replay.sweep.open_trial(replay.trial("t1"))
    single_worker_epochs(record, checkpoints, [1, 2])
    # The trial process died; Tune retried it from epoch 1's checkpoint: epoch 2 again, then 3.
    again = dict(checkpoints[1][1][0], val_acc=0.0123)
    record.epoch(again)
    record.checkpoint(2, str(checkpoints[1][1][1]))
    single_worker_epochs(record, checkpoints, [3])
    record.finish()

    assert replay.steps(record) == [1, 2, 3]
    (logged,) = [m.value for m in replay.client.get_metric_history(record.run_id, "val_acc") if m.step == 2]
    assert logged == pytest.approx(checkpoints[1][1][0]["val_acc"])


def test_a_ddp_trial_resumed_after_its_driver_died_gets_the_missed_epochs_from_its_checkpoint(store, checkpoints):
    replay = Replay(store, checkpoints[0], "gap")
    first = replay.sweep.open_trial(replay.trial("t1"))
    metrics, path = checkpoints[1][0]
    first.epoch(dict(metrics, checkpoint_path=str(path)))
    first.checkpoint(1, str(path))
    # The driver died; its workers went on and checkpointed epoch 2. The resumed sweep reopens
    # the run and its first report is epoch 3, whose checkpoint carries epochs 1-3.
    record = replay.again().open_trial(replay.trial("t1"))
    assert record.run_id == first.run_id and record.last_epoch == 1 and record.best.epoch == 1
    metrics, path = checkpoints[1][2]
    record.epoch(dict(metrics, checkpoint_path=str(path)), str(path))
    record.checkpoint(3, str(path))
    record.finish()

    assert replay.steps(record) == [1, 2, 3]
    assert replay.run(record).data.tags[Tag.STATUS] == Status.COMPLETED


def test_an_orphan_whose_finishing_was_lost_is_finished_from_the_store_and_storage(store, checkpoints):
    replay = Replay(store, checkpoints[0], "orphan")
    record = replay.sweep.open_trial(replay.trial("t1"))
    single_worker_epochs(record, checkpoints, [1, 2, 3])
    # The sweep died with this trial's finishing queued: Tune holds it as ended, MLflow as running.
    assert replay.run(record).data.tags[Tag.STATUS] == Status.RUNNING
    replay.again().finish_orphans({"t1": False, "unknown": False})

    run = replay.run(record)
    assert run.data.tags[Tag.STATUS] == Status.COMPLETED and run.info.status == "FINISHED"
    assert replay.steps(record) == [1, 2, 3]
    assert evaluate.load_logged_model(replay.client, replay.run(record))[1]["epoch"] >= 1


def test_an_interrupt_mid_trial_marks_it_killed_and_a_resume_continues_the_same_run(store, checkpoints):
    replay = Replay(store, checkpoints[0], "interrupted")
    record = replay.sweep.open_trial(replay.trial("t1"))
    single_worker_epochs(record, checkpoints, [1])
    replay.sweep.interrupt()
    run = replay.run(record)
    assert run.data.tags[Tag.STATUS] == Status.INTERRUPTED and run.info.status == "KILLED"
    assert replay.client.get_run(replay.sweep.parent_run_id).info.status == "KILLED"

    resumed = replay.again()
    resumed.resume()
    record = resumed.open_trial(replay.trial("t1"))
    assert record.status == Status.RUNNING and replay.run(record).info.status == "RUNNING"
    single_worker_epochs(record, checkpoints, [1, 2, 3])  # Tune restarts from epoch 1's checkpoint
    record.finish()
    assert replay.steps(record) == [1, 2, 3]
    assert replay.run(record).data.tags[Tag.STATUS] == Status.COMPLETED
    # The interrupted attempt's model is gone; the run's model is the new one, and it loads.
    assert evaluate.load_logged_model(replay.client, replay.run(record))[1]["epoch"] >= 1


def test_a_failed_trial_ends_failed_with_its_error_and_no_model(store, checkpoints):
    replay = Replay(store, checkpoints[0], "failed")
    record = replay.sweep.open_trial(replay.trial("t1"))
    single_worker_epochs(record, checkpoints, [1])
    record.finish(failed=True, error="Diverged: train_loss is nan at epoch 2 (lr 10.0): stopping this trial")

    run = replay.run(record)
    assert run.data.tags[Tag.STATUS] == Status.FAILED and run.info.status == "FAILED"
    assert run.data.tags[Tag.ERROR].startswith("Diverged")
    assert replay.client.get_logged_model(record.model_id).status.to_int() == 3  # FAILED
    (result,) = runs.results(replay.client, replay.sweep.experiment_id, replay.sweep.parent_run_id)
    assert not result.has_model and result.epochs == 1


def test_an_early_stopped_trial_says_so_and_how_many_epochs_it_trained(store, checkpoints):
    replay = Replay(store, checkpoints[0], "stopped")
    record = replay.sweep.open_trial(replay.trial("t1"))
    single_worker_epochs(record, checkpoints, [1, 2])
    record.finish()
    (result,) = runs.results(replay.client, replay.sweep.experiment_id, replay.sweep.parent_run_id)
    assert result.status == Status.EARLY_STOPPED and (result.epochs, result.epochs_planned) == (2, 3)


@pytest.mark.parametrize("metric, mode", [("val_top5", "max"), ("val_loss", "min")])
def test_compare_the_summary_and_the_registered_model_rank_by_the_sweeps_own_metric(
        store, checkpoints, metric, mode, capsys):
    """Three trials whose order by val_acc is the opposite of their order by `metric`."""
    replay = Replay(store, checkpoints[0], f"rank-{metric}", metric, mode)
    scores = {"t1": 0.1, "t2": 0.2, "t3": 0.3}  # val_top5 (max): t3 best; val_loss (min): t1 best
    for trial_id, score in scores.items():
        record = replay.sweep.open_trial(replay.trial(trial_id, lr=score))
        for metrics, path in checkpoints[1]:
            record.epoch(dict(metrics, **{metric: score, "val_acc": 1 - score}))
            record.checkpoint(metrics["epoch"], str(path))
        record.finish()
    expected = ["t3", "t2", "t1"] if mode == "max" else ["t1", "t2", "t3"]
    name = {t: replay.trial(t, lr=s).name for t, s in scores.items()}

    results, version = replay.sweep.finish(register_as=f"rank-{metric}")
    assert [r.name for r in results] == [name[t] for t in expected]
    assert version.run_id == results[0].run_id  # the registered "best" is the metric's best
    assert results[0].score == pytest.approx(scores[expected[0]])

    assert cli.main(["compare", f"rank-{metric}", "--tracking-uri", store[0], "--format", "json"]) == 0

    shown = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in shown] == [name[t] for t in expected]
    assert shown[0]["metric"] == metric and metric in shown[0]

    from orchestrator import sweep

    sweep.print_summary(results, replay.spec, True, out=__import__("sys").stdout)
    summary = capsys.readouterr().out
    positions = [summary.index(name[t]) for t in expected]
    assert positions == sorted(positions)


def test_the_recorder_queues_tunes_events_and_writes_them_in_order_off_the_callers_thread(store, checkpoints):
    replay = Replay(store, checkpoints[0], "recorder")
    recorder = tracking.Recorder(lambda: replay.again())
    writer_busy = threading.Event()
    recorder._writer.submit(writer_busy.wait)  # the store is "slow": nothing can be written yet
    trial = replay.trial("t1")
    recorder.started(trial)
    for metrics, path in checkpoints[1]:
        recorder.result("t1", metrics)
        recorder.checkpoint("t1", metrics["epoch"], str(path))
    recorder.ended("t1")
    # Every event above returned while the writer was blocked: the caller never waited on MLflow.
    assert runs.trial_runs(replay.client, replay.sweep.experiment_id, replay.sweep.parent_run_id) == []
    writer_busy.set()
    recorder.flush()

    (run,) = runs.trial_runs(replay.client, replay.sweep.experiment_id, replay.sweep.parent_run_id)
    assert run.data.tags[Tag.STATUS] == Status.COMPLETED
    assert sorted(m.step for m in replay.client.get_metric_history(run.info.run_id, "val_acc")) == [1, 2, 3]


def test_every_layout_name_is_written_once_in_the_run_record_component():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    sources = [p for d in ("orchestrator", "tests", "benchmarks") for p in (root / d).rglob("*.py")]
    for name in (f'"{Tag.BEST_EPOCH}"', f'"{Tag.LOGGED_MODEL_ID}"', Tag.ROLE):
        where = [str(p.relative_to(root)) for p in sources if re.search(re.escape(name), p.read_text())]
        assert where == [os.path.join("orchestrator", "runs.py")], (name, where)


def test_a_trial_record_round_trips_through_its_json_with_every_field(store, checkpoints):
    replay = Replay(store, checkpoints[0], "roundtrip")
    trial = replay.spec.trial({"arch": "vgg11", "knobs": {"width": 0.125}, "lr": 0.02}, "t9", entry=3, repeat=2,
                              phase="seeds")
    assert runs.trial_from_dict(json.loads(json.dumps(runs.trial_to_dict(trial)))) == trial
    assert trial.train.seed == 2 and trial.name.endswith("-seed2")
