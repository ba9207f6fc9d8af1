"""Steady-state training throughput (img/s): the engine's own loop against a hand-written peer loop
on the same model, the same images and the same machine, in one process; or, with `--step-only`,
each model's bare training step (the per-family CPU table).

    python -m benchmarks.engine_throughput [--arch resnet18 --arch 'vgg*'] [--compile]
        [--dataset imagefolder --root .data/cifar10-jpeg-train.zip] [--out DIR]
    python -m benchmarks.engine_throughput --per-family --step-only --device cpu --batch-size 128
        --steps 3 --warmup 1 --repeats 1

Per arch:

- engine: `Engine.train_epoch` exactly as a sweep trial runs it, with its step cap
  (`TrainConfig.steps_per_epoch`). On a GPU (data_path auto -> device): the uint8 split resident on
  the GPU with batched augmentation, bf16 autocast, channels_last, fused SGD, metrics accumulated
  on the device; optionally torch.compile. One untimed epoch of `--warmup` steps (compilation,
  cuDNN autotuning), then `--repeats` epochs of `--steps` steps each. The number reported is the
  engine's own `imgs_per_s` (its clock is read after a CUDA synchronise at both ends of the
  epoch), median over the repeats. A constant schedule, so the step count can change after warm-up.
- peer: the loop of the common CIFAR repositories (kuangliu/pytorch-cifar's main.py): a torchvision
  Dataset of PIL images (held as a uint8 HWC array, as torchvision.datasets.CIFAR10 holds them),
  torchvision.transforms RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize; a
  DataLoader(batch_size, shuffle, num_workers=--peer-workers); fp32 (cuDNN may use TF32, torch's
  default), contiguous memory, plain SGD (momentum 0.9, weight decay 5e-4); `.to(device)` per batch
  and `loss.item()` plus the correct-count `.item()` per step, as those loops print progress. Timed
  by this script over `--steps` steps after `--warmup` steps from the same DataLoader iterator,
  CUDA synchronised before each clock read.
- step (`--step-only`, instead of both above): the model's training step alone, on one fixed
  synthetic batch of 32x32 inputs (no engine, no data path, no augmentation): SGD with Nesterov
  momentum, fp32, channels_last. `--warmup` untimed steps, then `--repeats` runs of `--steps`
  steps timed by this script's clock (CUDA-synchronised); the median is reported.

Archs: `--arch` (name or glob, repeatable; default resnet18), each at its default knobs or with
`--smallest` at its registry `smallest` setting; `--per-family` takes one arch of every family
(FAMILY_REPRESENTATIVE below, else the family's first name) at its smallest setting, or with
`--defaults` at its default knobs. `--knob NAME=VALUE` (repeatable) sets a knob on every arch
measured, over the others (e.g. `--arch resnet18 --knob width=0.5`).

On CUDA each engine record has `peak_mem_mb`: `torch.cuda.max_memory_allocated` over the engine's
build, warm-up and timed epochs, the device-resident data included (what one trial holds on the
GPU; the caching allocator reserves somewhat more).

`speedup` is engine / peer img/s. On CUDA, one more short untimed engine epoch runs under
`torch.cuda.set_sync_debug_mode("warn")` and counts the host synchronisations it makes
(`engine.sync_warnings`): a step that waits on the host cannot overlap the GPU.

Prints one JSON object per arch, then a summary object; `--out DIR` also writes both to
DIR/engine_throughput.json. Data: `--dataset synthetic` (default: seeded CIFAR-sized noise; speed
does not depend on content) or `imagefolder` (`--root` a directory or .zip, e.g. the CIFAR-10 JPEG zip);
`--step-only` loads no data.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

import archs
from orchestrator import data as data_mod
from orchestrator import engine as engine_mod
from orchestrator import schema

# --per-family: the family's arch to measure where its first name (alphabetical) is not the
# smallest or best known member.
FAMILY_REPRESENTATIVE = {"ResNet": "resnet18", "VGG": "vgg11", "SE-ResNet": "se_resnet18", "DenseNet": "densenet_bc",
                         "MobileNet": "mobilenet_v2"}


# ---------------------------------------------------------------------------------------------
# The engine, measured by its own train_epoch


def measure_engine(name: str, knobs: dict, splits: data_mod.Splits, args, device: torch.device) -> dict:
    cfg = engine_mod.TrainConfig(
        epochs=1, batch_size=args.batch_size, lr=0.1, schedule="constant", warmup_epochs=0,
        precision=args.precision, channels_last=True, compile=args.compile, data_path=args.data_path,
        loader_workers=args.loader_workers, steps_per_epoch=args.steps, checkpoint_every=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = engine_mod.Engine(cfg, engine_mod.ModelSpec(name, knobs), splits, device=device)
    available = len(run.train_batches)
    # The step cap is the engine's own: train_epoch stops after `steps_per_epoch` steps.
    run.steps_per_epoch = args.warmup
    run.train_epoch()
    run.steps_per_epoch = args.steps
    window_start = time.time()
    epochs = [run.train_epoch() for _ in range(args.repeats)]
    window = [round(window_start, 3), round(time.time(), 3)]  # wall clock: gpu_sharing checks processes overlap
    timed_images = [round(m["imgs_per_s"] * m["train_s"]) for m in epochs]
    if any(n != args.steps * args.batch_size for n in timed_images):
        raise RuntimeError(f"{name}: the engine trained {timed_images} images per timed epoch, expected "
                           f"{args.steps} steps x {args.batch_size}; only {available} batches available")
    result = {
        "imgs_per_s": round(statistics.median(m["imgs_per_s"] for m in epochs), 1),
        "imgs_per_s_runs": [round(m["imgs_per_s"], 1) for m in epochs],
        "measured_by": "Engine.train_epoch imgs_per_s (engine's clock, CUDA-synchronised), median",
        "data_path": run.data_path, "precision": str(run.amp_dtype or torch.float32).replace("torch.", ""),
        "channels_last": cfg.channels_last, "compile": cfg.compile,
        "optimizer": "sgd nesterov" + (" fused" if device.type == "cuda" else ""),
        "params": run.param_count, "flops_per_image": run.flops,
        "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "timed_window_unix_s": window,
    }
    if device.type == "cuda" and args.sync_check:
        result.update(count_host_syncs(run, steps=min(args.steps, 10)))
    del run
    return result


def count_host_syncs(run: engine_mod.Engine, steps: int) -> dict:
    """One extra untimed epoch of `steps` steps with CUDA's sync debug mode on: every operation that
    makes the host wait for the GPU raises a warning; count them and keep the distinct messages."""
    run.steps_per_epoch = steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run.train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    messages = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"sync_check_steps": steps, "sync_warnings": len(messages),
            "sync_warning_messages": sorted(set(messages))[:5]}


# ---------------------------------------------------------------------------------------------
# The peer: a hand-written loop as in the common CIFAR repositories


class PilImages(torchvision.datasets.VisionDataset):
    """Images as a uint8 [N, H, W, C] array, returned as PIL images through `transform`: the
    in-memory layout and __getitem__ of torchvision.datasets.CIFAR10 (no JPEG decode per sample)."""

    def __init__(self, data: data_mod.ImageSet, transform):
        super().__init__(root=None, transform=transform)
        self.data = data.images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = data.labels.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return self.transform(image), self.targets[index]


def measure_peer(name: str, knobs: dict, splits: data_mod.Splits, args, device: torch.device) -> dict:
    from torchvision import transforms

    torch.backends.cudnn.benchmark = True  # as those repositories set it on CUDA
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(splits.mean, splits.std),
    ])
    loader = torch.utils.data.DataLoader(PilImages(splits.train, transform), batch_size=args.batch_size,
                                         shuffle=True, num_workers=args.peer_workers, drop_last=True)
    model = archs.create(name, num_classes=splits.num_classes, **knobs).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    train_loss, correct = 0.0, 0

    batches = iter(loader)

    def step():
        nonlocal train_loss, correct
        inputs, targets = next(batches)
        inputs, targets = inputs.to(device), targets.to(device)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = F.cross_entropy(outputs, targets)
        loss.backward()
        optimizer.step()
        train_loss += loss.item()
        correct += outputs.max(1)[1].eq(targets).sum().item()

    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return {"imgs_per_s": round(args.steps * args.batch_size / seconds, 1),
            "measured_by": "this script's clock over the timed steps, CUDA-synchronised",
            "workers": args.peer_workers, "precision": "float32", "channels_last": False,
            "optimizer": "sgd", "train_s": round(seconds, 4)}


# ---------------------------------------------------------------------------------------------
# The model's training step alone (--step-only)


def measure_step(name: str, knobs: dict, args, device: torch.device) -> dict:
    model = archs.create(name, num_classes=10, **knobs).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    runs = []
    for _ in range(args.repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        runs.append(args.batch_size * args.steps / (time.perf_counter() - start))
    return {"imgs_per_s": round(statistics.median(runs), 1), "imgs_per_s_runs": [round(r, 1) for r in runs],
            "measured_by": "this script's clock over the timed steps, CUDA-synchronised, median",
            "precision": "float32", "channels_last": True, "optimizer": "sgd nesterov",
            "params": archs.count_params(model)}


# ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def family_representatives() -> list[str]:
    return [FAMILY_REPRESENTATIVE.get(family, members[0]) for family, members in archs.families().items()]


def arch_names(patterns: list[str]) -> list[str]:
    names: list[str] = []
    for pattern in patterns:
        matched = archs.names(pattern)
        if not matched:
            raise SystemExit(f"--arch {pattern!r} matches no arch; archs are: {', '.join(archs.names())}")
        names += [n for n in matched if n not in names]
    return names


def load_data(args) -> data_mod.Splits:
    if args.dataset == "imagefolder" and not args.root:
        raise SystemExit("--dataset imagefolder needs --root (a directory or .zip holding train/<class>/*.jpg)")
    spec = data_mod.DataSpec(args.dataset, root=args.root, val_fraction=0.1, split_seed=0,
                             synthetic_size=args.synthetic_size)
    try:
        return data_mod.load_splits(spec)
    except data_mod.DataError as e:
        raise SystemExit(str(e)) from None


def knob_value(text: str):
    """'0.5' -> 0.5, '3' -> 3, 'True' -> True, anything else the string itself (no PyYAML here:
    the GPU machine has torch and torchvision only)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="arch name or glob; repeatable (default: resnet18)")
    p.add_argument("--smallest", action="store_true", help="each arch at its smallest knobs (smoke runs)")
    p.add_argument("--per-family", action="store_true",
                   help="one arch of every family, at its smallest knobs (instead of --arch)")
    p.add_argument("--defaults", action="store_true", help="with --per-family: each at its default knobs")
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="a knob for every arch measured, over its default or smallest setting (repeatable)")
    p.add_argument("--step-only", action="store_true",
                   help="time the model's training step on one fixed batch (no engine, data or peer loop)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile, autotune)")
    p.add_argument("--repeats", type=int, default=3, help="timed engine epochs; the median is reported")
    p.add_argument("--compile", action="store_true", help="TrainConfig.compile: torch.compile the model")
    p.add_argument("--precision", default="auto", choices=schema.choices(schema.TrainConfig, "precision"),
                   help="engine autocast: auto = bf16 on GPUs that support it, else fp32")
    p.add_argument("--data-path", default="auto", choices=schema.choices(schema.TrainConfig, "data_path"),
                   help="engine input path: auto = device on CUDA, loader on CPU")
    p.add_argument("--loader-workers", type=int, default=0, help="engine's DataLoader workers (loader path)")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip the hand-written peer loop")
    p.add_argument("--peer-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="the peer DataLoader's num_workers")
    p.add_argument("--no-sync-check", dest="sync_check", action="store_false",
                   help="skip counting the engine's host synchronisations (CUDA only)")
    p.add_argument("--dataset", default="synthetic", choices=("synthetic", "imagefolder"))
    p.add_argument("--root", help="imagefolder: a directory or .zip holding train/<class>/*.jpg")
    p.add_argument("--synthetic-size", type=int, default=50_000, help="synthetic: images before the split")
    p.add_argument("--out", help="also write the JSON to OUT/engine_throughput.json")
    args = p.parse_args(argv)
    if args.per_family and args.arch:
        p.error("--per-family and --arch exclude each other")
    if args.defaults and not args.per_family:
        p.error("--defaults goes with --per-family (--arch measures default knobs already)")
    try:
        args.knobs = {name.strip(): knob_value(value) for name, value in (k.split("=", 1) for k in args.knob)}
    except ValueError:
        p.error(f"--knob takes NAME=VALUE, got {args.knob}")
    for flag in ("batch_size", "steps", "warmup", "repeats", "synthetic_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def measure(name: str, knobs: dict, splits: data_mod.Splits | None, args, device: torch.device) -> dict:
    """One arch's record: its step alone (--step-only), or the engine and the peer loop."""
    head = {"arch": name, "family": archs.get(name).family, "knobs": knobs}
    shape = {"batch_size": args.batch_size, "steps": args.steps, "warmup_steps": args.warmup}
    if args.step_only:
        step = measure_step(name, knobs, args, device)
        return {**head, "params": step.pop("params"), **shape, "step_imgs_per_s": step["imgs_per_s"], "step": step}
    engine = measure_engine(name, knobs, splits, args, device)
    peer = measure_peer(name, knobs, splits, args, device) if args.peer else None
    return {**head, "params": engine.pop("params"), **shape,
            "engine_imgs_per_s": engine["imgs_per_s"],
            "peer_imgs_per_s": peer["imgs_per_s"] if peer else None,
            "speedup": round(engine["imgs_per_s"] / peer["imgs_per_s"], 2) if peer else None,
            "engine": engine, "peer": peer}


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    names = family_representatives() if args.per_family else arch_names(args.arch or ["resnet18"])
    splits, load_s = None, 0.0
    if not args.step_only:
        load_start = time.perf_counter()
        splits = load_data(args)
        load_s = time.perf_counter() - load_start
        needed = (args.warmup + args.steps) * args.batch_size
        if needed > len(splits.train):
            raise SystemExit(f"--warmup {args.warmup} + --steps {args.steps} batches of {args.batch_size} need "
                             f"{needed} training images; the {args.dataset} split has {len(splits.train)}: "
                             f"lower them or raise --synthetic-size")

    results = []
    for name in names:
        smallest = args.smallest or (args.per_family and not args.defaults)
        knobs = {**(dict(archs.get(name).smallest) if smallest else {}), **args.knobs}
        try:
            archs.validate(name, knobs)
        except archs.KnobError as e:
            raise SystemExit(f"--knob: {name}: {e}") from None
        result = measure(name, knobs, splits, args, device)
        results.append(result)
        print(json.dumps(result), flush=True)
        if args.compile:
            torch._dynamo.reset()  # each arch compiles afresh; no cache growth across archs
        if device.type == "cuda":
            torch.cuda.empty_cache()

    summary = {"summary": True, "device": device_name(device), "device_type": device.type,
               "torch": torch.__version__, "torchvision": torchvision.__version__,
               "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": shlex.join(["python", "-m", "benchmarks.engine_throughput",
                                      *(sys.argv[1:] if argv is None else argv)]),
               "measured": "step" if args.step_only else "engine" + (" and peer" if args.peer else ""),
               "dataset": None if args.step_only else args.dataset, "root": args.root,
               "train_images": len(splits.train) if splits else None, "data_load_s": round(load_s, 2)}
    print(json.dumps(summary), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "engine_throughput.json"), "w") as f:
            json.dump({"results": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
