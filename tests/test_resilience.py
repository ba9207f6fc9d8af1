"""Fault tolerance for real: a training worker SIGKILLed mid-trial, and the sweep driver SIGKILLed
mid-sweep then resumed with `--resume`. Each test runs its own local Ray cluster, found (and
cleaned up) through its private RAY_TMPDIR."""

from __future__ import annotations

import contextlib
import glob
import math
import os
import shlex
import signal
import sqlite3
import textwrap
import time

import pytest

from support import (DDP_SWEEP, PAIR_SWEEP, end_processes_mentioning, logged_epochs, metric_steps, run_cli, start_sweep,
                     sweep_through, trials, wait_for)
from orchestrator.runs import ROLE_SWEEP, Tag

pytestmark = pytest.mark.ray


def worker_pids(ray_tmpdir, actor: str = "RayTrainWorker") -> set[int]:
    # Ray names worker processes after the actor class: ray::RayTrainWorker..., ray::ImplicitFunc
    # (a Tune function trial's own process).
    pids = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            env = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith(f"ray::{actor}") and ray_tmpdir in env:
            pids.add(int(pid))
    return pids


def test_a_killed_training_worker_restarts_from_its_checkpoint_and_logs_every_epoch_once(
        tmp_path, ray_tmpdir, ddp_sweep):
    # The e2e DDP sweep's lr=0.05 trial, with restarts allowed; the uninterrupted twin is `ddp_sweep`.
    text = DDP_SWEEP.replace("name: e2e-ddp", "name: e2e-killed-worker").replace(
        "lr: {grid: [0.05, 0.1]}", "lr: 0.05") + "failure: {max_failures: 2}\n"
    (tmp_path / "sweep.yaml").write_text(text)
    killed_at = 0.0

    def kill_a_worker(proc):
        nonlocal killed_at
        wait_for(lambda: glob.glob(str(tmp_path / "ray_results" / "*" / "checkpoint_*")), 600, proc,
                 "the first checkpoint")
        before = wait_for(lambda: worker_pids(ray_tmpdir), 60, proc, "training workers")
        os.kill(sorted(before)[-1], signal.SIGKILL)
        killed_at = time.time()
        # Ray Train replaces the whole worker group; the new workers resume from the checkpoint.
        wait_for(lambda: worker_pids(ray_tmpdir) - before, 300, proc, "a restarted worker group")

    code, out = sweep_through(tmp_path, ray_tmpdir, kill_a_worker)
    assert code == 0, out[-3000:]
    client, runs = trials(f"sqlite:///{tmp_path}/mlflow.db", "e2e-killed-worker")
    run = runs["resnet18-width0.125-lr0.05"]
    assert run.data.tags["status"] == "completed"
    for key in ("val_acc", "train_loss", "val_loss", "lr"):
        assert metric_steps(client, run.info.run_id, key) == [1, 2, 3], key  # no gap, no duplicate
    # Same final numbers as the uninterrupted run: the checkpoint restores model, optimiser,
    # schedule and RNG state, and shuffles depend only on (seed, epoch). Tolerance: 1e-4 absolute.
    twin = {r.info.run_name: r for r in ddp_sweep.trials()}["resnet18-width0.125-lr0.05"]
    for key in ("val_acc", "val_loss", "train_loss"):
        a, b = run.data.metrics[key], twin.data.metrics[key]
        assert math.isclose(a, b, abs_tol=1e-4), (key, a, b)
    assert killed_at > 0


def test_a_killed_single_worker_trial_process_is_retried_from_its_checkpoint_and_logs_every_epoch_once(
        tmp_path, ray_tmpdir):
    # A single-worker trial trains in its Tune trial process: Tune's FailureConfig retries it there.
    text = PAIR_SWEEP.replace("e2e-pair", "e2e-killed-trial").replace("epochs: 3", "epochs: 6").replace(
        "lr: {grid: [0.05, 0.1]}", "lr: 0.1") + "failure: {max_failures: 1}\n"
    (tmp_path / "sweep.yaml").write_text(text)

    def kill_the_trial_process(proc):
        wait_for(lambda: glob.glob(str(tmp_path / "ray_results" / "*" / "resnet18_*" / "checkpoint_000001")), 600,
                 proc, "the second epoch's checkpoint")
        (victim,) = wait_for(lambda: worker_pids(ray_tmpdir, "ImplicitFunc"), 60, proc, "the trial process")
        os.kill(victim, signal.SIGKILL)

    code, out = sweep_through(tmp_path, ray_tmpdir, kill_the_trial_process)
    assert code == 0, out[-3000:]
    client, runs = trials(f"sqlite:///{tmp_path}/mlflow.db", "e2e-killed-trial")
    (run,) = runs.values()
    assert run.data.tags["status"] == "completed"
    for key in ("val_acc", "train_loss", "lr", "epoch_s"):
        assert metric_steps(client, run.info.run_id, key) == [1, 2, 3, 4, 5, 6], key  # no gap, no duplicate
    # Tune's own record of the trial: the retry went on from a checkpoint, not from epoch 1.
    (results,) = glob.glob(str(tmp_path / "ray_results" / "*" / "resnet18_*" / "result.json"))
    import json

    epochs = [json.loads(line)["epoch"] for line in open(results) if line.strip()]
    assert epochs.count(1) == 1 and epochs[-1] == 6, epochs


RESUME_SWEEP = textwrap.dedent("""\
    name: e2e-resume
    dataset: {name: digits}
    train: {epochs: 3, batch_size: 32, warmup_epochs: 0.5, seed: 0}
    resources: {num_workers: 1, cpus_per_worker: 1, driver_cpus: 0.1}
    search: {scheduler: fifo, max_concurrent_trials: 1, algorithm: tpe, trials_per_model: 2}
    models:
      - arch: resnet18
        knobs: {width: 0.125}
        lr: {loguniform: [0.03, 0.15]}
    """)


@pytest.mark.parametrize("resources", ["{num_workers: 1, cpus_per_worker: 1}",
                                       "{num_workers: 2, cpus_per_worker: 0.5, driver_cpus: 0.1}"],
                         ids=["in_process_trials", "ddp_trials"])
def test_a_tpe_sweep_resumed_after_the_driver_was_killed_reruns_nothing_finished_and_continues_the_runs(
        resources, tmp_path, ray_tmpdir):
    (tmp_path / "sweep.yaml").write_text(RESUME_SWEEP.replace("{num_workers: 1, cpus_per_worker: 1, driver_cpus: 0.1}",
                                                              resources))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = start_sweep(tmp_path, ray_tmpdir)
    try:
        # Kill the driver once trial 0 finished and trial 1's first epoch is in MLflow. Look through a
        # read-only sqlite connection: an MlflowClient opened while the sweep is still creating the
        # store would run MLflow's schema migrations concurrently with the sweep's own, and sqlite
        # migrations from two processes collide ("table _alembic_tmp_tags already exists").
        def second_trial_logged_an_epoch():
            db = tmp_path / "mlflow.db"
            if not db.exists():
                return False
            try:
                with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
                    (count,) = con.execute("SELECT count(DISTINCT run_uuid) FROM metrics WHERE key = 'val_acc'"
                                           ).fetchone()
            except sqlite3.OperationalError:  # tables not created yet, or the store is locked
                return False
            return count >= 2  # one trial at a time: the first has ended

        wait_for(second_trial_logged_an_epoch, 900, proc, "the second trial's first logged epoch")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    end_processes_mentioning(ray_tmpdir)  # the dead driver's Ray cluster

    client, runs = trials(uri, "e2e-resume")
    # TPE drew the learning rates (so the names): the trials in the order they started.
    first, second = sorted(runs.values(), key=lambda r: r.info.start_time)
    # Trial 0 ended in Tune; its MLflow finishing (plots, model, the status tag last) may still have
    # been queued on the driver's background writer when the driver died: then --resume finishes it.
    finished_before = first.data.tags["status"] == "completed"
    assert finished_before or first.data.tags["status"] == "running"
    assert second.data.tags["status"] == "running" and 1 <= len(metric_steps(client, second.info.run_id)) < 3
    first_before = (metric_steps(client, first.info.run_id),
                    {k: v for k, v in first.data.metrics.items() if not k.startswith("model_")})

    resumed = run_cli(["sweep", "sweep.yaml", "--tracking-uri", uri, "--resume"], cwd=tmp_path,
                      env={"RAY_TMPDIR": ray_tmpdir})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout

    client, after = trials(uri, "e2e-resume")
    # No new child runs: the resumed trial continued its own, and the restored TPE searcher knew
    # its budget was spent.
    assert set(after) == set(runs)
    first_after, second_after = after[first.info.run_name], after[second.info.run_name]
    assert first_after.info.run_id == first.info.run_id
    assert first_after.data.tags["status"] == "completed" and first_after.info.status == "FINISHED"
    assert (metric_steps(client, first.info.run_id),  # not trained again: no epoch re-logged
            {k: v for k, v in first_after.data.metrics.items() if not k.startswith("model_")}) == first_before
    if finished_before:
        assert first_after.info.end_time == first.info.end_time  # untouched
    assert second_after.info.run_id == second.info.run_id
    assert second_after.data.tags["status"] == "completed"
    assert metric_steps(client, second.info.run_id) == [1, 2, 3]
    parents = [r for r in client.search_runs([first.info.experiment_id])
               if r.data.tags.get(Tag.ROLE) == ROLE_SWEEP]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"


INTERRUPT_SWEEP = PAIR_SWEEP.replace("e2e-pair", "e2e-interrupt").replace("epochs: 3", "epochs: 4")


# SIGINT and SIGTERM share one handler (sweep.SIGNALS; the exit code is 128 + the signal): SIGTERM
# here; SIGINT's 130, its marked runs and its resume are test_faults' double Ctrl-C, whose first
# Ctrl-C takes this same path.
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143)], ids=["SIGTERM"])
def test_an_interrupted_sweep_exits_with_the_signals_code_marks_its_runs_and_resumes_to_the_end(
        signum, code, tmp_path, ray_tmpdir):
    (tmp_path / "sweep.yaml").write_text(INTERRUPT_SWEEP)
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def interrupt(proc):
        wait_for(lambda: logged_epochs(tmp_path / "mlflow.db") >= 1, 600, proc, "a logged epoch")
        proc.send_signal(signum)  # what Ctrl-C or `kill` does: not SIGKILL

    exit_code, out = sweep_through(tmp_path, ray_tmpdir, interrupt, timeout_s=120)
    assert exit_code == code, out[-3000:]
    client, runs = trials(uri, "e2e-interrupt")
    parent = [r for r in client.search_runs([next(iter(runs.values())).info.experiment_id])
              if r.data.tags.get(Tag.ROLE) == ROLE_SWEEP]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"
    stopped = [r for r in runs.values() if r.data.tags["status"] == "interrupted"]
    assert stopped and all(r.info.status == "KILLED" for r in stopped)
    assert all(r.data.tags["status"] in ("interrupted", "completed") for r in runs.values())
    # The command it printed finishes the sweep: every trial's own run continued, no step twice.
    (command,) = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("orchestrate sweep ")]
    resumed = run_cli(shlex.split(command)[1:], cwd=tmp_path, env={"RAY_TMPDIR": ray_tmpdir})
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    client, after = trials(uri, "e2e-interrupt")
    assert {n: r.info.run_id for n, r in after.items()} == {n: r.info.run_id for n, r in runs.items()}
    for run in after.values():
        assert run.data.tags["status"] == "completed" and run.info.status == "FINISHED"
        assert metric_steps(client, run.info.run_id) == [1, 2, 3, 4]
