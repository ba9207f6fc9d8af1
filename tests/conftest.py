"""Shared fixtures. The end-to-end sweeps are expensive (a Ray trial costs ~20-45 s of start-up on
2 cores), so each one runs once per session and several test modules read its results."""

from __future__ import annotations

import shutil
import tempfile

import pytest

import stores
from support import DDP_SWEEP, FAIR_SWEEP, Sweep, end_processes_mentioning, run_sweep


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
    """A real `mlflow server` on 127.0.0.1 (sqlite, local artefacts): its URL."""
    with stores.mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL on 127.0.0.1 (a stores.Postgres): a test takes its own database with
    pg.create_database(NAME)."""
    with stores.postgres() as server:
        yield server


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 API server (a stores.S3Server); s3.env is what a process needs to reach it."""
    with stores.s3_server(str(tmp_path_factory.mktemp("moto"))) as server:
        yield server


@pytest.fixture
def ray_tmpdir():
    """A private RAY_TMPDIR for a test's own local Ray cluster; whatever a killed driver left there is ended."""
    folder = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
    yield folder
    end_processes_mentioning(folder)  # whatever a killed driver left behind
    shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """A test that reads a whole sweep's fixture (every such fixture is named `*_sweep`: a real
    sweep, minutes on 2 cores, once per session or module) starts Ray through it: `ray`. Every test
    that starts Ray is `slow` as well: `pytest -m "not slow"` is the everyday loop (the pure parts,
    the CLI's refusals, replayed run records), and CI runs everything."""
    for item in items:
        if any(name.endswith("_sweep") for name in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.slow)
