"""The `orchestrate` command line. Heavy imports (torch, Ray, MLflow) happen inside the commands,
so `orchestrate --help` is instant and `train` runs where Ray and MLflow are not installed."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence


class UsageError(Exception):
    """Bad user input: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message}")


def _knob_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _parse_knobs(pairs: Sequence[str]) -> dict[str, Any]:
    knobs = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--knob: {pair!r} is not NAME=VALUE")
        key, value = pair.split("=", 1)
        knobs[key.strip()] = _knob_value(value)
    return knobs


# ---------------------------------------------------------------------------------------------


def cmd_archs(args) -> int:
    import archs

    names = archs.names(args.pattern)
    if not names:
        raise UsageError(f"archs: no arch matches {args.pattern!r}; known: {', '.join(archs.names())}")
    rows = []
    for name in names:
        arch = archs.get(name)
        knobs = "  ".join(f"{k.name}={k.default} ({k.describe()})" for k in arch.knobs)
        if args.no_count:
            params = flops = ""
        else:
            model = archs.create(name)
            params = f"{archs.count_params(model) / 1e6:.2f}M"
            flops = f"{archs.count_flops(model) / 1e6:.0f}M"
        rows.append((name, arch.family, params, flops, knobs))
    header = ("arch", "family", "params", "FLOPs", "knobs (default, allowed)")
    print_table([header] + rows)
    return 0


def print_table(rows: list[Sequence[Any]], stream=None) -> None:
    stream = stream or sys.stdout
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=stream)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=stream)


def cmd_train(args) -> int:
    import archs
    from orchestrator import data, engine

    knobs = _parse_knobs(args.knob)
    if args.width is not None:
        knobs["width"] = args.width
    try:
        knobs = archs.validate(args.arch, knobs)
    except archs.KnobError as e:
        raise UsageError(f"train: {'--arch' if e.knob == 'arch' else '--knob ' + e.knob}: {e.value!r} {e.allowed}")
    cfg = engine.TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, precision=args.precision, compile=args.compile,
        grad_clip=args.grad_clip, seed=args.seed, deterministic=args.deterministic,
        data_path=args.data_path, steps_per_epoch=args.steps_per_epoch,
        channels_last=not args.no_channels_last)
    try:
        cfg.check()
    except ValueError as e:
        key, rest = str(e).split(": ", 1)
        raise UsageError(f"train: --{key.replace('_', '-')}: {rest}") from None
    spec = data.DataSpec(name=args.dataset, root=args.root, val_fraction=args.val_fraction,
                         subset=args.subset, download=args.download)
    try:
        splits = data.load_splits(spec)
    except data.DataError as e:
        raise UsageError(f"train: {e}") from None
    run = engine.Engine(cfg, engine.ModelSpec(args.arch, knobs), splits, device=args.device)
    print(f"{args.arch} {knobs}  params {run.param_count:,}  FLOPs {run.flops:,}  device {run.device}  "
          f"path {run.data_path}  train {len(splits.train.labels)}  val {len(splits.val.labels)}", flush=True)
    reporter = engine.PrintReporter(checkpoint_dir=args.checkpoint_dir)
    final = run.fit(reporter, resume_from=args.resume)
    if args.checkpoint_dir:
        print(f"checkpoint: {args.checkpoint_dir}")
    if final:
        print(f"best val_acc {run.best_val_acc:.4f}")
    return 0


def _tracking_uri(arg: str | None) -> str:
    import os

    from orchestrator.config import default_tracking_uri

    return arg or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def cmd_sweep(args) -> int:
    from orchestrator import config

    try:
        spec = config.load(args.file, {"tracking_uri": args.tracking_uri, "storage_path": args.storage})
        if args.dry_run:
            from orchestrator import sweep

            rows = sweep.preview(spec)
            print(f"{args.file}: valid; {len(rows)} trial(s) (random dimensions sampled with seed "
                  f"{spec.search.seed}); tracking {spec.tracking_uri}; storage {spec.storage_path}")
            table = [("#", "arch", "knobs", "lr", "overrides")]
            for i, m in enumerate(rows):
                knobs = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in sorted((m.get("knobs") or {}).items()))
                extra = " ".join(f"{k}={v}" for k, v in m.items() if k not in ("arch", "knobs", "lr"))
                table.append((i, m["arch"], knobs or "-", f"{m['lr']:.4g}", extra or "-"))
            print_table(table)
            return 0
        from orchestrator import sweep

        return sweep.run(spec, address=args.address, resume=args.resume)
    except config.ConfigError as e:
        raise UsageError(str(e)) from None


def cmd_compare(args) -> int:
    from orchestrator import tracking

    uri = _tracking_uri(args.tracking_uri)
    reason = tracking.check_reachable(uri)
    if reason:
        raise UsageError(f"compare: --tracking-uri: {reason}")
    client = tracking.MlflowClient(tracking_uri=uri)
    if args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise UsageError(f"compare: experiment {args.experiment!r} not found in {uri}; "
                             f"known: {', '.join(names) or 'none'}")
    else:
        exps = [e for e in client.search_experiments(order_by=["last_update_time DESC"]) if e.name != "Default"]
        if not exps:
            raise UsageError(f"compare: no experiments in {uri}; run `orchestrate sweep FILE` first")
        exp = exps[0]
    parent = None
    if not args.all_sweeps:
        sweeps = client.search_runs([exp.experiment_id], "tags.`orchestrate.role` = 'sweep'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
        parent = sweeps[0].info.run_id if sweeps else None
    rows = tracking.comparison_rows(client, exp.experiment_id, parent)
    print(f"experiment {exp.name!r}" + (f", sweep run {parent}" if parent else ", all sweeps")
          + f" ({len(rows)} trials; {uri})")
    cols = tracking.COMPARE_COLUMNS
    print_table([cols] + tracking.format_rows(rows))
    return 0


def cmd_evaluate(args) -> int:
    from orchestrator import evaluate

    try:
        result = evaluate.evaluate_run(args.run_id, _tracking_uri(args.tracking_uri), dataset=args.dataset,
                                       root=args.root, split=args.split, batch_size=args.batch_size,
                                       device=args.device)
    except evaluate.EvaluateError as e:
        raise UsageError(f"evaluate: {e}") from None
    print(f"run {args.run_id} ({result['arch']}) on {result['dataset']} {args.split}: "
          f"loss {result['loss']:.4f}  acc {result['acc']:.4f}  top5 {result['top5']:.4f}  n {result['n']}")
    return 0


def cmd_ui(args) -> int:
    import os
    import signal
    import subprocess

    uri = _tracking_uri(args.tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI for {uri} on http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    # Its own process group: mlflow starts uvicorn and job-runner children, and stopping this
    # command (Ctrl-C or SIGTERM) must end all of them, not orphan them.
    # The UI needs no background job runner (MLflow's GenAI jobs): 7 fewer processes.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)

    def stop(*_):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop()
    return 0


def build_parser() -> Parser:
    p = Parser(prog="orchestrate", description="Train and sweep CIFAR-sized image classifiers "
               "with Ray Train (DDP) x Ray Tune, tracked in MLflow.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    a = sub.add_parser("archs", help="list the model zoo: families, knobs, params, FLOPs")
    a.add_argument("pattern", nargs="?", help="glob over arch names, e.g. 'resnet*'")
    a.add_argument("--no-count", action="store_true", help="skip building models for params/FLOPs")
    a.set_defaults(func=cmd_archs)

    t = sub.add_parser("train", help="one training run on this machine, without Ray")
    t.add_argument("--arch", required=True)
    t.add_argument("--width", type=float)
    t.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE", help="arch knob (repeatable)")
    t.add_argument("--dataset", default="digits", choices=("cifar10", "cifar100", "imagefolder", "digits", "synthetic"))
    t.add_argument("--root", help="dataset folder (or .zip for imagefolder)")
    t.add_argument("--download", action="store_true", help="cifar: download when absent")
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--subset", type=int, help="use only this many training images")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    t.add_argument("--lr", type=float, default=0.1)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--schedule", default="onecycle", choices=("onecycle", "cosine", "constant"))
    t.add_argument("--warmup-epochs", type=float, default=1.0)
    t.add_argument("--label-smoothing", type=float, default=0.0)
    t.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--no-channels-last", action="store_true")
    t.add_argument("--grad-clip", type=float, default=0.0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--deterministic", action="store_true")
    t.add_argument("--data-path", default="auto", choices=("auto", "device", "loader"),
                   help="device: whole dataset on the GPU (fast path); loader: DataLoader")
    t.add_argument("--steps-per-epoch", type=int, default=0, help="cap train steps per epoch (smoke runs)")
    t.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    t.add_argument("--checkpoint-dir", help="keep the latest checkpoint here")
    t.add_argument("--resume", help="continue from a checkpoint directory")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sweep", help="run a sweep file on Ray (Train DDP x Tune), tracked in MLflow")
    s.add_argument("file")
    s.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
    s.add_argument("--tracking-uri", help="MLflow tracking URI (default: the file's tracking.uri, "
                   "MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    s.add_argument("--storage", help="Ray storage path for checkpoints and Tune state (default ./ray_results)")
    s.add_argument("--dry-run", action="store_true", help="validate and list the trials; run nothing")
    s.add_argument("--resume", action="store_true", help="continue this sweep's latest interrupted run")
    s.set_defaults(func=cmd_sweep)

    c = sub.add_parser("compare", help="table of an experiment's trials, best val accuracy first")
    c.add_argument("experiment", nargs="?", help="experiment name (default: the most recently active)")
    c.add_argument("--tracking-uri")
    c.add_argument("--all-sweeps", action="store_true", help="every sweep of the experiment, not only the latest")
    c.set_defaults(func=cmd_compare)

    e = sub.add_parser("evaluate", help="score a logged model on a dataset split")
    e.add_argument("run_id")
    e.add_argument("--dataset", help="dataset name (default: the run's own)")
    e.add_argument("--root", help="dataset root (default: the run's own)")
    e.add_argument("--split", default="test", choices=("test", "val", "train"))
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--tracking-uri")
    e.add_argument("--device")
    e.set_defaults(func=cmd_evaluate)

    u = sub.add_parser("ui", help="serve the MLflow UI for the configured store on 127.0.0.1")
    u.add_argument("--tracking-uri")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: not exposed)")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as e:
        print(str(e).splitlines()[0] if str(e) else "orchestrate: bad input", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
