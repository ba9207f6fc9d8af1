"""Helpers shared by the per-family architecture tests, tests/test_arch_*.py.

A test module takes the thread limit by binding the fixture at module level; an autouse fixture
applies to the module it is found in, and this file is neither a test module nor a conftest, so
nothing here applies by itself:

    import archtest
    from archtest import rejects, train_step

    one_thread = archtest.one_thread

pytest does not rewrite the asserts in this file either, so each carries its own message.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archs


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Batch-2 CIFAR convs gain nothing from intra-op threads, and on a shared CPU the idle OpenMP
    # workers' spin-waiting made them 10-30x slower; the previous setting is restored afterwards.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def train_step(model: nn.Module, num_classes: int = 10) -> torch.Tensor:
    """One forward+backward on a seeded [2, 3, 32, 32] batch: asserts [2, num_classes] logits and a
    finite gradient on every parameter, and returns the logits."""
    torch.manual_seed(0)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, num_classes), f"logits of shape {tuple(logits.shape)}, not (2, {num_classes})"
    F.cross_entropy(logits, torch.randint(num_classes, (2,))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    return logits


def builds_and_trains(name: str, setting: str) -> None:
    """`setting` "defaults" (knobs {}, 10 classes) or "smallest" (the arch's declared smallest knobs,
    100 classes): the knobs validate, and the model builds and trains a step (train_step)."""
    knobs = {} if setting == "defaults" else archs.get(name).smallest
    archs.validate(name, knobs)
    num_classes = 10 if setting == "defaults" else 100  # any class count, not just CIFAR-10's
    train_step(archs.create(name, num_classes=num_classes, **knobs), num_classes)


def rejects(name: str, knobs: dict, knob: str) -> archs.KnobError:
    """archs.validate(name, knobs) raises a KnobError that names `knob`; returns it, for checks on
    its message."""
    with pytest.raises(archs.KnobError) as err:
        archs.validate(name, knobs)
    assert err.value.knob == knob, f"the KnobError names {err.value.knob!r}, not {knob!r}: {err.value}"
    return err.value
