"""The model registry: arch name -> builder, plus the knobs each family accepts.

Every family module registers each builder with `@register(...)`, under the builder's own name,
declaring its knobs (name, type, default, allowed values or range, what it means) and its paper
beside the code that uses them (`orchestrate archs -l` shows them). `validate()` checks a knob dict
against those declarations without building anything, so a sweep file is rejected before a single
Ray worker starts; `create()` validates and then builds.

A model from the user's own code (`arch: nets/tiny.py:TinyNet`, archs/user.py) becomes an `Arch`
record of this same registry, under that reference, its knobs read from its signature: everything
downstream (validation, search spaces, the engine, the run record) treats it as any other arch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import torch
from torch import nn


class _Required:
    """The default of a knob that has none (a user's constructor argument without a default)."""

    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()


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

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def allowed(self) -> str:
        if self.choices is not None:
            return "is not one of " + ", ".join(str(c) for c in self.choices)
        if self.low is None:
            return f"is not a {self.type.__name__}"
        return f"is not a {self.type.__name__} in [{self.low}, {self.high}]"

    def check(self, value: Any) -> Any:
        """Return `value` coerced to the knob's type, or raise KnobError."""
        if (isinstance(value, bool) != (self.type is bool)
                or not isinstance(value, (int, float) if self.type is float else self.type)):
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
        if self.low is None:
            return f"any {self.type.__name__}"
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
    # The one image side the design takes (None: any), and why: e.g. a classifier whose Linear is
    # sized for the feature map of a 32x32 input.
    input_size: int | None = None
    input_reason: str = ""
    # The builder takes `image_size=` (a user's model may ask for it).
    takes_image_size: bool = False
    # A user's model (archs/user.py): where its code is. Empty for the zoo.
    code: Any = None

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs if not k.required}

    def size_problem(self, image_size: int) -> str | None:
        """None if this arch can take `image_size` x `image_size` images, else why not."""
        if self.input_size is None or image_size == self.input_size:
            return None
        return (f"{self.name} takes {self.input_size}x{self.input_size} images only ({self.input_reason}), "
                f"not {image_size}x{image_size}")


_REGISTRY: dict[str, Arch] = {}


def register(*, family: str, knobs: Iterable[Knob], paper: str,
             check: Callable[[dict[str, Any]], KnobError | None] | None = None,
             smallest: dict[str, Any] | None = None, input_size: int | None = None, input_reason: str = ""):
    """Decorator registering a builder under its own name, as timm's `register_model` does:

        @register(family="ResNet", knobs=[WIDTH], paper=PAPER, smallest={"width": 0.125})
        def resnet18(num_classes: int = 10, width: float = 1.0) -> ResNet: ...
    """

    def decorate(builder: Callable[..., nn.Module]):
        name = builder.__name__
        if name in _REGISTRY:
            raise RuntimeError(f"arch {name!r} registered twice")
        _REGISTRY[name] = Arch(name, family, builder, tuple(knobs), paper, check, dict(smallest or {}),
                               input_size=input_size, input_reason=input_reason)
        return builder

    return decorate


def put(arch: Arch) -> Arch:
    """Add (or replace) a user's model record under its reference (archs/user.py); a zoo name is
    never replaced."""
    if arch.name in _REGISTRY and _REGISTRY[arch.name].code is None:
        raise RuntimeError(f"arch {arch.name!r} is the zoo's")
    _REGISTRY[arch.name] = arch
    return arch


def _load_all() -> None:
    # Importing the package registers every family (archs/__init__.py imports each module).
    import archs  # noqa: F401


def names(pattern: str | None = None) -> list[str]:
    import fnmatch

    _load_all()
    return sorted(n for n, a in _REGISTRY.items()
                  if a.code is None and (pattern is None or fnmatch.fnmatch(n, pattern)))


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n in names():
        out.setdefault(_REGISTRY[n].family, []).append(n)
    return out


def get(name: str) -> Arch:
    """The zoo's arch `name`, or the user's model a reference names (`PATH.py:NAME`,
    `package.module:NAME`), loaded once per process (archs/user.py)."""
    _load_all()
    if name not in _REGISTRY:
        from archs import user

        if not user.is_reference(name):
            raise KnobError("arch", name, "is not one of " + ", ".join(names())
                            + ", or PATH.py:NAME or package.module:NAME (your own model)")
        return user.load(name)
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
    missing = [k.name for k in arch.knobs if k.name not in resolved]
    if missing:
        raise KnobError(missing[0], REQUIRED, f"is missing: {name} has no default for it; set it under knobs")
    if arch.check is not None:
        err = arch.check(resolved)
        if err is not None:
            raise err
    return resolved


def create(name: str, num_classes: int = 10, image_size: int = 32, **knobs: Any) -> nn.Module:
    """Build `name` for `num_classes` at `image_size` x `image_size` input, after validating its
    knobs and that the arch takes that size."""
    resolved = validate(name, knobs)
    arch = get(name)
    too_small = arch.size_problem(image_size)
    if too_small:
        raise KnobError("image_size", image_size, too_small.removeprefix(f"{name} "))
    sized = {"image_size": image_size} if arch.takes_image_size else {}
    return arch.builder(num_classes=num_classes, **sized, **resolved)


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
