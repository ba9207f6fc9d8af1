"""Pricing a configuration before it trains (issue 23, items 1 and 3): what it costs and what it saves.

    python -m benchmarks.pricing efficiency --repo A --repo B [--rounds 2] [--sweep experiments/quickstart.yaml]
    python -m benchmarks.pricing budget [--max-latency-ms X] [--trials 4] [--epochs 3]
    python -m benchmarks.pricing agreement

- `efficiency`: the quickstart run as a user runs it (`python -m orchestrator sweep FILE
  --tracking-uri sqlite:///... --storage ...`, a fresh store and storage each time, so no cost is
  cached) from each `--repo` checkout in turn, A B A B ... (`--rounds` times), on this machine.
  Orchestration efficiency = the trials' summed `epoch_s` / this machine's cores / the parent run's
  wall (its MLflow end - start); each family's val accuracy at its logged model. The load average is
  printed before and after each run.
- `budget`: a 3-family sweep (vgg11, resnet18, mobilenet_v2 at tiny widths on digits, random
  search over lr, `--trials` each) twice with the same search seed: without constraints, and with
  `search.constraints: {infer_latency_b1_ms: {max: X}}` (X: default, between the families' priced
  latencies, read from the first sweep). Device-seconds (the trials' summed `epoch_s`), trials
  trained / infeasible, and the best feasible val accuracy each found.
- `agreement`: for each family of `budget`, the deployment target's priced latency
  (`deploy: {runtime: onnxruntime, threads: 1}`, orchestrator.pricing) next to `orchestrate
  export`'s measurement of the same model (export.to_onnx + export.check_onnx, as cmd_export does),
  three times each, interleaved.

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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="part", required=True)
    e = sub.add_parser("efficiency")
    e.add_argument("--repo", action="append", required=True, help="a checkout to run from (repeatable)")
    e.add_argument("--rounds", type=int, default=2)
    e.add_argument("--sweep", default="experiments/quickstart.yaml", help="relative to each --repo")
    args = p.parse_args(argv)
    {"efficiency": efficiency}[args.part](args)


if __name__ == "__main__":
    main()
