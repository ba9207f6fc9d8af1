"""Search spaces: what a value of a model entry may be, and the one walk over a nested space. No
torch, Ray or MLflow (config.py checks a sweep file with these rules; search.py hands the spaces
to Ray Tune).

A value is a literal or a one-key mapping naming a space, mapping 1:1 onto ray.tune primitives:
    {grid: [..]} {choice: [..]} {uniform: [lo, hi]} {loguniform: [lo, hi]} {randint: [lo, hi]}
(randint's upper bound is exclusive, as in tune.randint). An entry's space
(`ModelEntry.point_space()`) nests plain mappings (`knobs:`); a leaf is a literal or a space, and
its path is the tuple of keys down to it, shown as `knobs.width`. Every walk over a space is
`map_leaves` (or `leaves`, built on it). ("/" is only Ray's: OptunaSearch nests its parameter
names on it, search.py.)
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

from orchestrator.schema import show, type_problem

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")

Path = tuple  # of str: the keys from the top of a space down to a leaf


def is_space(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS


def kind_of(value: Any) -> str | None:
    """The space's kind (grid, choice, ...), or None for a literal."""
    return next(iter(value)) if is_space(value) else None


def show_path(path: Path) -> str:
    return ".".join(path)


# ---------------------------------------------------------------------------------------------
# The walk


def map_leaves(space: dict[str, Any], fn: Callable[[Path, Any], Any], prefix: Path = ()) -> dict[str, Any]:
    """`space` with every leaf (a literal or a space; not a plain mapping, which is walked into)
    replaced by fn(path, leaf); the mappings are new, in the same key order."""
    return {key: map_leaves(value, fn, prefix + (key,)) if isinstance(value, dict) and not is_space(value)
            else fn(prefix + (key,), value) for key, value in space.items()}


def leaves(space: dict[str, Any]) -> dict[Path, Any]:
    """Every leaf of `space` by its path, in file order."""
    found: dict[Path, Any] = {}
    map_leaves(space, found.setdefault)
    return found


def grid_size(space: dict[str, Any]) -> int:
    """Points of the space's grid: the product of its grid leaves' lengths (1 without any)."""
    return math.prod(len(value["grid"]) for value in leaves(space).values() if kind_of(value) == "grid")


def sampled(space: dict[str, Any]) -> dict[Path, Any]:
    """The leaves that are sampled (choice, uniform, loguniform, randint), not grid, by path."""
    return {path: value for path, value in leaves(space).items() if is_space(value) and kind_of(value) != "grid"}


def grid_points(space: dict[str, Any]) -> list[dict[str, Any]]:
    """`space` once per combination of its `grid` leaves (nested mappings included; the first
    leaf varies slowest), other leaves as they are."""
    grid = {path: value["grid"] for path, value in leaves(space).items() if kind_of(value) == "grid"}
    return [map_leaves(space, lambda path, value, at=dict(zip(grid, combo)): at.get(path, value))
            for combo in itertools.product(*grid.values())]


# ---------------------------------------------------------------------------------------------
# One leaf


def problem(key: str, value: Any) -> tuple[str, str] | None:
    """Why `value` is not a literal or a well-formed space, as (the key to name, what is wrong),
    or None: the right argument list for its kind."""
    if isinstance(value, dict) and not is_space(value):
        return key, f"{show(value)} is not a value or one of {{{': ..}, {'.join(SPACE_KINDS)}: ..}}"
    if not is_space(value):
        return None
    kind, args = next(iter(value.items()))
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            return f"{key}.{kind}", f"{show(args)} is not a non-empty list"
        return None
    if not isinstance(args, list) or len(args) != 2:
        return f"{key}.{kind}", f"{show(args)} is not [low, high] numbers"
    for bound in args:
        wrong = type_problem(bound, int if kind == "randint" else float)
        if wrong:
            return f"{key}.{kind}", f"{show(args)}: {wrong}"
    if not args[0] < args[1]:
        return f"{key}.{kind}", f"low {args[0]} is not below high {args[1]}"
    if kind == "loguniform" and args[0] <= 0:
        return f"{key}.{kind}", f"low {args[0]} must be > 0 for a log scale"
    return None


def continuous_problem(key: str, value: Any, takes_any_float: bool, allowed: str) -> tuple[str, str] | None:
    """uniform/loguniform sample any float: refused where only ints or listed values are valid."""
    if is_space(value) and not takes_any_float:
        kind, args = next(iter(value.items()))
        if kind in ("uniform", "loguniform"):
            return f"{key}.{kind}", (f"samples any float in [{args[0]}, {args[1]}], but this must be {allowed}; "
                                     "use grid, choice or randint")
    return None


def values(value: Any) -> list[Any] | None:
    """The discrete values a leaf can take, or None for a continuous range."""
    if not is_space(value):
        return [value]
    kind, args = next(iter(value.items()))
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint" and args[1] - args[0] <= 64:
        return list(range(args[0], args[1]))
    return None


def bounds(value: Any) -> list[Any]:
    """Values to check a leaf with: every discrete value, or both ends of a range."""
    discrete = values(value)
    if discrete is not None:
        return discrete
    kind, args = next(iter(value.items()))
    return [args[0], args[1] - 1] if kind == "randint" else list(args)
