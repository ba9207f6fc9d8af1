"""Multi-node: `orchestrate sweep --address` joins a Ray cluster of several nodes, as it would on
cluster.yaml's cluster, and its trials' Ray Train workers run where the placement says.

The cluster is Ray's fake multi-node provider (tests/fake_cluster.yaml): a real head (GCS,
autoscaler, dashboard) whose autoscaler launches each worker "node" as its own set of Ray processes
on this machine (raylet, object store, agents, node id), on demand, from min_workers 0. The head
offers no CPU, so every trial driver and DDP worker must land on a node the autoscaler launched.
Placement is read back from Ray's state API (actors keep their node id after they exit).

One cluster serves the module; it runs with token authentication on and a token of its own (in its
private RAY_TMPDIR), and is torn down at the end by killing exactly its own processes: those whose
command line or environment holds that RAY_TMPDIR, and their descendants.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import DDP_SWEEP, REPO, free_port, kill_own_processes, logged_epochs, own_processes, run_cli
from orchestrator.runs import ROLE_TRIAL, Tag

pytestmark = pytest.mark.slow  # multi-node; the tests that start the fake cluster are marked `ray`

# The fake provider's worker nodes join the head at <node IP>:6379, whatever the head was given.
GCS_PORT = 6379
ADDRESS = f"127.0.0.1:{GCS_PORT}"
CONFIG = Path(__file__).with_name("fake_cluster.yaml")
RAY_CLI = str(Path(sys.executable).with_name("ray"))
WORKER_TYPE = "cpu_worker"  # the worker node type in fake_cluster.yaml

# Run in a subprocess with the cluster's environment (its token), so this pytest process never
# connects to Ray: every node, and every actor with the node it ran on, dead ones included.
STATE_SCRIPT = textwrap.dedent("""\
    import json, sys
    import ray
    from ray.util.state import list_actors, list_nodes
    address = sys.argv[1]  # explicit everywhere: other Ray clusters may run on this machine
    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    nodes = [{"node_id": n.node_id, "alive": n.state == "ALIVE", "head": bool(n.is_head_node),
              "cpu": (n.resources_total or {}).get("CPU", 0.0)}
             for n in list_nodes(address=address, detail=True, limit=10000)]
    actors = [{"actor_id": a.actor_id, "class_name": a.class_name, "node_id": a.node_id, "job_id": a.job_id,
               "placement_group_id": a.placement_group_id, "state": a.state}
              for a in list_actors(address=address, detail=True, limit=10000)]
    print("STATE " + json.dumps({"nodes": nodes, "actors": actors}))
    """)


def port_in_use(port: int) -> bool:
    """Someone listens on `port` (SO_REUSEADDR, as the GCS binds: a closed cluster's TIME_WAIT
    connections do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    with socket.socket() as s:  # and nothing answers there (a listener with SO_REUSEPORT)
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class FakeCluster:
    tmpdir: str
    env: dict[str, str]
    initial_nodes: list[dict] = field(default_factory=list)

    def state(self) -> dict:
        out = subprocess.run([sys.executable, "-c", STATE_SCRIPT, ADDRESS], env=self.env, capture_output=True,
                             text=True, timeout=120)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("STATE ")]
        assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-3000:]
        return json.loads(lines[-1][len("STATE "):])

    def active_node_types(self) -> dict[str, int]:
        """`ray status`'s "Active:" section, the autoscaler's own view: node type -> count."""
        out = subprocess.run([RAY_CLI, "status", "--address", ADDRESS], env=self.env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        section = out.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return {name: int(n) for n, name in re.findall(r"^\s*(\d+)\s+(\S+)\s*$", section, re.M)}

    def status_without_token(self) -> subprocess.CompletedProcess:
        """`ray status` from a client with no token at all (no RAY_AUTH_*, a HOME without ~/.ray)."""
        env = {k: v for k, v in self.env.items() if not k.startswith("RAY_AUTH")}
        env["HOME"] = self.tmpdir
        return subprocess.run([RAY_CLI, "status", "--address", ADDRESS], env=env, capture_output=True, text=True,
                              timeout=120)

    def worker_nodes(self, count: int, timeout_s: float = 600) -> set[str]:
        """At least `count` live worker nodes, launched by the autoscaler on request
        (`ray.autoscaler.sdk.request_resources`, one node's CPUs per bundle); their ids."""
        script = ("import sys, ray\nfrom ray.autoscaler.sdk import request_resources\n"
                  "ray.init(address=sys.argv[1], log_to_driver=False, logging_level='ERROR')\n"
                  f"request_resources(bundles=[{{'CPU': 2}}] * {count})\n")
        out = subprocess.run([sys.executable, "-c", script, ADDRESS], env=self.env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        deadline = time.time() + timeout_s
        while True:
            alive = {n["node_id"] for n in self.state()["nodes"] if n["alive"] and not n["head"]}
            if len(alive) >= count:
                return alive
            assert time.time() < deadline, f"{len(alive)} of {count} worker nodes after {timeout_s} s"
            time.sleep(2)

    def sweep(self, folder: Path, text: str, uri: str) -> subprocess.CompletedProcess:
        (folder / "sweep.yaml").write_text(text)
        return run_cli(["sweep", "sweep.yaml", "--address", ADDRESS, "--tracking-uri", uri], cwd=folder,
                       env=self.env, timeout=600)


@pytest.fixture(scope="module")
def fake_cluster(ddp_sweep):
    # ddp_sweep (the single-node twin of the STRICT_SPREAD test) runs first, on a local Ray of its
    # own, before this cluster exists.
    deadline = time.time() + 120  # another run of this module may be finishing
    while port_in_use(GCS_PORT):
        if time.time() > deadline:
            pytest.fail(f"port {GCS_PORT} is taken: the fake multi-node provider's nodes can only join a head "
                        f"there, so this module needs it free")
        time.sleep(2)
    tmpdir = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: Ray's socket paths are limited
    token = Path(tmpdir) / "auth_token"
    token.write_text(secrets.token_hex(32))  # the cluster's own secret; ~/.ray is not touched
    token.chmod(0o600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_URI")}
    # Every process of the cluster and every client of it: token auth on, this token, this temp dir.
    env.update(RAY_TMPDIR=tmpdir, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PYTHONPATH=str(REPO))  # as on cluster.yaml's nodes, the project is importable everywhere

    log = Path(tmpdir) / "ray-start.log"
    try:
        # Ports other Ray clusters on this machine may hold (8265, 52365, 10001) are picked free.
        # The autoscaler (and with it every fake node it launches) inherits this environment.
        with open(log, "w") as out:
            start = subprocess.run(
                [RAY_CLI, "start", "--head", f"--port={GCS_PORT}", "--num-cpus=0", f"--temp-dir={tmpdir}",
                 f"--autoscaling-config={CONFIG}", f"--dashboard-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
                 "--object-store-memory=200000000", "--disable-usage-stats"],
                env={**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
                stdout=out, stderr=subprocess.STDOUT, timeout=180)
        assert start.returncode == 0, log.read_text()[-3000:]
        cluster = FakeCluster(tmpdir, env)
        cluster.initial_nodes = [n for n in cluster.state()["nodes"] if n["alive"]]
        yield cluster
    finally:
        kill_own_processes(tmpdir)
        shutil.rmtree(tmpdir, ignore_errors=True)


def new_actors(before: dict, after: dict, class_name: str) -> list[dict]:
    seen = {a["actor_id"] for a in before["actors"]}
    return [a for a in after["actors"] if a["actor_id"] not in seen and a["class_name"].endswith(class_name)]


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def trial_runs(uri: str, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r} in {uri}"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, [r for r in runs if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL]


AUTOSCALE_SWEEP = textwrap.dedent("""\
    name: multinode-autoscale
    dataset: {name: digits, val_fraction: 0.1}
    train: {epochs: 1, batch_size: 32, warmup_epochs: 0.5, seed: 0}
    resources: {num_workers: 1, cpus_per_worker: 1, driver_cpus: 0.1}
    search: {scheduler: fifo, num_samples: 1}
    models:
      - arch: resnet18
        knobs: {width: 0.125}
        lr: {grid: [0.05, 0.1]}
    """)


@pytest.mark.ray
def test_sweep_on_an_autoscaling_cluster_trains_on_the_worker_nodes_it_launches(fake_cluster, tmp_path):
    head = [n for n in fake_cluster.initial_nodes if n["head"]]
    assert len(head) == 1 and len(fake_cluster.initial_nodes) == 1, fake_cluster.initial_nodes  # min_workers 0
    assert head[0]["cpu"] == 0  # nothing can train on the head
    refused = fake_cluster.status_without_token()  # the sweep below has to bring the cluster's token
    assert refused.returncode != 0 and "InvalidAuthToken" in refused.stdout + refused.stderr, refused
    before = fake_cluster.state()

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = fake_cluster.sweep(tmp_path, AUTOSCALE_SWEEP, uri)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The autoscaler grew the cluster: worker nodes of fake_cluster.yaml's worker type, alive.
    after = fake_cluster.state()
    workers = {n["node_id"] for n in after["nodes"] if n["alive"] and not n["head"]}
    assert workers and all(n["cpu"] == 2 for n in after["nodes"] if n["node_id"] in workers), after["nodes"]
    assert fake_cluster.active_node_types().get(WORKER_TYPE, 0) == len(workers)

    # Each single-worker trial trained in its own Tune trial process (one per trial, in its own
    # placement group), on a launched worker node, never on the head; no Ray Train worker group.
    assert not new_actors(before, after, "RayTrainWorker")
    drivers = new_actors(before, after, "ImplicitFunc")  # Tune's wrapper around run_trial
    assert len(drivers) == 2 and len({a["placement_group_id"] for a in drivers}) == 2, drivers
    head_id = head[0]["node_id"]
    for actor in drivers:
        assert actor["node_id"] in workers and actor["node_id"] != head_id, (actor, workers)

    client, runs = trial_runs(uri, "multinode-autoscale")
    assert sorted(r.info.run_name for r in runs) == ["resnet18-width0.125-lr0.05", "resnet18-width0.125-lr0.1"]
    for run in runs:
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        assert metric_steps(client, run.info.run_id, "val_acc") == [1]


# DDP_SWEEP's lr=0.05 trial (conftest), spread over two nodes. Both ranks and the trial driver
# (2 x 0.5 + 0.1 CPU) would fit on one 2-CPU worker node, where PACK puts them: only STRICT_SPREAD
# sends the ranks to two nodes.
SPREAD_SWEEP = DDP_SWEEP.replace("name: e2e-ddp", "name: multinode-ddp").replace(
    "lr: {grid: [0.05, 0.1]}", "lr: 0.05").replace("driver_cpus: 0.1}", "driver_cpus: 0.1, placement_strategy: STRICT_SPREAD}")


@pytest.mark.ray
def test_ddp_across_two_nodes_through_a_real_mlflow_server_gives_the_single_node_sqlite_numbers(
        fake_cluster, tmp_path, mlflow_server, ddp_sweep):
    assert "STRICT_SPREAD" in SPREAD_SWEEP and "lr: 0.05" in SPREAD_SWEEP
    before = fake_cluster.state()
    result = fake_cluster.sweep(tmp_path, SPREAD_SWEEP, mlflow_server)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    # The trial's two DDP ranks (one worker group: one placement group) on two different worker
    # nodes, so its gloo process group spanned two Ray nodes (on one host: same IP, two raylets).
    after = fake_cluster.state()
    ranks = new_actors(before, after, "RayTrainWorker")
    assert len(ranks) == 2 and len({a["placement_group_id"] for a in ranks}) == 1, ranks
    head_ids = {n["node_id"] for n in after["nodes"] if n["head"]}
    nodes = {a["node_id"] for a in ranks}
    assert len(nodes) == 2 and not nodes & head_ids, (ranks, head_ids)

    # Written by the sweep driver alone, through the server (HTTP: REST calls, artefacts proxied).
    client, runs = trial_runs(mlflow_server, "multinode-ddp")
    assert [r.info.run_name for r in runs] == ["resnet18-width0.125-lr0.05"]
    run = runs[0]
    assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["resources.num_workers"] == "2"
    assert run.data.params["resources.placement_strategy"] == "STRICT_SPREAD"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "imgs_per_s", "epoch_s"):
        assert metric_steps(client, run.info.run_id, key) == [1, 2, 3], key  # every epoch, once

    # The same trial run on one node into a sqlite store (ddp_sweep): same params but the placement,
    # same artefacts, and the same numbers (same seeds and shards, same gloo reductions) to
    # float32 round-off.
    twin = {r.info.run_name: r for r in ddp_sweep.trials()}["resnet18-width0.125-lr0.05"]
    twin_client = ddp_sweep.client()
    differ = {k for k in run.data.params.keys() | twin.data.params.keys()
              if run.data.params.get(k) != twin.data.params.get(k)}
    assert differ == {"resources.placement_strategy"}, {k: (run.data.params.get(k), twin.data.params.get(k))
                                                        for k in differ}
    for metric in ("train_loss", "val_loss", "val_acc", "train_acc", "lr"):
        a = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        b = sorted((m.step, m.value) for m in twin_client.get_metric_history(twin.info.run_id, metric))
        assert [s for s, _ in a] == [s for s, _ in b]
        assert all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5) for (_, x), (_, y) in zip(a, b)), (metric, a, b)
    assert ({a.path for a in client.list_artifacts(run.info.run_id)}
            == {a.path for a in twin_client.list_artifacts(twin.info.run_id)})


# ---------------------------------------------------------------------------------------------
# A node lost, and a node preempted, while a DDP trial trains across two of them


def node_processes(marker: str, node_id: str) -> set[int]:
    """Pids of one fake node: the processes the provider started with the node's id in their
    environment (its raylet and agents; the raylet's workers inherit it), and their descendants."""
    needle = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
    ours, found = own_processes(marker), set()
    for pid in ours:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.add(pid)
        except OSError:
            continue
    parents = {}
    for pid in ours:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                parents[pid] = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    while True:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        if not children:
            return found
        found |= children


def kill_node(cluster: FakeCluster, node_id: str, training: bool = True) -> float:
    """SIGKILL every process of the node at once, as a machine that vanishes (`training`: one
    of them a DDP worker; else the node may have gone already, as Ray ends a drained node once it
    is idle); the time of the kill."""
    pids = node_processes(cluster.tmpdir, node_id)
    commands = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                commands.append(f.read().split(b"\0")[0].decode(errors="replace"))
        except OSError:
            pass
    if training:
        assert any("raylet" in c for c in commands) and any("RayTrainWorker" in c for c in commands), commands
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return time.time()


def a_worker_only_node(cluster: FakeCluster, before: dict) -> str:
    """The node of one of the trial's live DDP workers that holds neither the trial's own process
    nor its Train controller (losing those is the driver's loss, not a worker node's)."""
    now = cluster.state()
    alive = [a for a in new_actors(before, now, "") if a["state"] == "ALIVE"]
    workers = {a["node_id"] for a in alive if a["class_name"].endswith("RayTrainWorker")}
    drivers = {a["node_id"] for a in alive if a["class_name"].endswith(("ImplicitFunc", "TrainController"))}
    candidates = sorted(workers - drivers)
    return candidates[0] if len(workers) == 2 and candidates else ""


def start_sweep_on(cluster: FakeCluster, folder: Path, text: str, uri: str) -> subprocess.Popen:
    (folder / "sweep.yaml").write_text(text)
    out = open(folder / "out.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", "sweep.yaml", "--address", ADDRESS,
                             "--tracking-uri", uri], cwd=folder, env=cluster.env, stdout=out,
                            stderr=subprocess.STDOUT, text=True)


def wait(predicate, timeout_s: float, proc: subprocess.Popen, what: str, folder: Path):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}:\n"
                                 f"{(folder / 'out.txt').read_text()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, folder: Path, timeout_s: float = 600) -> tuple[int, str]:
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, (folder / "out.txt").read_text()


def first_epoch_after(client, run_id: str, t: float) -> tuple[int, float]:
    """The first epoch logged after time `t`, and when it started training (its log time less
    its own epoch_s): the worker group training again."""
    logged = {m.step: m.timestamp / 1000 for m in client.get_metric_history(run_id, "val_acc")}
    took = {m.step: m.value for m in client.get_metric_history(run_id, "epoch_s")}
    step = min(s for s, at in logged.items() if at > t)
    return step, logged[step] - took[step]


# SPREAD_SWEEP (one DDP rank per node) made long enough for two interruptions.
NODE_LOSS_SWEEP = SPREAD_SWEEP.replace("name: multinode-ddp", "name: multinode-node-loss").replace(
    "epochs: 3", "epochs: 16") + "failure: {max_failures: 1, max_preemptions: 1}\n"
# Training after the drain (14 epochs, ~1.3 s each on a quiet 2-core machine) must outlast the
# watcher's poll (5 s) and this deadline, or the trial ends before the preemption takes effect.
DRAIN_DEADLINE_S = 5


@pytest.mark.ray
def test_a_ddp_trial_outlives_a_lost_node_and_a_preempted_one_each_charged_to_its_own_budget(
        fake_cluster, tmp_path):
    # max_failures 1 and max_preemptions 1: had the preemption been charged to max_failures (or the
    # lost node to max_preemptions), the second restart would have failed the trial.
    assert "STRICT_SPREAD" in NODE_LOSS_SWEEP and "epochs: 16" in NODE_LOSS_SWEEP
    # Two nodes for the trial's ranks and a spare for each interruption: the fake autoscaler would
    # not replace a lost node (see fake_cluster.yaml); a cloud's would, in the instance's start time.
    fake_cluster.worker_nodes(4)
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    before = fake_cluster.state()
    proc = start_sweep_on(fake_cluster, tmp_path, NODE_LOSS_SWEEP, uri)
    try:
        # 1. Node loss: a worker node SIGKILLed (raylet, agents, its DDP rank) after epoch 1 is logged.
        lost = wait(lambda: a_worker_only_node(fake_cluster, before), 600, proc, "two DDP workers", tmp_path)
        wait(lambda: logged_epochs(db) >= 1, 600, proc, "epoch 1 logged", tmp_path)
        killed_at = kill_node(fake_cluster, lost)
        # Ray Train restarts the worker group from the epoch-1 checkpoint, on two live nodes.
        wait(lambda: logged_epochs(db) >= 2, 600, proc, "an epoch after the restart", tmp_path)

        # 2. Preemption, early enough that training outlasts the drain's deadline: a worker-only
        # node of the new group drained as a spot reclaim is, then taken away after the deadline
        # (if Ray has not ended it already, as it does a drained node once it is idle).
        drained = wait(lambda: (n := a_worker_only_node(fake_cluster, before)) != lost and n, 120, proc,
                       "the restarted workers", tmp_path)
        out = subprocess.run([RAY_CLI, "drain-node", "--address", ADDRESS, "--node-id", drained,
                              "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", "spot reclaim (test)",
                              f"--deadline-remaining-seconds={DRAIN_DEADLINE_S}"],
                             env=fake_cluster.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        drained_at = time.time()
        time.sleep(max(0.0, drained_at + DRAIN_DEADLINE_S + 3 - time.time()))
        reclaimed_at = kill_node(fake_cluster, drained, training=False)
    except BaseException:
        proc.kill()  # the job's actors go with its driver
        proc.wait()
        raise
    code, output = finish(proc, tmp_path)
    assert code == 0, output[-4000:]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("multinode-node-loss").experiment_id])
              if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL]
    assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
    for key in ("val_acc", "train_loss", "val_loss", "lr", "restarts", "preemptions"):
        assert metric_steps(client, run.info.run_id, key) == list(range(1, 17)), key  # every epoch, once
    restarts = {m.step: int(m.value) for m in client.get_metric_history(run.info.run_id, "restarts")}
    preemptions = {m.step: int(m.value) for m in client.get_metric_history(run.info.run_id, "preemptions")}
    assert restarts[1] == 0 and restarts[16] == 1 and preemptions[1] == 0 and preemptions[16] == 1, (
        restarts, preemptions)

    # Three worker groups: the lost and the drained node each held a rank of one of them. Both
    # nodes are dead in Ray's view.
    after = fake_cluster.state()
    ranks = new_actors(before, after, "RayTrainWorker")
    assert len(ranks) == 6 and len({a["placement_group_id"] for a in ranks}) == 3, ranks
    assert {lost, drained} <= {a["node_id"] for a in ranks}
    dead = {n["node_id"] for n in after["nodes"] if not n["alive"]}
    assert {lost, drained} <= dead, after["nodes"]

    lost_step, lost_back = first_epoch_after(client, run.info.run_id, killed_at)
    drain_step, drain_back = first_epoch_after(client, run.info.run_id, reclaimed_at)
    print(f"\nnode lost (SIGKILL) -> training again: {lost_back - killed_at:.1f} s (epoch {lost_step}); "
          f"preemption drain ({DRAIN_DEADLINE_S} s deadline) -> training again: {drain_back - drained_at:.1f} s "
          f"(epoch {drain_step})")
    assert lost_back > killed_at and drain_back > drained_at


@pytest.mark.ray
def test_with_no_restarts_allowed_a_lost_node_fails_its_trial_and_the_summary_says_why(fake_cluster, tmp_path):
    text = SPREAD_SWEEP.replace("name: multinode-ddp", "name: multinode-no-restarts").replace(
        "epochs: 3", "epochs: 4") + "failure: {max_failures: 0}\n"
    db = tmp_path / "mlflow.db"
    before = fake_cluster.state()
    proc = start_sweep_on(fake_cluster, tmp_path, text, f"sqlite:///{db}")
    try:
        lost = wait(lambda: a_worker_only_node(fake_cluster, before), 600, proc, "two DDP workers", tmp_path)
        wait(lambda: logged_epochs(db) >= 1, 600, proc, "epoch 1 logged", tmp_path)
        kill_node(fake_cluster, lost)
    except BaseException:
        proc.kill()  # the job's actors go with its driver
        proc.wait()
        raise
    code, output = finish(proc, tmp_path)
    assert code == 1, output[-4000:]  # no trial trained to the end
    assert "Traceback" not in output, output[-4000:]
    (line,) = [ln for ln in output.splitlines() if ln.startswith("  resnet18-width0.125-lr0.05 (")]
    print("\n" + line)
    assert "1 of 1 trial(s) failed:" in output and re.search(r"node|died|worker", line, re.I), output[-3000:]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("multinode-no-restarts").experiment_id])
              if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL]
    assert run.data.tags["status"] == "failed" and run.info.status == "FAILED"
    assert run.data.tags["error"] in line
    assert metric_steps(client, run.info.run_id, "val_acc")[0] == 1


def test_a_ddp_trial_out_of_restarts_fails_with_one_line_naming_the_budget_and_what_each_rank_saw():
    # Ray Train's own exceptions, as trainer.fit() raises them (no cluster needed).
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError
    from ray.train.v2.api.preemption import PreemptionInfo

    from orchestrator.ray_train import training_failure
    from orchestrator.schema import Failure

    lost = WorkerGroupError("...", {
        1: RuntimeError("[gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:55476: Connection reset by peer."),
        0: WorkerHealthCheckFailedError("Worker health check failed.", ActorDiedError())})
    assert training_failure(lost, Failure()) == (
        "the DDP worker group failed and failure.max_failures (0) allows no more restarts: rank 0's worker process "
        "or its node died; rank 1 lost its connection to another rank (that rank's worker or node died)")
    bug = WorkerGroupError("...", {0: ValueError("Traceback (most recent call last):\n  ...\nValueError: bad")})
    assert training_failure(bug, Failure(max_failures=2)) == (
        "the DDP worker group failed and failure.max_failures (2) allows no more restarts: rank 0: ValueError: bad")
    preempted = PreemptionError(PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"ab12": [1]}), True)
    assert training_failure(preempted, Failure(max_preemptions=3)) == (
        "preempted: node(s) ab12 drained for preemption, and failure.max_preemptions (3) allows no more restarts")


# Issue 22: a user's own model file, named in the sweep file as PATH.py:NAME, reaches the worker
# nodes through Ray's runtime_env (py_modules) and is imported there (a trial's working folder is
# Tune's trial folder: nothing on its sys.path holds the file).
OWN_NET = textwrap.dedent('''\
    from typing import Literal

    from torch import nn


    def small_cnn(num_classes: int, width: int = 4, act: Literal["relu", "gelu"] = "relu"):
        return nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU() if act == "relu" else nn.GELU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    ''')

OWN_SWEEP = textwrap.dedent("""\
    name: multinode-own-model
    dataset: {name: digits, val_fraction: 0.1}
    train: {epochs: 1, batch_size: 32, warmup_epochs: 0.5, seed: 0}
    resources: {num_workers: 1, cpus_per_worker: 1, driver_cpus: 0.1}
    search: {scheduler: fifo, num_samples: 1}
    models:
      - arch: nets/own.py:small_cnn
        knobs: {act: {grid: [relu, gelu]}}
    """)


@pytest.mark.ray
def test_a_users_model_file_is_shipped_to_the_worker_nodes_and_trains_there(fake_cluster, tmp_path):
    import hashlib

    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "own.py").write_text(OWN_NET)
    before = fake_cluster.state()
    result = fake_cluster.sweep(tmp_path, OWN_SWEEP, f"sqlite:///{tmp_path}/mlflow.db")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    after = fake_cluster.state()
    head_ids = {n["node_id"] for n in after["nodes"] if n["head"]}
    drivers = new_actors(before, after, "ImplicitFunc")  # each trial's own process, which trains it
    assert len(drivers) == 2 and not {a["node_id"] for a in drivers} & head_ids, drivers

    client, runs = trial_runs(f"sqlite:///{tmp_path}/mlflow.db", "multinode-own-model")
    digest = hashlib.sha256((tmp_path / "nets" / "own.py").read_bytes()).hexdigest()
    assert sorted(r.data.params["knobs.act"] for r in runs) == ["gelu", "relu"]
    for run in runs:
        assert run.data.tags["status"] == "completed" and metric_steps(client, run.info.run_id, "val_acc") == [1]
        assert run.data.params["arch"] == "nets/own.py:small_cnn"
        assert digest in run.data.params.values()  # the file's sha256 in the run record
