"""A cluster whose worker nodes share no files with the head, as on every real cluster: a sweep's
checkpoints, restores, model logging, report and export go through S3 storage and an MLflow
tracking server, never through a path one node wrote and another reads.

The cluster: a Ray head (`ray start --head`, no CPUs, token auth, a private temp dir) and two
worker nodes (`ray start --address ... --block`, 2 CPUs each), each inside its own mount namespace
(`unshare -m`; the tests run as root) where this session's pytest folders (the sweep's folder, the
MLflow server's store, the decoded-image cache) and the head's temp dir (its session folders) are
hidden behind an empty tmpfs: any shared-filesystem assumption fails loudly. Storage is moto's S3
API server; MLflow is the session's `mlflow server`, which only the sweep driver (on the head)
writes. Torn down by killing exactly this cluster's processes (its temp dir is their marker).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator import data
from orchestrator.runs import ROLE_TRIAL, Tag
from support import ORCHESTRATE, REPO, free_port, kill_own_processes, own_processes, run_cli, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

RAY_CLI = str(Path(sys.executable).with_name("ray"))
BUCKET = "noshare"

# Run with the cluster's environment in a subprocess (this pytest process never joins Ray).
# Prints, per worker node (a node with CPUs), which of the given paths exist there, from a task
# pinned to that node, and every actor's class, node and pid.
PROBE_SCRIPT = textwrap.dedent("""\
    import json, os, sys
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ray.util.state import list_actors
    address, paths = sys.argv[1], json.loads(sys.argv[2])
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")

    @ray.remote(num_cpus=0)
    def look(paths):
        return {p: os.path.exists(p) for p in paths}

    workers = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    seen = {node: ray.get(look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                          .remote(paths)) for node in workers}
    head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) == 0]
    actors = [{"class_name": a.class_name, "node_id": a.node_id, "pid": a.pid, "state": a.state}
              for a in list_actors(address=address, detail=True, limit=10000)]
    print("PROBE " + json.dumps({"workers": seen, "head": head, "actors": actors}))
    """)


@dataclass
class Cluster:
    address: str
    tmpdir: str
    env: dict[str, str]
    hidden: list[str]

    def probe(self, paths: list[str]) -> dict:
        out = subprocess.run([sys.executable, "-c", PROBE_SCRIPT, self.address, json.dumps(paths)], env=self.env,
                             capture_output=True, text=True, timeout=180)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")]
        assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-3000:]
        return json.loads(lines[-1][len("PROBE "):])

    def start_sweep(self, folder: Path, uri: str) -> subprocess.Popen:
        return subprocess.Popen(ORCHESTRATE + ["sweep", "sweep.yaml", "--address", self.address, "--tracking-uri", uri],
                                cwd=folder, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3, mlflow_server):
    s3.create_bucket(BUCKET)
    basetemp = str(tmp_path_factory.getbasetemp())  # every test folder and the MLflow server's store
    tmpdir = tempfile.mkdtemp(prefix="rns-", dir="/tmp")  # the head's temp dir; short: socket paths
    keys = tempfile.mkdtemp(prefix="rns-key-", dir="/tmp")  # every node reads its own copy on a real cluster
    token = Path(keys) / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    # Every node and client: token auth with this token, this temp dir (also the processes' marker),
    # S3's endpoint and credentials, the project importable (as installed on every node), and the
    # decoded-image cache in a folder the worker nodes cannot see.
    env.update(RAY_TMPDIR=tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(REPO),
               **s3.env, **{data.CACHE_ENV: os.path.join(basetemp, "orchestrate-cache")})
    port = free_port()
    address = f"127.0.0.1:{port}"
    hidden = [basetemp, tmpdir]
    nodes = []
    try:
        with open(Path(keys) / "head.log", "w") as log:
            start = subprocess.run(
                [RAY_CLI, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                 f"--temp-dir={tmpdir}", f"--dashboard-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                 f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                 "--object-store-memory=200000000", "--disable-usage-stats"],
                env=env, stdout=log, stderr=subprocess.STDOUT, timeout=180)
        assert start.returncode == 0, (Path(keys) / "head.log").read_text()[-3000:]
        for i in range(2):
            mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(p)}" for p in hidden)
            ray_start = shlex.join([
                RAY_CLI, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--block",
                f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}", "--object-store-memory=200000000", "--disable-usage-stats"])
            nodes.append(subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", f"{mounts} && exec {ray_start}"],
                env=env, cwd="/", stdout=open(Path(keys) / f"worker{i}.log", "w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        cluster = Cluster(address, tmpdir, env, hidden)

        def joined():
            for node in nodes:
                assert node.poll() is None, (Path(keys) / "worker0.log").read_text()[-3000:]
            return len(cluster.probe([])["workers"]) == 2

        wait_for(joined, 180, what="two worker nodes")
        yield cluster
    finally:
        kill_own_processes(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)
        shutil.rmtree(keys, ignore_errors=True)


def test_worker_nodes_cannot_see_the_heads_files(cluster, tmp_path, mlflow_server):
    (tmp_path / "sweep.yaml").write_text("name: x\n")
    head_files = [str(tmp_path / "sweep.yaml"), *[str(p) for p in Path(cluster.hidden[0]).glob("mlflow-server[0-9]*/server.db")],
                  *[str(p) for p in Path(cluster.tmpdir).glob("session_2*/logs/gcs_server.out")]]
    assert len(head_files) == 3 and all(os.path.exists(p) for p in head_files), head_files
    seen = cluster.probe(head_files)["workers"]
    assert len(seen) == 2 and all(not any(found.values()) for found in seen.values()), seen


def s3_keys(s3, prefix: str) -> list[str]:
    return s3.keys(BUCKET, prefix)


def reported_epochs(s3, key: str) -> list[int]:
    """The epochs a trial reported, in order, from Tune's result.json in S3."""
    body = s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
    return [json.loads(line)["epoch"] for line in body.splitlines() if line.strip()]


def trial_runs(uri: str, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], max_results=100)
    return client, {r.info.run_name: r for r in found if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL}


def assert_recorded(uri: str, experiment: str, names: list[str], epochs: int) -> None:
    """Every trial completed with each epoch logged once and its model, and @best registered (the
    driver downloaded the best checkpoint from S3 to log it)."""
    client, found = trial_runs(uri, experiment)
    assert sorted(found) == sorted(names), sorted(found)
    for run in found.values():
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED", run.data.tags
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == list(range(1, epochs + 1)), steps
        assert run.data.tags["model_format"] == "pt2"
    best = client.get_model_version_by_alias(experiment, "best")
    assert best.run_id in {r.info.run_id for r in found.values()}


def no_local_checkpoints(*folders: str) -> list[str]:
    """Checkpoint folders under `folders` (the head's files): there must be none, every one is in S3."""
    return [os.path.join(d, n) for f in folders for d, names, _ in os.walk(f) for n in names
            if n.startswith("checkpoint_")]


def run_sweep(cluster: Cluster, folder: Path, text: str, uri: str, during=None) -> str:
    (folder / "sweep.yaml").write_text(text)
    proc = cluster.start_sweep(folder, uri)
    try:
        if during:
            during(proc)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out)  # shown with -s, or when a test fails
    assert proc.returncode == 0, out[-5000:]
    return out


SINGLE_SWEEP = textwrap.dedent(f"""\
    name: noshare-single
    dataset: {{name: digits, val_fraction: 0.1}}
    train: {{epochs: 4, batch_size: 32, warmup_epochs: 0.5, seed: 0}}
    resources: {{num_workers: 1, cpus_per_worker: 1}}
    search: {{scheduler: fifo, num_samples: 1}}
    failure: {{max_failures: 1, num_to_keep: 2}}
    storage: s3://{BUCKET}/single
    models:
      - arch: resnet18
        knobs: {{width: 0.125}}
        lr: {{grid: [0.05, 0.1]}}
    """)


def test_single_worker_trials_train_on_the_worker_nodes_and_one_killed_resumes_from_s3(
        cluster, s3, tmp_path, mlflow_server):
    killed = []

    def kill_a_trainer(proc):
        # A trial process (on a worker node) is killed once its trial has a checkpoint in S3 and
        # epochs left to train. Tune runs each trial in its own folder: the process's cwd names it.
        def early_trainer():
            keys = s3_keys(s3, "single/")
            for pid in own_processes(cluster.tmpdir):
                try:
                    if not open(f"/proc/{pid}/cmdline", "rb").read().startswith(b"ray::ImplicitFunc.train"):
                        continue
                    trial = os.path.basename(os.readlink(f"/proc/{pid}/cwd"))
                except OSError:
                    continue
                saved = [int(parts[3].removeprefix("checkpoint_")) for parts in (k.split("/") for k in keys)
                         if len(parts) > 4 and parts[2] == trial and parts[3].startswith("checkpoint_")]
                if saved and max(saved) < 2:  # epoch 1 or 2 of 4 saved
                    return pid, trial
            return None

        pid, trial = wait_for(early_trainer, 600, proc, "a trial with a checkpoint in S3 and epochs to go")
        os.kill(pid, signal.SIGKILL)
        killed.append(trial)

    run_sweep(cluster, tmp_path, SINGLE_SWEEP, mlflow_server, kill_a_trainer)
    assert_recorded(mlflow_server, "noshare-single", ["resnet18-width0.125-lr0.05", "resnet18-width0.125-lr0.1"], 4)

    # Every trial process ran on a worker node (the first one of the killed trial, dead, too).
    probe = cluster.probe([])
    trainers = [a for a in probe["actors"] if a["class_name"] == "ImplicitFunc"]
    assert len(trainers) >= 3 and {a["node_id"] for a in trainers} <= set(probe["workers"]), trainers

    # Tune's trial folders, checkpoints included, are in S3 and nowhere on the head; the killed
    # trial (its error file) went on from its checkpoint in S3: its epochs never start again at 1.
    keys = s3_keys(s3, "single/")
    trial_folders = {k.split("/")[2] for k in keys if "/checkpoint_" in k}
    assert len(trial_folders) == 2, keys
    failed = {k.split("/")[2] for k in keys if k.endswith("/error.txt")}
    assert failed == set(killed), (failed, killed)
    epochs = reported_epochs(s3, next(k for k in keys if k.endswith(f"{killed[0]}/result.json")))
    assert epochs == [1, 2, 3, 4], epochs
    assert not no_local_checkpoints(str(tmp_path), cluster.tmpdir)


def write_image_folder(root: Path, per_class: int = 30) -> None:
    """digits as an imagefolder (train/<class>/*.png), 10 classes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        folder = root / "train" / str(label)
        folder.mkdir(parents=True)
        for i, image in enumerate(digits.images[digits.target == label][:per_class]):
            Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")


# One DDP trial, its two ranks on the two worker nodes (STRICT_SPREAD), on an imagefolder that only
# the head has.
DDP_SWEEP = textwrap.dedent(f"""\
    name: noshare-ddp
    dataset: {{name: imagefolder, root: images, val_fraction: 0.1}}
    train: {{epochs: 2, batch_size: 16, warmup_epochs: 0.5, seed: 0}}
    resources: {{num_workers: 2, cpus_per_worker: 1, driver_cpus: 0.1, placement_strategy: STRICT_SPREAD}}
    search: {{scheduler: fifo, num_samples: 1}}
    storage: s3://{BUCKET}/ddp
    models:
      - arch: resnet18
        knobs: {{width: 0.125}}
        lr: 0.05
    """)


def test_ddp_over_two_worker_nodes_on_data_only_the_head_has(cluster, s3, tmp_path, mlflow_server):
    write_image_folder(tmp_path / "images")
    assert not any(cluster.probe([str(tmp_path / "images")])["workers"][n][str(tmp_path / "images")]
                   for n in cluster.probe([])["workers"])
    before = {a["pid"] for a in cluster.probe([])["actors"]}
    run_sweep(cluster, tmp_path, DDP_SWEEP, mlflow_server)
    assert_recorded(mlflow_server, "noshare-ddp", ["resnet18-width0.125-lr0.05"], 2)

    probe = cluster.probe([])
    ranks = [a for a in probe["actors"] if a["class_name"] == "RayTrainWorker" and a["pid"] not in before]
    assert len(ranks) == 2 and {a["node_id"] for a in ranks} == set(probe["workers"]), ranks
    assert any("/checkpoint_" in k for k in s3_keys(s3, "ddp/"))
    assert not no_local_checkpoints(str(tmp_path), cluster.tmpdir)


def test_report_export_and_evaluate_from_a_fresh_folder_with_only_the_uris(cluster, s3, tmp_path, mlflow_server):
    """After the sweeps (run in other folders): nothing here but the tracking server's URI."""
    report = run_cli(["report", "noshare-single", "--tracking-uri", mlflow_server, "--out", "report.html"],
                     cwd=tmp_path, env=s3.env)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "resnet18" in (tmp_path / "report.html").read_text()
    for experiment in ("noshare-single", "noshare-ddp"):
        export = run_cli(["export", f"models:/{experiment}@best", "--format", "pt2", "--out", experiment,
                          "--tracking-uri", mlflow_server], cwd=tmp_path, env=s3.env)
        assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
        assert "top-1 agreement 100.00%" in export.stdout, export.stdout
        assert len(list((tmp_path / experiment).glob("*.pt2"))) == 1
        run_id = export.stdout.split(" from run ", 1)[1].split()[0]
        scored = run_cli(["evaluate", run_id, "--split", "val", "--tracking-uri", mlflow_server], cwd=tmp_path,
                         env=s3.env)
        assert scored.returncode == 0 and f"run {run_id} " in scored.stdout, scored.stdout + scored.stderr[-3000:]
