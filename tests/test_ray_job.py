"""A sweep as a Ray job: `ray job submit --working-dir . -- orchestrate sweep FILE` and
`orchestrate submit FILE` against a running cluster with token authentication.

The cluster is a real `ray start --head` (2 CPUs, the dashboard and its job server on 127.0.0.1,
every port picked free: 6379 is test_multinode's), started with its own token file (0600) and
temp dir, PATH and PYTHONPATH as a node's would be (the project's venv first, the repository
importable). Every client here (`ray job ...`, `orchestrate submit`) needs the same token
environment. The cluster is torn down by killing exactly its own processes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import ORCHESTRATE, REPO, free_port, kill_own_processes, metric_steps, run_cli, trials, wait_for

BIN = Path(sys.executable).parent  # the venv: `ray`, `orchestrate`
RAY_CLI = str(BIN / "ray")


INFO_SCRIPT = textwrap.dedent("""\
    import json, sys
    from ray.job_submission import JobSubmissionClient
    info = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2])
    print(json.dumps({"status": str(info.status.value), "driver_exit_code": info.driver_exit_code}))
    """)


@dataclass
class JobCluster:
    tmpdir: str
    dashboard: str
    env: dict[str, str]  # a client's: token, job server address

    def ray(self, *args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
        return subprocess.run([RAY_CLI, "job", *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit(self, folder: Path, *entrypoint: str, stop_wait_s: int | None = None, wait=True):
        """`ray job submit` as the docs say (a user's extra: the stop wait); the job id and the result."""
        env_json = [] if stop_wait_s is None else [
            "--runtime-env-json", f'{{"env_vars": {{"RAY_JOB_STOP_WAIT_TIME_S": "{stop_wait_s}"}}}}']
        result = self.ray("submit", *([] if wait else ["--no-wait"]), "--working-dir", ".", *env_json, "--",
                          *entrypoint, cwd=folder)
        ids = [w for w in (result.stdout + result.stderr).replace("'", " ").split() if w.startswith("raysubmit_")]
        assert ids, result.stdout[-3000:] + result.stderr[-3000:]
        return ids[0], result

    def info(self, job_id: str) -> dict:
        """The job's status and driver exit code, read in a subprocess with the client's env (Ray
        reads its token settings once per process; this pytest process stays out of it)."""
        out = subprocess.run([sys.executable, "-c", INFO_SCRIPT, self.dashboard, job_id], env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def logs(self, job_id: str) -> str:
        return self.ray("logs", job_id, timeout=120).stdout

    def orchestrate(self, *args, cwd, env=None) -> subprocess.Popen:
        return subprocess.Popen(ORCHESTRATE + list(args), cwd=cwd, env=env or {**self.env, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def job_cluster():
    tmpdir = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths are limited
    token = Path(tmpdir) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    base = {k: v for k, v in os.environ.items()
            if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    node_env = {**base, **auth, "RAY_TMPDIR": tmpdir, "PYTHONPATH": str(REPO),
                "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}"}
    dashboard_port = free_port()
    log = Path(tmpdir) / "ray-start.log"
    try:
        with open(log, "w") as out:
            start = subprocess.run(
                [RAY_CLI, "start", "--head", f"--port={free_port()}", "--num-cpus=2", f"--temp-dir={tmpdir}",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                 "--object-store-memory=200000000", "--disable-usage-stats"],
                env=node_env, stdout=out, stderr=subprocess.STDOUT, timeout=180)
        assert start.returncode == 0, log.read_text()[-3000:]
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        yield JobCluster(tmpdir, dashboard, {**base, **auth, "RAY_API_SERVER_ADDRESS": dashboard})
    finally:
        kill_own_processes(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)


def sweep_file(folder: Path, name: str, epochs: int) -> Path:
    """One single-worker trial on digits."""
    path = folder / "sweep.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        dataset: {{name: digits}}
        train: {{epochs: {epochs}, batch_size: 32, lr: 0.05, warmup_epochs: 0.5, seed: 0}}
        resources: {{num_workers: 1, cpus_per_worker: 1}}
        search: {{scheduler: fifo}}
        models:
          - {{arch: resnet18, knobs: {{width: 0.125}}}}
        """))
    return path


def test_submit_hands_the_job_the_paths_as_they_resolve_here_and_needs_a_job_server(tmp_path, monkeypatch):
    from orchestrator import config, submit

    monkeypatch.chdir(tmp_path)
    spec = config.load(str(sweep_file(tmp_path, "job-paths", epochs=1)), {"tracking_uri": "sqlite:///my db.sqlite"})
    assert submit.resolved_here(spec.tracking_uri) == f"sqlite:///{tmp_path}/my db.sqlite"
    for uri in ("http://127.0.0.1:5000", "sqlite:////abs/x.db", "postgresql+psycopg2://h/db", "file:///x"):
        assert submit.resolved_here(uri) == uri
    assert submit.resolved_here("mlruns") == f"{tmp_path}/mlruns"
    spec = submit.dataclasses.replace(spec, tracking_uri=submit.resolved_here(spec.tracking_uri))
    assert submit.entrypoint(spec, resume=True, verbosity=-1) == (
        f"orchestrate sweep sweep.yaml --tracking-uri 'sqlite:///{tmp_path}/my db.sqlite' "
        f"--storage {tmp_path}/ray_results --resume -q")

    # No job server: one line, exit 2, nothing submitted anywhere.
    env = {"RAY_ADDRESS": "", "RAY_API_SERVER_ADDRESS": ""}
    result = run_cli(["submit", "sweep.yaml"], cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.startswith("submit: --address: not given and RAY_API_SERVER_ADDRESS / RAY_ADDRESS"), result
    port = free_port()
    result = run_cli(["submit", "sweep.yaml", "--address", f"http://127.0.0.1:{port}"], cwd=tmp_path, env=env,
                     timeout=300)
    assert result.returncode == 2 and result.stdout == "" and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith(f"submit: --address: http://127.0.0.1:{port}: no Ray job server answered"), result
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


def places(folder: Path) -> list[str]:
    """--tracking-uri and --storage outside the job's temporary working dir."""
    return ["--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--storage", str(folder / "ray_results")]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_succeeds_with_the_sweep_and_fails_on_a_bad_file_with_its_one_line(job_cluster, tmp_path):
    sweep_file(tmp_path, "job-tiny", epochs=1)
    job_id, result = job_cluster.submit(tmp_path, "orchestrate", "sweep", "sweep.yaml", *places(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    info = job_cluster.info(job_id)
    assert info == {"status": "SUCCEEDED", "driver_exit_code": 0}
    client, runs = trials(f"sqlite:///{tmp_path}/mlflow.db", "job-tiny")
    (run,) = runs.values()
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert metric_steps(client, run.info.run_id) == [1]
    logs = job_cluster.logs(job_id)
    assert "Best model registered: job-tiny" in logs
    # Ray's 3 s stop wait: the sweep says what `ray job stop` would do to it, and how to give it more.
    assert "note: `ray job stop` kills this sweep 3 s after its SIGTERM (RAY_JOB_STOP_WAIT_TIME_S)" in logs, logs

    # A file that fails validation: the job FAILED with the sweep's exit code, its log the one line.
    bad = tmp_path / "bad"
    bad.mkdir()
    path = sweep_file(bad, "job-bad", epochs=1)
    path.write_text(path.read_text().replace("width: 0.125", "width: -1"))
    job_id, result = job_cluster.submit(bad, "orchestrate", "sweep", "sweep.yaml", *places(bad))
    assert result.returncode == 1  # `ray job submit` itself exits 1 for any failed job
    info = job_cluster.info(job_id)
    assert info == {"status": "FAILED", "driver_exit_code": 2}
    lines = job_cluster.logs(job_id).strip().splitlines()
    assert lines[-1].startswith("sweep.yaml: models[0].knobs.width: -1"), lines
    assert not any("Traceback" in line for line in lines), lines
    assert not (bad / "mlflow.db").exists() and not (bad / "ray_results").exists()


def wait_for_epoch(read, what: str, timeout_s=600):
    return wait_for(lambda: "epoch 1/" in read(), timeout_s, what=what)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_stop_marks_the_runs_killed_logs_the_resume_command_and_submit_resume_finishes(job_cluster, tmp_path):
    sweep_file(tmp_path, "job-stop", epochs=4)
    # The docs' command: the job's stop wait raised from Ray's 3 s (see orchestrator/submit.py).
    job_id, _ = job_cluster.submit(tmp_path, "orchestrate", "sweep", "sweep.yaml", *places(tmp_path),
                                   stop_wait_s=60, wait=False)
    wait_for_epoch(lambda: job_cluster.logs(job_id), "the trial's first epoch")
    stopped_at = time.time()
    stop = job_cluster.ray("stop", job_id)  # waits for the job to end
    assert stop.returncode == 0, stop.stdout[-2000:] + stop.stderr[-2000:]
    assert job_cluster.info(job_id)["status"] == "STOPPED"
    print(f"ray job stop -> STOPPED in {time.time() - stopped_at:.1f} s")

    # The sweep ended in its stop wait (not Ray's SIGKILL): its runs marked, the resume command last.
    logs = job_cluster.logs(job_id)
    assert "note: `ray job stop`" not in logs  # the stop wait given
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    assert lines[-2].startswith("SIGTERM: the sweep stopped"), lines[-12:]
    resume = lines[-1].split()
    assert resume[:4] == ["orchestrate", "sweep", "sweep.yaml", "--resume"], lines[-3:]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client, runs = trials(uri, "job-stop")
    (run,) = runs.values()
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    done = metric_steps(client, run.info.run_id)
    assert done and done[-1] < 4, done

    # The printed command, as a job through `orchestrate submit`: it finishes the sweep; the live
    # view is streamed and the exit code is the sweep's.
    proc = job_cluster.orchestrate("submit", *resume[2:], cwd=tmp_path)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "resuming " in out and "epoch 4/4" in out and "Best model registered: job-stop" in out, out
    assert err == "", err
    client, runs = trials(uri, "job-stop")
    (run,) = runs.values()
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert metric_steps(client, run.info.run_id) == [1, 2, 3, 4]  # each epoch once


@pytest.mark.ray
@pytest.mark.slow
def test_submit_returns_the_sweeps_exit_code_and_ctrl_c_stops_the_job(job_cluster, tmp_path):
    sweep_file(tmp_path, "job-submit", epochs=40)  # still training when Ctrl-C comes, on a quiet machine too
    # Bad input found here: one line, exit 2, no job.
    before = job_cluster.ray("list").stdout.count("submission_id=")
    bad = job_cluster.orchestrate("submit", "sweep.yaml", "--tracking-uri", "http://me:pw@127.0.0.1:1",
                                  cwd=tmp_path)
    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and out == "" and err.count("\n") == 1 and "pw" not in err, (out, err)
    assert err.startswith("submit: tracking uri: has a password"), err
    wrong = tmp_path / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    wrong.chmod(0o600)
    bad = job_cluster.orchestrate("submit", "sweep.yaml", cwd=tmp_path, env={
        **job_cluster.env, "PYTHONPATH": str(REPO), "RAY_AUTH_TOKEN_PATH": str(wrong)})
    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2 and out == "" and err.count("\n") == 1, (out, err)
    assert "the cluster refused this client's token" in err and wrong.read_text() not in err, err
    # Bad input found on the head (a storage that is a file): the sweep's exit code 2, its line streamed.
    (tmp_path / "a-file").write_text("")
    bad = job_cluster.orchestrate("submit", "sweep.yaml", "--storage", str(tmp_path / "a-file"), cwd=tmp_path)
    out, err = bad.communicate(timeout=300)
    assert bad.returncode == 2, out[-3000:] + err[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("sweep.yaml: storage: ") and last.endswith("is a file, not a folder"), out[-2000:]
    assert job_cluster.ray("list").stdout.count("submission_id=") == before + 1

    # Ctrl-C while the trial trains: the job stops, the sweep's stopping is streamed, exit 130.
    proc = job_cluster.orchestrate("submit", "sweep.yaml", *places(tmp_path), cwd=tmp_path)
    seen = []

    def read():
        line = proc.stdout.readline()
        seen.append(line)
        return "".join(seen)

    wait_for_epoch(read, "the trial's first epoch streamed")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    out = "".join(seen) + out
    assert proc.returncode == 130, out[-3000:] + err[-3000:]
    assert "SIGTERM: the sweep stopped" in out and "orchestrate sweep sweep.yaml --resume" in out, out[-3000:]
    assert out.strip().splitlines()[-1].lstrip().startswith("orchestrate submit sweep.yaml --resume"), out[-800:]
    client, runs = trials(f"sqlite:///{tmp_path}/mlflow.db", "job-submit")
    (run,) = runs.values()
    assert run.info.status == "KILLED" and run.data.tags["status"] == "interrupted"
