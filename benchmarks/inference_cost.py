"""Inference cost of every model family at its quickstart setting on this CPU, PyTorch eager vs ONNX
Runtime: batch-1 latency (median, IQR), large-batch throughput, peak memory, export time.

    python -m benchmarks.inference_cost [--sweep experiments/quickstart.yaml]   (from the repository root)
        [--threads 1] [--batch-sizes 1 256] [--min-run-time-s 1.0] [--arch 'res*'] [--out FILE]

For each `models:` entry of the sweep file (its arch and fixed knobs; the quickstart has one per
family), built untrained for 10 classes — what a model costs to run does not depend on its weights:

- eager: `orchestrator.inference.measure` of the deployed form (eval, ParNet fused), fp32, CPU;
- onnx: `orchestrator.export.to_onnx` (wall and CPU seconds of the export recorded), then
  `orchestrator.export.check_onnx`'s ONNX Runtime timings (CPUExecutionProvider), measured the
  same way. Its logit comparison is not reported here: an untrained model's logits say nothing
  (tests/test_export.py checks every family on calibrated models).

Both runtimes get `--threads` intra-op threads. Prints a markdown table and writes one JSON object
per arch, then a summary (machine, versions, load average before and after, date, command), as
JSON lines to `--out` (default benchmarks/results/inference_cost-<date>.jsonl), written once at
the end. Needs the `export` extra (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import archs
from orchestrator import config, export, inference, spaces

RESULTS = Path(__file__).resolve().parent / "results"


def cost_of(arch: str, knobs: dict, batch_sizes: tuple[int, int], min_run_time_s: float, folder: Path) -> dict:
    torch.manual_seed(0)
    model = archs.create(arch, num_classes=10, **knobs)
    eager = inference.measure(model, "cpu", batch_sizes=batch_sizes, min_run_time_s=min_run_time_s)
    example = torch.randn(batch_sizes[0], *inference.IMAGE_SHAPE)
    wall, cpu = time.perf_counter(), time.process_time()
    path = export.to_onnx(model, folder / f"{arch}.onnx", example)
    export_wall_s, export_cpu_s = time.perf_counter() - wall, time.process_time() - cpu
    onnx = export.check_onnx(model, path, torch.randn(8, *inference.IMAGE_SHAPE), batch_sizes=batch_sizes,
                             min_run_time_s=min_run_time_s)
    return {"arch": arch, "family": archs.get(arch).family, "knobs": knobs, "params": archs.count_params(model),
            "eager": {**inference.as_metrics(eager), **inference.as_params(eager)},
            "onnx": {k: v for k, v in export.as_metrics(onnx).items() if k not in ("onnx_max_abs_diff", "onnx_top1_agreement")},
            "onnx_export_s": round(export_wall_s, 2), "onnx_export_cpu_s": round(export_cpu_s, 2)}


def table(rows: list[dict], batch_sizes: tuple[int, int]) -> str:
    b1, big = batch_sizes
    head = (f"| arch | knobs | params | eager b{b1} ms (IQR) | ONNX RT b{b1} ms (IQR) | eager img/s @{big} "
            f"| ONNX RT img/s @{big} | eager peak MB @{big} | ONNX export s (CPU s) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        e, o = r["eager"], r["onnx"]
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items())
        lines.append(
            f"| {r['arch']} | {knobs} | {r['params']:,} "
            f"| {e[f'infer_latency_b{b1}_ms']:.2f} ({e[f'infer_latency_b{b1}_iqr_ms']:.2f}) "
            f"| {o[f'onnx_latency_b{b1}_ms']:.2f} ({o[f'onnx_latency_b{b1}_iqr_ms']:.2f}) "
            f"| {e['infer_imgs_per_s']:,.0f} | {o['onnx_imgs_per_s']:,.0f} | {e['infer_peak_mem_mb']:.1f} "
            f"| {r['onnx_export_s']:.1f} ({r['onnx_export_cpu_s']:.1f}) |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="experiments/quickstart.yaml", help="the models (arch + knobs) to measure")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes")
    p.add_argument("--batch-sizes", type=int, nargs=2, default=list(inference.BATCH_SIZES),
                   metavar=("LATENCY", "THROUGHPUT"))
    p.add_argument("--min-run-time-s", type=float, default=1.0, help="timed seconds per batch size and runtime")
    p.add_argument("--arch", default=None, help="glob over the entries' arch names")
    p.add_argument("--out", default=None, help="JSON lines file (default benchmarks/results/inference_cost-<date>.jsonl)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    batch_sizes = tuple(args.batch_sizes)
    out = Path(args.out or RESULTS / f"inference_cost-{time.strftime('%Y-%m-%d')}.jsonl")

    entries = [m for m in config.load(args.sweep).models if args.arch is None or fnmatch.fnmatch(m.arch, args.arch)]
    for entry in entries:
        if any(spaces.is_space(v) for v in entry.knobs.values()):
            p.error(f"{args.sweep}: models[{entry.index}].knobs: a search space; this benchmark needs fixed knobs")
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for entry in entries:
            rows.append(cost_of(entry.arch, entry.knobs, batch_sizes, args.min_run_time_s, Path(folder)))
            print(json.dumps(rows[-1]), flush=True)
    import onnxruntime  # installed: check_onnx ran

    summary = {"summary": True, "device": inference.device_name(torch.device("cpu")), "cpus": os.cpu_count(),
               "threads": args.threads, "batch_sizes": list(batch_sizes), "min_run_time_s": args.min_run_time_s,
               "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
               "load_avg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
               "date": time.strftime("%Y-%m-%d %H:%M"), "command": "python " + " ".join(sys.argv)}
    print(json.dumps(summary))
    print()
    print(table(rows, batch_sizes))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in [*rows, summary]))
    tmp.replace(out)


if __name__ == "__main__":
    main()
