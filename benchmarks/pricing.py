"""Pricing a configuration before it trains (issue 23, items 1 and 3): what it costs and what it saves.

    python -m benchmarks.pricing efficiency --repo A --repo B [--rounds 2] [--sweep experiments/quickstart.yaml] [--last N]
    python -m benchmarks.pricing budget [--max-latency-ms X] [--trials 3] [--epochs 3]   (then the agreement)
    python -m benchmarks.pricing interleaved FOLDER [--rounds 3]   (the agreement side by side, one process)

- `efficiency`: the quickstart run as a user runs it (`python -m orchestrator sweep FILE
  --tracking-uri sqlite:///... --storage ...`, a fresh store and storage each time, so no cost is
  cached) from each `--repo` checkout in turn, A B A B ... (`--rounds` times), on this machine.
  Orchestration efficiency = the trials' summed `epoch_s` / this machine's cores / the parent run's
  wall (its MLflow end - start); each family's val accuracy at its logged model. The load average is
  printed before and after each run.
- `budget`: a 3-family sweep (vgg11, resnet18, mobilenet_v2 at the quickstart's widths on digits,
  random search over lr, `--trials` each, deployed on ONNX Runtime with 1 thread) twice with the
  same search seed: without constraints, then with `search.constraints: {infer_latency_b1_ms:
  {max: X}}` (X: default, the geometric mean of the middle and the slowest family's priced
  latencies, priced first into the sweeps' shared storage). Device-seconds (the trials' summed
  `epoch_s`), trials trained / infeasible, and the best feasible val accuracy each found.
- then the agreement: for each family, the priced latency of the unconstrained sweep's best run
  next to `orchestrate export RUN --format onnx`'s measurement of that trained model (run twice, as
  a user runs it, on one thread).

One JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def read_sweep(tracking_uri: str, experiment: str) -> dict:
    """The newest sweep of `experiment`: the parent's wall, each trial's summed epoch_s, status and
    val_acc at its logged model (through orchestrator.runs)."""
    import mlflow

    from orchestrator import runs

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    parent = runs.sweep_runs(client, exp.experiment_id)[0]
    trials = []
    for run in runs.trial_runs(client, exp.experiment_id, parent.info.run_id):
        r = runs.result(run, "val_acc")
        epoch_s = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_s"))
        trials.append({"name": r.name, "arch": r.arch, "status": r.status, "val_acc": r.val_acc,
                       "epoch_s": round(epoch_s, 3), "latency_ms": r.latency_ms,
                       "workers": runs.decode(run).resources.num_workers})
    wall = (parent.info.end_time - parent.info.start_time) / 1000
    return {"parent_wall_s": round(wall, 2), "trials": trials}


def run_cli_sweep(repo: str, sweep_file: str, folder: str) -> tuple[int, float, str]:
    """`python -m orchestrator sweep` from checkout `repo` (its code on PYTHONPATH); (exit code,
    wall seconds, tracking URI)."""
    uri = f"sqlite:///{folder}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": repo}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", sweep_file, "-q", "--tracking-uri", uri,
                           "--storage", os.path.join(folder, "ray_results")], cwd=repo, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    return done.returncode, time.perf_counter() - start, uri


def efficiency(args) -> None:
    cores = os.cpu_count() or 1
    for rnd in range(args.rounds):
        for repo in args.repo:
            repo = os.path.abspath(repo)
            sweep_file = os.path.join(repo, args.sweep)
            before = load()
            with tempfile.TemporaryDirectory(prefix="price-eff-") as folder:
                if args.last:  # the file's last N models (the quickstart lists the slowest first)
                    import yaml

                    with open(sweep_file) as f:
                        raw = yaml.safe_load(f)
                    raw["models"] = raw["models"][-args.last:]
                    sweep_file = os.path.join(folder, os.path.basename(sweep_file))
                    with open(sweep_file, "w") as f:
                        yaml.safe_dump(raw, f, sort_keys=False)
                code, wall, uri = run_cli_sweep(repo, sweep_file, folder)
                if code != 0:
                    emit({"part": "efficiency", "repo": repo, "round": rnd, "exit_code": code})
                    continue
                import yaml

                with open(sweep_file) as f:
                    name = yaml.safe_load(f)["name"]
                got = read_sweep(uri, name)
            epoch_s = sum(t["epoch_s"] * t["workers"] for t in got["trials"])
            accs = {t["arch"]: t["val_acc"] for t in got["trials"]}
            emit({"part": "efficiency", "repo": repo, "round": rnd, "process_wall_s": round(wall, 2),
                  "parent_wall_s": got["parent_wall_s"], "epoch_s": round(epoch_s, 2), "cores": cores,
                  "efficiency": round(epoch_s / cores / got["parent_wall_s"], 3),
                  "min_val_acc": min(a for a in accs.values() if a is not None), "val_acc": accs,
                  "load_before": before, "load_after": load(), "date": time.strftime("%Y-%m-%d %H:%M")})


# The 3-family sweep of `budget`: a fast, a middling and a slow family at the quickstart's settings,
# random lr, the same search seed with and without the constraint; priced on ONNX Runtime, 1 thread.
FAMILIES = (("vgg11", {"width": 0.125}, [0.001, 0.01]), ("resnet18", {"width": 0.125}, [0.001, 0.01]),
            ("mobilenet_v2", {"width": 0.25}, [0.003, 0.03]))


def budget_sweep(name: str, trials: int, epochs: int, max_latency_ms: float | None) -> dict:
    search = {"scheduler": "fifo", "algorithm": "random", "trials_per_model": trials, "seed": 5}
    if max_latency_ms is not None:
        search["constraints"] = {"infer_latency_b1_ms": {"max": max_latency_ms}}
    return {"name": name, "dataset": {"name": "digits"},
            "train": {"epochs": epochs, "batch_size": 16, "optimizer": "adamw", "weight_decay": 0.05,
                      "warmup_epochs": 0.5, "data_path": "device"},
            "resources": {"num_workers": 1, "cpus_per_worker": 1}, "search": search,
            "deploy": {"runtime": "onnxruntime", "device": "cpu", "threads": 1},
            "models": [{"arch": a, "knobs": k, "lr": {"loguniform": lr}} for a, k, lr in FAMILIES]}


def summarise(tracking_uri: str, experiment: str, max_latency_ms: float) -> dict:
    got = read_sweep(tracking_uri, experiment)
    trials = got["trials"]
    feasible = [t for t in trials if t["latency_ms"] is not None and t["latency_ms"] <= max_latency_ms
                and t["val_acc"] is not None]
    best = max(feasible, key=lambda t: t["val_acc"], default=None)
    return {"trials": len(trials), "trained": sum(t["status"] in ("completed", "early-stopped") for t in trials),
            "infeasible": sum(t["status"] == "infeasible" for t in trials),
            "device_s": round(sum(t["epoch_s"] * t["workers"] for t in trials), 2),
            "device_s_by_arch": {a: round(sum(t["epoch_s"] for t in trials if t["arch"] == a), 2)
                                 for a, _, _ in FAMILIES},
            "latency_ms_by_arch": {t["arch"]: round(t["latency_ms"], 3) for t in trials if t["latency_ms"]},
            "best_feasible_val_acc": best and best["val_acc"], "best_feasible": best and best["name"],
            "parent_wall_s": got["parent_wall_s"]}


def budget(args) -> None:
    """Both sweeps in one Ray and one storage (so both read the same prices: the first measures,
    the second reuses), then the agreement check on the first sweep's best run of each family."""
    import torch

    from benchmarks.sweep_run import local_ray, run_sweep
    from orchestrator import pricing
    from orchestrator.schema import Deploy

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="price-budget-")
    uri, storage = f"sqlite:///{folder}/mlflow.db", os.path.join(folder, "ray_results")
    cache = pricing.Cache(storage)
    priced = {a: pricing.price(a, k, 32, 10, Deploy(runtime="onnxruntime"), cache=cache).costs["infer_latency_b1_ms"]
              for a, k, _ in FAMILIES}
    ordered = sorted(priced.values())
    limit = args.max_latency_ms or round((ordered[1] * ordered[2]) ** 0.5, 3)  # between the middle and the slowest
    emit({"part": "budget", "priced_latency_ms": {a: round(v, 3) for a, v in priced.items()}, "max_latency_ms": limit,
          "load": load()})
    out = {}
    with local_ray():
        for label, bound in (("unconstrained", None), ("constrained", limit)):
            name = f"budget-{label}"
            before = load()
            run_sweep(folder, budget_sweep(name, args.trials, args.epochs, bound), tracking_uri=uri, storage=storage)
            out[label] = summarise(uri, name, limit)
            emit({"part": "budget", "sweep": label, **out[label], "load_before": before, "load_after": load()})
    emit({"part": "budget", "summary": True, "max_latency_ms": limit,
          "device_s_saved": round(out["unconstrained"]["device_s"] - out["constrained"]["device_s"], 2),
          "device_s_ratio": round(out["constrained"]["device_s"] / out["unconstrained"]["device_s"], 3),
          "best_feasible_val_acc": {k: v["best_feasible_val_acc"] for k, v in out.items()}, "folder": folder})
    agreement(uri, "budget-unconstrained", folder)


def agreement(uri: str, experiment: str, folder: str) -> None:
    """For each family, the best trained run of the unconstrained sweep: its priced ONNX Runtime
    latency (the run's infer_latency_b1_ms) next to `orchestrate export RUN --format onnx`'s own
    measurement of that run's model (onnx_latency_b1_ms, which it records on the run), run as a
    user runs it, on one thread (OMP_NUM_THREADS=1, as deploy.threads), twice each."""
    import mlflow

    from orchestrator import runs

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    parent = runs.sweep_runs(client, exp.experiment_id)[0].info.run_id
    results = runs.results(client, exp.experiment_id, parent)
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    for arch, _, _ in FAMILIES:
        best = next(r for r in results if r.arch == arch and r.has_model)
        exported = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-m", "orchestrator", "export", best.run_id, "--format", "onnx",
                                   "--out", os.path.join(folder, "export"), "--tracking-uri", uri],
                                  cwd=REPO, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.stderr.write(done.stdout[-2000:] + done.stderr[-2000:])
                continue
            exported.append(client.get_run(best.run_id).data.metrics["onnx_latency_b1_ms"])
        run = client.get_run(best.run_id)
        emit({"part": "agreement", "arch": arch, "run": best.name,
              "priced_ort_latency_b1_ms": round(run.data.metrics["infer_latency_b1_ms"], 4),
              "priced_params": {k: run.data.params.get(k) for k in ("infer_runtime", "infer_num_threads",
                                                                     "pricing_cached")},
              "export_onnx_latency_b1_ms": [round(v, 4) for v in exported], "load": load()})


def interleaved(args) -> None:
    """The agreement side by side in one process, one thread: for each family's best run of a
    finished `budget` folder, `rounds` times in turn: the deployment target's price measured afresh
    (pricing.price, ONNX Runtime, no cache) and `orchestrate export`'s measurement of the trained
    model (deploy.export_run, what `orchestrate export RUN --format onnx` runs, not logged)."""
    import mlflow
    import torch

    from orchestrator import deploy, pricing, runs
    from orchestrator.schema import Deploy

    torch.set_num_threads(1)
    uri = f"sqlite:///{args.folder}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("budget-unconstrained")
    parent = runs.sweep_runs(client, exp.experiment_id)[0].info.run_id
    results = runs.results(client, exp.experiment_id, parent)
    for arch, knobs, _ in FAMILIES:
        best = next(r for r in results if r.arch == arch and r.has_model)
        run = client.get_run(best.run_id)
        priced, exported = [], []
        for _ in range(args.rounds):
            priced.append(pricing.price(arch, knobs, 32, 10, Deploy(runtime="onnxruntime")).costs["infer_latency_b1_ms"])
            with tempfile.TemporaryDirectory() as out:
                exported.append(deploy.export_run(client, run, "onnx", out, log=False).check.speed.latency_ms)
        emit({"part": "interleaved", "arch": arch, "run": best.name, "priced_ort_latency_b1_ms": [round(v, 4) for v in priced],
              "export_onnx_latency_b1_ms": [round(v, 4) for v in exported],
              "median_ratio": round(sorted(priced)[len(priced) // 2] / sorted(exported)[len(exported) // 2], 3),
              "load": load()})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    e = sub.add_parser("efficiency")
    e.add_argument("--repo", action="append", required=True, help="a checkout to run from (repeatable)")
    e.add_argument("--rounds", type=int, default=2)
    e.add_argument("--sweep", default="experiments/quickstart.yaml", help="relative to each --repo")
    e.add_argument("--last", type=int, default=0, help="only the sweep file's last N models (0: all)")
    b = sub.add_parser("budget")
    b.add_argument("--trials", type=int, default=3, help="trials per family")
    b.add_argument("--epochs", type=int, default=3)
    b.add_argument("--max-latency-ms", type=float, default=None,
                   help="default: between the middle and the slowest family's priced latency")
    i = sub.add_parser("interleaved")
    i.add_argument("folder", help="a finished budget run's folder (its summary line names it)")
    i.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    {"efficiency": efficiency, "budget": budget, "interleaved": interleaved}[args.part](args)


if __name__ == "__main__":
    main()
