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

    try:
        from orchestrator import sweep_cli
    except ImportError:  # the GPU box has no Ray/MLflow: train and archs still work
        sweep_cli = None
    if sweep_cli is not None:
        sweep_cli.add_commands(sub)
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
