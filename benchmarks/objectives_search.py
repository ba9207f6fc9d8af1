"""Several objectives: multi-objective TPE against random search on the same trial budget, by the
hypervolume of the Pareto set each finds over (val_acc: max, infer_latency_b1_ms: min).

    python -m benchmarks.objectives_search [--epochs 2] [--budget 4] [--seeds 3] [--extra-seeds 20]
        [--archs resnet18,vgg11,alexnet] [--widths 0.125,0.25] [--table FILE]
        [--results benchmarks/results] [--smoke]

A tabular benchmark, so that the comparison is between the searchers and not between the noise of
two sets of training runs on a shared 2-core machine:

1. the table: every configuration of the space — three entries, resnet18, vgg11 and alexnet, each
   with width {0.125, 0.25} x AdamW lr {0.0005, 0.001, 0.002, 0.004, 0.008, 0.016} (12 per entry,
   36 in all) — trained once with the engine (`Engine.fit`, the sweep's recipe: batch 32, weight
   decay 0.05, one-cycle, `--epochs` epochs on digits, val_fraction 0.2, seed 0, on the CPU, one
   torch thread), scored as a sweep's trial is: val_acc at its best epoch (the logged model's).
   Its latency is its model's: the batch-1 latency orchestrator/inference.py measures, once per
   (arch, width), the least of LATENCY_REPEATS measurements (it depends on neither the weights nor
   the lr; measured per trial on a loaded machine, the same model read 14-56 ms in a trial run of
   this script, and one model's five measurements 1.2-34 ms in another). The rows go to the
   results file (`--table FILE` reuses them: its space is the table's).
2. the searches: orchestrate's own per-entry searcher (`search.EntrySearch`, a sweep file parsed by
   config.parse with the space above as `choice` leaves, `search.objectives: {val_acc: max,
   infer_latency_b1_ms: min}`, `trials_per_model: --budget`) driven as Tune drives it, one trial at
   a time: each suggestion is looked up in the table, the latency reported with the first epoch,
   the accuracy with the last (`on_trial_result`, `on_trial_complete`). `tpe`: one multi-objective
   Optuna TPE study per entry; `random`: the same space sampled at random; `search.seed` 0 ..
   `--seeds`-1 (then `--extra-seeds` more, for a tighter comparison: each search costs milliseconds).
   A configuration suggested twice is a trial spent twice (a sweep would retrain it with another
   seed; here it scores the same).
3. the score: the hypervolume (orchestrator.pareto.hypervolume) of the Pareto set of the trials each
   search ran, with the reference point (accuracy 0, 1.1 x the table's slowest latency), and as a
   share of the whole table's (`hv_share`: 1.0 = the search found the table's whole Pareto set).

Prints one JSON line per search, then a summary per algorithm (mean, sample std, and a 95% t
interval of the mean over the first `--seeds` seeds and over all seeds) and `"summary": true`
with the load averages; all also written to
RESULTS/objectives_search-<date>-<archs>-budget<budget>.jsonl. `--smoke`:
1 epoch, vgg11 and alexnet x 2 widths x 2 lrs, budget 2, 2 seeds (minutes; the numbers mean nothing).

Latencies are measured on this machine under its load (printed): they move with it, but every
search reads the same table, so the searchers are compared on identical numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OBJECTIVES = {"val_acc": "max", "infer_latency_b1_ms": "min"}


@dataclasses.dataclass(frozen=True)
class Settings:
    epochs: int = 2
    budget: int = 4  # trials per entry, of its 12 configurations
    seeds: int = 3
    extra_seeds: int = 20
    archs: tuple[str, ...] = ("resnet18", "vgg11", "alexnet")
    widths: tuple[float, ...] = (0.125, 0.25)
    lrs: tuple[float, ...] = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016)


SMOKE = Settings(epochs=1, budget=2, seeds=2, extra_seeds=0, archs=("vgg11", "alexnet"), lrs=(0.002, 0.008))


def latencies(s: Settings, num_classes: int, log) -> dict[tuple[str, float], float]:
    """Each (arch, width)'s batch-1 latency on the CPU (one thread), as the engine measures it
    (orchestrator/inference.py), the least of LATENCY_REPEATS measurements: it depends on neither
    the weights nor the learning rate, so it is measured once per model, not once per trial; on a
    loaded machine the least is the one closest to the model's own cost (others' work only adds)."""
    import torch

    import archs
    from orchestrator import inference

    torch.set_num_threads(1)  # as the trials measure it: one worker, one CPU
    out = {}
    for arch, width in itertools.product(s.archs, s.widths):
        model = archs.create(arch, num_classes=num_classes, image_size=32, width=width)
        values = [inference.as_metrics(inference.measure(model, "cpu", batch_sizes=(1, 32)))["infer_latency_b1_ms"]
                  for _ in range(LATENCY_REPEATS)]
        out[arch, width] = min(values)
        log({"latency": True, "arch": arch, "width": width, "infer_latency_b1_ms": out[arch, width],
             "measurements": values})
    return out


LATENCY_REPEATS = 5


def train_table(s: Settings, log) -> list[dict[str, Any]]:
    """Every (arch, width, lr) trained once: its val_acc at the best epoch, and its model's batch-1 latency."""
    import torch

    from orchestrator import data, engine
    from orchestrator.schema import DataSpec, TrainConfig

    torch.set_num_threads(1)
    splits = data.load_splits(DataSpec(name="digits", val_fraction=0.2))
    latency = latencies(s, splits.num_classes, log)
    rows = []
    for arch, width, lr in itertools.product(s.archs, s.widths, s.lrs):
        cfg = TrainConfig(epochs=s.epochs, batch_size=32, optimizer="adamw", lr=lr, weight_decay=0.05,
                          data_path="device", benchmark_inference=False, seed=0)
        start = time.perf_counter()
        reporter = engine.CollectingReporter()
        engine.Engine(cfg, engine.ModelSpec(arch, {"width": width}), splits, device="cpu").fit(reporter)
        row = {"table": True, "arch": arch, "width": width, "lr": lr,
               "val_acc": max(m["val_acc"] for m in reporter.history),
               "infer_latency_b1_ms": latency[arch, width], "param_count": reporter.history[0]["param_count"],
               "seconds": round(time.perf_counter() - start, 2)}
        log(row)
        rows.append(row)
    return rows


def sweep_text(s: Settings, algorithm: str, seed: int) -> dict[str, Any]:
    space = {"width": {"choice": list(s.widths)}}
    return {"name": "objectives-bench", "dataset": {"name": "digits", "val_fraction": 0.2},
            "train": {"epochs": s.epochs, "batch_size": 32, "optimizer": "adamw", "weight_decay": 0.05},
            "search": {"algorithm": algorithm, "trials_per_model": s.budget, "seed": seed, "objectives": OBJECTIVES},
            "models": [{"arch": a, "knobs": space, "lr": {"choice": list(s.lrs)}} for a in s.archs]}


def search(s: Settings, table: list[dict[str, Any]], algorithm: str, seed: int) -> list[dict[str, Any]]:
    """The trials one search runs, in order, each scored from the table."""
    from ray.tune.search import Searcher

    from orchestrator import config
    from orchestrator import search as entry_search

    spec = config.parse(sweep_text(s, algorithm, seed), "objectives-bench.yaml")
    searcher = entry_search.EntrySearch(spec)
    lookup = {(r["arch"], r["width"], r["lr"]): r for r in table}
    trials = []
    for k in itertools.count():
        tid = f"t{k}"
        cfg = searcher.suggest(tid)
        if cfg is None or cfg == Searcher.FINISHED:
            return trials
        m = cfg["model"]
        row = lookup[(m["arch"], m["knobs"]["width"], m["lr"])]
        searcher.on_trial_result(tid, {"epoch": 1, "infer_latency_b1_ms": row["infer_latency_b1_ms"]})
        searcher.on_trial_complete(tid, {"epoch": s.epochs, "val_acc": row["val_acc"]})
        trials.append(row)


def score(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    from orchestrator import pareto

    return pareto.hypervolume(points, tuple(OBJECTIVES.values()), reference)


def summarise(values: list[float]) -> dict[str, Any]:
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"n": len(values), "mean": mean}
    std = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * std / len(values) ** 0.5
    return {"n": len(values), "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(Settings):
        if f.type in ("int", int):
            parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default)
    parser.add_argument("--archs", default=",".join(Settings.archs), help="comma-separated: one entry each")
    parser.add_argument("--widths", default=",".join(map(str, Settings.widths)), help="comma-separated widths")
    parser.add_argument("--table", help="a table JSON file written by an earlier run: reuse it")
    parser.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    s = SMOKE if args.smoke else Settings(
        archs=tuple(args.archs.split(",")), widths=tuple(float(w) for w in args.widths.split(",")),
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings) if f.type in ("int", int)})
    load_before = os.getloadavg()
    started = time.perf_counter()
    lines: list[dict[str, Any]] = []
    if args.table:  # the rows of an earlier run, each latency the least of its model's measurements
        with open(args.table) as f:
            lines = [json.loads(line) for line in f]
        table = [r for r in lines if r.get("table")]
        s = dataclasses.replace(s, archs=tuple(dict.fromkeys(r["arch"] for r in table)),  # the table's space
                                widths=tuple(sorted({r["width"] for r in table})),
                                lrs=tuple(sorted({r["lr"] for r in table})))
        measurements = {(r["arch"], r["width"]): r["measurements"] for r in lines if r.get("latency")}
        lines = [r for r in lines if r.get("table") or r.get("latency")]
    os.makedirs(args.results, exist_ok=True)
    stamp = datetime.date.today().isoformat() + ("-smoke" if args.smoke else f"-{'-'.join(s.archs)}-budget{s.budget}")
    out_path = os.path.join(args.results, f"objectives_search-{stamp}.jsonl")
    out = open(out_path, "w")

    def log(record: dict[str, Any]) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        out.write(line + "\n")
        out.flush()

    if args.table:
        measured = {k: min(v) for k, v in measurements.items()}
        table = [{**r, "infer_latency_b1_ms": measured[r["arch"], r["width"]]} for r in table]
        for line in lines:
            log({**line, "infer_latency_b1_ms": measured[line["arch"], line["width"]]})
    else:
        table = train_table(s, log)
    table_s = time.perf_counter() - started
    worst = max(r["infer_latency_b1_ms"] for r in table)
    reference = (0.0, 1.1 * worst)
    best_hv = score([(r["val_acc"], r["infer_latency_b1_ms"]) for r in table], reference)
    hv: dict[str, list[float]] = {"tpe": [], "random": []}
    for seed in range(s.seeds + s.extra_seeds):
        for algorithm in ("tpe", "random"):
            trials = search(s, table, algorithm, seed)
            value = score([(r["val_acc"], r["infer_latency_b1_ms"]) for r in trials], reference)
            hv[algorithm].append(value)
            distinct = len({(r["arch"], r["width"], r["lr"]) for r in trials})
            log({"search": True, "algorithm": algorithm, "seed": seed, "trials": len(trials),
                 "distinct_configs": distinct, "hv": value, "hv_share": value / best_hv,
                 "best_val_acc": max(r["val_acc"] for r in trials)})
    summary: dict[str, Any] = {"summary": True, "settings": dataclasses.asdict(s), "table_configs": len(table),
                               "reference": reference, "table_hv": best_hv, "table_s": round(table_s, 1),
                               "load_before": load_before, "load_after": os.getloadavg(), "cpus": os.cpu_count()}
    for algorithm, values in hv.items():
        shares = [v / best_hv for v in values]
        summary[algorithm] = {"first_seeds": summarise(shares[:s.seeds]), "all_seeds": summarise(shares)}
    log(summary)
    out.close()
    print(f"written: {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
