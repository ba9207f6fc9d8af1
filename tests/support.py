"""What the end-to-end tests share: the `orchestrate` command as a user runs it, the small sweep
files several tests read, and a finished sweep's runs. (Fixtures are in conftest.py; this is a
plain module, so test files import it by name in any folder.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from orchestrator.runs import ROLE_TRIAL, Tag

REPO = Path(__file__).resolve().parent.parent
ORCHESTRATE = [sys.executable, "-m", "orchestrator"]


def run_cli(args, cwd, env=None, timeout=900):
    """`orchestrate ARGS` as a user runs it: a real subprocess."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(ORCHESTRATE + list(args), cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def processes_mentioning(text: str) -> list[str]:
    """`pid: cmdline` of live processes whose command line contains `text` (Ray's own processes
    carry their RAY_TMPDIR, so a test can find exactly the cluster it started)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def end_processes_mentioning(text: str) -> None:
    """SIGKILL every live process whose command line contains `text` (what a killed or stopped
    driver's Ray left behind: its processes carry its RAY_TMPDIR)."""
    for line in processes_mentioning(text):
        try:
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def own_processes(marker: str) -> set[int]:
    """Pids of the processes whose command line or environment holds `marker` (the cluster's
    RAY_TMPDIR), plus all their descendants: Ray's dashboard modules rename themselves with
    setproctitle, which overwrites the environment /proc shows, so they are found as children."""
    procs: dict[int, tuple[int, bool]] = {}
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except (OSError, IndexError, ValueError):
            continue
        procs[int(entry)] = (ppid, needle in cmd or needle in env)
    ours = {pid for pid, (_, hit) in procs.items() if hit}
    while True:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours
        if not children:
            break
        ours |= children
    ours.discard(os.getpid())
    return ours


def kill_own_processes(marker: str) -> list[int]:
    killed = []
    for _ in range(5):  # a dying parent may still spawn: rescan until nothing is left
        pids = own_processes(marker)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        time.sleep(1)
    return killed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The e2e sweep: 2 trials (an lr grid), 2 DDP workers each on gloo, 3 epochs on digits.
DDP_SWEEP = textwrap.dedent("""\
    name: e2e-ddp
    dataset: {name: digits, val_fraction: 0.1}
    train: {epochs: 3, batch_size: 32, lr: 0.1, warmup_epochs: 0.5, seed: 0}
    resources: {num_workers: 2, cpus_per_worker: 0.5, driver_cpus: 0.1}
    search: {scheduler: fifo, num_samples: 1, max_concurrent_trials: 1}
    models:
      - arch: resnet18
        knobs: {width: 0.125}
        lr: {grid: [0.05, 0.1]}
    """)


# Two single-worker trials (trained in their Tune trial processes), side by side on 2 CPUs.
PAIR_SWEEP = textwrap.dedent("""\
    name: e2e-pair
    dataset: {name: digits}
    train: {epochs: 3, batch_size: 32, lr: 0.1, warmup_epochs: 0.5, seed: 0}
    resources: {num_workers: 1, cpus_per_worker: 1}
    search: {scheduler: fifo}
    models:
      - arch: resnet18
        knobs: {width: 0.125}
        lr: {grid: [0.05, 0.1]}
    """)


# A fair comparison: a budget per model entry (random lr), ASHA per entry, then each entry's best
# configuration re-trained with 2 fresh seeds (test_sweep_fair.py, and the report test reads it).
FAIR_SWEEP = textwrap.dedent("""\
    name: e2e-fair
    dataset: {name: digits}
    train: {epochs: 2, batch_size: 32, optimizer: adamw, lr: 0.003, weight_decay: 0.05, data_path: device,
            inference_batch_size: 32}
    resources: {num_workers: 1, cpus_per_worker: 1}
    search: {scheduler: asha, grace_period: 1, reduction_factor: 2, trials_per_model: 2, seeds: 2, seed: 7}
    models:
      - {arch: vgg11, knobs: {width: 0.125}, lr: {loguniform: [0.002, 0.02]}}
      - {arch: alexnet, knobs: {width: 0.125}, lr: {loguniform: [0.0005, 0.005]}}
    """)


class Sweep:
    def __init__(self, folder: Path, result: subprocess.CompletedProcess, uri: str, experiment: str):
        self.folder, self.result, self.uri, self.experiment = folder, result, uri, experiment

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)

    def runs(self):
        c = self.client()
        exp = c.get_experiment_by_name(self.experiment)
        return c.search_runs([exp.experiment_id], max_results=100)

    def trials(self):
        from orchestrator.runs import ROLE_TRIAL, Tag

        return [r for r in self.runs() if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL]


def run_sweep(tmp_path_factory, name: str, text: str, uri: str | None = None) -> Sweep:
    folder = tmp_path_factory.mktemp(name)
    (folder / "sweep.yaml").write_text(text)
    uri = uri or f"sqlite:///{folder}/mlflow.db"
    result = run_cli(["sweep", "sweep.yaml", "--tracking-uri", uri], cwd=folder)
    experiment = text.split("name:", 1)[1].split("\n", 1)[0].strip()
    sweep = Sweep(folder, result, uri, experiment)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep


def record_one_trial(folder: Path, sweep_file: str, register_as: str | None = None) -> tuple[str, str]:
    """(store URI, run id) of the first trial of the sweep file `folder/sweep_file`, trained by the
    engine on the CPU (no Ray) and recorded by the run record itself in a sqlite store in `folder`
    (Tune's events replayed: each epoch's result, then its checkpoint), its checkpoints kept there;
    its model registered as `register_as` if given. The sweep's metric and mode pick the model."""
    import shutil

    from orchestrator import config, engine, tracking
    from orchestrator.data import load_splits

    uri = f"sqlite:///{folder}/mlflow.db"
    spec = config.load(str(folder / sweep_file), {"tracking_uri": uri, "storage_path": str(folder)})
    trial = spec.trial(spec.models[0].point_space(), "t1")
    torch.set_num_threads(1)
    run = engine.Engine(trial.train, engine.ModelSpec(trial.arch, dict(trial.knobs)), load_splits(trial.dataset),
                        device="cpu")
    sweep = tracking.SweepRecord.start(uri, spec.name, spec.file, str(folder), {
        "search": {"metric": spec.search.metric, "mode": spec.search.mode}})
    record = sweep.open_trial(trial)

    class Record:
        def report(self, metrics, checkpoint_dir):
            kept = shutil.copytree(checkpoint_dir, folder / f"epoch{metrics['epoch']}")
            record.epoch(metrics)
            record.checkpoint(metrics["epoch"], str(kept))

    run.fit(Record())
    record.finish()
    sweep.finish(register_as=register_as)
    return uri, record.run_id


@torch.no_grad()
def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """`model` in eval mode with each BatchNorm's running statistics set to `images`' own (one
    training-mode pass with a cumulative average), so its logits have a trained model's scale."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()(images)
    return model.eval()


# Debian's Chromium, headless, through playwright (the browser tests: the MLflow UI, the report).
CHROMIUM = os.environ.get("ORCHESTRATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium():
    """A launched browser, closed afterwards. A missing Chromium fails the test (it is part of the
    README's test set-up), with how to install or deselect it."""
    import pytest

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: install Debian's `chromium` (or set ORCHESTRATE_CHROMIUM), "
                    "or deselect with -m 'not browser'")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------
# A sweep run as a user runs it, in its own Ray (RAY_TMPDIR: the ray_tmpdir fixture), and what it logged


def start_sweep(folder, ray_tmpdir, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmpdir}
    return subprocess.Popen(ORCHESTRATE + ["sweep", "sweep.yaml", "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                                           *extra],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sweep_through(tmp_path, ray_tmpdir, during, timeout_s=900) -> tuple[int, str]:
    """Run tmp_path's sweep as a user does, call `during(proc)` while it runs (to kill or signal
    something), let it finish; (exit code, output). Never leaves the sweep running."""
    proc = start_sweep(tmp_path, ray_tmpdir)
    try:
        during(proc)
        out, _ = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def wait_for(predicate, timeout_s, proc=None, what=""):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"sweep exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def metric_steps(client, run_id, key="val_acc"):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def trials(uri, experiment):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, {r.info.run_name: r for r in runs if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL}


def logged_epochs(db) -> int:
    """val_acc rows in the store, read-only (see the resume test for why not an MlflowClient)."""
    return store_count(db, "SELECT count(*) FROM metrics WHERE key = 'val_acc'")


def store_count(db, query: str) -> int:
    """A `SELECT count(*) ...` of the sqlite store at `db`, read-only; 0 while it (or the table)
    does not exist yet."""
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute(query).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


# ---------------------------------------------------------------------------------------------
# The refusal contract, one harness for every test of it (bad sweep files, hostile input, bad data,
# security): bad input -> exit 2, exactly one line on stderr naming the file or option, the key, the
# bad value and what is allowed; nothing written; no Ray started or left behind.

REFUSAL_ENV_CLEARED = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")


def tree(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `folder`, a file with its size and modification time: 'nothing written'
    exactly. (A folder's own times may change: the storage check creates and removes a probe in
    it, the one sure test of "writable" for root.)"""
    return {str(p.relative_to(folder)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def refused(argv: list[str], folder: Path, capture=None, *, starts: str = "", says=(), never=(),
            env: dict | None = None, timeout: int = 180, empty_folders=()) -> str:
    """Run `orchestrate ARGV` in `folder` and check the refusal contract; the one line it printed.

    In-process through `orchestrator.cli.main` when `capture` (pytest's capsys or capfd) is given,
    else as a real subprocess with a RAY_TMPDIR of its own. Either way: exit code 2; exactly one
    line on stderr and no traceback; the line starts with `starts` and holds each of `says`
    ("{tmp}" stands for `folder`); none of `never` (a password) anywhere in the output; every path
    under `folder` as it was (so no MLflow store or run, no ray_results/); and no Ray: in-process
    it was not initialised, as a subprocess no process of its RAY_TMPDIR is left and nothing was
    written there. RAY_ADDRESS and MLflow's variables are cleared; `env` is set. `empty_folders`: the
    folders (relative to `folder`) the command is known to leave behind, empty (a download target)."""
    folder = Path(folder)
    before = tree(folder)
    if capture is not None:
        from orchestrator import cli

        capture.readouterr()  # what came before is not the command's
        with __import__("pytest").MonkeyPatch.context() as patch:
            patch.chdir(folder)
            for name in REFUSAL_ENV_CLEARED:
                patch.delenv(name, raising=False)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = cli.main(list(argv))
        out, err = capture.readouterr()
        ray = sys.modules.get("ray")
        assert ray is None or not ray.is_initialized(), "Ray was started"
    else:
        import shutil
        import tempfile

        ray_tmpdir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # short: Ray's socket paths are limited
        try:
            full_env = {k: v for k, v in os.environ.items() if k not in REFUSAL_ENV_CLEARED}
            full_env.update(PYTHONPATH=str(REPO), RAY_TMPDIR=ray_tmpdir, **(env or {}))
            result = subprocess.run(ORCHESTRATE + list(argv), cwd=folder, env=full_env, capture_output=True,
                                    text=True, timeout=timeout)
            code, out, err = result.returncode, result.stdout, result.stderr
            deadline = time.time() + 10
            while processes_mentioning(ray_tmpdir) and time.time() < deadline:
                time.sleep(0.5)
            assert not processes_mentioning(ray_tmpdir), processes_mentioning(ray_tmpdir)
            assert not any(Path(ray_tmpdir).iterdir()), "Ray was started"
        finally:
            shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert code == 2, out[-2000:] + err[-2000:]
    assert "Traceback" not in out + err, out[-2000:] + err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[:3000]}"
    line = lines[0]
    assert line.startswith(starts.replace("{tmp}", str(folder))), line
    for fragment in says:
        assert fragment.replace("{tmp}", str(folder)) in line, f"{fragment!r} not in {line!r}"
    for secret in never:
        assert secret not in out + err
    after = {path: entry for path, entry in tree(folder).items()
             if not (path in empty_folders and entry is None and not any((folder / path).iterdir()))}
    assert after == before, "a refused command wrote something"
    return line
