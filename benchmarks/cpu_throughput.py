"""Training throughput (img/s) of every arch at its smallest setting, batch 128, on this machine.

    python benchmarks/cpu_throughput.py [--device cpu] [--batch-size 128] [--steps 5] [--arch 'res*']

Prints one JSON object per arch, then a summary object. Steady state: the first `--warmup` steps
are not timed. Synthetic 32x32 inputs (data loading is not what is measured here); fp32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import archs  # noqa: E402


def measure(name: str, batch_size: int, steps: int, warmup: int, device: torch.device) -> dict:
    knobs = archs.get(name).smallest
    model = archs.create(name, num_classes=10, **knobs).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"arch": name, "family": archs.get(name).family, "knobs": knobs,
            "params": archs.count_params(model), "imgs_per_s": round(batch_size * steps / seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--arch", default=None, help="glob over arch names (default: one arch per family)")
    args = p.parse_args()
    device = torch.device(args.device)
    if args.arch:
        names = archs.names(args.arch)
    else:  # the family's first-registered (smallest) member
        names = [members[0] for members in archs.families().values()]
        preferred = {"ResNet": "resnet18", "VGG": "vgg11", "SE-ResNet": "se_resnet18", "DenseNet": "densenet_bc",
                     "MobileNet": "mobilenet_v2"}
        names = [preferred.get(archs.get(n).family, n) for n in names]
    results = []
    for name in names:
        r = measure(name, args.batch_size, args.steps, args.warmup, device)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(json.dumps({"summary": True, "device": str(device), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "machine": platform.machine(), "batch_size": args.batch_size, "steps": args.steps,
                      "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
