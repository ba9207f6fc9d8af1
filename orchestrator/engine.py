"""The training loop every trial runs. Pure PyTorch: no Ray, no MLflow.

The engine reports through a `Reporter` (anything with `report(metrics, checkpoint_dir)`): a local
run prints, Ray Train forwards to `ray.train.report`, tests collect. It runs alone, or under
torch.distributed DDP when a process group exists (gloo on CPU, NCCL on GPU), reducing its metrics
across ranks so every rank reports the same numbers.

Two input paths:
- "loader": a DataLoader with per-sample torchvision augmentation (the CPU path);
- "device": the whole uint8 split resident on the training device, batched augmentation there,
  metrics accumulated on the device and read once per epoch (the GPU fast path; also runs on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import archs
from orchestrator import data as data_mod
from orchestrator import inference
from orchestrator.schema import CheckpointFile, TrainConfig, cut

STATE_FILE, MODEL_FILE, EVAL_FILE, HISTORY_FILE = (CheckpointFile.STATE, CheckpointFile.MODEL, CheckpointFile.EVAL,
                                                   CheckpointFile.HISTORY)


class CheckpointError(Exception):
    """A checkpoint whose files cannot be read (cut short by a full disk or a process killed while
    writing it): nothing of it was applied."""


class Reporter(Protocol):
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...


class CollectingReporter:
    """Keeps every report in memory (tests, benchmarks)."""

    def __init__(self):
        self.history: list[dict[str, Any]] = []
        self.checkpoints: list[str | None] = []

    def report(self, metrics, checkpoint_dir):
        self.history.append(dict(metrics))
        self.checkpoints.append(checkpoint_dir)


class Diverged(FloatingPointError):
    """Training loss became NaN/inf: the trial is failed rather than trained on."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    arch: str
    knobs: dict[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Pieces of the loop, each small enough to test alone.


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
    np.random.seed(seed % 2**32)
    # Set both ways: a reused process (Tune reuses trial actors) must not inherit the last run's.
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # Fixed input shapes: let cuDNN pick the fastest kernels once (not when determinism is asked).
    torch.backends.cudnn.benchmark = not deterministic


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay conv/linear weights only: decaying BN scales and biases just fights normalisation."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    # Fused kernels where the device supports them: one launch per step instead of one per tensor.
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, **fused)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """Per-step schedule. One-cycle: warm-up to `lr`, cosine down; cosine: linear warm-up, then
    cosine to 0; constant: `lr` throughout."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.effective_warmup_epochs * steps_per_epoch))
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        pct = min(max(warmup / total, 1e-3), 0.5)
        if abs(pct * total - 1) < 1e-9:  # OneCycleLR divides by pct * total - 1 (a one-step warm-up)
            pct = 1.5 / total if total >= 3 else 0.25
        return sched.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct,
                                anneal_strategy="cos", cycle_momentum=False)
    if cfg.schedule == "cosine":
        cosine = sched.CosineAnnealingLR(opt, T_max=max(1, total - warmup))
        if warmup == 0:
            return cosine
        ramp = sched.LinearLR(opt, start_factor=1e-3, end_factor=1.0, total_iters=warmup)
        return sched.SequentialLR(opt, [ramp, cosine], milestones=[warmup])
    return sched.LambdaLR(opt, lambda step: 1.0)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 keeps fp32's exponent range, so no loss scaling is needed; used where it is fast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


def load_state(checkpoint_dir: str) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code (RNG states are tensors, tuples and ints).
    return torch.load(os.path.join(checkpoint_dir, STATE_FILE), map_location="cpu", weights_only=True)


def load_model(checkpoint_dir: str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from, in eval mode, on the CPU."""
    with open(os.path.join(checkpoint_dir, MODEL_FILE)) as f:
        meta = json.load(f)
    model = archs.create(meta["arch"], num_classes=len(meta["classes"]),
                         image_size=meta.get("image_size", data_mod.IMAGE_SIZE), **meta["knobs"])
    model.load_state_dict(load_state(checkpoint_dir)["model"])
    return model.eval(), meta


# ---------------------------------------------------------------------------------------------
# The loop


def forward(model: nn.Module, x: torch.Tensor, device: torch.device, amp_dtype: torch.dtype | None,
            memory_format=torch.contiguous_format) -> torch.Tensor:
    """float32 logits of `model` for a normalised batch, under autocast where `amp_dtype` is set."""
    x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        return model(x).float()


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches, num_classes: int, device: torch.device,
                     amp_dtype: torch.dtype | None = None, memory_format=torch.contiguous_format
                     ) -> tuple[dict[str, float], torch.Tensor]:
    """Loss, top-1, top-5 and the confusion matrix (rows: true class) of `model` over `batches`,
    summed on the device, all-reduced across ranks under DDP, read once. The engine's validation
    and `orchestrate evaluate` both use it."""
    if not isinstance(model, torch.fx.GraphModule):  # an exported (pt2) model is in eval mode and refuses .eval()
        model.eval()
    k = num_classes
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss*n, top1, top5, n
    confusion = torch.zeros(k * k, device=device, dtype=torch.int64)
    for x, y in batches:
        logits = forward(model, x, device, amp_dtype, memory_format)
        y = y.to(device, non_blocking=True)
        top = logits.topk(min(5, k), dim=1).indices
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += (top[:, 0] == y).sum()
        sums[2] += (top == y[:, None]).any(1).sum()
        sums[3] += y.numel()
        confusion += torch.bincount(y * k + top[:, 0], minlength=k * k)
    all_reduce_sum(sums)
    all_reduce_sum(confusion)
    loss_sum, top1, top5, n = sums.tolist()
    return ({"val_loss": loss_sum / n, "val_acc": top1 / n, "val_top5": top5 / n},
            confusion.view(k, k).cpu())


class Engine:
    """Owns model, optimiser, schedule and inputs for one training run (one rank of it)."""

    def __init__(self, cfg: TrainConfig, model_spec: ModelSpec, splits: data_mod.Splits, *,
                 device: torch.device | str | None = None,
                 prepare_model: Callable[[nn.Module], nn.Module] | None = None,
                 price: dict[str, Any] | None = None):
        """`price`: the model's costs on its deployment target, priced before this run
        (orchestrator/pricing.py: Price.facts()), reported with the first epoch instead of a
        measurement on this run's own device."""
        cfg.check()
        self.price = dict(price) if price is not None else None
        self.cfg, self.spec, self.splits = cfg, model_spec, splits
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank, self.world_size = world()
        seed_everything(cfg.seed, cfg.deterministic)

        # Same seed on every rank: DDP also broadcasts rank 0's weights, but equal init is free.
        self.image_size = splits.image_size
        model = archs.create(model_spec.arch, num_classes=splits.num_classes, image_size=self.image_size,
                             **model_spec.knobs)
        self.param_count = archs.count_params(model)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(self.device, memory_format=self.memory_format)
        if prepare_model is not None:
            model = prepare_model(model)
        elif self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model = torch.compile(model) if cfg.compile else model
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)

        self.train_batches, self.val_batches = data_mod.make_inputs(splits, cfg, device=self.device, rank=self.rank,
                                                                    world_size=self.world_size)
        # The path taken: "auto" falls back to the loader where the splits would not fit the device.
        self.data_path = "device" if isinstance(self.train_batches, data_mod.DeviceBatches) else "loader"
        self.steps_per_epoch = len(self.train_batches)
        if cfg.steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch_size: {cfg.batch_size} leaves no full batch of the "
                             f"{len(splits.train.labels)} training images over {self.world_size} workers")

        self.optimizer = make_optimizer(unwrap(self.model), cfg, self.device)
        self.scheduler = make_schedule(self.optimizer, cfg, self.steps_per_epoch)
        self.epoch = 0  # epochs completed
        self.best_val_acc = 0.0
        self.history: list[dict[str, Any]] = []  # every epoch's metrics, carried in each checkpoint
        self._described = False

    @functools.cached_property
    def flops(self) -> int:
        """Forward FLOPs per image: counted once, when first asked for (by rank 0 when it saves),
        not by every rank at start-up; taken from the price where the model was priced."""
        if self.price is not None and "flops" in self.price:
            return int(self.price["flops"])
        return archs.count_flops(unwrap(self.model), self.image_size)

    def describe(self) -> dict[str, Any]:
        """What a run's numbers depend on besides its config: the data (a digest of its content),
        the device, and the trained model's inference cost on that device in its deployed form.
        The cost is measured here, after the first epoch, not after the last: it does not depend
        on the weights, and an early-stopped trial gets it too."""
        facts: dict[str, Any] = {"dataset_digest": self.splits.digest(), **environment(self.device)}
        if self.price is not None:  # priced before training, on the deployment target
            facts.update(self.price)
        elif self.cfg.benchmark_inference:
            cost = inference.measure(unwrap(self.model), self.device,
                                     batch_sizes=(1, self.cfg.inference_batch_size),
                                     image_shape=(3, self.image_size, self.image_size),
                                     precision="bf16" if self.amp_dtype == torch.bfloat16 else "fp32")
            facts.update(inference.as_metrics(cost), **inference.as_params(cost))
        return facts

    # -- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "best_val_acc": self.best_val_acc, "rng": rng_state(), "config": dataclasses.asdict(self.cfg)}

    def save(self, directory: str, eval_info: dict | None = None) -> str:
        os.makedirs(directory, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(directory, STATE_FILE))
        meta = {"arch": self.spec.arch, "knobs": self.spec.knobs, "classes": self.splits.classes,
                "mean": list(self.splits.mean), "std": list(self.splits.std), "epoch": self.epoch,
                "param_count": self.param_count, "flops": self.flops, "image_size": self.image_size}
        with open(os.path.join(directory, MODEL_FILE), "w") as f:
            json.dump(meta, f)
        if eval_info is not None:
            with open(os.path.join(directory, EVAL_FILE), "w") as f:
                json.dump(eval_info, f)
        # A tracker that missed epochs (its driver died after they were checkpointed) reads them here.
        with open(os.path.join(directory, HISTORY_FILE), "w") as f:
            json.dump(self.history, f)
        return directory

    def restore(self, directory: str) -> None:
        """Continue from a checkpoint. Its files are all read before anything is applied, so a
        CheckpointError (an unreadable file) leaves this engine as it was."""
        history_file = os.path.join(directory, HISTORY_FILE)
        try:
            state = load_state(directory)
            history = None
            if os.path.exists(history_file):
                with open(history_file) as f:
                    history = json.load(f)
        except (OSError, EOFError, RuntimeError, ValueError) as e:  # torch.load's errors for a cut zip, JSON's
            raise CheckpointError(f"{directory}: cannot be read ({type(e).__name__}: {cut(str(e))})") from e
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_val_acc = state["epoch"], state["best_val_acc"]
        set_rng_state(state["rng"])
        if history is not None:
            self.history = history

    # -- one epoch ---------------------------------------------------------------------------

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        # An order that depends only on (seed, epoch): a resumed run sees the same batches.
        self.train_batches.set_epoch(self.epoch)
        # Device-side accumulators: read once at the end, so the step never waits on the host.
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss*n, correct, n
        lr = self.optimizer.param_groups[0]["lr"]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        for step, (x, y) in enumerate(self.train_batches):
            if step >= self.steps_per_epoch:
                break
            logits = forward(self.model, x, self.device, self.amp_dtype, self.memory_format)
            y = y.to(self.device, non_blocking=True)
            loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            with torch.no_grad():
                n = y.numel()  # a Python int: adding it launches no host-to-device copy
                sums[0] += loss.detach().double() * n
                sums[1] += (logits.argmax(1) == y).sum()
                sums[2] += n
        all_reduce_sum(sums)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        loss_sum, correct, n = sums.tolist()
        return {"train_loss": loss_sum / n, "train_acc": correct / n, "lr": lr,
                "imgs_per_s": n / seconds, "train_s": seconds}

    def evaluate(self, batches=None) -> tuple[dict[str, float], torch.Tensor]:
        """Loss, top-1, top-5 and the confusion matrix (rows: true class) over `batches` (val)."""
        return evaluate_batches(self.model, self.val_batches if batches is None else batches,
                                self.splits.num_classes, self.device, self.amp_dtype, self.memory_format)

    # -- the run -----------------------------------------------------------------------------

    def fit(self, reporter: Reporter, resume_from: str | None = None) -> dict[str, Any]:
        if resume_from:
            self.restore(resume_from)
        last: dict[str, Any] = {}
        while self.epoch < self.cfg.epochs:
            start = time.perf_counter()
            metrics = self.train_epoch()
            if not math.isfinite(metrics["train_loss"]):
                raise Diverged(f"train_loss is {metrics['train_loss']} at epoch {self.epoch + 1} "
                               f"(lr {self.cfg.lr}): stopping this trial")
            val, confusion = self.evaluate()
            self.epoch += 1
            self.best_val_acc = max(self.best_val_acc, val["val_acc"])
            metrics.update(val, epoch=self.epoch, epoch_s=time.perf_counter() - start,
                           best_val_acc=self.best_val_acc)
            if self.rank == 0:  # the model's true size for this data set's classes, and the split sizes
                metrics.update(param_count=self.param_count, flops=self.flops,
                               train_size=len(self.splits.train), val_size=len(self.splits.val))
                if not self._described:  # once per run of this process (a resumed trial too)
                    metrics.update(self.describe())
                    self._described = True
            last = metrics
            self.history.append(dict(metrics))
            if self.epoch % self.cfg.checkpoint_every == 0 or self.epoch == self.cfg.epochs:
                with tempfile.TemporaryDirectory(prefix="orchestrate-ckpt-") as tmp:
                    ckpt = None
                    if self.rank == 0:  # one copy of the checkpoint; every rank still reports
                        ckpt = self.save(tmp, eval_info=confusion_report(confusion, self.splits.classes))
                    reporter.report(metrics, ckpt)
            else:
                reporter.report(metrics, None)
        return last


def environment(device: torch.device) -> dict[str, str]:
    """The device a run trained on and the software under it: device_name, and on a GPU the CUDA
    runtime torch was built with and the driver's version."""
    env = {"device_name": inference.device_name(device)}
    if device.type == "cuda":
        env["cuda_version"] = str(torch.version.cuda)
        try:
            import subprocess

            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                env["driver_version"] = out.stdout.split()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return env


def confusion_report(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    per_class = (confusion.diag().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    return {"classes": list(classes), "confusion_matrix": confusion.tolist(),
            "per_class_acc": dict(zip(classes, per_class))}


class PrintReporter:
    """Local runs: one line per epoch; keeps the last checkpoint in `checkpoint_dir` if given."""

    def __init__(self, checkpoint_dir: str | None = None, stream=None):
        self.checkpoint_dir, self.stream = checkpoint_dir, stream or sys.stdout
        self.history: list[dict[str, Any]] = []

    def report(self, metrics, checkpoint_dir):
        self.history.append(dict(metrics))
        if world()[0] != 0:
            return
        print(f"epoch {metrics['epoch']:3d}  train_loss {metrics['train_loss']:.4f}  "
              f"train_acc {metrics['train_acc']:.4f}  val_loss {metrics['val_loss']:.4f}  "
              f"val_acc {metrics['val_acc']:.4f}  val_top5 {metrics['val_top5']:.4f}  "
              f"lr {metrics['lr']:.4g}  imgs_per_s {metrics['imgs_per_s']:.0f}  "
              f"epoch_s {metrics['epoch_s']:.1f}", file=self.stream, flush=True)
        if self.checkpoint_dir and checkpoint_dir:
            shutil.copytree(checkpoint_dir, self.checkpoint_dir, dirs_exist_ok=True)
