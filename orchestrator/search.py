"""How a sweep searches, per model entry: which trials it runs (`plan`, `EntrySearch`) and which it
stops early (`EntryScheduler`). Ray Tune adapters; the engine never sees them.

A fair comparison of architectures needs each entry searched and judged on its own:
- every `models:` entry gets its own budget of trials (`search.trials_per_model`, default: its
  grid points x `num_samples`); its grid leaves are enumerated, its other leaves sampled at random
  or by Optuna's TPE (one study per entry, through Ray Tune's `OptunaSearch`);
- ASHA ranks a trial only against trials of its own entry (one bracket per entry), so a family
  that starts slowly still keeps its best trials to the full budget (`search.brackets: global`
  is the old single bracket over the whole sweep);
- each repeat of a point trains with its own seed (`train.seed` + repeat), and with
  `search.seeds: k` each entry's best configuration is trained again with k fresh seeds, to the
  full budget, never stopped early: the leaderboard's spread comes from those;
- with `search.objectives` (two or three metrics), TPE's study per entry is multi-objective, the
  seed runs re-train the entry's trial that `search.select` picks from its Pareto set, and nothing
  is stopped early (the scheduler is fifo: see schema.Search.implied).

A trial's config is `{"model": point, "entry": i, "repeat": r, "phase": "search" | "seeds"}`;
`SweepSpec.trial` makes it a `Trial`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import shutil
import time
from typing import Any, Callable

import numpy as np
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import SearchGenerator, Searcher
from ray.tune.utils import flatten_dict

from orchestrator import pareto, spaces
from orchestrator.config import SweepSpec
from orchestrator.pricing import slack as pricing_slack
from orchestrator.runs import INFEASIBLE
from orchestrator.schema import COST_METRICS, PHASE_SEARCH, PHASE_SEEDS


def to_tune(value: Any):
    """One sweep-file leaf -> the ray.tune domain it names (a literal as it is); grid leaves are
    resolved before this (spaces.grid_points)."""
    if spaces.is_space(value):
        kind, args = next(iter(value.items()))
        return {"choice": lambda a: tune.choice(list(a)), "uniform": lambda a: tune.uniform(*a),
                "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}[kind](args)
    return value


# Ray's OptunaSearch returns its parameters nested on "/" in their names (ray.tune.utils'
# unflatten_dict): a sampled leaf is named by its path joined so.
RAY_DELIMITER = "/"


def _leaves(point: dict[str, Any]) -> dict[str, Any]:
    """{"knobs/width": space, "lr": space}: the point's sampled (non-grid) leaves, by name."""
    return {RAY_DELIMITER.join(path): value for path, value in spaces.sampled(point).items()}


@dataclasses.dataclass
class EntryPlan:
    """One entry's search: its grid points, in the order its trials take them, and its budget."""

    index: int
    points: list[dict[str, Any]]  # grid leaves resolved; sampled leaves still as spaces
    budget: int

    def point(self, k: int) -> tuple[dict[str, Any], int]:
        """Trial k's grid point and its repeat (how often that point came up before)."""
        return self.points[k % len(self.points)], k // len(self.points)


def plan(spec: SweepSpec) -> list[EntryPlan]:
    return [EntryPlan(i, spaces.grid_points(m.point_space()), spec.entry_budget(m)) for i, m in enumerate(spec.models)]


# ---------------------------------------------------------------------------------------------
# Sampling an entry's leaves


class _RandomSampler:
    """Leaves sampled at random, from a generator seeded per entry (the dry run shows the same)."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def sample(self, trial_id: str, leaves: dict[str, Any]) -> dict[str, Any]:
        return {path: to_tune(space).sample(random_state=self.rng) for path, space in leaves.items()}

    def complete(self, trial_id: str, result: dict | None, error: bool, slack: dict | None = None) -> None:
        pass


class _SpaceFunction:
    """Optuna's define-by-run space for one entry (picklable, for Tune's searcher state)."""

    def __init__(self, leaves: dict[str, Any]):
        self.leaves = leaves

    def __call__(self, trial):
        for path, space in self.leaves.items():
            kind, args = next(iter(space.items()))
            if kind == "choice":
                trial.suggest_categorical(path, list(args))
            elif kind == "randint":
                trial.suggest_int(path, args[0], args[1] - 1)
            else:
                trial.suggest_float(path, args[0], args[1], log=kind == "loguniform")


class _TpeSampler:
    """One Optuna TPE study per entry, through Ray Tune's OptunaSearch. The first trials are
    random (TPE needs a few observations), then TPE models which values scored well. With
    several objectives (`metric` and `mode` lists) the study is multi-objective: Optuna's TPE
    splits the trials into good and bad by their Pareto rank (MOTPE)."""

    def __init__(self, leaves: dict[str, Any], metric: str | list[str], mode: str | list[str], seed: int,
                 budget: int):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        startup = max(2, min(10, budget // 4))
        self.searcher = OptunaSearch(_SpaceFunction(leaves), metric=metric, mode=mode,
                                     sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))

    def sample(self, trial_id: str, leaves: dict[str, Any]) -> dict[str, Any]:
        flat = flatten_dict(self.searcher.suggest(trial_id) or {}, delimiter=RAY_DELIMITER)
        return {path: flat[path] for path in leaves}

    def complete(self, trial_id: str, result: dict | None, error: bool, slack: dict | None = None) -> None:
        """Tell the study how the trial ended. `slack`: each of search.constraints' bounds as
        pricing.slack gives it (<= 0: satisfied), set on the Optuna trial first
        (`Trial.set_constraint`, Optuna 5's replacement for TPESampler's deprecated
        `constraints_func`), so TPE puts infeasible trials with the worst and samples away from
        them; their reported value does not count. OptunaSearch keeps its Optuna trials by Tune
        trial id (`_ot_trials`) and offers no other way to them."""
        ot_trial = getattr(self.searcher, "_ot_trials", {}).get(trial_id)
        if ot_trial is not None:
            for name, value in (slack or {}).items():
                ot_trial.set_constraint(name, value)
        self.searcher.on_trial_complete(trial_id, result, error)


# ---------------------------------------------------------------------------------------------
# The searcher


@dataclasses.dataclass
class _Outcome:
    entry: int
    point: dict[str, Any]  # fully resolved
    phase: str
    repeat: int
    epochs: int  # planned
    value: float | None = None  # the metric's last reported value
    full_budget: bool = False
    done: bool = False
    costs: dict[str, float] = dataclasses.field(default_factory=dict)  # as priced at its start
    infeasible: bool = False  # its costs broke search.constraints: it never trained
    values: tuple[float | None, ...] = ()  # each objective's last reported value (search.objectives)
    # Its wall time, for the sweep's device-hours (search.budget): when it started (suggested;
    # moved to its trainable's own start, now - time_total_s, with each result) and, once ended,
    # how long it ran.
    started: float = dataclasses.field(default_factory=time.time)
    seconds: float | None = None
    ran: float = 0.0  # its trainable's time_total_s at its last result (what a restored sweep counts on from)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A searcher saved before the budget existed: its ended trials' wall is unknown (counted 0).
        self.__dict__.update({"values": (), "started": time.time(), "seconds": 0.0 if state.get("done") else None,
                              "ran": 0.0, **state})


@dataclasses.dataclass(frozen=True)
class EntrySpend:
    """What one model entry spent of the sweep's device-hours, and what it left unexplored."""

    entry: int
    arch: str
    device_hours: float  # its trials' wall x the devices each held (Resources.devices)
    started: int  # trials started (search and seeds)
    planned: int  # its search budget plus its seed runs
    not_started: int  # planned trials never started (the budget ran out, or their seed phase never came)


class EntrySearch(Searcher):
    """Suggests every entry's trials in file order (each entry's budget, grid points in turn,
    sampled leaves from its sampler), then, with `search.seeds: k`, each entry's best
    configuration k more times with fresh seeds once that entry's search trials have all ended.

    With `search.budget`, no trial is suggested once the sweep's device-hours (every trial so far:
    wall x Resources.devices(), a running one's wall up to now) reach `device_hours`: the search
    is FINISHED, running trials end as they would. `extend` takes a larger file for the same
    sweep (`orchestrate sweep FILE --extend`): its studies, outcomes and spend go on."""

    ACTIVE: EntrySearch | None = None  # the searcher Tune last called in this process (the summary reads it)
    # While it says so, no trial is suggested (Tune asks again): the sweep sets it to
    # ray_train.record_behind, so new trials wait while the run record is far behind.
    HOLD: Callable[[], bool] | None = None

    def __init__(self, spec: SweepSpec):
        search = spec.search
        super().__init__(metric=search.metric, mode=search.mode)
        self.spec = spec
        self.plans = plan(spec)
        self.samplers = {}
        metric, mode = ((list(search.objectives), list(search.objectives.values())) if search.objectives
                        else (search.metric, search.mode))
        for p in self.plans:
            leaves = _leaves(p.points[0])
            seed = search.seed * 1000 + p.index
            self.samplers[p.index] = (_TpeSampler(leaves, metric, mode, seed, p.budget)
                                      if search.algorithm == "tpe" and leaves else _RandomSampler(seed))
        self.suggested = {p.index: 0 for p in self.plans}
        self.seeded = {p.index: False for p in self.plans}  # its seed trials are queued (or there are none)
        self.seed_queue: list[tuple[int, dict[str, Any], int]] = []
        self.outcomes: dict[str, _Outcome] = {}
        self.repeat_shift: dict[int, int] = {}  # an extension's search repeats start after every seed used
        self.budget_reached = False
        EntrySearch.ACTIVE = self
        # Each running trial's objectives as last reported: a cost comes with the first epoch only.
        self.reported: dict[str, dict[str, float]] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the sweep's spec; the space from its entries

    def suggest(self, trial_id: str):
        EntrySearch.ACTIVE = self
        limit = self.spec.search.budget
        if limit is not None and self.device_hours() >= limit.device_hours:
            self.budget_reached = True
            return Searcher.FINISHED
        if EntrySearch.HOLD is not None and EntrySearch.HOLD():
            return None
        for p in self.plans:
            k = self.suggested[p.index]
            if k < p.budget:
                grid_point, repeat = p.point(k)
                repeat += self.repeat_shift.get(p.index, 0)
                drawn = self.samplers[p.index].sample(trial_id, _leaves(grid_point))
                point = spaces.map_leaves(copy.deepcopy(grid_point),
                                          lambda path, leaf: drawn.get(RAY_DELIMITER.join(path), leaf))
                self.suggested[p.index] = k + 1
                return self._start(trial_id, p.index, point, repeat, PHASE_SEARCH)
        if not self.spec.search.seeds:
            return Searcher.FINISHED
        for p in self.plans:
            if not self.seeded[p.index] and self._search_ended(p.index):
                self.seeded[p.index] = True
                self.seed_queue += self._seed_trials(p.index)
        if self.seed_queue:
            entry, point, repeat = self.seed_queue.pop(0)
            return self._start(trial_id, entry, copy.deepcopy(point), repeat, PHASE_SEEDS)
        return Searcher.FINISHED if all(self.seeded.values()) else None  # None: seed trials wait for their entry

    def _start(self, trial_id: str, entry: int, point: dict[str, Any], repeat: int, phase: str) -> dict[str, Any]:
        config = {"model": point, "entry": entry, "repeat": repeat, "phase": phase}
        self.outcomes[trial_id] = _Outcome(entry, point, phase, repeat,
                                           epochs=self.spec.tune_trial(config, trial_id).train.epochs)
        return config

    def _seed_trials(self, entry: int) -> list[tuple[int, dict[str, Any], int]]:
        """The entry's best configuration `search.seeds` times, each with a seed no search trial
        of that point used (repeats after the search's)."""
        best = self._best(entry)
        if best is None:
            return []
        first = 1 + max(o.repeat for o in self.outcomes.values() if o.entry == entry and o.point == best.point)
        return [(entry, best.point, first + j) for j in range(self.spec.search.seeds)]

    def _search_ended(self, entry: int) -> bool:
        mine = [o for o in self.outcomes.values() if o.entry == entry and o.phase == PHASE_SEARCH]
        return len(mine) == self.plans[entry].budget and all(o.done for o in mine)

    def _best(self, entry: int) -> _Outcome | None:
        """The entry's best search trial by the sweep's metric and mode (with objectives: the
        trial of their Pareto set that `search.select` picks), among those that trained to the
        full budget (any that ended, when none did)."""
        ended = [o for o in self.outcomes.values()
                 if o.entry == entry and o.phase == PHASE_SEARCH and o.value is not None]
        pool = [o for o in ended if o.full_budget] or ended
        if not pool:
            return None
        search = self.spec.search
        if search.objectives:
            picked = pareto.select([o.values for o in pool], search.directions(), search.select)
            if picked is not None:  # (None: no trial reported every objective; then by the metric)
                return pool[picked]
        sign = 1.0 if search.mode == "max" else -1.0
        return max(pool, key=lambda o: sign * o.value)

    # -----------------------------------------------------------------------------------------
    # The sweep's spend (search.budget)

    def _hours(self, o: _Outcome, now: float) -> float:
        seconds = o.seconds if o.seconds is not None else max(0.0, now - o.started)
        return seconds * self.spec.resources.devices() / 3600.0

    def device_hours(self, entry: int | None = None) -> float:
        """Device-hours spent so far: every trial's wall (up to now for a running one) x the
        devices it holds; of one entry, or of the whole sweep."""
        now = time.time()
        return sum(self._hours(o, now) for o in self.outcomes.values() if entry is None or o.entry == entry)

    def spend(self) -> list[EntrySpend]:
        """Each entry's spend, the trials it started and those it never started."""
        out = []
        for p in self.plans:
            started = sum(o.entry == p.index for o in self.outcomes.values())
            planned = p.budget + self.spec.search.seeds
            out.append(EntrySpend(p.index, self.spec.models[p.index].arch, self.device_hours(p.index), started,
                                  planned, max(0, planned - started)))
        return out

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """The costs a trial was priced at (its first result: an epoch's, or an infeasible one's),
        its trainable's clock, and its objectives."""
        outcome = self.outcomes.get(trial_id)
        if outcome is not None and not outcome.__dict__.get("costs"):
            outcome.costs = {k: float(result[k]) for k in COST_METRICS if isinstance(result.get(k), (int, float))}
        if outcome is not None and isinstance(result.get("time_total_s"), (int, float)):
            # Its trainable's own clock: a trial that waited for resources after it was suggested
            # is counted from when it started.
            outcome.ran = float(result["time_total_s"])
            outcome.started = time.time() - outcome.ran
        names = self.spec.search.objectives or ()
        kept = {k: result[k] for k in names if result.get(k) is not None}
        if kept:
            self.__dict__.setdefault("reported", {}).setdefault(trial_id, {}).update(kept)  # (a state saved before it)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        outcome = self.outcomes.get(trial_id)
        if outcome is None:
            return
        outcome.done = True
        outcome.seconds = max(0.0, time.time() - outcome.started)
        search = self.spec.search
        reported = self.__dict__.get("reported", {}).pop(trial_id, {})
        if result and search.objectives:  # the costs, reported with the first epoch, as of the last
            result = {**reported, **{k: v for k, v in result.items() if v is not None}}
        if result and result.get(INFEASIBLE):
            outcome.infeasible = True  # never an entry's best: its value is the metric's worst, not a score
            outcome.costs = outcome.__dict__.get("costs") or {k: float(result[k]) for k in COST_METRICS if k in result}
        elif result and not error and search.metric in result:
            outcome.value = float(result[search.metric])
            outcome.full_budget = int(result.get("epoch", 0)) >= outcome.epochs
            outcome.values = tuple(float(result[k]) if result.get(k) is not None else None
                                   for k in search.objective_names())
        if outcome.phase == PHASE_SEARCH:
            self.samplers[outcome.entry].complete(trial_id, result, error,
                                                  pricing_slack(outcome.__dict__.get("costs", {}), self.spec.search.constraints))

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:  # Tune's own experiment state, written by save()
            self.__dict__.update(pickle.load(f))
        # Trials that were running when the sweep stopped count on from what they had run, not
        # across the time the sweep was stopped.
        now = time.time()
        for o in self.outcomes.values():
            if not o.done:
                o.started = now - o.ran
        EntrySearch.ACTIVE = self

    def extend(self, spec: SweepSpec) -> None:
        """Go on with `spec`, the same sweep asking for more (larger budgets per entry, more seeds,
        a larger device-hour budget): the outcomes, the studies and the spend are kept. New
        search trials take repeats (seeds) after every one the entry used; an entry whose seed
        runs were trained gets the extra ones of the same configuration at once; an entry that
        had none gets them after its search, as in a fresh sweep."""
        extra = spec.search.seeds - self.spec.search.seeds
        self.spec, self.plans = spec, plan(spec)
        self.budget_reached = False
        for p in self.plans:
            mine = [o for o in self.outcomes.values() if o.entry == p.index]
            if mine:
                next_repeat = self.suggested[p.index] // len(p.points)
                self.repeat_shift[p.index] = max(self.repeat_shift.get(p.index, 0),
                                                 1 + max(o.repeat for o in mine) - next_repeat)
            seeded = [o for o in mine if o.phase == PHASE_SEEDS]
            if extra > 0 and self.seeded[p.index] and seeded:
                point = seeded[0].point
                first = 1 + max(o.repeat for o in mine if o.point == point)
                queued = [q for q in self.seed_queue if q[0] == p.index]
                first = max([first] + [r + 1 for _, _, r in queued])
                self.seed_queue += [(p.index, point, first + j) for j in range(extra)]


class StagedSearchGenerator(SearchGenerator):
    """Tune's SearchGenerator whose saved state never shows a half-written file to an upload.

    With remote storage (s3://, gs://) Tune uploads its experiment folder in the background and may
    save the search state again while an upload is still going, e.g. when two trials end together:
    each save writes a temporary file in that folder and renames it, so an upload that listed the
    folder a moment before fails on the vanished name ("Saving experiment state to storage ...
    failed", FileNotFoundError) and prints a traceback, harmless as the next upload carries the
    state. Here Tune's own save writes into a folder beside it, which no upload reads, and each
    finished file is then renamed into place: atomic on one filesystem, so an upload sees the old
    file or the new one."""

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        staging = os.path.join(os.path.dirname(os.path.abspath(dirpath)), ".search-state-staging")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        super().save_to_dir(staging, session_str)
        for name in os.listdir(staging):
            os.replace(os.path.join(staging, name), os.path.join(dirpath, name))


# ---------------------------------------------------------------------------------------------
# Early stopping


class EntryScheduler(FIFOScheduler):
    """ASHA with one bracket per model entry: a trial is ranked only against its own entry's
    trials, so every entry keeps its best trials to its own full budget. Seed trials (the
    re-training of each entry's best configuration) are never stopped."""

    def __init__(self, spec: SweepSpec):
        super().__init__()
        self.spec = spec
        self._brackets: dict[Any, ASHAScheduler] = {}
        self._of: dict[str, Any] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def _key(self, trial) -> Any:
        cfg = trial.config
        if cfg.get("phase") == PHASE_SEEDS:
            return None
        return "all" if self.spec.search.brackets == "global" else cfg.get("entry", 0)

    def _bracket(self, key) -> ASHAScheduler:
        if key not in self._brackets:
            s = self.spec.search
            max_t = self.spec.max_epochs() if key == "all" else self.spec.entry_max_epochs(self.spec.models[key])
            self._brackets[key] = ASHAScheduler(time_attr="epoch", metric=s.metric, mode=s.mode, max_t=max_t,
                                                grace_period=min(s.grace_period, max_t),
                                                reduction_factor=s.reduction_factor)
        return self._brackets[key]

    def on_trial_add(self, tune_controller, trial):
        key = self._key(trial)
        self._of[trial.trial_id] = key
        if key is not None:
            self._bracket(key).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        key = self._of.get(trial.trial_id)
        if key is None:
            return TrialScheduler.CONTINUE
        return self._bracket(key).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        key = self._of.pop(trial.trial_id, None)
        if key is not None:
            self._bracket(key).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        key = self._of.pop(trial.trial_id, None)
        if key is not None:
            self._bracket(key).on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"ASHA per model entry ({len(self._brackets)} bracket(s))"
