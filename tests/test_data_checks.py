"""The data check before Ray: `orchestrate sweep FILE` loads the dataset as a trial would (decoding
images, reading CIFAR batches, downloading when asked) and checks that every batch size fits the
training split, so bad data is one line `FILE: dataset.KEY: ...` (or `train.batch_size`), exit 2,
with nothing written, never a failed trial. In-process, as tests/test_config_errors.py runs most
of its cases."""

from __future__ import annotations

import pickle
import socket
import sys

import numpy as np
import pytest
import torchvision
from datafiles import RunsCode, cifar_images, png_declaring, private_cache, write_cifar10, write_tree  # noqa: F401

from orchestrator import config
from support import refused

TRAIN = "{epochs: 2, batch_size: 4, lr: 0.1, warmup_epochs: 0.5}"


def sweep_file(folder, dataset: str, train: str = TRAIN, resources: str = "{num_workers: 1}",
               models: str = "[{arch: resnet18, knobs: {width: 0.125}}]") -> None:
    (folder / "bad.yaml").write_text(f"name: data-checks\ndataset: {dataset}\ntrain: {train}\n"
                                     f"resources: {resources}\nsearch: {{scheduler: fifo}}\nmodels: {models}\n")


def assert_refused(folder, capsys, key: str, *says: str, empty_folders=()) -> None:
    """`orchestrate sweep bad.yaml` in `folder` (its MLflow store and ray_results/ would go there)
    is refused (support.refused) with one line naming `key` and saying `says`, before Ray."""
    refused(["sweep", "bad.yaml", "--tracking-uri", f"sqlite:///{folder}/mlflow.db"], folder, capsys,
            starts=f"bad.yaml: {key}: ", says=says, empty_folders=empty_folders)


# ---------------------------------------------------------------------------------------------
# imagefolder: decoded before Ray, into this machine's cache (the sweep's driver ships it to the trials)


def test_a_corrupt_jpeg_in_an_image_folder_is_one_line_naming_it(tmp_path, capsys):
    write_tree(tmp_path / "tree")
    photo = tmp_path / "tree" / "train" / "cat" / "photo.jpg"
    photo.write_bytes(photo.read_bytes()[:200])  # a JPEG cut short: its header is whole, its data is not
    sweep_file(tmp_path, f"{{name: imagefolder, root: {tmp_path / 'tree'}}}")
    assert_refused(tmp_path, capsys, "dataset.root", "cannot decode train/cat/photo.jpg",
                   str(tmp_path / "tree"))


def test_an_image_declaring_too_many_pixels_is_one_line_naming_it(tmp_path, capsys):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "dog" / "bomb.png").write_bytes(png_declaring(100_000, 100_000))
    sweep_file(tmp_path, f"{{name: imagefolder, root: {tmp_path / 'tree'}}}")
    assert_refused(tmp_path, capsys, "dataset.root", "train/dog/bomb.png", "declares an image of")


def test_a_good_image_folder_is_decoded_by_the_check_into_the_cache_the_driver_reads(tmp_path, capsys):
    write_tree(tmp_path / "tree")
    sweep_file(tmp_path, f"{{name: imagefolder, root: {tmp_path / 'tree'}, val_fraction: 0.2}}")
    assert config.load(str(tmp_path / "bad.yaml")).dataset.root == str(tmp_path / "tree")
    assert len(list((tmp_path / "cache").glob("imagefolder-*.pt"))) == 1


# ---------------------------------------------------------------------------------------------
# CIFAR: every batch read, its shape and labels checked


def rewrite_batch(folder, name, **fields):
    with open(folder / name, "rb") as f:
        batch = pickle.load(f)  # our own file, written by write_cifar10
    batch.update(fields)
    with open(folder / name, "wb") as f:
        pickle.dump(batch, f, protocol=2)


@pytest.mark.parametrize("damage, says", [
    (lambda folder: (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:-100]),
     ("data_batch_3 is not a readable CIFAR batch",)),
    (lambda folder: rewrite_batch(folder, "data_batch_2", data=cifar_images(4, 0)[:, :1000]),
     ("data_batch_2: 'data' is uint8 [4, 1000], not uint8 [N, 3072]",)),
    (lambda folder: rewrite_batch(folder, "test_batch", labels=[1, 2, 3]),
     ("test_batch: 'labels' is not 4 integer labels, one per image",)),
    (lambda folder: rewrite_batch(folder, "data_batch_5", labels=[1, 2, 12, 3]),
     ("data_batch_5: label 12 is not one of the 10 classes of batches.meta",)),
    (lambda folder: rewrite_batch(folder, "data_batch_1", data=np.zeros((4, 3072), dtype=np.float32)),
     ("data_batch_1: 'data' is float32 [4, 3072]",)),
], ids=["truncated", "wrong_image_size", "label_count", "label_out_of_range", "float_pixels"])
def test_a_damaged_cifar_batch_is_one_line_naming_the_file(tmp_path, capsys, damage, says):
    damage(write_cifar10(tmp_path / "cifar"))
    sweep_file(tmp_path, f"{{name: cifar10, root: {tmp_path / 'cifar'}}}")
    assert_refused(tmp_path, capsys, "dataset.root", *says)


def test_a_cifar_batch_that_would_run_code_is_one_line_and_nothing_runs(tmp_path, capsys):
    folder = write_cifar10(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    (folder / "data_batch_4").write_bytes(pickle.dumps({"data": RunsCode(exec, f"open({str(marker)!r}, 'w')")}))
    sweep_file(tmp_path, f"{{name: cifar10, root: {tmp_path / 'cifar'}}}")
    assert_refused(tmp_path, capsys, "dataset.root", "data_batch_4 refers to builtins.exec",
                   "nothing in it was run")
    assert not marker.exists()


def test_download_true_offline_is_one_line_at_once(tmp_path, monkeypatch, capsys):
    with socket.socket() as closed:  # a port nothing listens on: the connection is refused, as offline
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", f"http://127.0.0.1:{port}/cifar-10-python.tar.gz")
    sweep_file(tmp_path, f"{{name: cifar10, root: {tmp_path / 'cifar'}, download: true}}")
    assert_refused(tmp_path, capsys, "dataset.download", "downloading CIFAR-10 into",
                   "Connection refused", "put the python batches under",
                   empty_folders=("cifar",))  # torchvision makes the download's folder first


# ---------------------------------------------------------------------------------------------
# Sizes: subset and batch sizes against the data


def test_a_subset_larger_than_the_data_is_one_line(tmp_path, capsys):
    sweep_file(tmp_path, "{name: synthetic, synthetic_size: 100, subset: 500}")
    assert_refused(tmp_path, capsys, "dataset.subset", "subset 500 is larger than the 100 training images")


def test_a_batch_size_larger_than_the_training_split_is_one_line(tmp_path, capsys):
    sweep_file(tmp_path, "{name: synthetic, synthetic_size: 100}", train="{epochs: 2, batch_size: 128, warmup_epochs: 0.5}")
    assert_refused(tmp_path, capsys, "train.batch_size",
                   "128 is more than the 90 images of the training split", "at most 90")


def test_a_model_entry_batch_size_too_large_for_each_worker_names_the_entry(tmp_path, capsys):
    sweep_file(tmp_path, "{name: synthetic, synthetic_size: 100}", resources="{num_workers: 2}",
               models="[{arch: resnet18, knobs: {width: 0.125}}, "
                      "{arch: resnet18, knobs: {width: 0.125}, batch_size: {grid: [16, 64]}}]")
    assert_refused(tmp_path, capsys, "models[1].batch_size",
                   "64 x 2 workers is more than the 90 images of the training split (45 per worker)", "at most 45")


def test_a_batch_size_that_fits_exactly_passes(tmp_path, capsys):
    sweep_file(tmp_path, "{name: synthetic, synthetic_size: 100}", train="{epochs: 2, batch_size: 45, warmup_epochs: 0.5}",
               resources="{num_workers: 2}")
    assert config.load(str(tmp_path / "bad.yaml")).train.batch_size == 45
