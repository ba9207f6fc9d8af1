"""Search efficiency: what each search algorithm spends to find a good configuration, and whether
ASHA with one bracket per model entry keeps every family's best trial to the full budget.

    python -m benchmarks.search_efficiency [--seeds 3] [--epochs 4] [--lrs 6] [--tolerance 0.005]
        [--trials-per-model 5] [--bracket-epochs 6] [--skip-search] [--skip-brackets]
        [--results benchmarks/results] [--smoke]

Every sweep runs through benchmarks/sweep_run.py's `run_sweep` (orchestrator.sweep.run, in one
local Ray cluster started here; the MLflow store a sqlite file in a temp folder) and is read back
through orchestrator.runs. Trials have one worker of 1 CPU, 2 train at a time
(`search.max_concurrent_trials: 2`). The training recipe is experiments/quickstart.yaml's `train:`
(AdamW, batch 32, one-cycle, data on the CPU device), on `digits`.

1. search: one task, resnet18 at width {0.125, 0.25} x learning rate, `--epochs` epochs (one trial
   trains ~5-10 s on one core), `dataset.val_fraction: 0.2` (288 of digits' 1,438 training
   images: one image is 0.35 points, so `--tolerance` 0.005 allows one image fewer). Methods,
   each one sweep:
   - grid: `--lrs` learning rates log-spaced in [1e-4, 1e-1] (given in a fixed shuffled order,
     as a researcher's grid is not sorted by how good each point is) x the two widths, FIFO;
   - random: lr loguniform in [1e-4, 1e-1] x width choice, the grid's number of trials
     (`search.trials_per_model`), FIFO, once per search seed (`search.seed` 0 .. `--seeds`-1);
   - tpe: the same space and budget with `search.algorithm: tpe` (Optuna's TPE), FIFO, per seed;
   - asha: the grid again with `scheduler: asha` (grace period 1 epoch, reduction factor 2),
     with the share of the grid's device-seconds it spent (`asha_over_grid_device_s`) and whether
     its best came within `--tolerance` of the grid's (`asha_within_tolerance`).
   For each: the best val accuracy (at each trial's logged model: runs.Result.val_acc), and, in
   the order the trials started, the number of trials, their epochs and their cumulative
   device-seconds (the trials' training seconds, evaluation not counted) until a trial came within
   `--tolerance` of the grid's best (null when none did); also the sweep's total device-seconds,
   epochs and wall. Epochs do not move with the machine's load; device-seconds do.
   (Each grid point trains with seed 0; a random or TPE trial k of the entry's one grid point is
   its k-th repeat, so it trains with seed k: orchestrate's rule, so training noise differs.)
2. brackets: four families at the quickstart's knobs (resnet18, shufflenet_v1, alexnet, vgg11, in
   the quickstart's order), each with lr loguniform over [lr/10, lr x 10] around its quickstart
   lr, `--trials-per-model` random trials per entry, `--bracket-epochs` epochs, ASHA with grace
   period 1 and reduction factor 2; run once with `search.brackets: per_model` and once with
   `global`. Per family: its best trial (ranked as `orchestrate compare` ranks: full-budget
   trials first), that trial's val accuracy and epochs trained, the family's device-seconds and
   trials; then the totals.

Prints one JSON object per method (section 1) and per family and run (section 2), then a summary
(`"summary": true`, with the load averages before and after); markdown tables of both sections go
to stderr at the end. Every line, plus one per trial (`"trial": true`), is also written to
RESULTS/search_efficiency-<date>.jsonl. `--smoke`: a minute or two, the numbers mean nothing
(1-epoch trials, 2 per method, one seed; two families of 2 trials, 2 epochs; the file ends
-smoke.jsonl).

Device-seconds are each trial's own training time; on a shared machine they and the wall times
move with the load (compare within one run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

from benchmarks.sweep_run import SweepRun, TrialRun, local_ray, log_spaced, run_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.yaml")
LR_RANGE = (1e-4, 1e-1)
WIDTHS = (0.125, 0.25)
FAMILIES = ("resnet18", "shufflenet_v1", "alexnet", "vgg11")
CONCURRENCY = 2


@dataclasses.dataclass(frozen=True)
class Settings:
    """The defaults are the full run's (about 15-25 minutes on a 2-core machine)."""

    epochs: int = 4  # section 1's trials
    lrs: int = 6  # grid points of the learning rate
    widths: tuple[float, ...] = WIDTHS
    seeds: int = 3  # search seeds of random and tpe
    tolerance: float = 0.005
    families: tuple[str, ...] = FAMILIES
    trials_per_model: int = 5  # section 2
    bracket_epochs: int = 6


def smoke(settings: Settings) -> Settings:
    return dataclasses.replace(settings, epochs=1, lrs=2, widths=WIDTHS[:1], seeds=1, families=("alexnet", "vgg11"),
                               trials_per_model=2, bracket_epochs=2)


def quickstart() -> dict[str, Any]:
    import yaml

    with open(QUICKSTART) as f:
        return yaml.safe_load(f)


def sweep_base(name: str, epochs: int) -> dict[str, Any]:
    """A sweep with the quickstart's recipe, 1-CPU single-worker trials, 2 at a time."""
    return {"name": name, "dataset": {"name": "digits", "val_fraction": 0.2},
            "train": {**quickstart()["train"], "epochs": epochs},
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
            "search": {"max_concurrent_trials": CONCURRENCY}}


# ---------------------------------------------------------------------------------------------
# 1. Grid, random and TPE on one task


def grid_lrs(count: int) -> list[float]:
    lrs = log_spaced(*LR_RANGE, count)
    random.Random(0).shuffle(lrs)
    return lrs


def search_sweep(method: str, seed: int, s: Settings) -> dict[str, Any]:
    raw = sweep_base(f"search-{method}-seed{seed}", s.epochs)
    trials = s.lrs * len(s.widths)
    if method in ("grid", "asha"):
        knobs, lr = {"width": {"grid": list(s.widths)}}, {"grid": grid_lrs(s.lrs)}
        search = {"algorithm": "grid"}
    else:
        knobs, lr = {"width": {"choice": list(s.widths)}}, {"loguniform": list(LR_RANGE)}
        search = {"algorithm": method, "trials_per_model": trials}
    if method == "asha":
        search.update(scheduler="asha", grace_period=1, reduction_factor=2)
    else:
        search.update(scheduler="fifo")
    raw["search"].update(search, seed=seed)
    raw["models"] = [{"arch": "resnet18", "knobs": knobs, "lr": lr}]
    return raw


def trial_line(section: str, label: dict[str, Any], order: int, t: TrialRun, t0: float) -> dict[str, Any]:
    r = t.result
    return {"trial": True, "section": section, **label, "order": order, "name": r.name, "arch": r.arch,
            "knobs": r.knobs, "lr": r.lr, "status": r.status, "val_acc": r.val_acc, "epochs": r.epochs,
            "model_epoch": r.epoch, "train_s": round(t.train_s, 3), "device_s": round(t.device_s, 3),
            "started_s": round(t.start_s - t0, 2)}


def val_acc(t: TrialRun) -> float:
    return t.result.val_acc if t.result.val_acc is not None else float("-inf")


def search_line(method: str, seed: int, done: SweepRun, target: float | None) -> dict[str, Any]:
    """A method's figures; `target` is the val accuracy that counts as found (the grid's best less
    the tolerance; None for the grid itself: then its own best)."""
    trials = done.trials
    best = max(trials, key=val_acc)
    goal = val_acc(best) if target is None else target
    seconds, epochs, reached = 0.0, 0, None
    for i, t in enumerate(trials):
        seconds += t.device_s
        epochs += t.result.epochs or 0
        if val_acc(t) >= goal:
            reached = (i + 1, seconds, epochs)
            break
    statuses: dict[str, int] = {}
    for t in trials:
        statuses[t.result.status] = statuses.get(t.result.status, 0) + 1
    return {"section": "search", "method": method, "seed": seed, "trials": len(trials),
            "best_val_acc": round(val_acc(best), 4), "best_trial": best.result.name,
            "target_val_acc": round(goal, 4),
            "trials_to_target": reached[0] if reached else None,
            "device_s_to_target": round(reached[1], 1) if reached else None,
            "epochs_to_target": reached[2] if reached else None,
            "device_s": round(done.device_s, 1), "epochs_trained": sum(t.result.epochs or 0 for t in trials),
            "wall_s": round(done.wall_s, 1), "statuses": statuses}


def measure_search(folder: str, s: Settings, record) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    target = None  # the grid's best less the tolerance, once the grid has run
    runs = [("grid", 0), *[(m, seed) for seed in range(s.seeds) for m in ("random", "tpe")], ("asha", 0)]
    for method, seed in runs:
        done = run_sweep(folder, search_sweep(method, seed, s))
        t0 = done.trials[0].start_s if done.trials else 0.0
        for i, t in enumerate(done.trials):
            record(trial_line("search", {"method": method, "seed": seed}, i + 1, t, t0))
        line = search_line(method, seed, done, target)
        if method == "grid":
            target = max(map(val_acc, done.trials)) - s.tolerance
        if method == "asha":  # asha_vs_grid's figures: the grid's device-seconds ASHA spent, and its best
            grid = lines[0]
            line.update(asha_over_grid_device_s=round(line["device_s"] / grid["device_s"], 3) if grid["device_s"] else None,
                        asha_within_tolerance=line["best_val_acc"] >= grid["best_val_acc"] - s.tolerance)
        record(line, show=True)
        lines.append(line)
    return lines


# ---------------------------------------------------------------------------------------------
# 2. ASHA per model entry against one global bracket


def brackets_sweep(brackets: str, s: Settings) -> dict[str, Any]:
    qs = quickstart()
    raw = sweep_base(f"brackets-{brackets}", s.bracket_epochs)
    raw["search"].update(scheduler="asha", brackets=brackets, grace_period=1, reduction_factor=2,
                         algorithm="random", trials_per_model=s.trials_per_model, seed=0)
    entries = {m["arch"]: m for m in qs["models"]}
    raw["models"] = []
    for arch in [m["arch"] for m in qs["models"] if m["arch"] in s.families]:
        entry = {k: v for k, v in entries[arch].items() if k not in ("epochs", "lr")}
        lr = entries[arch].get("lr", qs["train"]["lr"])
        raw["models"].append({**entry, "lr": {"loguniform": [lr / 10, lr * 10]}})
    return raw


def measure_brackets(folder: str, s: Settings, record) -> list[dict[str, Any]]:
    from orchestrator import runs

    lines = []
    for brackets in ("per_model", "global"):
        done = run_sweep(folder, brackets_sweep(brackets, s))
        t0 = done.trials[0].start_s if done.trials else 0.0
        for i, t in enumerate(done.trials):
            record(trial_line("brackets", {"brackets": brackets}, i + 1, t, t0))
        by_arch: dict[str, list[TrialRun]] = {}
        for t in done.trials:
            by_arch.setdefault(t.result.arch, []).append(t)
        for arch, trials in by_arch.items():
            ranked = runs.rank([t.result for t in trials if t.result.has_model], "max")
            best = ranked[0] if ranked else None
            line = {"section": "brackets", "brackets": brackets, "family": arch, "trials": len(trials),
                    "full_budget_trials": sum(t.result.full_budget for t in trials),
                    "best_val_acc": round(best.val_acc, 4) if best and best.val_acc is not None else None,
                    "best_trial": best.name if best else None,
                    "best_epochs": best.epochs if best else None, "epochs_planned": s.bracket_epochs,
                    "device_s": round(sum(t.device_s for t in trials), 1),
                    "epochs_trained": sum(t.result.epochs or 0 for t in trials)}
            record(line, show=True)
            lines.append(line)
        total = {"section": "brackets", "brackets": brackets, "family": "total", "trials": len(done.trials),
                 "full_budget_trials": sum(t.result.full_budget for t in done.trials),
                 "device_s": round(done.device_s, 1),
                 "epochs_trained": sum(t.result.epochs or 0 for t in done.trials), "wall_s": round(done.wall_s, 1)}
        record(total, show=True)
        lines.append(total)
    return lines


# ---------------------------------------------------------------------------------------------
# Tables


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def search_table(lines: list[dict[str, Any]]) -> str:
    rows = ["| method | search seed | trials | best val acc | trials to target | epochs to target | "
            "device-s to target | epochs (all) | device-s (all) | wall s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for x in lines:
        rows.append(f"| {x['method']} | {x['seed']} | {x['trials']} | {fmt(x['best_val_acc'], 4)} | "
                    f"{fmt(x['trials_to_target'])} | {fmt(x['epochs_to_target'])} | {fmt(x['device_s_to_target'])} | "
                    f"{x['epochs_trained']} | {fmt(x['device_s'])} | {fmt(x['wall_s'])} |")
    return "\n".join(rows)


def brackets_table(lines: list[dict[str, Any]]) -> str:
    rows = ["| family | brackets | best val acc | epochs of its best trial | full-budget trials | device-s |",
            "|---|---|---|---|---|---|"]
    for x in sorted(lines, key=lambda x: (x["family"] == "total", x["family"], x["brackets"] != "per_model")):
        best_epochs = f"{fmt(x.get('best_epochs'))} of {x['epochs_planned']}" if "epochs_planned" in x else "-"
        rows.append(f"| {x['family']} | {x['brackets']} | {fmt(x.get('best_val_acc'), 4)} | {best_epochs} | "
                    f"{x['full_budget_trials']} of {x['trials']} | {fmt(x['device_s'])}"
                    + (f" (wall {fmt(x['wall_s'])} s)" if "wall_s" in x else "") + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    default = Settings()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=default.epochs, help="section 1: epochs per trial")
    p.add_argument("--lrs", type=int, default=default.lrs, help="section 1: learning rates in the grid")
    p.add_argument("--seeds", type=int, default=default.seeds, help="section 1: search seeds of random and tpe")
    p.add_argument("--tolerance", type=float, default=default.tolerance,
                   help="section 1: val accuracy below the grid's best that counts as found")
    p.add_argument("--trials-per-model", type=int, default=default.trials_per_model,
                   help="section 2: trials per family")
    p.add_argument("--bracket-epochs", type=int, default=default.bracket_epochs, help="section 2: epochs per trial")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--skip-brackets", action="store_true")
    p.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results"),
                   help="folder of the raw search_efficiency-<date>.jsonl")
    p.add_argument("--smoke", action="store_true", help="a minute or two; the numbers mean nothing")
    args = p.parse_args(argv)
    for flag in ("epochs", "lrs", "seeds", "trials_per_model", "bracket_epochs"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')}: {getattr(args, flag)} is below 1")
    settings = Settings(epochs=args.epochs, lrs=args.lrs, seeds=args.seeds, tolerance=args.tolerance,
                        trials_per_model=args.trials_per_model, bracket_epochs=args.bracket_epochs)
    if args.smoke:
        settings = smoke(settings)

    date = time.strftime("%Y-%m-%d")
    os.makedirs(args.results, exist_ok=True)
    path = os.path.join(args.results, f"search_efficiency-{date}{'-smoke' if args.smoke else ''}.jsonl")
    load_before = os.getloadavg()
    with open(path, "w") as raw_lines:
        def record(line: dict[str, Any], show: bool = False) -> None:
            raw_lines.write(json.dumps(line) + "\n")
            raw_lines.flush()
            if show:
                print(json.dumps(line), flush=True)

        search_lines, bracket_lines = [], []
        start = time.perf_counter()
        with local_ray(), tempfile.TemporaryDirectory() as folder:
            if not args.skip_search:
                search_lines = measure_search(folder, settings, record)
            if not args.skip_brackets:
                bracket_lines = measure_brackets(folder, settings, record)
        summary = {"summary": True, "smoke": args.smoke, "date": date, "cpus": os.cpu_count(),
                   "wall_s": round(time.perf_counter() - start, 1),
                   "load_average_before": [round(x, 2) for x in load_before],
                   "load_average_after": [round(x, 2) for x in os.getloadavg()],
                   "settings": dataclasses.asdict(settings), "grid_lrs": grid_lrs(settings.lrs),
                   "results": os.path.relpath(path, REPO),
                   "command": " ".join(["python -m benchmarks.search_efficiency", *(sys.argv[1:] if argv is None else argv)])}
        record(summary, show=True)
    if search_lines:
        print("\n" + search_table(search_lines), file=sys.stderr)
    if bracket_lines:
        print("\n" + brackets_table(bracket_lines), file=sys.stderr)


if __name__ == "__main__":
    main()
