"""Trials sharing one GPU: K engine processes train the same small model at once, each with its
own device-resident data, as K trials of a sweep with `gpus_per_worker: 1/K` would.

    python -m benchmarks.gpu_sharing [--model resnet18:width=0.5] [--model shufflenet_v1:groups=3,width=0.25]
        [--procs 1 2 4] [--out DIR]

For each model and each K, K copies of `python -m benchmarks.engine_throughput --arch A --knob ...
--no-peer` start together (bf16 where the card has it, channels_last, data on the device, as a sweep
trial trains). Each reports its engine img/s (median of its timed epochs), its CUDA peak memory and
the wall-clock window of its timed epochs. Per K: the aggregate img/s (the sum), the slowest
process's img/s, the largest peak memory, and how much the K timed windows overlap (the shared
span over the shortest window: near 1 means they really ran side by side; start-up differs by
seconds, so the default repeats make each window long).

The recommendation is the fraction 1/K of the K with the highest aggregate img/s whose K processes
fit in 90% of the card's memory, with the gain over one process: what `resources.gpus_per_worker`
a sweep of such small CIFAR models should use. JSON lines: one per process, one per K, a summary.
`--smoke` runs it tiny on the CPU (the numbers mean nothing there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

DEFAULT_MODELS = ("resnet18:width=0.5", "shufflenet_v1:groups=3,width=0.25")  # the two small models
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the processes run from the repository root


def parse_model(text: str) -> tuple[str, list[str]]:
    """'resnet18:width=0.5,depth=2' -> ('resnet18', ['width=0.5', 'depth=2'])."""
    arch, _, knobs = text.partition(":")
    return arch, [k for k in knobs.split(",") if k]


def run_group(arch: str, knobs: list[str], procs: int, args, folder: str) -> list[dict]:
    """`procs` engine_throughput processes started together; their records, in start order."""
    command = [sys.executable, "-m", "benchmarks.engine_throughput", "--arch", arch, "--no-peer", "--no-sync-check",
               "--device", args.device, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--dataset", "synthetic", "--synthetic-size", str(args.synthetic_size)]
    for knob in knobs:
        command += ["--knob", knob]
    running = []
    for i in range(procs):
        out = os.path.join(folder, f"{arch}-k{procs}-p{i}")
        running.append((subprocess.Popen(command + ["--out", out], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, text=True, cwd=ROOT), out))
    records = []
    for proc, out in running:
        _, err = proc.communicate(timeout=args.timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{arch} x{procs}: a process failed (exit {proc.returncode}): {err.strip()[-2000:]}")
        with open(os.path.join(out, "engine_throughput.json")) as f:
            records.append(json.load(f)["results"][0])
    return records


def overlap(windows: list[list[float]]) -> float:
    """The span every window shares, over the shortest window (1.0: all ran side by side throughout)."""
    shared = min(end for _, end in windows) - max(start for start, _ in windows)
    return round(max(0.0, shared) / min(end - start for start, end in windows), 3)


def card_memory_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**20


def recommend(rows: list[dict], memory_mb: float | None) -> dict:
    """1/K for the K with the most aggregate img/s whose K processes fit in 90% of the card."""
    fits = [r for r in rows if memory_mb is None or r["peak_mem_mb"] is None
            or r["procs"] * r["peak_mem_mb"] <= 0.9 * memory_mb]
    best = max(fits, key=lambda r: r["aggregate_imgs_per_s"])
    one = next((r for r in rows if r["procs"] == 1), None)
    return {"gpus_per_worker": round(1 / best["procs"], 3), "procs": best["procs"],
            "aggregate_imgs_per_s": best["aggregate_imgs_per_s"],
            "gain_over_one": round(best["aggregate_imgs_per_s"] / one["aggregate_imgs_per_s"], 2) if one else None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="ARCH[:KNOB=VALUE,...]; repeatable (default: "
                   + " and ".join(DEFAULT_MODELS) + ")")
    p.add_argument("--procs", type=int, nargs="+", help="processes at once, each K in turn (default: 1 2 4; smoke: 1 2)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=40, help="timed steps per epoch, per process")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per process (long windows overlap)")
    p.add_argument("--synthetic-size", type=int, default=50_000)
    p.add_argument("--timeout", type=float, default=300, help="seconds for one group of processes")
    p.add_argument("--smoke", action="store_true", help="tiny, on the CPU: checks the script, not the GPU")
    p.add_argument("--out", help="also write the JSON lines to OUT/gpu_sharing.jsonl")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.batch_size, args.steps, args.warmup, args.repeats = "cpu", 16, 2, 1, 2
        args.synthetic_size, args.procs = 256, args.procs or [1, 2]
        args.model = args.model or ["resnet18:width=0.125"]
    args.model, args.procs = args.model or list(DEFAULT_MODELS), args.procs or [1, 2, 4]
    if min(args.procs) < 1:
        p.error("--procs: each K must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    memory_mb = card_memory_mb(args.device)
    lines, recommendations = [], {}
    with tempfile.TemporaryDirectory(prefix="gpu-sharing-") as folder:
        for model in args.model:
            arch, knobs = parse_model(model)
            rows = []
            for procs in args.procs:
                records = run_group(arch, knobs, procs, args, folder)
                for i, r in enumerate(records):
                    lines.append({"model": model, "procs": procs, "process": i, "imgs_per_s": r["engine_imgs_per_s"],
                                  "peak_mem_mb": r["engine"]["peak_mem_mb"],
                                  "timed_window_unix_s": r["engine"]["timed_window_unix_s"]})
                peaks = [r["engine"]["peak_mem_mb"] for r in records]
                row = {"model": model, "procs": procs, "params": records[0]["params"],
                       "aggregate_imgs_per_s": round(sum(r["engine_imgs_per_s"] for r in records), 1),
                       "slowest_process_imgs_per_s": min(r["engine_imgs_per_s"] for r in records),
                       "peak_mem_mb_per_process": None if None in peaks else max(peaks),
                       "timed_windows_overlap": overlap([r["engine"]["timed_window_unix_s"] for r in records]),
                       "precision": records[0]["engine"]["precision"], "data_path": records[0]["engine"]["data_path"]}
                rows.append(row)
                lines.append(row)
                print(json.dumps(row), flush=True)
            recommendations[model] = recommend([{**r, "peak_mem_mb": r["peak_mem_mb_per_process"]} for r in rows],
                                               memory_mb)
    summary = {"summary": True, "device": args.device, "card_memory_mb": memory_mb, "batch_size": args.batch_size,
               "steps": args.steps, "repeats": args.repeats, "smoke": args.smoke,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": " ".join(["python", "-m", "benchmarks.gpu_sharing", *(sys.argv[1:] if argv is None else argv)]),
               "recommended": recommendations}
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu_sharing.jsonl"), "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
