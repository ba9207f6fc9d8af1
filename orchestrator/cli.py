"""The `orchestrate` command line. Heavy imports (torch, Ray, MLflow) happen inside the commands,
so `orchestrate --help` is instant and `train` runs where Ray and MLflow are not installed."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import fnmatch
import os
import signal
import socket
import subprocess
import sys
import traceback
import warnings
from typing import Any, Sequence

from orchestrator import schema  # torch-free: the settings and their rules
from orchestrator.schema import show


class UsageError(Exception):
    """Bad user input: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _parse_knobs(pairs: Sequence[str]) -> dict[str, Any]:
    import yaml

    from orchestrator import config

    knobs = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"train: --knob: {show(pair)} is not NAME=VALUE")
        key, value = pair.split("=", 1)
        try:
            knobs[key.strip()] = config.yaml_value(value)  # the sweep file's reader: same values, same limits
        except yaml.YAMLError as e:
            raise UsageError(f"train: --knob {schema.show_key(key.strip())}: {show(value)} is not a YAML value "
                             f"({getattr(e, 'problem', None) or 'malformed'})") from None
    return knobs


# Option types: a bad value is argparse's one line, before any command runs.


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{show(text)} is not a whole number >= 1")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{show(text)} is not a port in 1..65535")
    return int(text)


def _device(text: str) -> str:
    """A torch device this machine has: cpu, cuda, cuda:N or mps."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{show(text)} is not a device; allowed: cpu, cuda, cuda:N, mps")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(f"{show(text)}: this machine has no CUDA device; allowed: cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{show(text)}: this machine has {count} CUDA device(s), "
                                             f"cuda:0..cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{show(text)}: MPS is not available here; allowed: cpu")
    return text


# The `train` options are the schema's fields: a field added to TrainConfig or DataSpec is an
# option here with no other edit, with its type, default, choices and rule.
OPTION_NAMES = {(schema.DataSpec, "name"): "dataset"}


def _option(cls: type, field: str) -> str:
    return "--" + OPTION_NAMES.get((cls, field), field).replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    group = parser.add_argument_group(cls.__doc__.strip().splitlines()[0] if cls.__doc__ else cls.__name__)
    types = schema.field_types(cls)
    for f in dataclasses.fields(cls):
        typ, _ = types[f.name]
        dest = f"{cls.__name__}.{f.name}"
        help_text = f.metadata.get("help", "")
        if typ is bool:
            group.add_argument(_option(cls, f.name), dest=dest, action=argparse.BooleanOptionalAction,
                               default=f.default, help=help_text)
        else:  # a None default is explained by the help text
            group.add_argument(_option(cls, f.name), dest=dest, type=typ, default=f.default,
                               choices=f.metadata.get("choices"), metavar=None if f.metadata.get("choices") else
                               f.name.upper(),
                               help=help_text + ("" if f.default is None else f" (default {f.default})"))


def _from_options(cls: type, args):
    values = {f.name: getattr(args, f"{cls.__name__}.{f.name}") for f in dataclasses.fields(cls)}
    obj = cls(**schema.coerce(cls, values))
    for key, message in schema.problems(obj):
        raise UsageError(f"train: {_option(cls, key)}: {message}")
    return obj


# ---------------------------------------------------------------------------------------------


def cmd_archs(args) -> int:
    import archs
    from orchestrator import tables

    if args.from_file:  # your own models: the file's classes and functions that take num_classes
        try:
            names = [n for n in archs.user.models_in(args.from_file)
                     if args.pattern is None or fnmatch.fnmatch(n.rsplit(":", 1)[1], args.pattern)]
        except archs.user.CodeError as e:
            raise UsageError(f"archs: --from: {e}") from None
        if not names:
            raise UsageError(f"archs: --from: {args.from_file} defines no class or function taking num_classes"
                             + (f" matching {args.pattern!r}" if args.pattern else ""))
    else:
        names = archs.names(args.pattern)
    if not names:
        raise UsageError(f"archs: no arch matches {args.pattern!r}; known: {', '.join(archs.names())}")
    # Counted on meta-device models (shapes only, no memory, no weight init): the parameters of every
    # arch in ~0.2 s. FLOPs need a forward pass, ~0.1 s an arch even there: only on --flops.
    counted: dict[str, dict[str, str]] = {name: {} for name in names}
    for name in ([] if args.no_count else names):
        try:
            model = archs.create_on_meta(name)
        except archs.KnobError:  # a knob without a default: nothing to count until it is set
            counted[name].update(params="-", **({"FLOPs": "-"} if args.flops else {}))
            continue
        counted[name]["params"] = f"{archs.count_params(model) / 1e6:.2f}M"
        if args.flops:
            counted[name]["FLOPs"] = f"{archs.count_flops(model) / 1e6:.0f}M"
    if args.long:
        # A block an arch: a table row cannot hold the paper's title and each knob's help.
        for name in names:
            arch = archs.get(name)
            cost = "  ".join(f"{value} {column}" for column, value in counted[name].items())
            print(f"{name}  ({arch.family})  {cost}".rstrip())
            print(f"  paper: {arch.paper}")
            knob_rows = [(k.name, f"= {k.default}", k.describe(), k.help) for k in arch.knobs]
            widths = [max((len(row[i]) for row in knob_rows), default=0) for i in range(3)]
            for row in knob_rows:
                print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
            print("  smallest: " + "  ".join(f"{k}={v}" for k, v in arch.smallest.items()) + "\n")
        return 0
    columns = list(counted[names[0]])
    rows = [("arch", "family", *columns, "knobs (default, allowed)")]
    for name in names:
        arch = archs.get(name)
        knobs = "  ".join(f"{k.name}={k.default} ({k.describe()})" for k in arch.knobs)
        rows.append((name, arch.family, *counted[name].values(), knobs))
    tables.print_table(rows)
    return 0


def cmd_train(args) -> int:
    import archs
    from orchestrator import data, engine

    knobs = _parse_knobs(args.knob)
    if args.width is not None:
        knobs["width"] = args.width
    try:
        if archs.user.is_reference(args.arch):  # your own model: PATH.py relative to this folder
            archs.user.load(args.arch, base_dir=os.getcwd())
        knobs = archs.validate(args.arch, knobs)
    except archs.user.CodeError as e:
        raise UsageError(f"train: --arch: {e}") from None
    except archs.KnobError as e:
        raise UsageError(f"train: {'--arch' if e.knob == 'arch' else '--knob ' + schema.show_key(e.knob)}: "
                         f"{show(e.value)} {e.allowed}") from None
    cfg = _from_options(schema.TrainConfig, args)
    spec = _from_options(schema.DataSpec, args)
    wrong_size = archs.get(args.arch).size_problem(spec.image_size)
    if wrong_size:
        raise UsageError(f"train: {_option(schema.DataSpec, 'image_size')}: {wrong_size}")
    if args.resume and not os.path.isfile(os.path.join(args.resume, engine.STATE_FILE)):
        raise UsageError(f"train: --resume: {show(args.resume)} holds no checkpoint ({engine.STATE_FILE}); "
                         f"give the --checkpoint-dir of an earlier run")
    try:
        splits = data.load_splits(spec)
    except data.DataError as e:
        raise UsageError(f"train: {e}") from None
    images = len(splits.train.labels)
    if cfg.batch_size > images:  # every epoch would have no full batch to train on
        raise UsageError(f"train: --batch-size: {cfg.batch_size} is more than the {images} training images "
                         f"of {spec.name}; allowed: 1..{images}")
    run = engine.Engine(cfg, engine.ModelSpec(args.arch, knobs), splits, device=args.device)
    if args.resume:
        try:
            run.restore(args.resume)
        except Exception as e:  # noqa: BLE001 - torch.load's and load_state_dict's many errors
            raise UsageError(f"train: --resume: {show(args.resume)} is not a checkpoint of this model "
                             f"({schema.cut(str(e))})") from None
    print(f"{args.arch} {knobs}  params {run.param_count:,}  FLOPs {run.flops:,}  device {run.device}  "
          f"path {run.data_path}  train {images}  val {len(splits.val.labels)}", flush=True)
    reporter = engine.PrintReporter(checkpoint_dir=args.checkpoint_dir)
    final = run.fit(reporter)
    if args.checkpoint_dir:
        print(f"checkpoint: {args.checkpoint_dir}")
    if final:
        print(f"best val_acc {run.best_val_acc:.4f}")
    return 0


def _tracking_uri(arg: str | None) -> str:
    from orchestrator.config import default_tracking_uri

    return arg or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _check_store(args) -> None:
    """compare, evaluate and ui read a tracking store: it must be there and answer (MLflow would
    create a missing sqlite store, empty, wherever the command happened to run)."""
    from orchestrator import preflight

    reason = preflight.check_tracking(_tracking_uri(args.tracking_uri), existing=True)
    if reason:
        source = ("--tracking-uri: " if args.tracking_uri else
                  "MLFLOW_TRACKING_URI: " if os.environ.get("MLFLOW_TRACKING_URI") else "")
        raise UsageError(f"{args.command}: {source}{reason}")


def _check_report_out(args) -> None:
    from orchestrator import preflight

    out = os.path.abspath(args.out)
    if os.path.isdir(out):
        raise UsageError(f"report: --out: {show(args.out)} is a folder; give a file in it, e.g. report.html")
    if os.path.exists(out) and not os.path.isfile(out):
        raise UsageError(f"report: --out: {show(args.out)} is not a regular file; give a file, e.g. report.html")
    folder = os.path.dirname(out)
    reason = preflight.check_folder(folder, show(args.out))  # under a file, or nothing may be written there
    if reason:
        raise UsageError(f"report: --out: {reason}")
    if not os.path.isdir(folder):
        raise UsageError(f"report: --out: the folder of {show(args.out)} does not exist")


def _check_export_out(args) -> None:
    from orchestrator import preflight

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"export: --out: {show(args.out)} is a file; give a folder (made if missing)")
    reason = preflight.check_folder(args.out, show(args.out))
    if reason:
        raise UsageError(f"export: --out: {reason}")


def _check_port_free(args) -> None:
    """ui: the address must be this machine's and the port free (mlflow would otherwise retry or
    exit with its own traceback)."""
    try:
        family = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
            probe.bind((args.host, args.port))
    except socket.gaierror:
        raise UsageError(f"ui: --host: {show(args.host)} is not an address of this machine") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"ui: --port: {args.port} is in use on {args.host}; pick another with --port") from None
        raise UsageError(f"ui: --host/--port: cannot listen on {show(args.host)}:{args.port} ({e.strerror})") from None


def cmd_sweep(args) -> int:
    from orchestrator import config

    try:
        spec = config.load(args.file, {"tracking_uri": args.tracking_uri, "storage_path": args.storage})
        from orchestrator import preflight, sweep

        if args.dry_run:  # the same checks as a run: "valid" means it would start
            preflight.check_sweep(spec, address=args.address, resume=args.resume)
            if args.extend:
                sweep.extended(spec)
            _print_preview(args.file, spec, sweep.preview(spec, limit=PREVIEW_ROWS))
            return 0
        return sweep.run(spec, address=args.address, resume=args.resume, verbosity=args.verbose - args.quiet,
                         extend=args.extend)
    except config.ConfigError as e:
        raise UsageError(str(e)) from None


def cmd_submit(args) -> int:
    from orchestrator import config, submit

    try:
        spec = config.load(args.file, {"tracking_uri": args.tracking_uri, "storage_path": args.storage})
        return submit.run(spec, address=args.address, resume=args.resume, verbosity=args.verbose - args.quiet)
    except config.ConfigError as e:
        raise UsageError(str(e)) from None
    except submit.SubmitError as e:
        raise UsageError(f"submit: {e}") from None


PREVIEW_ROWS = 50  # a dry run lists this many trials, then says how many more


def _print_preview(file: str, spec, trials) -> None:
    from orchestrator import preflight, tables

    s = spec.search
    drawn = {"tpe": "TPE's draws depend on results: drawn at random here", "grid": "grid only"}.get(
        s.algorithm, f"random leaves drawn with seed {s.seed}")
    seeds = (f" + {s.seeds * len(spec.models)} re-training(s) of each entry's best configuration with fresh seeds"
             if s.seeds else "")
    print(f"{file}: valid; {spec.search_trial_count()} search trial(s) ({drawn}){seeds}; "
          f"tracking {preflight.show_uri(spec.tracking_uri)}; storage {preflight.show_uri(spec.storage_path)}")
    for code in spec.code():  # a sweep file that names code runs it: say which
        where = "shipped to every node" if code.ship else "from the environment, on every node"
        print(f"imports {code.ref}: {code.file} (sha256 {code.sha256[:12]}; {where})")
    table = [("#", "entry", "arch", "knobs", "lr", "seed", "epochs", "batch_size", "optimizer")]
    for i, t in enumerate(trials):
        knobs = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(t.knobs.items()))
        table.append((i, t.entry, t.arch, knobs or "-", f"{t.train.lr:.4g}", t.train.seed, t.train.epochs,
                      t.train.batch_size, t.train.optimizer))
    tables.print_table(table)
    if spec.search_trial_count() > len(trials):
        print(f"... and {spec.search_trial_count() - len(trials)} more search trial(s)")


def _find_sweep(args):
    """(client, experiment, parent run id or None) that compare and report read: the experiment
    named, else the most recently active one; its latest sweep, or all of them (None) with
    --all-sweeps."""
    from mlflow import MlflowClient

    from orchestrator import preflight, runs

    uri = _tracking_uri(args.tracking_uri)  # checked by the command's _check_store
    shown = preflight.show_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    if args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise UsageError(f"{args.command}: experiment {schema.show(args.experiment)} not found in {shown}; "
                             f"known: {', '.join(names) or 'none'}")
    else:
        exps = [e for e in client.search_experiments(order_by=["last_update_time DESC"]) if e.name != "Default"]
        if not exps:
            raise UsageError(f"{args.command}: no experiments in {shown}; run `orchestrate sweep FILE` first")
        exp = exps[0]
    parent = None
    if not args.all_sweeps:
        sweeps = runs.sweep_runs(client, exp.experiment_id)
        parent = sweeps[0].info.run_id if sweeps else None
    return client, exp, parent


def cmd_compare(args) -> int:
    from orchestrator import preflight, runs, tables

    client, exp, parent = _find_sweep(args)
    shown = preflight.show_uri(client.tracking_uri)
    results = runs.results(client, exp.experiment_id, parent)
    if args.by == "arch":
        mode = runs.selection(client, parent, runs.trial_runs(client, exp.experiment_id, parent))[1]
        text = tables.leaderboard_table(runs.leaderboard(results, mode, by_arch=parent is None)).render(args.format)
    else:
        text = tables.render(results, args.format)
    if args.format == "table":  # the other formats are data for other programs: nothing but the data
        ranked = (f", ranked by {results[0].metric}, trials that trained to their full budget first"
                  if results and args.by == "trial" else f", by model entry, by {results[0].metric}" if results else "")
        print(f"experiment {exp.name!r}" + (f", sweep run {parent}" if parent else ", all sweeps")
              + f" ({len(results)} trials{ranked}; {shown})")
        if args.by == "trial" and results and results[0].objectives:
            print(tables.pareto_line(results))
    print(text, end="" if args.format != "json" else "\n")
    return 0


def cmd_report(args) -> int:
    from orchestrator import report

    out = os.path.abspath(args.out)
    client, exp, parent = _find_sweep(args)
    data = report.collect(client, exp.experiment_id, parent)
    if data.empty:
        raise UsageError(f"report: {data.message()}")
    try:
        path = report.write(data, out)
    except OSError as e:  # checked before the store was read; a disk that filled up since
        raise UsageError(f"report: --out: cannot write {show(args.out)} ({e.strerror or e})") from None
    print(f"experiment {exp.name!r}, {data.scope}: {len(data.entries)} model entr"
          f"{'y' if len(data.entries) == 1 else 'ies'}; {data.answers[0].question}: {data.answers[0].text}")
    print(path)
    return 0


def cmd_evaluate(args) -> int:
    from orchestrator import evaluate

    try:
        result = evaluate.evaluate_run(args.run_id, _tracking_uri(args.tracking_uri), dataset=args.dataset,
                                       root=args.root, split=args.split, batch_size=args.batch_size,
                                       device=args.device, allow_pickle=args.allow_pickle)
    except evaluate.EvaluateError as e:
        raise UsageError(f"evaluate: {e}") from None
    print(f"run {args.run_id} ({result['arch']}) on {result['dataset']} {args.split}: "
          f"loss {result['loss']:.4f}  acc {result['acc']:.4f}  top5 {result['top5']:.4f}  n {result['n']}")
    if args.log:
        from orchestrator import tracking

        tracking.record_evaluation(_tracking_uri(args.tracking_uri), args.run_id, args.split, result)
        print(f"logged {args.split}_loss, {args.split}_acc, {args.split}_top5 on run {args.run_id}")
    return 0


def cmd_export(args) -> int:
    from mlflow import MlflowClient

    from orchestrator import deploy, export, runs

    client = MlflowClient(tracking_uri=_tracking_uri(args.tracking_uri))
    try:
        run = deploy.resolve(client, args.run)
        done = deploy.export_run(client, run, args.format, args.out, log=not args.no_log)
    except (deploy.DeployError, export.ExportError, runs.NotATrialRun) as e:
        raise UsageError(f"export: {e}") from None
    size_mb = os.path.getsize(done.path) / 2**20
    print(f"{done.path}  ({args.format}, {size_mb:.1f} MB, batch axis dynamic) from run {done.run_id}")
    print(f"checked on {deploy.CHECK_IMAGES} validation images against the trained model: max |logit diff| "
          f"{done.max_abs_diff:.2e}, top-1 agreement {done.top1_agreement:.2%}")
    if done.check is not None:
        speed = done.check.speed
        print(f"ONNX Runtime on this CPU ({done.check.num_threads} threads): batch 1 {speed.latency_ms:.3f} ms "
              f"(IQR {speed.latency_iqr_ms:.3f}), batch {speed.throughput_batch} {speed.imgs_per_s:,.0f} img/s")
    if not args.no_log:
        print(f"logged on run {done.run_id}" + (" (metrics, and the ONNX file as its `onnx` model)"
                                                if done.check is not None else " (metrics, and the file)"))
    return 0


class _Terminated(Exception):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT."""


def cmd_ui(args) -> int:
    from orchestrator import preflight

    uri = _tracking_uri(args.tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]

    def terminated(*_):
        raise _Terminated

    # Before the server exists: no moment where SIGTERM would orphan it. The handler only unwinds
    # the wait below; the stopping happens there (a wait inside the handler would block on the lock
    # the interrupted wait holds).
    signal.signal(signal.SIGTERM, terminated)
    # SIGINT too, explicitly: a process started in the background by a shell (or by a CI job run
    # with `&`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = None
    try:
        print(f"MLflow UI for {preflight.show_uri(uri)} on http://{args.host}:{args.port}  (Ctrl-C stops it)",
              flush=True)
        # Its own process group: mlflow starts uvicorn and job-runner children, and stopping this
        # command (Ctrl-C or SIGTERM) must end all of them, not orphan them.
        # The UI needs no background job runner (MLflow's GenAI jobs): 7 fewer processes.
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
        server = subprocess.Popen(cmd, start_new_session=True, env=env)
        return server.wait()
    except KeyboardInterrupt:
        signum = signal.SIGINT
    except _Terminated:
        signum = signal.SIGTERM
    for s in (signal.SIGINT, signal.SIGTERM):  # stopping takes a moment: do not die half-way
        signal.signal(s, signal.SIG_IGN)
    if server is not None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 128 + signum  # 130 / 143, as documented


EXIT_CODES = """exit codes:
  0    done (sweep: at least one trial trained to a model; failed trials are listed)
  1    sweep: no trial completed
  2    bad input: one line naming the file or option, the value and what is allowed
  130  interrupted (Ctrl-C / SIGINT); 143: terminated (SIGTERM) -- `sweep --resume` continues"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orchestrate")
    except PackageNotFoundError:  # run from a checkout without installing
        return "unknown (not installed)"


def build_parser() -> Parser:
    p = Parser(prog="orchestrate", description="Train and sweep CIFAR-sized image classifiers "
               "with Ray Train (DDP) x Ray Tune, tracked in MLflow.", epilog=EXIT_CODES,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    a = sub.add_parser("archs", help="list the model zoo: families, knobs, params (FLOPs with --flops)")
    a.add_argument("pattern", nargs="?", help="glob over arch names, e.g. 'resnet*'")
    a.add_argument("-l", "--long", action="store_true",
                   help="one block an arch: its paper, and each knob's default, allowed values and meaning")
    counting = a.add_mutually_exclusive_group()
    counting.add_argument("--flops", action="store_true",
                          help="also count the forward FLOPs of one 32x32 image (~0.1 s an arch)")
    counting.add_argument("--no-count", action="store_true", help="skip counting parameters")
    a.add_argument("--from", dest="from_file", metavar="FILE.py",
                   help="list your own models instead: the file's classes and functions taking num_classes, "
                        "their knobs read from their signatures (this imports the file: it runs its code)")
    a.set_defaults(func=cmd_archs)

    t = sub.add_parser("train", help="one training run on this machine, without Ray")
    t.add_argument("--arch", required=True)
    t.add_argument("--width", type=float)
    t.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE", help="arch knob (repeatable)")
    add_options(t, schema.TrainConfig)
    add_options(t, schema.DataSpec)
    t.add_argument("--device", type=_device, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
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
    again = s.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue this sweep's latest interrupted run")
    again.add_argument("--extend", action="store_true", help="go on with a finished sweep whose file now asks for "
                       "more (search.trials_per_model, search.seeds, search.budget): same parent run, no retraining")
    s.add_argument("-v", "--verbose", action="count", default=0,
                   help="Ray's own trial reporter and every worker's log lines instead of the live view")
    s.add_argument("-q", "--quiet", action="count", default=0, help="print only the summary")
    s.set_defaults(func=cmd_sweep)

    j = sub.add_parser("submit", help="run a sweep file as a Ray job on a running cluster: the file and this "
                                      "machine's models uploaded, its output streamed, the sweep's exit code")
    j.add_argument("file")
    j.add_argument("--address", help="the cluster's job server, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, "
                                     "then RAY_ADDRESS); token auth as for any Ray client: RAY_AUTH_MODE=token")
    j.add_argument("--tracking-uri", help="as for sweep; resolved here, so it must name the same store on the head")
    j.add_argument("--storage", help="as for sweep; resolved here, so it must name the same place on the cluster")
    j.add_argument("--resume", action="store_true", help="continue this sweep's latest interrupted run")
    j.add_argument("-v", "--verbose", action="count", default=0, help="as for sweep")
    j.add_argument("-q", "--quiet", action="count", default=0, help="as for sweep")
    j.set_defaults(func=cmd_submit)

    c = sub.add_parser("compare", help="table of an experiment's trials, best val accuracy first")
    c.add_argument("experiment", nargs="?", help="experiment name (default: the most recently active)")
    c.add_argument("--tracking-uri")
    c.add_argument("--all-sweeps", action="store_true", help="every sweep of the experiment, not only the latest")
    c.add_argument("--format", default="table", choices=("table", "csv", "json", "markdown"))
    c.add_argument("--by", default="trial", choices=("trial", "arch"),
                   help="a row per trial, or per model entry (arch): its best configuration, mean and 95%% "
                        "interval over its seed runs, tied leaders marked")
    c.set_defaults(func=cmd_compare, checks=(_check_store,))

    r = sub.add_parser("report", help="one self-contained HTML page: leaderboard, accuracy vs latency/params/FLOPs "
                                      "frontiers, curves, plain answers, provenance")
    r.add_argument("experiment", nargs="?", help="experiment name (default: the most recently active)")
    r.add_argument("--out", default="report.html", help="the HTML file to write (default: report.html)")
    r.add_argument("--tracking-uri")
    r.add_argument("--all-sweeps", action="store_true",
                   help="every sweep of the experiment, a row per arch (default: its latest sweep)")
    r.set_defaults(func=cmd_report, checks=(_check_report_out, _check_store))  # bad input before the store is read

    e = sub.add_parser("evaluate", help="score a logged model on a dataset split")
    e.add_argument("run_id")
    e.add_argument("--dataset", help="dataset name (default: the run's own)")
    e.add_argument("--root", help="dataset root (default: the run's own)")
    e.add_argument("--split", default="test", choices=("test", "val", "train"))
    e.add_argument("--batch-size", type=_positive_int, default=256)
    e.add_argument("--tracking-uri")
    e.add_argument("--device", type=_device, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    e.add_argument("--log", action="store_true", help="record <split>_loss/_acc/_top5 on the run")
    e.add_argument("--allow-pickle", action="store_true",
                   help="load a pickled model (one torch.export could not trace): runs code from the store")
    e.set_defaults(func=cmd_evaluate, checks=(_check_store,))

    x = sub.add_parser("export", help="a trial's model as ONNX or a torch.export archive, checked against the "
                                      "trained model and logged to its run")
    x.add_argument("run", help="a run id, or a registered model: models:/NAME@best, models:/NAME/VERSION")
    x.add_argument("--format", default="onnx", choices=("onnx", "pt2"))
    x.add_argument("--out", default=".", help="folder to write <run name>.<format> into (default: here)")
    x.add_argument("--tracking-uri")
    x.add_argument("--no-log", action="store_true", help="do not record the check on the run")
    x.set_defaults(func=cmd_export, checks=(_check_export_out, _check_store))

    u = sub.add_parser("ui", help="serve the MLflow UI for the configured store on 127.0.0.1")
    u.add_argument("--tracking-uri")
    u.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: not exposed)")
    u.add_argument("--port", type=_port, default=5000)
    u.set_defaults(func=cmd_ui, checks=(_check_store, _check_port_free))
    return p


def _mask_secrets_in_output() -> None:
    """Every warning and uncaught traceback this process prints, with URI passwords masked: MLflow's
    errors quote the tracking URI as given (http://user:password@host/...). Installed once."""
    if getattr(warnings.showwarning, "masks_secrets", False):
        return
    show_warning = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        show_warning(schema.mask(str(message)), category, filename, lineno, file, line)

    def excepthook(kind, value, tb):
        sys.stderr.write(schema.mask("".join(traceback.format_exception(kind, value, tb))))

    showwarning.masks_secrets = True
    warnings.showwarning, sys.excepthook = showwarning, excepthook


def main(argv: Sequence[str] | None = None) -> int:
    _mask_secrets_in_output()
    try:
        args = build_parser().parse_args(argv)
        # MLflow draws a download progress bar on stderr: not in the middle of a command's output
        # (export, evaluate, report and the sweep's end download artefacts). The user's setting wins.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # Nor MLflow's "View run NAME at: URL" lines on stdout at each run's end (a tracking server's
        # URI as given: its password included, even with -q). The user's setting wins.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        for check in getattr(args, "checks", ()):  # what a command reads must be there before it runs
            check(args)
        return args.func(args)
    except UsageError as e:
        # whatever went into a message, the user gets one bounded line
        line = schema.mask(str(e).splitlines()[0]) if str(e) else "orchestrate: bad input"
        print(schema.cut(line, schema.MAX_LINE_CHARS), file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a sweep's Stopped carries its signal: SIGTERM is 143
        return 128 + getattr(e, "signum", signal.SIGINT)


if __name__ == "__main__":
    raise SystemExit(main())
