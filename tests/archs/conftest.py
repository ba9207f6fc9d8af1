"""What every architecture test in tests/archs/ shares: one intra-op thread per test module.
The helpers the tests call (train_step, rejects, ...) are in archtest.py beside this file.

The tests that pin a parameter count count it on a meta-device model (archs.create_on_meta: no
memory, no weight init), which test_registry.py shows counts as the real model does."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def every_arch_test_on_one_thread(one_thread):
    """tests/conftest.py's one_thread, for every module here (batch-2 convs gain nothing from
    intra-op threads, and idle OpenMP workers spinning on a shared CPU made them 10-30x slower)."""
    yield
