"""The report's content, pure: the Pareto frontier (`pareto_front`), the plain answers
(`answers`), and the page's content as typed records (`ReportData`), unit-tested without a store."""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

from orchestrator import pareto
from orchestrator.runs import Standing
from orchestrator.spend import Spend
from orchestrator.schema import better, show

# "Fastest at >= 99% of the best accuracy", "smallest at >= 98%": how close to the best mean an
# entry must come to be named, as a share of the best (for a loss: within 1 - share above it).
NEAR_BEST_FOR_LATENCY = 0.99
NEAR_BEST_FOR_SIZE = 0.98

# The costs a frontier is drawn against: the Standing attribute, its axis label, its unit in prose.
COSTS = (("latency_ms", "batch-1 inference latency (ms)", "latency"),
         ("params", "parameters", "params"),
         ("flops", "FLOPs (one image at the sweep's size)", "FLOPs"))



def pareto_front(points: Sequence[tuple[float | None, float | None]], mode: str) -> list[int]:
    """Indices of the (cost, metric) points no other point dominates, cheapest first. Lower cost is
    better; a higher metric with mode `max`, a lower one with `min`. A point is dominated by one
    that is no worse in both and better in one, so equal points are all on the front. Points with
    a None are left out."""
    sign = 1.0 if mode == "max" else -1.0
    return sorted(pareto.front(points, ("min", mode)), key=lambda i: (points[i][0], -sign * points[i][1], i))


@dataclasses.dataclass(frozen=True)
class Answer:
    """One plain-language answer: the question, the entry it names (an index into the page's
    entries, None when no entry qualifies) and the sentence with its numbers."""

    question: str
    entry: int | None
    text: str


def near_best(best: float, share: float, mode: str) -> float:
    """The value an entry's mean must reach to count as `share` of the best: share x best for a
    `max` metric; for a `min` one (a loss), at most (1 - share) above it."""
    return best * share if mode == "max" else best * (2.0 - share)


def describe_mean(s: Standing) -> str:
    """`0.912 ± 0.004, 95% interval 0.903-0.921, n=3`, or the one run's value."""
    if s.std is None:
        return f"{s.mean:.3f}, one run"
    text = f"{s.mean:.3f} ± {s.std:.3f}"
    if s.low is not None:
        text += f", 95% interval {s.low:.3f}-{s.high:.3f}"
    return text + f", n={s.n}"


def _share(share: float, mode: str, metric: str, level: float) -> str:
    if mode == "max":
        return f"at >= {share:.0%} of the best {metric} (>= {level:.3f})"
    return f"within {1 - share:.0%} of the best {metric} (<= {level:.3f})"


def answers(standings: Sequence[Standing], labels: Sequence[str], metric: str, mode: str) -> list[Answer]:
    """The page's plain answers, from the leaderboard (best first, as runs.leaderboard orders it):
    the best entry; the fastest at batch 1 among those near the best (NEAR_BEST_FOR_LATENCY); the
    smallest by parameters among those near the best (NEAR_BEST_FOR_SIZE); and which entries the
    seeds cannot tell apart from the best."""
    if not standings:
        return []
    best_i = 0
    best = standings[0]
    headline = f"most accurate ({metric})" if mode == "max" else f"lowest {metric}"
    out = [Answer(headline, best_i, f"{labels[best_i]} ({describe_mean(best)})")]
    for share, cost, question, unit in (
            (NEAR_BEST_FOR_LATENCY, "latency_ms", "fastest (batch-1 latency)", lambda v: f"{v:.2f} ms"),
            (NEAR_BEST_FOR_SIZE, "params", "smallest (params)", lambda v: f"{v / 1e6:.2f} M params")):
        level = near_best(best.mean, share, mode)
        question = f"{question} {_share(share, mode, metric, level)}"
        near = [i for i, s in enumerate(standings) if not better(level, s.mean, mode)]
        measured = [i for i in near if getattr(standings[i], cost) is not None]
        if not measured:
            out.append(Answer(question, None, f"no entry that reaches it has a measured {cost.split('_')[0]} "
                                              f"({len(near)} reach it)"))
            continue
        pick = min(measured, key=lambda i: (getattr(standings[i], cost), -standings[i].mean if mode == "max"
                                            else standings[i].mean, i))
        s = standings[pick]
        text = f"{labels[pick]} ({unit(getattr(s, cost))}; {metric} {s.mean:.3f})"
        if pick == best_i:
            text += ", the most accurate entry itself" if mode == "max" else ", the best entry itself"
        out.append(Answer(question, pick, text))
    question = "statistically tied with the best (95% intervals overlap)"
    if best.low is None:
        out.append(Answer(question, None, "not measured: the best entry has no seed runs (search.seeds >= 2 "
                                          "gives each entry an interval)"))
        return out
    others = range(1, len(standings))
    text = ", ".join(labels[i] + _separation(standings[i]) for i in others if standings[i].tied) or "none"
    unjudged = [labels[i] for i in others if standings[i].low is None]
    if unjudged:
        text += f"; not measured for {', '.join(unjudged)} (fewer than 2 seed runs)"
    out.append(Answer(question, None, text))
    return out


def _separation(s: Standing) -> str:
    """What it would cost to tell a tied entry from the best: seeds per entry, device-hours."""
    if s.seeds_to_separate is None:
        return " (no number of seeds separates them at the observed means)" if s.low is not None else ""
    return (f" ({s.seeds_to_separate} seeds per entry would separate it at the observed spread: "
            f"{s.separate_device_hours:.4g} more device-hours)")


@dataclasses.dataclass(frozen=True)
class TrialPoint:
    """One trial of an entry, for the lr / width response figures."""

    lr: float | None
    width: float | None
    score: float


@dataclasses.dataclass(frozen=True)
class EntryView:
    """One leaderboard row and what the figures need of its entry."""

    standing: Standing
    label: str  # its arch, with its entry index when the arch is in several entries
    family: str
    curve: tuple[tuple[int, float], ...]  # the metric per epoch of its best-ranked run with a model
    trials: tuple[TrialPoint, ...]
    search_trials: int
    seed_trials: int
    failed_trials: int


@dataclasses.dataclass(frozen=True)
class ObjectivePoint:
    """One trial with a model, for the Pareto figure of a sweep with search.objectives: its values
    in the objectives' order, whether it is on their Pareto set, whether search.select picked it."""

    name: str
    run_id: str
    values: tuple[float | None, ...]
    pareto: bool
    selected: bool


@dataclasses.dataclass(frozen=True)
class Frontier:
    cost: str  # a COSTS attribute of Standing
    members: tuple[int, ...]  # indices into the entries, cheapest first
    unmeasured: tuple[int, ...]  # entries without this cost (not drawn)


@dataclasses.dataclass(frozen=True)
class Provenance:
    sweeps: tuple[str, ...]  # "sweep-20261202-101010 (run id)"
    sweep_file_name: str | None
    sweep_file_text: str | None  # passwords masked
    train: tuple[tuple[str, str], ...]  # the parent's train.* params
    search: tuple[tuple[str, str], ...]  # its search.* params
    dataset: str | None
    dataset_digests: tuple[str, ...]
    git_commits: tuple[str, ...]
    versions: tuple[tuple[str, str], ...]  # (library, the versions the trials ran with)
    devices: tuple[str, ...]
    infer_devices: tuple[str, ...]
    started: str | None
    ended: str | None
    image_sizes: tuple[str, ...] = ()  # dataset.image_size of the trials (one, unless sweeps differ)


@dataclasses.dataclass(frozen=True)
class ReportData:
    experiment: str
    scope: str  # which sweep(s), in words
    metric: str
    mode: str
    entries: tuple[EntryView, ...]  # best first
    frontiers: tuple[Frontier, ...]
    answers: tuple[Answer, ...]
    provenance: Provenance
    statuses: tuple[tuple[str, int], ...]  # (status, trials)
    generated: str
    objectives: tuple[tuple[str, str], ...] = ()  # search.objectives: (metric, max | min), in order
    select: str = "first"  # search.select
    trials: tuple[ObjectivePoint, ...] = ()  # with objectives: every trial with a model
    spend: Spend | None = None  # what each entry spent of the sweep's device-hour budget (one sweep's report)

    @property
    def empty(self) -> bool:
        return not self.entries

    def frontier_runs(self) -> list[str]:
        """The best run of every entry on any of the frontiers (the union), once each."""
        on = sorted({i for f in self.frontiers for i in f.members})
        return [self.entries[i].standing.best_run_id for i in on]

    def message(self) -> str:
        """What an empty report says: which sweep, and what became of its trials."""
        counts = ", ".join(f"{n} {status or 'unknown'}" for status, n in self.statuses) or "none recorded"
        return (f"experiment {show(self.experiment)}, {self.scope}: no trial completed with a model "
                f"(trials: {counts}); nothing to report")


def frontiers(standings: Sequence[Standing], mode: str) -> tuple[Frontier, ...]:
    out = []
    for cost, _, _ in COSTS:
        points = [(getattr(s, cost), s.mean) for s in standings]
        out.append(Frontier(cost, tuple(pareto_front(points, mode)),
                            tuple(i for i, (c, _) in enumerate(points) if c is None)))
    return tuple(out)


def labels_of(standings: Sequence[Standing]) -> list[str]:
    """Each entry's arch; `arch [entry]` where the arch names several entries."""
    counts = collections.Counter(s.arch for s in standings)
    return [s.arch if counts[s.arch] == 1 else f"{s.arch} [{s.entry}]" for s in standings]
