"""The training settings (`TrainConfig`) and their checks, torch-free so sweep files can be
validated before torch, Ray or MLflow are imported."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # per worker
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adamw
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # not applied to norm weights and biases
    schedule: str = "onecycle"  # onecycle | cosine | constant
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    precision: str = "auto"  # auto (bf16 on GPUs that support it, else fp32) | bf16 | fp32
    channels_last: bool = True
    compile: bool = False
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms; slower on GPU
    data_path: str = "auto"  # auto (device on CUDA, loader on CPU) | device | loader
    loader_workers: int = 0
    steps_per_epoch: int = 0  # cap on train steps per epoch; 0 = the whole split (tests, smoke runs)
    checkpoint_every: int = 1  # epochs between checkpoints; the last epoch always checkpoints

    OPTIMIZERS = ("sgd", "adamw")
    SCHEDULES = ("onecycle", "cosine", "constant")
    PRECISIONS = ("auto", "bf16", "fp32")
    DATA_PATHS = ("auto", "device", "loader")

    def check(self) -> None:
        """Raise ValueError('key: value ... allowed') for a bad setting."""
        for f in dataclasses.fields(self):
            err = check_value(f.name, getattr(self, f.name))
            if err:
                raise ValueError(f"{f.name}: {err}")
        if self.warmup_epochs >= self.epochs and self.schedule != "constant":
            raise ValueError(f"warmup_epochs: {self.warmup_epochs!r} must be < epochs ({self.epochs})")


CHOICES = {"optimizer": TrainConfig.OPTIMIZERS, "schedule": TrainConfig.SCHEDULES,
           "precision": TrainConfig.PRECISIONS, "data_path": TrainConfig.DATA_PATHS}
POSITIVE = ("epochs", "batch_size", "lr", "checkpoint_every")
NON_NEGATIVE = ("weight_decay", "warmup_epochs", "grad_clip", "steps_per_epoch", "loader_workers", "momentum")


def check_value(name: str, value: Any) -> str | None:
    """None if `value` is allowed for TrainConfig field `name`, else what is wrong with it."""
    if name in CHOICES and value not in CHOICES[name]:
        return f"{value!r} is not one of {', '.join(CHOICES[name])}"
    if name in POSITIVE and not value > 0:
        return f"{value!r} must be > 0"
    if name in NON_NEGATIVE and value < 0:
        return f"{value!r} must be >= 0"
    if name == "label_smoothing" and not 0 <= value < 1:
        return f"{value!r} must be in [0, 1)"
    return None
