"""What every architecture test in tests/archs/ shares: one intra-op thread per test module.
The helpers the tests call (train_step, rejects, ...) are in archtest.py beside this file.

The tests that pin a parameter count count it on a meta-device model (archs.create_on_meta: no
memory, no weight init), which test_registry.py shows counts as the real model does."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Batch-2 CIFAR convs gain nothing from intra-op threads, and on a shared CPU the idle OpenMP
    # workers' spin-waiting made them 10-30x slower; the previous setting is restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
