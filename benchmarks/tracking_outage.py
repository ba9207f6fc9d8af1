"""The tracking server killed mid-sweep and not back (issue 21): how long the sweep takes to end.

    python -m benchmarks.tracking_outage [--code DIR] [--wait-s S] [--watch-s 150] [--out DIR]

A real `mlflow server` (its own process group, sqlite backend; tests/stores.py's MlflowServer),
the sweep of tests/test_tracking_outage.py's end-to-end case (3 single-worker resnet18 trials on
digits, 3 epochs of 10 steps, 2 at a time) run as a user runs it with the code in `--code` (a
checkout's root; default this one) on PYTHONPATH, in its own Ray (a private RAY_TMPDIR). When the
first epoch is in the server's store, the server's process group is SIGKILLed. Then: when the
trials have trained (every trial's result.json in the storage holds its 3 epochs), and when the
sweep exits, with its exit code and stderr's line count; if it has not exited `--watch-s` seconds
after the trials trained, it gets a SIGINT (Ctrl-C) and `--sigint-s` seconds to exit, then SIGKILL
(with its Ray processes). `--wait-s` writes `tracking: {wait_s: S}` in the sweep file (code that
has the setting; without, its default). One JSON line.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the suite's own server and process helpers

from stores import MlflowServer  # noqa: E402
from support import ORCHESTRATE, logged_epochs, processes_mentioning  # noqa: E402

SWEEP = """\
name: e2e-server-gone
dataset: {name: digits}
train: {epochs: 3, batch_size: 32, lr: 0.05, warmup_epochs: 0.5, seed: 0, steps_per_epoch: 10,
        benchmark_inference: false}
resources: {num_workers: 1, cpus_per_worker: 1}
search: {scheduler: fifo}
models:
  - {arch: resnet18, knobs: {width: 0.125}, lr: {grid: [0.02, 0.05, 0.1]}}
"""


def trained(storage: Path) -> bool:
    files = glob.glob(str(storage / "*" / "resnet18_*" / "result.json"))
    return len(files) == 3 and all(len(Path(f).read_text().splitlines()) >= 3 for f in files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", default=str(REPO), help="root of the checkout whose `orchestrate` runs")
    p.add_argument("--wait-s", type=float, default=None, help="tracking.wait_s in the sweep file")
    p.add_argument("--watch-s", type=float, default=150.0, help="seconds after training before the Ctrl-C")
    p.add_argument("--sigint-s", type=float, default=30.0, help="seconds the sweep gets to exit on Ctrl-C")
    p.add_argument("--out", default=None, help="folder to keep the sweep's output in (default: a temporary one)")
    args = p.parse_args(argv)

    folder = Path(args.out or tempfile.mkdtemp(prefix="tracking-outage-"))
    folder.mkdir(parents=True, exist_ok=True)
    text = SWEEP + (f"tracking: {{wait_s: {args.wait_s:g}}}\n" if args.wait_s is not None else "")
    (folder / "sweep.yaml").write_text(text)
    ray_tmpdir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    server = MlflowServer(folder / "server")
    env = {**os.environ, "PYTHONPATH": args.code, "RAY_TMPDIR": ray_tmpdir}
    with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
        proc = subprocess.Popen(ORCHESTRATE + ["sweep", "sweep.yaml", "--tracking-uri", server.url], cwd=folder,
                                env=env, stdout=out, stderr=err, start_new_session=True)
    row = {"code": args.code, "wait_s": args.wait_s, "watch_s": args.watch_s}
    try:
        while logged_epochs(server.db) < 1:
            if proc.poll() is not None:
                raise SystemExit(f"the sweep exited ({proc.returncode}) before its first epoch was logged")
            time.sleep(0.5)
        server.kill()
        killed = time.time()
        trained_at = None
        while proc.poll() is None:
            if trained_at is None and trained(folder / "ray_results"):
                trained_at = time.time()
                row["kill_to_trained_s"] = round(trained_at - killed, 1)
            if trained_at is not None and time.time() - trained_at > args.watch_s:
                break
            time.sleep(0.5)
        if proc.poll() is None:
            row["still_running_s_after_trained"] = round(time.time() - trained_at, 1)
            proc.send_signal(signal.SIGINT)
            sent = time.time()
            try:
                proc.wait(timeout=args.sigint_s)
                row["sigint_to_exit_s"] = round(time.time() - sent, 1)
            except subprocess.TimeoutExpired:
                row["sigint_to_exit_s"] = None  # did not end
        else:
            row["kill_to_exit_s"] = round(time.time() - killed, 1)
            if trained_at is not None:
                row["trained_to_exit_s"] = round(time.time() - trained_at, 1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for line in processes_mentioning(ray_tmpdir):  # the sweep's Ray, if it left any
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.kill()
    row["exit_code"] = proc.returncode
    stderr = (folder / "stderr.txt").read_text()
    row["stderr_lines"] = len(stderr.splitlines())
    row["stderr_last"] = stderr.strip().splitlines()[-1][:400] if stderr.strip() else ""
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
