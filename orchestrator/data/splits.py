"""The train/val split and the train split's channel statistics.

The validation split is always carved from the training data with `split_seed`, stratified by
class; the official test split (where one exists) is returned separately and never used for
selection.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from orchestrator.data.sources import DataError, ImageSet, load_source, take
from orchestrator.schema import DataSpec, problems


@dataclasses.dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet | None  # official test split where one exists; never used for selection
    classes: list[str]
    mean: tuple[float, float, float]  # per channel, [0, 1] units, from the train split
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def digest(self) -> str:
        """A digest of the data itself (the train and val images and labels, and the class
        names): the same splits give the same digest on any machine, whatever the files' dates."""
        h = hashlib.sha256()
        for part in (self.train.images, self.train.labels, self.val.images, self.val.labels):
            h.update(part.contiguous().numpy())  # the array's own buffer: no copy of the dataset
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()[:16]


def load_splits(spec: DataSpec) -> Splits:
    """Load `spec.name`, carve the validation split from its training data and measure the train
    split's channel statistics. Raises DataError with a one-line message on any user error."""
    _check_settings(spec)
    train_data, test, classes = load_source(spec)
    train_size(spec, len(train_data))  # subset and val_fraction leave a training split

    generator = torch.Generator().manual_seed(spec.split_seed)
    if spec.subset is not None:
        keep = torch.randperm(len(train_data), generator=generator)[: spec.subset].sort().values
        train_data = take(train_data, keep)
    train_idx, val_idx = _stratified_split(train_data.labels, spec.val_fraction, generator)
    train, val = take(train_data, train_idx), take(train_data, val_idx)
    mean, std = _channel_stats(train.images)
    return Splits(train=train, val=val, test=test, classes=list(classes), mean=mean, std=std)


def check_source(spec: DataSpec) -> int:
    """Load `spec`'s data as a trial will and return how many images its training split holds:
    CIFAR is downloaded if asked, and its batches are read and checked; an imagefolder is decoded
    once, into this machine's cache (the sweep's driver reads it from there and ships it). A sweep calls it before Ray starts, so bad data is a
    one-line error, never a failed trial. Raises DataError as load_splits would."""
    _check_settings(spec)
    train_data, _, _ = load_source(spec)
    return train_size(spec, len(train_data))


def train_size(spec: DataSpec, images: int) -> int:
    """How many of a source's `images` training images the training split holds, after `subset`
    and the validation split; DataError where none would be left."""
    if spec.subset is not None:
        if spec.subset > images:
            raise DataError(f"{spec.name}: subset {spec.subset} is larger than the {images} training images",
                            key="subset")
        images = spec.subset
    trained = images - val_size(images, spec.val_fraction)
    if trained == 0:
        raise DataError(f"{spec.name}: {images} training images leave none for training after a "
                        f"val_fraction of {spec.val_fraction}", key="val_fraction")
    return trained


def val_size(images: int, val_fraction: float) -> int:
    """Exactly round(N * val_fraction) images, at least 1, go to validation."""
    return min(max(1, round(images * val_fraction)), images)


def _check_settings(spec: DataSpec) -> None:
    for key, message in problems(spec):  # the schema's rules, as for a sweep file
        raise DataError(f"{spec.name}: {key}: {message}", key=key)


def _stratified_split(labels: torch.Tensor, val_fraction: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_indices, val_indices): exactly round(N * val_fraction) (at least 1) go to val, each
    class contributing in proportion to its size.

    Shuffle, rank every sample within its class, and order all samples by their fractional rank
    (rank + 0.5) / class_size: taking the first n of that order takes about the same fraction of
    every class, and the total is exact (rounding class by class would not be)."""
    n = len(labels)
    n_val = val_size(n, val_fraction)
    perm = torch.randperm(n, generator=generator)
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    by_class = torch.sort(shuffled, stable=True).indices  # grouped by class, shuffled within
    class_start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - class_start[shuffled[by_class]]
    fractional_rank = (rank.double() + 0.5) / counts[shuffled].double()
    order = perm[torch.sort(fractional_rank, stable=True).indices]
    return order[n_val:].sort().values, order[:n_val].sort().values


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std in [0, 1] units, from each channel's exact 256-bin histogram:
    fast, and bit-identical on every machine (the numbers end up in checkpoints)."""
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for channel in range(3):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        total = counts.sum()
        channel_mean = (counts * values).sum() / total
        variance = ((counts * (values - channel_mean) ** 2).sum() / total).item()
        mean.append(channel_mean.item() / 255)
        std.append(max(variance ** 0.5, 0.25) / 255)  # a constant channel must not divide by zero
    return tuple(mean), tuple(std)
