"""Steady-state training throughput (img/s): the engine's own loop against a hand-written peer loop
on the same model, the same images and the same machine, in one process.

    PYTHONPATH=. python benchmarks/engine_throughput.py [--arch resnet18 --arch 'vgg*'] [--compile]
        [--dataset imagefolder --root .data/cifar10-jpeg-train.zip] [--out DIR]

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

`speedup` is engine / peer img/s. On CUDA, one more short untimed engine epoch runs under
`torch.cuda.set_sync_debug_mode("warn")` and counts the host synchronisations it makes
(`engine.sync_warnings`): a step that waits on the host cannot overlap the GPU.

Prints one JSON object per arch, then a summary object; `--out DIR` also writes both to
DIR/engine_throughput.json. Data: `--dataset synthetic` (default: seeded CIFAR-sized noise; speed
does not depend on content) or `imagefolder` (`--root` a directory or .zip, e.g. the CIFAR-10 JPEG zip).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

import archs  # noqa: E402
from orchestrator import data as data_mod  # noqa: E402
from orchestrator import engine as engine_mod  # noqa: E402
from orchestrator import schema  # noqa: E402


# ---------------------------------------------------------------------------------------------
# The engine, measured by its own train_epoch


def measure_engine(name: str, knobs: dict, splits: data_mod.Splits, args, device: torch.device) -> dict:
    cfg = engine_mod.TrainConfig(
        epochs=1, batch_size=args.batch_size, lr=0.1, schedule="constant", warmup_epochs=0,
        precision=args.precision, channels_last=True, compile=args.compile, data_path=args.data_path,
        loader_workers=args.loader_workers, steps_per_epoch=args.steps, checkpoint_every=1)
    run = engine_mod.Engine(cfg, engine_mod.ModelSpec(name, knobs), splits, device=device)
    available = len(run.train_batches)
    # The step cap is the engine's own: train_epoch stops after `steps_per_epoch` steps.
    run.steps_per_epoch = args.warmup
    run.train_epoch()
    run.steps_per_epoch = args.steps
    epochs = [run.train_epoch() for _ in range(args.repeats)]
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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="arch name or glob; repeatable (default: resnet18)")
    p.add_argument("--smallest", action="store_true", help="each arch at its smallest knobs (smoke runs)")
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
    for flag in ("batch_size", "steps", "warmup", "repeats", "synthetic_size"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    names = arch_names(args.arch or ["resnet18"])
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
        knobs = dict(archs.get(name).smallest) if args.smallest else {}
        engine = measure_engine(name, knobs, splits, args, device)
        peer = measure_peer(name, knobs, splits, args, device) if args.peer else None
        result = {"arch": name, "knobs": knobs, "params": engine.pop("params"), "batch_size": args.batch_size,
                  "steps": args.steps, "warmup_steps": args.warmup,
                  "engine_imgs_per_s": engine["imgs_per_s"],
                  "peer_imgs_per_s": peer["imgs_per_s"] if peer else None,
                  "speedup": round(engine["imgs_per_s"] / peer["imgs_per_s"], 2) if peer else None,
                  "engine": engine, "peer": peer}
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
               "command": "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv]),
               "dataset": args.dataset, "root": args.root,
               "train_images": len(splits.train), "data_load_s": round(load_s, 2)}
    print(json.dumps(summary), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "engine_throughput.json"), "w") as f:
            json.dump({"results": results, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
