"""`orchestrate sweep FILE --extend`: a finished sweep goes on where its file now asks for more —
more trials per model entry (`search.trials_per_model`, or `num_samples`), more seed runs
(`search.seeds`), a larger device-hour budget (`search.budget`) — under the same MLflow parent
run. Its finished trials are kept, never retrained; its searcher (every entry's TPE study, the
outcomes, the spend) is restored from Ray Tune's saved state with Tune's own
`Searcher.restore_from_dir` and extended (search.EntrySearch.extend); the new trials run as a new
Tune experiment beside the old one in the storage (a restored Tune experiment whose searcher
finished suggests nothing more: its SearchGenerator keeps `finished` and its sample count), and
`--resume` continues that one if it is interrupted.

Anything else changed (the dataset, the train recipe, the resources, the model list, the search
algorithm, scheduler, metric or seed) is another sweep: refused before Ray, one line, nothing
written. No Ray or MLflow at import."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from orchestrator.config import ConfigError, SweepSpec
from orchestrator.schema import Search, show

# The search keys an extension may change; every other setting must be as the sweep ran.
EXTENSIBLE = ("trials_per_model", "num_samples", "seeds", "budget", "max_concurrent_trials")
SECTIONS = ("dataset", "train", "resources", "failure", "search")


def settings(spec: SweepSpec) -> dict[str, Any]:
    """What a sweep ran with, as JSON (kept in its state file): what --extend compares."""
    out = {name: dataclasses.asdict(getattr(spec, name)) for name in SECTIONS}
    out["models"] = [m.point_space() for m in spec.models]
    return json.loads(json.dumps(out))


def _first_difference(old: Any, new: Any, key: str) -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in list(old) + [k for k in new if k not in old]:
            found = _first_difference(old.get(k), new.get(k), f"{key}.{k}")
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def check(spec: SweepSpec, run_name: str, meta: dict[str, Any]) -> None:
    """ConfigError (key --extend, or the setting that changed) unless `spec` extends the finished
    sweep whose state file is `meta` (in the experiment folder `run_name`)."""
    old = meta.get("settings")
    if not isinstance(old, dict) or not all(isinstance(old.get(k), (dict, list)) for k in SECTIONS + ("models",)):
        raise ConfigError(spec.file, "--extend", f"{run_name}'s state file does not record the sweep's settings "
                                                 f"(a sweep from before --extend); run a new sweep instead")
    if not meta.get("ended"):
        raise ConfigError(spec.file, "--extend", f"the sweep's latest run ({run_name}) has not finished; "
                                                 f"finish it with --resume first, then --extend")
    new = settings(spec)
    why = "--extend adds trials, seeds or device-hours to the same sweep; a change here is another sweep (give it " \
          "another name)"
    for name in ("dataset", "train", "resources", "failure"):
        if found := _first_difference(old[name], new[name], name):
            key, was, now = found
            raise ConfigError(spec.file, key, f"{show(was)} -> {show(now)}: {why}")
    if old["models"] != new["models"]:
        at = next((i for i, (a, b) in enumerate(zip(old["models"], new["models"])) if a != b),
                  min(len(old["models"]), len(new["models"])))
        raise ConfigError(spec.file, "models", f"the model list changed (models[{at}], {len(old['models'])} -> "
                                               f"{len(new['models'])} entries): {why}")
    for key in old["search"].keys() | new["search"].keys():
        if key not in EXTENSIBLE and old["search"].get(key) != new["search"].get(key):
            raise ConfigError(spec.file, f"search.{key}", f"{show(old['search'].get(key))} -> "
                                                          f"{show(new['search'].get(key))}: {why}; it may change "
                                                          f"only " + ", ".join(EXTENSIBLE))
    was = dataclasses.replace(spec, search=Search(**old["search"]))
    more = False
    for i, (a, b) in enumerate(zip(was.models, spec.models)):
        before, after = was.entry_budget(a), spec.entry_budget(b)
        if after < before:
            raise ConfigError(spec.file, "search.trials_per_model", f"models[{i}] would get {after} trials, fewer "
                                                                    f"than the {before} it had; --extend only adds")
        more = more or after > before
    if spec.search.seeds < was.search.seeds:
        raise ConfigError(spec.file, "search.seeds", f"{spec.search.seeds} is fewer than the {was.search.seeds} the "
                                                     f"sweep trained; --extend only adds")
    more = more or spec.search.seeds > was.search.seeds
    limit_was, limit = was.search.budget, spec.search.budget
    more = more or (limit_was is not None and meta.get("budget_reached") and
                    (limit is None or limit.device_hours > limit_was.device_hours))
    if not more:
        raise ConfigError(spec.file, "--extend", "the file asks for no more than the sweep ran (more "
                                                 "search.trials_per_model or search.seeds, or a larger search.budget "
                                                 "after it stopped the sweep)")
