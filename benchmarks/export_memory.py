"""What one model export leaves in the process that made it (issue 24, item 2: the driver's RSS).

    python -m benchmarks.export_memory [--calls 40] [--modes export,save,pickle,state_dict]

The sweep's driver logs every trial's model (tracking.logged_model.save_model: torch.export, MLflow's
"pt2"), so whatever an export keeps grows with the trial count. For each mode, in a fresh process:
a vgg11 at width 0.125 (the long sweep's model) built anew and saved 10 times (warm-up: lazy
imports, first-call caches), then `--calls` more times; the driver-relevant figure is the growth of
the process's anonymous memory (RssAnon, after gc.collect() and glibc's malloc_trim(0), so freed
memory the allocator kept does not count) per call, in KB:

- export: torch.export.export alone (the batch dimension dynamic, as save_model asks);
- save: orchestrator's save_model, as the writer calls it (torch.export + MLflow's pt2 model folder,
  then the tracing state the export left emptied: logged_model.releasing_trace_state);
- pickle: MLflow's pickled-module format (no torch.export);
- state_dict: torch.save of the weights (the control).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

from benchmarks.long_sweep import anon_after_trim_kb

MODES = ("export", "save", "pickle", "state_dict")


def measure(mode: str, calls: int) -> dict:
    import logging

    import torch

    import archs
    from orchestrator.tracking.logged_model import save_model

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # the pickle format's warning, every call
    x = torch.zeros(2, 3, 32, 32)

    def once():
        model = archs.create("vgg11", num_classes=10, width=0.125).eval()
        with tempfile.TemporaryDirectory() as tmp:
            if mode == "export":
                torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            elif mode == "save":
                save_model(model, os.path.join(tmp, "m"), ["torch"], {"image_size": 32})
            elif mode == "pickle":
                import mlflow.pytorch

                mlflow.pytorch.save_model(model, os.path.join(tmp, "m"), serialization_format="pickle",
                                          input_example=x.numpy(), pip_requirements=["torch"])
            else:
                torch.save(model.state_dict(), os.path.join(tmp, "m.pt"))

    for _ in range(10):
        once()
    gc.collect()
    before = anon_after_trim_kb()
    for _ in range(calls):
        once()
    gc.collect()
    return {"mode": mode, "calls": calls, "anon_mb_before": round(before / 1024, 1),
            "per_call_kb": round((anon_after_trim_kb() - before) / calls, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--one", help=argparse.SUPPRESS)  # this process measures one mode
    args = p.parse_args()
    if args.calls < 1:
        sys.exit(f"--calls: {args.calls} is not a count of calls; allowed: an integer >= 1")
    if args.one:
        print(json.dumps(measure(args.one, args.calls)), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for mode in args.modes.split(","):
        if mode not in MODES:
            sys.exit(f"--modes: {mode!r} is not one of {', '.join(MODES)}")
        out = subprocess.run([sys.executable, "-m", "benchmarks.export_memory", "--one", mode, "--calls", str(args.calls)],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
