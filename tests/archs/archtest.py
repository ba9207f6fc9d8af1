"""Helpers the architecture tests in tests/archs/ share (their thread limit is in conftest.py):

    from archtest import builds_and_trains, rejects, train_step

pytest does not rewrite the asserts in this file, so each carries its own message.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archs


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
