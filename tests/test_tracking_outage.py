"""A tracking store that goes away (issue 21, item 4): a tracking server SIGKILLed and not back, a
store that answers 5xx (the database behind a server down), a sqlite store whose disk fills up.
Training never waits on the store; the sweep's end waits `tracking.wait_s` for the writes it has
not taken, then exits 1 with one line (what is not recorded, where the checkpoints are, the
--resume command); that resume, with the store back, fills in the missing runs, epochs and models
from what Ray Tune kept in the storage, so the record equals what trained.

The rules first, without Ray, against real stores (a real `mlflow server` of the test's own,
killed and restarted; a real sqlite store on a full tmpfs) and real engine checkpoints laid out as
Tune lays out a trial; then the whole case end to end: real Ray, the CLI in a subprocess."""

from __future__ import annotations

import glob
import http.server
import json
import os
import re
import shlex
import subprocess
import threading
import time

import pytest

import test_faults
from benchmarks import tracking_outage
from stores import MlflowServer
from support import ORCHESTRATE, REPO, logged_epochs, processes_mentioning, refused, run_cli, wait_for
from orchestrator import runs, storage, tracking
from orchestrator.runs import Status, Tag
from test_faults import trial_folder  # noqa: F401 - the fixture



@pytest.fixture(scope="module")
def tune_trial(trial_folder):
    """test_faults' trial as Ray Tune keeps it: (storage path, experiment folder, trial folder, [results])."""
    folder, _ = trial_folder
    results, _ = storage.trial_results(str(folder.parent.parent), folder.parent.name, folder.name)
    return str(folder.parent.parent), folder.parent.name, folder.name, results


@pytest.fixture
def quick_requests(monkeypatch):
    """The sweep driver's bound on MLflow's retries of one request (tracking.REQUEST_RETRIES)."""
    for key, value in tracking.REQUEST_RETRIES.items():
        monkeypatch.setenv(key, value)


class Replay(test_faults.Replay):
    """test_faults' sweep with its storage where the trial is kept, and trials at other lrs."""

    def __init__(self, uri: str, folder, tune_trial, name: str):
        super().__init__(uri, folder, name)
        self.sweep.storage_path = tune_trial[0]

    def trial_at(self, trial_id: str, lr: float = 0.05):
        return self.spec.trial({"arch": "vgg11", "knobs": {"width": 0.125}, "lr": lr}, trial_id)

    def kept(self, tune_trial, trial_id: str, lr: float) -> tracking.Kept:
        """What Tune kept of the trial, read back from the storage as the sweep's end reads it."""
        results, checkpoints = storage.trial_results(*tune_trial[:3])
        return tracking.Kept(self.trial_at(trial_id, lr), False, None, results,
                             {e: p for e, (p, there) in checkpoints.items() if there},
                             {e: p for e, (p, there) in checkpoints.items() if not there})


def feed(recorder, tune_trial, trial_id, epochs):
    storage_path, experiment, trial_dir, results = tune_trial
    for m in results[epochs[0] - 1:epochs[-1]]:
        recorder.result(trial_id, m)
        recorder.checkpoint(trial_id, m["epoch"], os.path.join(storage_path, experiment, trial_dir,
                                                               m["checkpoint_dir_name"]))


def assert_recorded_as_trained(client, replay, tune_trial, trial_ids):
    """Every trial's run present, completed, each epoch once with the value Tune has, its model
    from its best checkpoint."""
    results = tune_trial[3]
    by_id = {r.data.tags[Tag.TRIAL_ID]: r for r in runs.trial_runs(client, replay.sweep.experiment_id,
                                                                    replay.sweep.parent_run_id)}
    assert sorted(by_id) == sorted(trial_ids)
    best = max(results, key=lambda m: (m["val_acc"], -m["epoch"]))
    for run in by_id.values():
        assert run.data.tags[Tag.STATUS] == Status.COMPLETED and run.info.status == "FINISHED"
        for key in ("val_acc", "train_loss", "lr"):
            history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert history == [(m["epoch"], pytest.approx(m[key])) for m in results], key
        assert run.data.tags[Tag.BEST_EPOCH] == str(best["epoch"]) and run.data.tags.get(Tag.MODEL_FORMAT)
        assert run.data.params["param_count"] == str(results[0]["param_count"])


# ---------------------------------------------------------------------------------------------
# The rules, without Ray


@pytest.mark.slow
def test_the_end_waits_a_bounded_time_for_a_server_gone_then_the_resume_fills_in_from_tunes_storage(
        tmp_path, tune_trial, quick_requests):
    server = MlflowServer(tmp_path / "server")
    try:
        replay = Replay(server.url, tmp_path, tune_trial, "gone")
        recorder = tracking.Recorder(replay.again)
        recorder.started(replay.trial_at("t1"))
        feed(recorder, tune_trial, "t1", [1])
        assert recorder.flush() is None  # the store took epoch 1
        server.kill()
        # Training goes on: every event returns at once, queued.
        start = time.time()
        feed(recorder, tune_trial, "t1", [2, 3])
        recorder.ended("t1")
        recorder.started(replay.trial_at("t2", lr=0.1))
        feed(recorder, tune_trial, "t2", [1, 2, 3])
        recorder.ended("t2")
        assert time.time() - start < 1
        wait_for(recorder.outage, 30, what="the writer to notice the server is gone")
        assert "unreachable for" in recorder.outage().line(server.url)

        start = time.time()
        unrecorded = recorder.flush(timeout_s=3)
        waited = time.time() - start
        assert 3 <= waited < 4, waited  # by the clock: MLflow's own retries do not add to it
        assert (unrecorded.runs, unrecorded.epochs, unrecorded.models) == (1, 5, 2), unrecorded
        assert unrecorded.counts() == "1 run, 5 epochs and 2 models"
        assert "Connection refused" in unrecorded.outage.why

        # The server back on the same store: what Tune kept fills in the record, none twice.
        server.start()
        again = replay.again()
        missing = again.finish_orphans({"t1": False, "t2": False}, {"t1", "t2"},
                                       {"t1": replay.kept(tune_trial, "t1", 0.05),
                                        "t2": replay.kept(tune_trial, "t2", 0.1)}.get)
        assert missing == []
        assert_recorded_as_trained(again.client, replay, tune_trial, ["t1", "t2"])
    finally:
        server.kill()


def test_a_ctrl_c_during_the_wait_ends_it_at_once():
    writer = tracking.BackgroundWriter()
    stuck = threading.Event()
    writer.submit(stuck.wait)  # a store that does not answer
    start = time.time()
    assert writer.flush(timeout_s=600, stop=lambda: time.time() - start > 0.5) is False
    assert time.time() - start < 1.5
    stuck.set()


def test_the_resume_names_a_trial_whose_best_checkpoint_is_gone_and_leaves_its_run(tmp_path, tune_trial):
    replay = Replay(f"sqlite:///{tmp_path}/mlflow.db", tmp_path, tune_trial, "ckpt-gone")
    kept = replay.kept(tune_trial, "t1", 0.05)
    best = max(tune_trial[3], key=lambda m: (m["val_acc"], -m["epoch"]))["epoch"]
    gone = tracking.Kept(kept.trial, False, None, kept.results,
                         {e: p for e, p in kept.checkpoints.items() if e != best}, {best: kept.checkpoints[best]})
    (line,) = replay.again().finish_orphans({"t1": False}, {"t1"}, {"t1": gone}.get)
    assert "best checkpoint (epoch" in line and kept.checkpoints[best] in line and kept.trial.name in line
    assert runs.trial_runs(replay.sweep.client, replay.sweep.experiment_id, replay.sweep.parent_run_id) == []


class Answers503(http.server.BaseHTTPRequestHandler):
    """What an `mlflow server` whose database is down answers every call."""

    def _answer(self):
        body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "database is down"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def test_a_server_whose_database_stays_down_is_an_outage_the_end_waits_for_a_bounded_time(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers503)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    from mlflow import MlflowClient

    uri = f"http://127.0.0.1:{server.server_address[1]}"
    recorder = tracking.Recorder(lambda: tracking.SweepRecord(uri, "db-down", "0" * 32, "", "storage"))
    recorder.finish_orphans({}, set())  # the first job: opening the sweep's record
    try:
        wait_for(recorder.outage, 30, what="the writer to see the 503s")
        assert recorder.outage().why == "too many 503 error responses"
        start = time.time()
        unrecorded = recorder.flush(timeout_s=2)
        assert 2 <= time.time() - start < 3 and unrecorded.writes == 1 and unrecorded.counts() == "1 write"
        with pytest.raises(Exception) as e:
            MlflowClient(uri).get_experiment_by_name("x")
        assert tracking.transient(e.value)
    finally:
        server.shutdown()


def test_a_sqlite_store_whose_disk_fills_up_is_an_outage_with_no_traceback(tmp_path, tune_trial, capfd):
    with test_faults.small_tmpfs(tmp_path / "store", "8m") as mount:
        tracking.quiet_mlflow()
        replay = Replay(f"sqlite:///{mount}/mlflow.db", tmp_path, tune_trial, "disk-full")
        recorder = tracking.Recorder(replay.again)
        recorder.started(replay.trial_at("t1"))
        feed(recorder, tune_trial, "t1", [1])
        assert recorder.flush() is None
        test_faults.fill(mount)
        feed(recorder, tune_trial, "t1", [2, 3])
        recorder.ended("t1")
        unrecorded = recorder.flush(timeout_s=5)
        assert unrecorded is not None and unrecorded.models == 1, unrecorded
        assert unrecorded.outage and unrecorded.outage.why in ("database or disk is full", "No space left on device",
                                                               "[Errno 28] No space left on device"), unrecorded
        assert "Traceback" not in capfd.readouterr().err
        os.remove(mount / "filler")
        again = replay.again()
        assert again.finish_orphans({"t1": False}, {"t1"}, {"t1": replay.kept(tune_trial, "t1", 0.05)}.get) == []
        assert_recorded_as_trained(again.client, replay, tune_trial, ["t1"])


def test_the_live_view_shows_the_outage_in_one_line_while_it_lasts():
    import io

    from rich.console import Console

    from orchestrator import live

    outage = tracking.Outage(since=time.time() - 42, waiting=17, why="[Errno 111] Connection refused")
    notice = outage.line("http://me:secret@127.0.0.1:5000")
    assert notice == ("tracking store http://me:***@127.0.0.1:5000 unreachable for 42 s ([Errno 111] Connection "
                      "refused); 17 write(s) waiting")
    shown = [notice]
    out = io.StringIO()
    view = live.LiveView(lambda t: ("net", 2), total=1, concurrency=1, stream=out, notice=lambda: shown[0])
    view.on_step_end(0, [])
    view.on_step_end(0, [])  # the same outage: said once (again every NOTICE_EVERY_S)
    shown[0] = None
    view.on_step_end(0, [])
    assert out.getvalue().splitlines()[0].endswith(notice) and len(out.getvalue().splitlines()) == 2
    assert out.getvalue().splitlines()[1].endswith("the tracking store answers again")
    console = Console(file=io.StringIO(), width=200, record=True)  # on a terminal: under the table
    console.print(live.screen(live.ViewState(total=1), time.time(), notice))
    assert notice in console.export_text()


@pytest.mark.parametrize("value, says", [("-1", "-1 is not in [0, 86400]"), (".inf", "inf is not a finite number"),
                                         ("100000", "100000 is not in [0, 86400]"), ("soon", "'soon' is not a float")])
def test_tracking_wait_s_is_a_finite_number_of_seconds_up_to_a_day(tmp_path, capsys, value, says):
    (tmp_path / "s.yaml").write_text(test_faults.SWEEP + f"tracking: {{wait_s: {value}}}\n")
    refused(["sweep", str(tmp_path / "s.yaml"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], tmp_path, capsys,
            says=("tracking.wait_s", says))


# ---------------------------------------------------------------------------------------------
# End to end: real Ray, the CLI in a subprocess, a tracking server of the test's own

def tune_results(storage_path):
    """{trial folder name: [results with an epoch]} of the sweep's one experiment, as Tune kept them."""
    (experiment,) = [os.path.basename(p) for p in glob.glob(f"{storage_path}/e2e-server-gone-*")]
    return {os.path.basename(t): storage.trial_results(storage_path, experiment, os.path.basename(t))[0]
            for t in glob.glob(f"{storage_path}/{experiment}/resnet18_*")}


@pytest.mark.ray
@pytest.mark.slow
def test_a_tracking_server_killed_mid_sweep_ends_it_in_bounded_time_and_resume_records_what_trained(
        tmp_path, ray_tmpdir):
    wait_s = 15
    # Epochs long enough that the trials still train when the driver's first write fails (MLflow's
    # bounded retries, ~7 s): on a quiet machine 10-step epochs ended before the live view could say so.
    sweep = tracking_outage.SWEEP.replace("steps_per_epoch: 10", "steps_per_epoch: 60")
    assert sweep != tracking_outage.SWEEP
    (tmp_path / "sweep.yaml").write_text(sweep + f"tracking: {{wait_s: {wait_s}}}\n")
    server = MlflowServer(tmp_path / "server")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmpdir}
    proc = subprocess.Popen(ORCHESTRATE + ["sweep", "sweep.yaml", "--tracking-uri", server.url], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: logged_epochs(server.db) >= 1, 600, proc, "the first logged epoch")
        server.kill()
        killed = time.time()
        out, err = proc.communicate(timeout=600)
        gone_s = time.time() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
        server.kill()
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    assert processes_mentioning(ray_tmpdir) == []
    (line,) = err.strip().splitlines()  # one line: what is not recorded, where, and how to record it
    storage_path = str(tmp_path / "ray_results")
    assert f"tracking store {server.url} unreachable for" in line and "not recorded" in line, line
    assert storage_path in line and "epoch" in line and "model" in line, line
    # The live view said so while the trials trained, then the end said how long it waits.
    assert re.search(rf"^\[ *\w+\] tracking store {re.escape(server.url)} unreachable for \d+ s .*write\(s\) waiting$",
                     out, re.M), out[-3000:]
    # (The end's own "waiting up to N s" line comes only when the outage is known as the trials end:
    # on a quiet machine the driver's first failed write can still be inside MLflow's retries then.)
    trained = tune_results(storage_path)
    assert len(trained) == 3 and all([m["epoch"] for m in r] == [1, 2, 3] for r in trained.values())
    # The trials trained to their end while the server was gone; then the sweep waited wait_s.
    print(f"server killed -> exit 1: {gone_s:.1f} s (tracking.wait_s {wait_s})")

    command = shlex.split(line.split("record them with: ", 1)[1])
    assert command[:4] == ["orchestrate", "sweep", "sweep.yaml", "--resume"], command
    server.start()  # same port, same store
    try:
        resumed = run_cli(command[1:], cwd=tmp_path, env={"RAY_TMPDIR": ray_tmpdir})
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert resumed.stderr.strip() == "", resumed.stderr[-3000:]
        assert_sweep_equals_what_trained(server.url, trained, resumed.stdout)
    finally:
        server.stop()


def assert_sweep_equals_what_trained(uri, trained, summary):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("e2e-server-gone").experiment_id
    (parent,) = runs.sweep_runs(client, experiment)
    assert parent.info.status == "FINISHED"
    by_folder = {f"resnet18_{r.data.tags[Tag.TRIAL_ID]}": r for r in runs.trial_runs(client, experiment)}
    assert sorted(by_folder) == sorted(trained)  # every run, none twice
    score = {}
    for folder, results in trained.items():
        run = by_folder[folder]
        assert run.data.tags[Tag.STATUS] == Status.COMPLETED and run.info.status == "FINISHED", folder
        for key in ("val_acc", "train_loss", "lr"):
            logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            assert logged == [(m["epoch"], pytest.approx(m[key], abs=1e-12)) for m in results], (folder, key)
        best = max(results, key=lambda m: (m["val_acc"], -m["epoch"]))  # every epoch is checkpointed
        assert run.data.tags[Tag.BEST_EPOCH] == str(best["epoch"]) and run.data.tags.get(Tag.MODEL_FORMAT)
        score[folder] = best["val_acc"]
    leader = by_folder[max(score, key=score.get)]
    results = runs.results(client, experiment, parent.info.run_id)
    assert results[0].run_id == leader.info.run_id
    assert runs.leaderboard(results, "max")[0].best_run_id == leader.info.run_id
    assert client.get_model_version_by_alias("e2e-server-gone", "best").run_id == leader.info.run_id
    assert leader.info.run_name in summary
