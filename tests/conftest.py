"""Shared fixtures. The end-to-end sweeps are expensive (a Ray trial costs ~20-45 s of start-up on
2 cores), so each one runs once per session and several test modules read its results."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from support import DDP_SWEEP, FAIR_SWEEP, Sweep, free_port, processes_mentioning, run_sweep


@pytest.fixture(scope="module")
def one_thread():
    """Small CIFAR models gain nothing from intra-op threads, and on a shared CPU idle OpenMP
    workers spin: one thread for the module that asks (`pytest.mark.usefixtures`), then back."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ddp_sweep(tmp_path_factory) -> Sweep:
    return run_sweep(tmp_path_factory, "ddp", DDP_SWEEP)


@pytest.fixture(scope="session")
def fair_sweep(tmp_path_factory) -> Sweep:
    return run_sweep(tmp_path_factory, "fair", FAIR_SWEEP)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, in its own process group (it starts children)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "artifacts"),
         "--workers", "1"],
        cwd=folder, stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError("mlflow server did not start: " + (folder / "server.log").read_text()[-2000:])
        time.sleep(1)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def ray_tmpdir():
    """A private RAY_TMPDIR for a test's own local Ray cluster; whatever a killed driver left there is ended."""
    folder = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
    yield folder
    for line in processes_mentioning(folder):  # whatever a killed driver left behind
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(folder, ignore_errors=True)
