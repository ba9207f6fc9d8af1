"""What every architecture test in tests/archs/ shares: one intra-op thread per test module.
The helpers the tests call (train_step, rejects, ...) are in archtest.py beside this file.

The tests that pin a parameter count count it on a meta-device model (archs.create_on_meta: no
memory, no weight init), which test_registry.py shows counts as the real model does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Batch-2 CIFAR convs gain nothing from intra-op threads, and on a shared CPU the idle OpenMP
    # workers' spin-waiting made them 10-30x slower; the previous setting is restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def pytest_plugin_registered(plugin, manager):
    # pytest imports every conftest.py outside a package as the one module "conftest", so loading
    # this file replaced tests/conftest.py in sys.modules, and `from conftest import ...` in a test
    # module collected after this folder (tests/test_*.py sort after "archs") would find this file.
    # Once this file is registered, give the name back to tests/conftest.py.
    if _is_file(plugin, Path(__file__).resolve()):
        for other in manager.get_plugins():
            if _is_file(other, ROOT_CONFTEST):
                sys.modules["conftest"] = other


def _is_file(module, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path
