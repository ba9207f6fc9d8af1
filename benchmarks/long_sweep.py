"""A long sweep through one driver (issue 24, item 2): does the driver stay flat over 1,000 trials?

    python -m benchmarks.long_sweep [--trials 1000] [--marks 100,300,1000] [--keep DIR] [--trim]

One sweep of `--trials` tiny trials (sweep_throughput's many-sweep: vgg11 width 0.125 on 256
synthetic images, 1 epoch, one 1-CPU worker per trial, single-worker trials packed as the machine
allows, a grid of learning rates, FIFO), run as `orchestrate sweep` runs it (sweep.run) in a
driver process of its own that samples itself every second and, as the count of ended trials
passes each of `--marks`, prints one JSON line:

- trials: trials ended (Tune's on_trial_complete / on_trial_error) and elapsed seconds;
- window_overhead_s: the amortised overhead per trial since the previous mark =
  (elapsed in the window x trials at a time - the window's trials' epoch seconds) / its trials,
  (`epoch_s`, train + eval, summed from the results Tune reported);
- rss_mb: the driver's resident memory (VmRSS) at the mark, and its peak so far (VmHWM); anon_mb
  and file_mb, its two parts (heaps vs mapped libraries), its threads, and with `--trim`
  anon_after_trim_mb, what is left of anon_mb once glibc's malloc_trim(0) returned the free pages;
- writer_pending / writer_pending_max: the tracking writer's queue (BackgroundWriter.pending: jobs
  submitted, not yet run) at the mark and its most since the previous mark;
- state_kb: the size of Tune's experiment state file (experiment_state-*.json in the storage).

The recorder is the sweep's own (ray_train.MlflowCallback's); the driver wraps that class only to
see it (counting the trials that end and reading its writer's queue), it changes nothing it does.
At the end the store is read back: the child runs (must be --trials, all completed) and the
median child-run span minus its training of the first and last 100.

`--diagnose` (slower: tracemalloc on) also prints, at each mark, where the driver's Python heap
grew since the previous mark (tracemalloc, by line, the top 12) and which object types grew in
number (gc), to explain a growing RSS; what it does not show is native memory (Ray's core
worker, Arrow, SQLite).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.sweep_run import read_trials, write_sweep_file
from benchmarks.sweep_throughput import many_spec, median


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


SEEN: dict = {"callback": None, "ended": 0, "epoch_s": 0.0}
LOCK = threading.Lock()
Watched = None


def watched(base):
    """`base` (ray_train.MlflowCallback), as this module's Watched: counts the trials that end and
    keeps the instance (its recorder), nothing more. sweep.py builds its callback through that name."""
    global Watched

    class Watched(base):  # noqa: F811 - module-level, so Tune pickles it by reference
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            SEEN["callback"] = self

        def on_trial_result(self, iteration, trials, trial, result, **info):
            super().on_trial_result(iteration, trials, trial, result, **info)
            if "epoch_s" in result:
                with LOCK:
                    SEEN["epoch_s"] += float(result["epoch_s"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            super().on_trial_complete(iteration, trials, trial, **info)
            with LOCK:
                SEEN["ended"] += 1

        def on_trial_error(self, iteration, trials, trial, **info):
            super().on_trial_error(iteration, trials, trial, **info)
            with LOCK:
                SEEN["ended"] += 1

    Watched.__qualname__ = "Watched"
    return Watched


class Growth:
    """What grew in the driver's Python heap between two calls (--diagnose)."""

    def __init__(self):
        import tracemalloc

        tracemalloc.start(8)
        self.snapshot, self.types = tracemalloc.take_snapshot(), self.count_types()

    @staticmethod
    def count_types():
        import collections
        import gc

        return collections.Counter(type(o).__qualname__ for o in gc.get_objects())

    def since_last(self) -> dict:
        import tracemalloc

        snapshot, types = tracemalloc.take_snapshot(), self.count_types()
        lines = snapshot.compare_to(self.snapshot, "lineno")
        grown = [{"kb": round(d.size_diff / 1024, 1), "count": d.count_diff, "where": str(d.traceback[0])}
                 for d in sorted(lines, key=lambda d: -d.size_diff)[:12]]
        more = (types - self.types).most_common(12)
        self.snapshot, self.types = snapshot, types
        traced, _ = tracemalloc.get_traced_memory()
        return {"traced_mb": round(traced / 2**20, 1), "grew_by_line": grown, "grew_by_type": more}


def anon_after_trim_kb() -> int:
    """The process's anonymous memory (RssAnon) once glibc's malloc_trim(0) has handed the
    allocator's free pages back to the system: memory still in use, not freed memory kept."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _status_kb("RssAnon")


def memory_parts(trim: bool) -> dict:
    """The driver's RSS by kind (/proc/self/status: anonymous memory, i.e. heaps and arenas, vs
    mapped files, i.e. the libraries imported), its threads, and with `trim` the anonymous memory
    again after glibc's malloc_trim(0) hands the allocator's free pages back to the system: what
    that gives back was freed memory the allocator kept, not memory still in use."""
    parts = {"anon_mb": round(_status_kb("RssAnon") / 1024, 1), "file_mb": round(_status_kb("RssFile") / 1024, 1),
             "threads": _status_kb("Threads")}
    if trim:
        parts["anon_after_trim_mb"] = round(anon_after_trim_kb() / 1024, 1)
    return parts


def driver(path: str, tracking_uri: str, storage: str, marks: list[int], diagnose: bool = False,
           trim: bool = False) -> int:
    """This process is the sweep's driver; prints a JSON line at each mark and one at the end."""
    from orchestrator import config, ray_train, sweep

    growth = Growth() if diagnose else None

    spec = config.load(path, {"tracking_uri": tracking_uri, "storage_path": storage})
    # By reference (this module imported by name): Tune pickles its callbacks into its state.
    from benchmarks import long_sweep as here

    seen, lock = here.SEEN, here.LOCK
    ray_train.MlflowCallback = here.watched(ray_train.MlflowCallback)
    start = time.monotonic()
    done = threading.Event()

    def pending() -> int:
        callback = seen["callback"]
        return callback.recorder.unrecorded().writes if callback is not None else 0

    def state_kb() -> float:
        files = glob.glob(os.path.join(storage, "*", "experiment_state-*.json"))
        return round(max((os.path.getsize(f) for f in files), default=0) / 1024, 1)

    def sample():
        left = list(marks)
        last_t, last_n, last_s, most = 0.0, 0, 0.0, 0
        while left:
            most = max(most, pending())
            with lock:
                ended, epoch_s = seen["ended"], seen["epoch_s"]
            if ended >= left[0] or done.is_set():
                now = time.monotonic() - start
                n = max(1, ended - last_n)
                print(json.dumps({
                    "trials": ended, "elapsed_s": round(now, 1),
                    "window": f"{last_n + 1}-{ended}" if ended > last_n else "after the last trial",
                    "window_overhead_s": round(((now - last_t) * slots - (epoch_s - last_s)) / n, 2),
                    "rss_mb": round(_status_kb("VmRSS") / 1024, 1), "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
                    **memory_parts(trim),
                    "writer_pending": pending(), "writer_pending_max": most, "state_kb": state_kb(),
                    "load": os.getloadavg()[0]}), flush=True)
                if growth is not None:
                    print(json.dumps({"trials": ended, **growth.since_last()}), flush=True)
                last_t, last_n, last_s, most = now, ended, epoch_s, 0
                while left and ended >= left[0]:
                    left.pop(0)
                if done.is_set():
                    return
            time.sleep(1.0)

    import ray

    ray.init(log_to_driver=False, logging_level="ERROR")
    slots = sweep.packing(spec.resources, ray.cluster_resources())[0]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(os.devnull, "w") as quiet:
        code = sweep.run(spec, out=quiet, verbosity=-1)
    done.set()
    sampler.join(timeout=10)
    print(json.dumps({"end": True, "exit_code": code, "wall_s": round(time.monotonic() - start, 1),
                      "slots": slots, "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1)}), flush=True)
    ray.shutdown()
    return code


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--marks", default="100,300,1000", help="ended-trial counts to sample at (comma-separated)")
    p.add_argument("--keep", help="a folder for the store and storage (kept); default a temp folder")
    p.add_argument("--diagnose", action="store_true", help="tracemalloc and object counts at each mark (slower)")
    p.add_argument("--trim", action="store_true",
                   help="at each mark, also the driver's anonymous memory after malloc_trim(0) (glibc)")
    p.add_argument("--driver", nargs=3, metavar=("FILE", "URI", "STORAGE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    marks = sorted({int(m) for m in args.marks.split(",") if int(m) <= args.trials} | {args.trials})
    if args.driver:
        sys.exit(driver(*args.driver, marks, args.diagnose, args.trim))
    folder = args.keep or tempfile.mkdtemp(prefix="long-sweep-")
    os.makedirs(folder, exist_ok=True)
    path = write_sweep_file(folder, {**many_spec(args.trials), "name": "long-sweep"})
    uri, storage = f"sqlite:///{folder}/mlflow.db", os.path.join(folder, "ray_results")
    print(json.dumps({"trials": args.trials, "folder": folder, "uptime": os.getloadavg()}), flush=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # The driver's lines as they come: a long run stopped early (Ctrl-C) still shows its marks.
    with subprocess.Popen([sys.executable, "-m", "benchmarks.long_sweep", "--marks", ",".join(map(str, marks)),
                           *(["--diagnose"] if args.diagnose else []), *(["--trim"] if args.trim else []),
                           "--driver", path, uri, storage], cwd=root, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            print(line, end="", flush=True)
    trials = read_trials(uri, "long-sweep")
    overheads = [t.span_s - t.train_s for t in trials if t.span_s is not None]
    k = min(100, len(overheads) // 2)
    print(json.dumps({"child_runs": len(trials), "completed": sum(t.result.status == "completed" for t in trials),
                      "median_first_run_overhead_s": median(overheads[:k]),
                      "median_last_run_overhead_s": median(overheads[-k:]) if k else None}), flush=True)


if __name__ == "__main__":
    main()
