"""The model registry: arch name -> builder, plus the knobs each family accepts.

Every family module registers each builder with `@register(...)`, under the builder's own name,
declaring its knobs (name, type, default, allowed values or range, what it means) and its paper
beside the code that uses them (`orchestrate archs -l` shows them). `validate()` checks a knob dict
against those declarations without building anything, so a sweep file is rejected before a single
Ray worker starts; `create()` validates and then builds.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import torch
from torch import nn


class KnobError(ValueError):
    """A knob value an arch does not accept. `knob` names it; str() is a one-line user message."""

    def __init__(self, knob: str, value: Any, allowed: str):
        self.knob, self.value, self.allowed = knob, value, allowed
        super().__init__(f"{knob}: {value!r} {allowed}")


@dataclasses.dataclass(frozen=True)
class Knob:
    """One constructor argument a sweep may set. Either `choices` or a `low`..`high` range."""

    name: str
    type: type
    default: Any
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    help: str = ""

    def allowed(self) -> str:
        if self.choices is not None:
            return "is not one of " + ", ".join(str(c) for c in self.choices)
        return f"is not a {self.type.__name__} in [{self.low}, {self.high}]"

    def check(self, value: Any) -> Any:
        """Return `value` coerced to the knob's type, or raise KnobError."""
        if isinstance(value, bool) or not isinstance(value, (int, float) if self.type is float else self.type):
            raise KnobError(self.name, value, f"is not a {self.type.__name__}; " + self.describe())
        value = self.type(value)
        if self.choices is not None and value not in self.choices:
            raise KnobError(self.name, value, self.allowed())
        if self.low is not None and not (self.low <= value <= self.high):
            raise KnobError(self.name, value, self.allowed())
        return value

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        return f"{self.type.__name__} in [{self.low}, {self.high}]"


# The knob every family but ShuffleNet (whose paper fixes its scale factors) takes as it is.
WIDTH = Knob("width", float, 1.0, low=0.125, high=4.0, help="channel multiplier")


@dataclasses.dataclass(frozen=True)
class Arch:
    name: str
    family: str
    builder: Callable[..., nn.Module]
    knobs: tuple[Knob, ...]
    paper: str
    # Cross-knob rule (e.g. channels divisible by groups): returns KnobError or None.
    check: Callable[[dict[str, Any]], KnobError | None] | None = None
    # The smallest setting of the knobs, used by tests and the quickstart.
    smallest: dict[str, Any] = dataclasses.field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}


_REGISTRY: dict[str, Arch] = {}


def register(*, family: str, knobs: Iterable[Knob], paper: str,
             check: Callable[[dict[str, Any]], KnobError | None] | None = None,
             smallest: dict[str, Any] | None = None):
    """Decorator registering a builder under its own name, as timm's `register_model` does:

        @register(family="ResNet", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125})
        def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet: ...
    """

    def decorate(builder: Callable[..., nn.Module]):
        name = builder.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"arch {name!r} registered twice")
        _REGISTRY[name] = Arch(name, family, builder, tuple(knobs), paper, check, dict(smallest or {}))
        return builder

    return decorate


def _load_all() -> None:
    # Importing the package registers every family (archs/__init__.py imports each module).
    import archs  # noqa: F401


def names(pattern: str | None = None) -> list[str]:
    import fnmatch

    _load_all()
    return sorted(n for n in _REGISTRY if pattern is None or fnmatch.fnmatch(n, pattern))


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names():
        out.setdefault(_REGISTRY[n].family, []).append(n)
    return out


def get(name: str) -> Arch:
    _load_all()
    if name not in _REGISTRY:
        raise KnobError("arch", name, "is not one of " + ", ".join(names()))
    return _REGISTRY[name]


def validate(name: str, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Full knob dict (defaults filled in) for `name`, or KnobError naming the first bad knob."""
    arch = get(name)
    declared = {k.name: k for k in arch.knobs}
    resolved = arch.defaults()
    for key, value in (knobs or {}).items():
        if key not in declared:
            raise KnobError(key, value, f"is not a knob of {name}; its knobs are " + (", ".join(declared) or "none"))
        resolved[key] = declared[key].check(value)
    if arch.check is not None:
        err = arch.check(resolved)
        if err is not None:
            raise err
    return resolved


def create(name: str, num_classes: int = 10, **knobs: Any) -> nn.Module:
    """Build `name` for `num_classes` at 32x32 input, after validating its knobs."""
    resolved = validate(name, knobs)
    return get(name).builder(num_classes=num_classes, **resolved)


def create_on_meta(name: str, num_classes: int = 10, **knobs: Any) -> nn.Module:
    """`create` on torch's meta device: a model of shapes only, with no memory and no weight
    initialisation, built in milliseconds; count_params and count_flops give the real model's
    counts on it (tests/archs/test_registry.py checks every arch). Its weights hold no values: it is
    for counting, not for training or inference."""
    with torch.device("meta"):
        return create(name, num_classes, **knobs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, image_size: int = 32) -> int:
    """Forward FLOPs of one 3x`image_size`^2 image, counted by torch's own FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, 3, image_size, image_size, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
