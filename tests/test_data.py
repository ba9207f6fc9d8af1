"""orchestrator.data: every dataset from small files in its real format, the split, both input
paths and the errors a user sees."""

import os
import urllib.error

import pytest
import torch
import torchvision
from datafiles import (COLOURS, cifar_images, private_cache, write_cifar10, write_cifar100,  # noqa: F401
                       write_tree, zip_tree)

from orchestrator import data, schema
from orchestrator.data import (DataError, DataSpec, ImageSet, Splits, augment_batch, eval_loader, load_splits,
                               make_loaders, normalize)


def all_images(splits: Splits) -> ImageSet:
    return ImageSet(torch.cat([splits.train.images, splits.val.images]),
                    torch.cat([splits.train.labels, splits.val.labels]))


def assert_labels_match_colours(images: ImageSet, classes):
    for image, label in zip(images.images, images.labels):
        name = classes[label]
        centre = image[:, 16, 16].int()
        if (centre == 128).all():  # the grayscale image, filed under airplane
            assert name == "airplane"
        else:
            assert (centre - torch.tensor(COLOURS[name])).abs().max() <= 3, name


# ---------------------------------------------------------------------------------------------
# imagefolder


def test_imagefolder_directory_gives_sorted_classes_right_labels_and_uint8_32x32_rgb(tmp_path):
    write_tree(tmp_path / "tree")
    splits = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert splits.classes == ["airplane", "cat", "dog"]
    assert splits.num_classes == 3
    everything = all_images(splits)
    assert everything.images.dtype == torch.uint8 and everything.images.shape == (12, 3, 32, 32)
    assert everything.labels.dtype == torch.int64
    assert len(splits.val) == round(12 * 0.2)
    assert splits.test is None
    assert_labels_match_colours(everything, splits.classes)


def test_imagefolder_resizes_other_sizes_and_makes_grayscale_rgb(tmp_path):
    write_tree(tmp_path / "tree")
    splits = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    everything = all_images(splits)
    grey = [img for img in everything.images if (img[:, 16, 16] == 128).all()]
    assert len(grey) == 1 and (grey[0] == 128).all()  # all three channels, every pixel
    dog_blue = [img for img in everything.images if tuple(img[:, 0, 0].tolist()) == COLOURS["dog"]]
    assert len(dog_blue) == 4  # three 32x32 PNGs and the resized 40x48 one


@pytest.mark.parametrize("top_folder", ["", "cifar_small/"])
def test_imagefolder_zip_reads_the_same_images_with_or_without_a_top_level_folder(tmp_path, top_folder):
    write_tree(tmp_path / "tree")
    archive = zip_tree(tmp_path / "tree", tmp_path / "tree.zip", top_folder)
    from_dir = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    from_zip = load_splits(DataSpec("imagefolder", root=str(archive), val_fraction=0.2))
    assert from_zip.classes == from_dir.classes
    assert torch.equal(from_zip.train.images, from_dir.train.images)
    assert torch.equal(from_zip.train.labels, from_dir.train.labels)
    assert torch.equal(from_zip.val.images, from_dir.val.images)


def test_imagefolder_test_folder_becomes_the_test_split(tmp_path):
    write_tree(tmp_path / "tree")
    write_tree(tmp_path / "tree", split="test", per_class=1)
    splits = load_splits(DataSpec("imagefolder", root=str(zip_tree(tmp_path / "tree", tmp_path / "t.zip")),
                                  val_fraction=0.2))
    assert len(splits.test) == 6 and len(splits.train) + len(splits.val) == 12
    assert_labels_match_colours(splits.test, splits.classes)


def test_imagefolder_zip_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    archive = zip_tree(tmp_path / "tree", tmp_path / "tree.zip")
    first = load_splits(DataSpec("imagefolder", root=str(archive), val_fraction=0.2))
    assert len(os.listdir(tmp_path / "cache")) == 1

    def no_decoding(raw):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(data.sources, "_decode", no_decoding)
    second = load_splits(DataSpec("imagefolder", root=str(archive), val_fraction=0.2))
    assert torch.equal(first.train.images, second.train.images) and first.classes == second.classes

    os.utime(archive, ns=(0, 10**18))  # a changed zip is a different dataset
    with pytest.raises(DataError, match="cannot decode"):
        load_splits(DataSpec("imagefolder", root=str(archive), val_fraction=0.2))


def test_image_size_decodes_an_imagefolder_at_that_size_into_a_cache_entry_of_its_own(tmp_path):
    write_tree(tmp_path / "tree")
    archive = zip_tree(tmp_path / "tree", tmp_path / "tree.zip")
    at32 = load_splits(DataSpec("imagefolder", root=str(archive), val_fraction=0.2))
    at48 = load_splits(DataSpec("imagefolder", root=str(archive), val_fraction=0.2, image_size=48))
    assert at32.image_size == 32 and at48.image_size == 48
    assert at48.train.images.shape[1:] == (3, 48, 48) and at48.train.images.dtype == torch.uint8
    assert len(os.listdir(tmp_path / "cache")) == 2  # the cache key holds the size
    assert_labels_match_colours(all_images(at48), at48.classes)


@pytest.mark.parametrize("name", ["cifar10", "digits", "synthetic"])
def test_cifar_digits_and_synthetic_are_resized_to_the_image_size(name, tmp_path):
    if name == "cifar10":
        write_cifar10(tmp_path)
    splits = load_splits(DataSpec(name, root=str(tmp_path), image_size=64, synthetic_size=40, num_classes=4))
    assert splits.train.images.shape[1:] == (3, 64, 64) and splits.val.images.shape[1:] == (3, 64, 64)
    assert splits.test.images.shape[1:] == (3, 64, 64) and splits.train.images.dtype == torch.uint8


def test_the_crop_padding_scales_with_the_image_size():
    assert [data.inputs.padding(s) for s in (16, 32, 48, 64, 96)] == [2, 4, 6, 8, 12]
    image = torch.full((1, 3, 64, 64), 9, dtype=torch.uint8)
    out = augment_batch(image.expand(256, -1, -1, -1), torch.Generator().manual_seed(0))
    assert out.shape == (256, 3, 64, 64)
    zero_rows = (out[:, 0].amax(dim=2) == 0).sum(dim=1)  # rows of padding each crop shows
    assert zero_rows.max() == 8  # 8 pixels of padding at 64, as 4 at 32


def test_splits_too_large_for_the_device_are_named_with_their_size(small_splits):
    cuda = torch.device("cuda")
    need = (len(small_splits.train) + len(small_splits.val)) * 3 * 32 * 32
    assert data.inputs.device_data_problem(small_splits, cuda, free_bytes=2 * need) is None
    problem = data.inputs.device_data_problem(small_splits, cuda, free_bytes=need)
    assert problem.startswith("the 100 images at 32x32 take 0 MiB (N x 3 x 32 x 32 bytes), more than 50% of")
    assert data.inputs.device_data_problem(small_splits, torch.device("cpu")) is None  # host memory holds them


def test_imagefolder_decodes_the_same_without_torchvision_codecs(tmp_path, monkeypatch):
    """torchvision deprecates its image codecs; PIL must give the same images once they are gone."""
    write_tree(tmp_path / "tree")
    monkeypatch.setenv(data.CACHE_ENV, "")
    with_torchvision = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    monkeypatch.setattr(data.sources, "_TORCHVISION_DECODE", None)
    with_pil = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert torch.equal(with_pil.train.labels, with_torchvision.train.labels)
    difference = (with_pil.train.images.int() - with_torchvision.train.images.int()).abs()
    assert difference.max() <= 2  # JPEG decoders may round differently by a level


def test_imagefolder_cache_can_be_turned_off(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    monkeypatch.setenv(data.CACHE_ENV, "")
    load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert not (tmp_path / "cache").exists()


def test_imagefolder_rejects_a_missing_root_naming_the_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*does not exist.*train/<class>"):
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "nowhere")))


def test_imagefolder_rejects_a_tree_without_train(tmp_path):
    write_tree(tmp_path / "tree", split="images")
    with pytest.raises(DataError, match=r"no train/<class>/ folders"):
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree")))


def test_imagefolder_rejects_a_class_folder_without_images(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"train/empty/ holds no"):
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree")))


def test_imagefolder_rejects_a_file_that_is_not_a_zip(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither a directory nor a .zip"):
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "notes.txt")))


def test_imagefolder_names_an_undecodable_file(tmp_path):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode train/cat/broken.jpg"):
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree")))


# ---------------------------------------------------------------------------------------------
# CIFAR


def test_cifar10_reads_the_python_batches_as_nchw_uint8(tmp_path):
    write_cifar10(tmp_path)
    splits = load_splits(DataSpec("cifar10", root=str(tmp_path), val_fraction=0.25))
    assert splits.classes[0] == "airplane" and splits.num_classes == 10
    assert len(splits.train) + len(splits.val) == 20 and len(splits.val) == 5
    assert splits.test.images.shape == (4, 3, 32, 32) and splits.test.images.dtype == torch.uint8
    assert splits.test.labels.tolist() == [5, 6, 7, 8]
    expected = torch.from_numpy(cifar_images(4, 5)).view(4, 3, 32, 32)  # red plane, green, blue
    assert torch.equal(splits.test.images, expected)


def test_cifar10_root_may_be_the_batches_folder_itself(tmp_path):
    folder = write_cifar10(tmp_path)
    assert len(load_splits(DataSpec("cifar10", root=str(folder))).test) == 4


def test_cifar100_reads_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    splits = load_splits(DataSpec("cifar100", root=str(tmp_path)))
    assert splits.num_classes == 100 and splits.test.labels.tolist() == [0, 1, 2]
    assert len(splits.train) + len(splits.val) == 10


def test_cifar10_without_files_says_in_one_line_where_to_put_them(tmp_path):
    with pytest.raises(DataError) as error:
        load_splits(DataSpec("cifar10", root=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "cifar-10-batches-py/data_batch_1" in message
    assert "download: true" in message


def test_cifar10_failed_download_is_a_one_line_data_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"downloading CIFAR-10 .* failed \(<urlopen error no network>\)"):
        load_splits(DataSpec("cifar10", root=str(tmp_path), download=True))


def test_cifar_without_root_asks_for_one():
    with pytest.raises(DataError, match="root: required for cifar10"):
        load_splits(DataSpec("cifar10"))


# ---------------------------------------------------------------------------------------------
# digits and synthetic


def test_digits_keep_all_1797_images_with_a_fixed_test_fifth():
    first = load_splits(DataSpec("digits", split_seed=0))
    other_seed = load_splits(DataSpec("digits", split_seed=1))
    assert len(first.train) + len(first.val) + len(first.test) == 1797
    assert len(first.test) == 359 and len(first.val) == round(1438 * 0.1)
    assert first.train.images.shape[1:] == (3, 32, 32) and first.train.images.dtype == torch.uint8
    assert first.classes == [str(d) for d in range(10)]
    assert torch.equal(first.test.images, other_seed.test.images)  # test does not follow split_seed
    assert not torch.equal(first.val.labels, other_seed.val.labels)
    assert torch.equal(first.train.images, load_splits(DataSpec("digits", split_seed=0)).train.images)


def test_synthetic_is_fixed_and_learnable_by_nearest_class_colour():
    splits = load_splits(DataSpec("synthetic", synthetic_size=200, num_classes=4))
    assert torch.equal(splits.train.images, load_splits(DataSpec("synthetic", synthetic_size=200,
                                                                  num_classes=4)).train.images)
    assert splits.num_classes == 4 and len(splits.test) == 50
    colour = lambda s: s.images.float().mean(dim=(2, 3))  # noqa: E731
    centres = torch.stack([colour(splits.train)[splits.train.labels == c].mean(0) for c in range(4)])
    predicted = torch.cdist(colour(splits.test), centres).argmin(1)
    assert (predicted == splits.test.labels).float().mean() > 0.9


# ---------------------------------------------------------------------------------------------
# The split


def test_split_is_stratified_disjoint_covering_and_exactly_sized():
    labels = torch.arange(1000) % 7
    train, val = data.splits._stratified_split(labels, 0.1, torch.Generator().manual_seed(0))
    assert len(val) == 100 and len(train) == 900
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    per_class = torch.bincount(labels[val], minlength=7)
    assert per_class.max() - per_class.min() <= 1


def test_split_is_deterministic_for_a_seed_and_differs_across_seeds():
    def val_images(seed):
        return load_splits(DataSpec("synthetic", split_seed=seed, synthetic_size=300)).val.images

    assert torch.equal(val_images(3), val_images(3))
    assert not torch.equal(val_images(3), val_images(4))


def test_subset_keeps_that_many_training_images_before_the_split():
    splits = load_splits(DataSpec("synthetic", subset=100, val_fraction=0.2, synthetic_size=300))
    assert len(splits.train) == 80 and len(splits.val) == 20
    with pytest.raises(DataError, match="subset 301 is larger than the 300 training images"):
        load_splits(DataSpec("synthetic", subset=301, synthetic_size=300))


def test_mean_and_std_come_from_the_train_split():
    splits = load_splits(DataSpec("synthetic", synthetic_size=200))
    pixels = splits.train.images.double().div(255)
    assert torch.allclose(torch.tensor(splits.mean, dtype=torch.float64), pixels.mean(dim=(0, 2, 3)))
    assert torch.allclose(torch.tensor(splits.std, dtype=torch.float64),
                          pixels.std(dim=(0, 2, 3), unbiased=False))


@pytest.mark.parametrize("val_fraction", [0, -0.1, 0.6])
def test_val_fraction_must_be_in_zero_to_one_half(val_fraction):
    with pytest.raises(DataError, match=r"val_fraction: .* is not in \(0, 0.5\]"):
        load_splits(DataSpec("synthetic", val_fraction=val_fraction))


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError,
                       match="'imagenet' is not one of cifar10, cifar100, imagefolder, digits, synthetic"):
        load_splits(DataSpec("imagenet"))


# ---------------------------------------------------------------------------------------------
# The CPU input path


@pytest.fixture(scope="module")
def small_splits():
    return load_splits(DataSpec("synthetic", synthetic_size=100, num_classes=4, val_fraction=0.11))


def test_normalize_gives_float32_with_train_statistics_zero_mean_unit_std(small_splits):
    normalised = normalize(small_splits.train.images, small_splits.mean, small_splits.std)
    assert normalised.dtype == torch.float32 and normalised.shape == small_splits.train.images.shape
    assert normalised.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (normalised.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-4


def test_eval_loader_returns_every_image_normalised_in_order(small_splits):
    batches = list(eval_loader(small_splits.val, small_splits.mean, small_splits.std, batch_size=4))
    images = torch.cat([x for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert torch.equal(labels, small_splits.val.labels)
    assert torch.allclose(images, normalize(small_splits.val.images, small_splits.mean, small_splits.std))


def test_single_process_loaders_are_reproducible_for_a_seed(small_splits):
    def first_batch(seed):
        torch.manual_seed(0)  # the per-sample augmentation draws from the global RNG
        return next(iter(make_loaders(small_splits, 16, seed=seed).train))

    x1, y1 = first_batch(1)
    x2, y2 = first_batch(1)
    x3, y3 = first_batch(2)
    assert x1.shape == (16, 3, 32, 32) and x1.dtype == torch.float32 and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(y1, y3)


def test_single_process_train_loader_drops_the_ragged_batch_and_val_keeps_everything(small_splits):
    loaders = make_loaders(small_splits, 16)
    assert loaders.train_sampler is None
    assert len(loaders.train) == len(small_splits.train) // 16
    assert sum(len(y) for _, y in loaders.val) == len(small_splits.val)


def test_two_ranks_train_on_disjoint_shards_that_change_with_the_epoch(small_splits):
    ranks = [make_loaders(small_splits, 8, rank=r, world_size=2, seed=5) for r in range(2)]
    epoch0 = [list(loaders.train_sampler) for loaders in ranks]
    assert len(epoch0[0]) == len(epoch0[1]) == len(small_splits.train) // 2
    assert set(epoch0[0]).isdisjoint(epoch0[1])
    for loaders in ranks:
        loaders.train_sampler.set_epoch(1)
    epoch1 = [list(loaders.train_sampler) for loaders in ranks]
    assert set(epoch1[0]).isdisjoint(epoch1[1])
    assert epoch1[0] != epoch0[0]


def test_two_ranks_validate_on_shards_that_partition_the_val_split_exactly(small_splits):
    shards = [make_loaders(small_splits, 4, rank=r, world_size=2).val for r in range(2)]
    indices = [list(loader.dataset.indices) for loader in shards]
    assert sorted(indices[0] + indices[1]) == list(range(len(small_splits.val)))
    assert sum(len(y) for loader in shards for _, y in loader) == len(small_splits.val)


@pytest.mark.parametrize("data_path", ["loader", "device"])
def test_make_inputs_training_order_depends_only_on_seed_and_epoch_on_both_paths(small_splits, data_path):
    cfg = schema.TrainConfig(batch_size=8, data_path=data_path, seed=3)

    def labels_in(epoch, warm_up_epochs=()):
        train, val = data.make_inputs(small_splits, cfg, device=torch.device("cpu"))
        assert sum(len(y) for _, y in val) == len(small_splits.val)
        for earlier in warm_up_epochs:  # a resumed run starts at `epoch` without the epochs before it
            train.set_epoch(earlier)
            list(train)
        train.set_epoch(epoch)
        return torch.cat([y for _, y in train])

    assert len(labels_in(0)) == len(small_splits.train) // 8 * 8
    assert torch.equal(labels_in(2), labels_in(2, warm_up_epochs=(0, 1)))
    assert not torch.equal(labels_in(0), labels_in(1))


def test_augmented_set_crops_and_flips_only_when_training(small_splits):
    train_set = data.AugmentedImageSet(small_splits.train, small_splits.mean, small_splits.std, train=True)
    eval_set = data.AugmentedImageSet(small_splits.train, small_splits.mean, small_splits.std, train=False)
    plain = normalize(small_splits.train.images[0], small_splits.mean, small_splits.std)
    assert torch.equal(eval_set[0][0], plain)
    torch.manual_seed(0)
    assert any(not torch.equal(train_set[0][0], plain) for _ in range(10))
    assert train_set[0][0].shape == (3, 32, 32) and train_set[0][1] == small_splits.train.labels[0]


# ---------------------------------------------------------------------------------------------
# The device input path


def every_crop_and_flip(image: torch.Tensor) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = [padded[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
    return crops + [crop.flip(-1) for crop in crops]


def test_augment_batch_returns_crops_and_flips_of_the_zero_padded_input():
    image = (torch.arange(3 * 32 * 32) % 241 + 1).to(torch.uint8).view(1, 3, 32, 32)  # no zero pixels
    out = augment_batch(image.expand(64, -1, -1, -1), torch.Generator().manual_seed(0))
    assert out.shape == (64, 3, 32, 32) and out.dtype == torch.uint8
    candidates = every_crop_and_flip(image[0])
    matches = [next(i for i, c in enumerate(candidates) if torch.equal(c, o)) for o in out]
    assert any(i >= 81 for i in matches) and any(i < 81 for i in matches)  # flipped and not
    assert len(set(i % 81 for i in matches)) > 10  # many different offsets
    assert any((o == 0).any() for o in out)  # some crops reach into the zero padding


def test_augment_batch_is_reproducible_with_a_seeded_generator():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    first = augment_batch(images, torch.Generator().manual_seed(7))
    assert torch.equal(first, augment_batch(images, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, augment_batch(images, torch.Generator().manual_seed(8)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augment_batch_stays_on_the_gpu_with_a_gpu_generator():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, device="cuda")
    generator = torch.Generator(device="cuda").manual_seed(0)
    out = augment_batch(images, generator)
    assert out.device == images.device and out.shape == images.shape
    cpu = augment_batch(images, torch.Generator().manual_seed(0))  # a CPU generator works too
    assert cpu.device == images.device


def test_every_dataset_name_has_exactly_one_loader():
    assert sorted(data.LOADERS) == sorted(schema.DATASETS)


def test_data_package_imports_only_torch_torchvision_numpy_and_the_standard_library():
    """No Ray or MLflow: the engine and tests use this package without them (its DataSpec comes
    from the torch-free orchestrator.schema). scikit-learn (digits) and PIL (decoding fallback) are
    imported lazily inside the functions that need them."""
    import ast
    import pkgutil
    import sys

    allowed = {"torch", "torchvision", "numpy"} | set(sys.stdlib_module_names) | {"__future__"}
    modules = ["__init__"] + [m.name for m in pkgutil.iter_modules(data.__path__)]
    assert {"sources", "splits", "inputs"} <= set(modules)
    for module in modules:
        path = os.path.join(os.path.dirname(data.__file__), f"{module}.py")
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if name == "orchestrator.schema" or name.startswith("orchestrator.data."):
                        continue  # the torch-free settings (DataSpec), the package's own modules
                    lazily = node.col_offset > 0 and top in {"sklearn", "PIL"}
                    assert top in allowed or lazily, f"data/{module}.py imports {name}"
