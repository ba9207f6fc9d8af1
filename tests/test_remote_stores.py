"""Remote stores for real (tests/stores.py): MLflow on PostgreSQL directly (`postgresql+psycopg2://`)
and through an `mlflow server` backed by PostgreSQL with its artefacts in S3 (moto's S3 API server),
Ray's storage in that S3 too; PostgreSQL restarted while a trial trains; and the readers (compare,
report, export, evaluate) and `--resume` run from a fresh, empty folder that has only the URIs.
Two sweep runs in all (one per store path; the server path's is interrupted and resumed), each
shared by the module's tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

import stores
from orchestrator import tracking
from orchestrator.runs import ROLE_SWEEP, Tag
from support import ORCHESTRATE, PAIR_SWEEP, REPO, end_processes_mentioning, metric_steps, run_cli, trials, wait_for

# Two single-worker trials side by side on 2 CPUs, 4 epochs on digits (long enough to restart the
# database and to interrupt the sweep while both train).
REMOTE_SWEEP = PAIR_SWEEP.replace("e2e-pair", "NAME").replace("epochs: 3", "epochs: 4")
EPOCHS = [1, 2, 3, 4]


def logged_epochs(pg, database: str) -> int:
    """val_acc rows in the database, read with psql (0 while MLflow has not made its tables yet or
    the server is down)."""
    try:
        return int(pg.sql("SELECT count(*) FROM metrics WHERE key = 'val_acc'", database) or 0)
    except subprocess.CalledProcessError:
        return 0


def restart_postgres_mid_trial(pg, database: str, proc, down_s: float = 5.0) -> float:
    """Once an epoch is in the database: stop PostgreSQL (open connections cut) while the trials
    train, start it again `down_s` later. Returns how many val_acc rows were there at the stop."""
    wait_for(lambda: logged_epochs(pg, database) >= 1, 600, proc, "a logged epoch")
    pg.stop()
    time.sleep(down_s)
    assert proc.poll() is None, "the sweep ended while its database was down"
    pg.start()
    return logged_epochs(pg, database)


def start(folder, args, env):
    return subprocess.Popen(ORCHESTRATE + args, cwd=folder, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def end_cluster(ray_tmpdir, remove=True):
    end_processes_mentioning(ray_tmpdir)  # what a stopped driver's Ray left behind
    if remove:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def assert_every_epoch_once(uri, experiment, expected_trials=2):
    client, runs = trials(uri, experiment)
    assert len(runs) == expected_trials
    for run in runs.values():
        assert run.data.tags[Tag.STATUS] == "completed" and run.info.status == "FINISHED", run.info.run_name
        for key in ("val_acc", "train_loss"):
            assert metric_steps(client, run.info.run_id, key) == EPOCHS, (run.info.run_name, key)
    parents = [r for r in client.search_runs([next(iter(runs.values())).info.experiment_id])
               if r.data.tags.get(Tag.ROLE) == ROLE_SWEEP]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    return client, runs


def test_a_database_out_of_reach_directly_or_behind_a_tracking_server_counts_as_transient(pg, tmp_path, monkeypatch):
    """What reaches the background writer while PostgreSQL is down, once MLflow's own retries are
    spent (none here), is retried by it: from the SQL store directly, and from a server's 503s."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    direct = pg.create_database("transient")
    with stores.mlflow_server(tmp_path, backend=pg.create_database("transient_served")) as url:
        clients = [MlflowClient(direct), MlflowClient(url)]
        run_ids = [c.create_run(c.create_experiment("x")).info.run_id for c in clients]
        pg.stop()
        try:
            for client, run_id in zip(clients, run_ids):
                with pytest.raises(MlflowException) as down:
                    client.log_metric(run_id, "a", 1.0)
                assert tracking.transient(down.value), (client.tracking_uri, down.value)
        finally:
            pg.start()
        for client, run_id in zip(clients, run_ids):  # and back: the pools reconnect
            client.log_metric(run_id, "a", 2.0)


def test_a_sweeps_folder_under_an_s3_uri_with_options_keeps_them(s3, monkeypatch):
    """Ray's storage accepts pyarrow's URI options (?scheme=http&endpoint_override=HOST:PORT);
    --resume's path to a sweep's folder keeps them after the folder's name."""
    import pyarrow.fs

    from orchestrator import storage

    for key, value in s3.env.items():
        if key != "AWS_ENDPOINT_URL":  # the URI names the endpoint
            monkeypatch.setenv(key, value)
    s3.create_bucket("options")
    uri = f"s3://options/results?scheme=http&endpoint_override=127.0.0.1:{s3.port}"
    joined = storage.join(uri, "sweep-1")
    assert joined == f"s3://options/results/sweep-1?scheme=http&endpoint_override=127.0.0.1:{s3.port}"
    storage.write_state(uri, "sweep-1", {"experiment": "x"})
    fs, path = pyarrow.fs.FileSystem.from_uri(joined)
    assert path == "options/results/sweep-1"
    assert fs.get_file_info(f"{path}/{storage.STATE_FILE}").type == pyarrow.fs.FileType.File
    assert storage.find_resumable(uri, "x") == "sweep-1"
    assert storage.join("/data/results/", "sweep-1") == "/data/results/sweep-1"


# ---------------------------------------------------------------------------------------------
# MLflow on PostgreSQL directly, local Ray storage


@pytest.fixture(scope="module")
def direct_sweep(pg, tmp_path_factory):
    """A sweep tracked in `postgresql+psycopg2://` (no sqlite anywhere), PostgreSQL restarted while
    its trials train: (uri, experiment, exit code, output, rows at the stop)."""
    folder = tmp_path_factory.mktemp("pg-direct")
    name = "remote-direct"
    uri = pg.create_database("direct")
    (folder / "sweep.yaml").write_text(REMOTE_SWEEP.replace("NAME", name))
    ray_tmpdir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
    proc = start(folder, ["sweep", "sweep.yaml", "--tracking-uri", uri], {"RAY_TMPDIR": ray_tmpdir})
    try:
        rows = restart_postgres_mid_trial(pg, "direct", proc)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        end_cluster(ray_tmpdir)
    (folder / "sweep.out").write_text(out)  # to read after a failure
    return uri, name, proc.returncode, out, rows


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweep_tracked_in_postgresql_directly_loses_no_epoch_when_the_database_restarts_mid_trial(direct_sweep):
    uri, name, code, out, rows = direct_sweep
    assert code == 0, out[-3000:]
    assert 1 <= rows < 2 * len(EPOCHS)  # the restart came while the trials trained
    assert "sqlite" not in out
    assert "Traceback" not in out and "ERROR" not in out, out[-5000:]  # the restart is not the user's problem
    assert_every_epoch_once(uri, name)


@pytest.mark.ray
@pytest.mark.slow
def test_compare_and_report_read_a_postgresql_store_from_an_empty_folder(direct_sweep, tmp_path):
    uri, name, code, out, _ = direct_sweep
    assert code == 0, out[-3000:]
    env = {"MLFLOW_TRACKING_URI": uri}
    compared = run_cli(["compare", name, "--format", "json"], cwd=tmp_path, env=env)
    assert compared.returncode == 0, compared.stderr
    rows = json.loads(compared.stdout)
    assert len(rows) == 2
    report = run_cli(["report", name, "--out", "r.html"], cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    assert name in (tmp_path / "r.html").read_text()
    assert sorted(os.listdir(tmp_path)) == ["r.html"]  # no store, no ray_results made here


# ---------------------------------------------------------------------------------------------
# An mlflow server on PostgreSQL with artefacts in S3; Ray's storage in S3


@pytest.fixture(scope="module")
def served_sweep(pg, s3, tmp_path_factory):
    """A sweep through `mlflow server --backend-store-uri postgresql... --artifacts-destination
    s3://...`, Ray storage on S3: PostgreSQL restarted while its trials train, then the sweep
    interrupted (SIGINT) and resumed from another, empty folder that has only the URIs."""
    name = "remote-served"
    s3.create_bucket("orchestrate")
    backend = pg.create_database("served")
    with stores.mlflow_server(tmp_path_factory.mktemp("served-server"), backend=backend,
                              artifacts="s3://orchestrate/mlartifacts", env=s3.env) as url:
        storage = s3.storage_uri("orchestrate", "ray")
        first, second = tmp_path_factory.mktemp("served-first"), tmp_path_factory.mktemp("served-second")
        (first / "sweep.yaml").write_text(REMOTE_SWEEP.replace("NAME", name))
        ray_tmpdir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
        env = {**s3.env, "RAY_TMPDIR": ray_tmpdir}
        proc = start(first, ["sweep", "sweep.yaml", "--tracking-uri", url, "--storage", storage], env)
        try:
            rows = restart_postgres_mid_trial(pg, "served", proc)
            # More epochs logged after the restart, then Ctrl-C while the trials still train.
            wait_for(lambda: logged_epochs(pg, "served") >= rows + 2, 600, proc, "epochs after the restart")
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
            end_cluster(ray_tmpdir, remove=False)
        # The resume: the sweep file (a user has it) and the URIs, nothing of the first folder.
        (second / "sweep.yaml").write_text(REMOTE_SWEEP.replace("NAME", name))
        (first / "sweep.out").write_text(out)  # to read after a failure
        resumed = run_cli(["sweep", "sweep.yaml", "--resume", "--storage", storage], cwd=second,
                          env={**env, "MLFLOW_TRACKING_URI": url})
        end_cluster(ray_tmpdir)
        yield {"url": url, "name": name, "storage": storage, "first": (proc.returncode, out), "resumed": resumed,
               "second": second}


@pytest.mark.ray
@pytest.mark.slow
def test_a_served_sweep_on_s3_resumed_from_an_empty_folder_logs_every_epoch_once(served_sweep):
    code, out = served_sweep["first"]
    assert code == 130, out[-3000:]  # interrupted, as Ctrl-C does
    resumed = served_sweep["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert_every_epoch_once(served_sweep["url"], served_sweep["name"])
    assert sorted(os.listdir(served_sweep["second"])) == ["sweep.yaml"]  # no mlflow.db, no ray_results


@pytest.mark.ray
@pytest.mark.slow
def test_a_served_sweep_prints_no_error_while_the_database_behind_the_server_restarts(served_sweep):
    code, out = served_sweep["first"]
    assert "Traceback" not in out and "ERROR" not in out, out[-5000:]


@pytest.mark.ray
@pytest.mark.slow
def test_checkpoints_tune_state_and_models_land_in_s3(served_sweep, s3):
    assert served_sweep["resumed"].returncode == 0
    keys = s3.keys("orchestrate")
    ray_keys = [k for k in keys if k.startswith("ray/")]
    assert any("/checkpoint_" in k for k in ray_keys), ray_keys[:20]
    assert any(k.endswith("orchestrate_sweep.json") for k in ray_keys)
    assert any("experiment_state" in k for k in ray_keys)
    models = [k for k in keys if k.startswith("mlartifacts/") and k.endswith("MLmodel")]
    assert len(models) >= 2, [k for k in keys if k.startswith("mlartifacts/")][:20]


@pytest.mark.ray
@pytest.mark.slow
def test_the_best_model_loads_by_its_alias_in_a_fresh_process_that_has_only_the_server_url(served_sweep, tmp_path):
    assert served_sweep["resumed"].returncode == 0
    code = textwrap.dedent(f"""\
        import mlflow, torch
        model = mlflow.pytorch.load_model("models:/{served_sweep['name']}@best", map_location="cpu")
        print(tuple(model(torch.zeros(2, 3, 32, 32)).shape))
        """)
    # No AWS credentials or endpoint: the server proxies the artefacts.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "MLFLOW_TRACKING_URI": served_sweep["url"], "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(", 10)")


@pytest.mark.ray
@pytest.mark.slow
def test_compare_report_export_and_evaluate_run_from_an_empty_folder_with_only_the_server_url(served_sweep, tmp_path):
    assert served_sweep["resumed"].returncode == 0
    name, env = served_sweep["name"], {"MLFLOW_TRACKING_URI": served_sweep["url"]}
    compared = run_cli(["compare", name, "--format", "json"], cwd=tmp_path, env=env)
    assert compared.returncode == 0, compared.stderr
    assert len(json.loads(compared.stdout)) == 2
    report = run_cli(["report", name, "--out", "r.html"], cwd=tmp_path, env=env)
    assert report.returncode == 0, report.stderr
    exported = run_cli(["export", f"models:/{name}@best", "--format", "pt2", "--out", "out"], cwd=tmp_path, env=env)
    assert exported.returncode == 0, exported.stdout[-2000:] + exported.stderr[-2000:]
    assert [f for f in os.listdir(tmp_path / "out") if f.endswith(".pt2")]
    client, runs = trials(served_sweep["url"], name)
    run_id = next(iter(runs.values())).info.run_id
    evaluated = run_cli(["evaluate", run_id, "--split", "val", "--device", "cpu"], cwd=tmp_path, env=env)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["out", "r.html"]
