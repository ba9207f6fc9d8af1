"""Datasets, the train/val split and the two input paths the engine uses.

    splits = load_splits(DataSpec("cifar10", root="data/"))
    train, val = make_inputs(splits, train_config, device=device, rank=rank, world_size=world_size)

Every dataset here is CIFAR-sized (at most tens of thousands of images, 32x32 RGB unless
`DataSpec.image_size` says otherwise), so a split is held whole in memory as a uint8 tensor
`[N, 3, S, S]` (50,000 images are 150 MB at 32x32, 600 MB at 64x64). That keeps one representation
for both input paths. Three modules, each importing only the ones before it:

- `sources`: the loaders (cifar10/cifar100, imagefolder with its decoded-image cache, digits,
  synthetic), each giving the whole training set, the official test split and the class names;
- `splits`: the stratified train/val split (`split_seed`), `subset`, the channel statistics;
- `inputs`: normalisation, the DataLoader path and the device-resident path.

No Ray or MLflow here: the engine runs this on machines that have only torch.
"""

from orchestrator.data.inputs import (AugmentedImageSet, DeviceBatches, EpochLoader, Loaders, augment_batch,
                                      channel_tensors, check_fits, epoch_seed, eval_loader, input_path,
                                      make_inputs, make_loaders, normalize, train_steps)
from orchestrator.data.sources import CACHE_ENV, IMAGE_SIZE, LOADERS, MAX_IMAGE_PIXELS, DataError, ImageSet
from orchestrator.data.splits import Splits, check_source, load_splits, train_size
from orchestrator.schema import DATASETS, DataSpec

__all__ = ["DATASETS", "DataError", "DataSpec", "ImageSet", "Splits", "load_splits", "check_source", "normalize",
           "channel_tensors", "AugmentedImageSet", "EpochLoader", "Loaders", "make_loaders", "eval_loader",
           "augment_batch", "DeviceBatches", "make_inputs", "input_path", "epoch_seed", "CACHE_ENV", "IMAGE_SIZE",
           "LOADERS", "MAX_IMAGE_PIXELS", "check_fits", "train_steps", "train_size"]
