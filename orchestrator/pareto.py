"""Several objectives: which points no other point dominates (`front`), which one of those a sweep
selects (`select`), and how much of the objective space a set of points covers (`hypervolume`).
Pure Python, no store, no Ray: `runs.py` marks a sweep's trials with it, `search.py` picks an
entry's configuration for its seed runs with it, the report draws it, the benchmark scores it.

A point is a sequence of objective values, one per direction ("max" or "min"), None where the
value is unknown (such a point takes no part). Point `a` dominates `b` when it is no worse in
every objective and better in at least one: equal points do not dominate each other, so they
are all on the front together.

    front([(0.95, 2.0), (0.90, 1.0), (0.85, 1.5)], ("max", "min"))   # [0, 1]
    select([(0.95, 2.0), (0.90, 1.0)], ("max", "min"), "first")      # 0
"""

from __future__ import annotations

import math
from typing import Sequence

DIRECTIONS = ("max", "min")
# How a sweep with objectives picks its one configuration (the registered @best, an entry's seed runs):
# first: the Pareto point best on the first objective (ties: on the next objectives, then the
#   earlier point); the most accurate model the sweep found, with nothing cheaper that is as good;
# knee: the Pareto point nearest the ideal point once each objective is scaled to [0, 1] over
#   the Pareto set (0: the best value a Pareto point reached, 1: the worst); ties: as `first`.
SELECT_RULES = ("first", "knee")

Point = Sequence["float | None"]


def _oriented(point: Point, directions: Sequence[str]) -> tuple[float, ...]:
    """The point with every objective turned into one to maximise."""
    return tuple(v if d == "max" else -v for v, d in zip(point, directions))


def known(point: Point) -> bool:
    """Every value present and a finite number (a NaN loss takes no part)."""
    return all(v is not None and math.isfinite(v) for v in point)


def dominates(a: Point, b: Point, directions: Sequence[str]) -> bool:
    """`a` is no worse than `b` in every objective and better in at least one."""
    oa, ob = _oriented(a, directions), _oriented(b, directions)
    return all(x >= y for x, y in zip(oa, ob)) and any(x > y for x, y in zip(oa, ob))


def front(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, among those with every value
    known."""
    ok = [i for i, p in enumerate(points) if known(p)]
    return [i for i in ok if not any(dominates(points[j], points[i], directions) for j in ok if j != i)]


def _lexicographic(points: Sequence[Point], directions: Sequence[str], i: int) -> tuple:
    return tuple(-v for v in _oriented(points[i], directions)) + (i,)


def select(points: Sequence[Point], directions: Sequence[str], rule: str) -> int | None:
    """The index of the one point `rule` (SELECT_RULES) picks from the Pareto front of `points`;
    None when no point has every value."""
    members = front(points, directions)
    if not members:
        return None
    if rule == "first":
        return min(members, key=lambda i: _lexicographic(points, directions, i))
    if rule != "knee":
        raise ValueError(f"unknown rule {rule!r}; allowed: {', '.join(SELECT_RULES)}")
    oriented = {i: _oriented(points[i], directions) for i in members}
    best = [max(oriented[i][k] for i in members) for k in range(len(directions))]
    worst = [min(oriented[i][k] for i in members) for k in range(len(directions))]

    def distance(i: int) -> float:  # to the ideal point, each objective scaled over the front
        return math.sqrt(sum(((best[k] - oriented[i][k]) / (best[k] - worst[k])) ** 2
                             for k in range(len(directions)) if best[k] > worst[k]))

    return min(members, key=lambda i: (distance(i), _lexicographic(points, directions, i)))


def hypervolume(points: Sequence[Point], directions: Sequence[str], reference: Point) -> float:
    """The volume of the objective space the points dominate, bounded by the `reference` point
    (a point worse than any that counts, in every objective); points that do not dominate the
    reference add nothing. Exact, by slicing along the first objective: fine for the few dozen
    points and two or three objectives of a sweep."""
    inside = [_oriented(p, directions) for p in points
              if known(p) and all(x > r for x, r in zip(_oriented(p, directions), _oriented(reference, directions)))]
    return _volume(inside, _oriented(reference, directions))


def _volume(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    """Hypervolume of maximised points above `reference` (every point strictly better in each)."""
    if not points:
        return 0.0
    if len(reference) == 1:
        return max(p[0] for p in points) - reference[0]
    total, levels = 0.0, sorted({p[0] for p in points}, reverse=True)
    for k, level in enumerate(levels):  # the slab between this level and the next lower one
        lower = levels[k + 1] if k + 1 < len(levels) else reference[0]
        slab = [p[1:] for p in points if p[0] >= level]
        total += (level - lower) * _volume(slab, reference[1:])
    return total
