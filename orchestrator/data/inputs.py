"""The two input paths the engine trains through, both over a split held whole as uint8:

- the CPU path: `AugmentedImageSet` + `DataLoader` (+ `DistributedSampler` under DDP), per-sample
  torchvision transforms;
- the device path: `DeviceBatches` moves the uint8 tensors to the device once and calls
  `augment_batch`, which pads, crops and flips a whole batch there without a Python loop.

Both normalise with the one `normalize`, and `make_inputs` builds either for the engine: its
training batches always have `set_epoch(epoch)`, whose order depends only on (seed, epoch), so a
resumed run sees the same order.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision.transforms import v2

from orchestrator.data.sources import IMAGE_SIZE, DataError, ImageSet
from orchestrator.data.splits import Splits
from orchestrator.schema import TrainConfig

PAD = 4  # pixels of zero padding before the random 32x32 crop, as in the ResNet CIFAR recipe
# The device path keeps whole splits resident: at most this share of the device's free memory, the
# rest is the model's, its activations' and the optimiser's.
DEVICE_DATA_SHARE = 0.5


def padding(size: int) -> int:
    """The crop's zero padding for `size` x `size` images: PAD at 32 pixels, scaled with the side
    (8 at 64, 12 at 96), at least 1, so the augmentation shifts by the same share of the image."""
    return max(1, round(PAD * size / IMAGE_SIZE))


def device_data_problem(splits: Splits, device: torch.device, free_bytes: int | None = None) -> str | None:
    """None if the training and validation splits (N x 3 x S x S bytes of uint8) fit in
    DEVICE_DATA_SHARE of `device`'s free memory (`free_bytes`, else torch.cuda.mem_get_info),
    else a line saying how much they take and how much is free. Only CUDA is checked: on the CPU
    the splits are already in host memory."""
    if device.type != "cuda" and free_bytes is None:
        return None
    need = sum(part.images.numel() for part in (splits.train, splits.val))
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if need <= DEVICE_DATA_SHARE * free_bytes:
        return None
    size = splits.train.images.shape[-1]
    return (f"the {len(splits.train) + len(splits.val):,} images at {size}x{size} take {need / 2**20:,.0f} MiB "
            f"(N x 3 x {size} x {size} bytes), more than {DEVICE_DATA_SHARE:.0%} of the "
            f"{free_bytes / 2**20:,.0f} MiB free on {device}")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of a single-process training order in `epoch`: a function of (seed, epoch) only."""
    return seed * 100_003 + epoch


def input_path(data_path: str, device: torch.device) -> str:
    """`TrainConfig.data_path` resolved for `device`: "auto" is the device path on CUDA, the
    DataLoader path elsewhere."""
    if data_path == "auto":
        return "device" if device.type == "cuda" else "loader"
    return data_path


def make_inputs(splits: Splits, cfg: TrainConfig, *, device: torch.device, rank: int = 0, world_size: int = 1):
    """(training batches, validation batches) for one rank, on `cfg.data_path`'s input path, with
    `cfg.batch_size` (validation: twice that on the device path, where no gradients are kept) and
    `cfg.seed`. Call the training batches' `set_epoch(epoch)` before each epoch.

    Splits too large for the device: data_path "device" raises DataError (one line, naming the
    size); "auto" falls back to the DataLoader path with one warning line."""
    path = input_path(cfg.data_path, device)
    if path == "device":
        too_large = device_data_problem(splits, device)
        if too_large and cfg.data_path == "device":
            raise DataError(f"data_path device: {too_large}; use data_path loader or a smaller image_size",
                            key="image_size")
        if too_large:
            import warnings

            warnings.warn(f"data_path auto: {too_large}; using the DataLoader path", stacklevel=2)
            path = "loader"
    if path == "device":
        common = dict(device=device, rank=rank, world_size=world_size, seed=cfg.seed)
        return (DeviceBatches(splits.train, splits.mean, splits.std, cfg.batch_size, train=True, **common),
                DeviceBatches(splits.val, splits.mean, splits.std, cfg.batch_size * 2, train=False, **common))
    loaders = make_loaders(splits, cfg.batch_size, rank=rank, world_size=world_size, seed=cfg.seed,
                           num_workers=cfg.loader_workers)
    return loaders.train, loaders.val


def train_steps(images: int, batch_size: int, world_size: int) -> int:
    """Training steps per epoch: every rank takes the same images // world_size (DDP needs equal
    steps), in full batches only (the ragged last one is dropped), on either input path."""
    return images // world_size // batch_size


def check_fits(images: int, batch_size: int, world_size: int) -> None:
    """DataError unless a training split of `images` gives each of `world_size` workers at least
    one full batch of `batch_size` (else an epoch would train on nothing)."""
    if train_steps(images, batch_size, world_size) == 0:
        per_worker = images // world_size
        workers = "" if world_size == 1 else f" x {world_size} workers"
        share = "" if world_size == 1 else f" ({per_worker} per worker)"
        allowed = f"at most {per_worker}" if per_worker else f"use fewer than {world_size} workers"
        raise DataError(f"{batch_size}{workers} is more than the {images} images of the training split{share}: "
                        f"an epoch would train on nothing; {allowed}", key="batch_size")


# ---------------------------------------------------------------------------------------------
# The CPU input path


def normalize(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 in [0, 1], minus `mean`, over `std` (per channel; tuples,
    or the tensors of `channel_tensors`, which the input paths make once). The one normalisation
    both input paths use."""
    mean, std = channel_tensors(mean, std, images_uint8.device)
    return (images_uint8.float().div_(255) - mean) / std


def channel_tensors(mean, std, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel statistics as [3, 1, 1] float32 tensors, made once per input pipeline."""
    return (torch.as_tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1),
            torch.as_tensor(std, dtype=torch.float32, device=device).view(3, 1, 1))


class AugmentedImageSet(Dataset):
    """(image, label) pairs: for training a zero pad (`padding`: 4 pixels at 32x32), a random crop
    back to the images' size and a random horizontal flip, then normalisation; for evaluation normalisation only. Randomness comes from
    torch's global RNG, so it is reproducible under torch.manual_seed (and per DataLoader worker)."""

    def __init__(self, data: ImageSet, mean, std, train: bool):
        self.data, self.train = data, train
        self.mean, self.std = channel_tensors(mean, std)
        size = data.images.shape[-1]
        self.augment = v2.Compose([v2.RandomCrop(size, padding=padding(size)), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image = self.data.images[index]
        if self.train:
            image = self.augment(image)
        return normalize(image, self.mean, self.std), self.data.labels[index]


class EpochLoader:
    """The DataLoader path's training batches, reshuffled by `set_epoch(epoch)` as `DeviceBatches`
    are: a DistributedSampler's shuffle follows (seed, epoch) by itself; a single process's
    shuffle draws from the loader's generator, reseeded from `epoch_seed`."""

    def __init__(self, loader: DataLoader, sampler: DistributedSampler | None, seed: int):
        self.loader, self.sampler, self.seed = loader, sampler, seed

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        else:
            self.loader.generator.manual_seed(epoch_seed(self.seed, epoch))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return iter(self.loader)


@dataclasses.dataclass
class Loaders:
    train: EpochLoader  # call set_epoch(epoch) before each epoch
    val: DataLoader
    train_sampler: DistributedSampler | None  # world_size > 1: the shard of each epoch's shuffle


def make_loaders(splits: Splits, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 0, drop_last: bool = True) -> Loaders:
    """Training and validation loaders for one rank.

    world_size 1: the training order comes from a generator seeded with `seed`, so a run is
    reproducible. world_size > 1: a DistributedSampler gives every rank an equal, disjoint share
    of a per-epoch shuffle (its tail dropped so the ranks take the same number of steps). The
    validation split is sharded without padding (rank r takes r, r + W, ...), so the ranks'
    summed counts equal the split exactly; shards may differ by one sample and one batch, so
    evaluate the unwrapped model (no DDP collectives) and all-reduce sums afterwards."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    train_set = AugmentedImageSet(splits.train, splits.mean, splits.std, train=True)
    val_set = AugmentedImageSet(splits.val, splits.mean, splits.std, train=False)
    common = dict(num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                  persistent_workers=num_workers > 0)
    if world_size > 1:
        sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
        train = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                           generator=torch.Generator().manual_seed(seed + rank), **common)
        val_set = Subset(val_set, range(rank, len(val_set), world_size))
    else:
        sampler = None
        train = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                           generator=torch.Generator().manual_seed(seed), **common)
    val = DataLoader(val_set, batch_size=batch_size, shuffle=False, **common)
    return Loaders(train=EpochLoader(train, sampler, seed), val=val, train_sampler=sampler)


def eval_loader(data: ImageSet, mean, std, batch_size: int) -> DataLoader:
    """Normalised, in order, nothing dropped: for evaluating any split on one process."""
    return DataLoader(AugmentedImageSet(data, mean, std, train=False), batch_size=batch_size, shuffle=False)


# ---------------------------------------------------------------------------------------------
# The device input path


def augment_batch(images_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The training augmentation of `AugmentedImageSet` for a whole uint8 batch [B, 3, H, W] at
    once, on the batch's device: zero-pad (`padding`: 4 pixels at 32x32), crop a random HxW window, flip half the images
    horizontally. One gather, no per-image Python loop. `generator` may live on the CPU or on the
    batch's device; with a seeded one the result is reproducible."""
    b, c, h, w = images_uint8.shape
    pad = padding(w)
    device = images_uint8.device
    draw_device = generator.device if generator is not None else device
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=draw_device).to(device)
    flip = torch.randint(0, 2, (b,), generator=generator, device=draw_device).to(device).bool()
    padded = torch.nn.functional.pad(images_uint8, (pad, pad, pad, pad))
    rows = offsets[0, :, None] + torch.arange(h, device=device)  # [B, H] rows of the padded image
    cols_ascending = torch.arange(w, device=device)
    cols = offsets[1, :, None] + torch.where(flip[:, None], cols_ascending.flip(0), cols_ascending)  # [B, W]
    batch_index = torch.arange(b, device=device).view(b, 1, 1, 1)
    channel_index = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch_index, channel_index, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


class DeviceBatches:
    """The whole uint8 split on the device; each epoch a seeded permutation, sharded by rank,
    augmented in batches on the device. Nothing here synchronises with the host."""

    def __init__(self, data: ImageSet, mean, std, batch_size: int, device: torch.device,
                 train: bool, rank: int, world_size: int, seed: int):
        self.images = data.images.to(device, non_blocking=True)
        self.labels = data.labels.to(device, non_blocking=True)
        self.mean, self.std = channel_tensors(mean, std, device)
        self.batch_size, self.device, self.train = batch_size, device, train
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        n = len(self.labels)
        if train:  # equal steps on every rank (DDP needs it): drop the ragged tail
            self.per_rank = n // world_size
            self.steps = train_steps(n, batch_size, world_size)
        else:  # exact partition of val: rank r takes r, r+W, ...
            self.per_rank = len(range(rank, n, world_size))
            self.steps = math.ceil(self.per_rank / batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return self.steps

    def __iter__(self):
        n = len(self.labels)
        if self.train:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)[self.rank::self.world_size][: self.per_rank]
            order = order.to(self.device)
            aug_gen = torch.Generator(device=self.device).manual_seed(self.seed * 7919 + self.epoch * 31 + self.rank)
        else:
            order = torch.arange(self.rank, n, self.world_size, device=self.device)
        for i in range(self.steps):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.images.index_select(0, idx)
            if self.train:
                x = augment_batch(x, generator=aug_gen)
            x = normalize(x, self.mean, self.std)
            yield x, self.labels.index_select(0, idx)
