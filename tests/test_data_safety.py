"""A data folder is input, never code: CIFAR batches go through a restricted unpickler, images
declaring too many pixels are refused before decoding, link loops in an image tree end, and the
decoded-image cache is private to the user. Files here are crafted in their real formats."""

from __future__ import annotations

import os
import pickle
import socket
import stat
import time

import pytest
import torch
import torchvision
from datafiles import RunsCode, jpeg_declaring, png_declaring, private_cache, write_cifar10, write_tree  # noqa: F401
from PIL import Image

from orchestrator import data
from orchestrator.data import DataError, DataSpec, load_splits

# ---------------------------------------------------------------------------------------------
# CIFAR batches: a restricted unpickler


def crafted_payloads(marker):
    return {"os.system": RunsCode(os.system, f"touch {marker}"),
            "builtins.exec": RunsCode(exec, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_cifar_batch_that_would_run_code_is_refused_in_one_line_and_nothing_runs(tmp_path, kind, protocol):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    crafted = pickle.dumps({"data": crafted_payloads(marker)[kind], "labels": [0]}, protocol=protocol)
    (folder / "data_batch_1").write_bytes(crafted)

    with pytest.raises(DataError) as error:
        load_splits(DataSpec("cifar10", root=str(tmp_path)))
    message = str(error.value)
    assert "\n" not in message and len(message) < 400
    assert f"{folder / 'data_batch_1'} refers to" in message and "refused, nothing in it was run" in message
    assert f".{kind.split('.')[1]}," in message  # posix.system, builtins.exec or __builtin__.exec
    assert not marker.exists()

    pickle.loads(crafted)  # the payload is real: plain pickle runs it
    assert marker.exists()


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_cifar_batches_pickled_with_any_protocol_load_through_the_restricted_unpickler(tmp_path, protocol):
    """Python 2 wrote the real files with protocol 2 (numpy.core.multiarray._reconstruct, ndarray,
    dtype); re-pickled copies may use anything up to protocol 5 (numpy._core.numeric._frombuffer)."""
    reference = load_splits(DataSpec("cifar10", root=str(write_cifar10(tmp_path / "p2", protocol=2))))
    splits = load_splits(DataSpec("cifar10", root=str(write_cifar10(tmp_path / "p", protocol=protocol))))
    assert torch.equal(splits.train.images, reference.train.images)
    assert torch.equal(splits.test.labels, reference.test.labels) and splits.classes == reference.classes


def test_a_python2_cifar_batch_naming_numpy_core_loads(tmp_path):
    """The real batches name numpy 1's module `numpy.core.multiarray`, not numpy 2's `numpy._core`."""
    folder = write_cifar10(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    assert b"numpy._core.multiarray" in raw
    (folder / "test_batch").write_bytes(raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert load_splits(DataSpec("cifar10", root=str(tmp_path))).test.labels.tolist() == [5, 6, 7, 8]


# ---------------------------------------------------------------------------------------------
# CIFAR download: fails fast where the network does not answer


@pytest.mark.timeout(60)
def test_a_cifar_download_from_a_server_that_never_answers_fails_within_the_timeout(tmp_path, monkeypatch):
    with socket.socket() as server:  # accepts connections (the kernel does), never sends a byte
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz"
        monkeypatch.setattr(torchvision.datasets.CIFAR10, "url", url)
        monkeypatch.setattr(data.sources, "DOWNLOAD_TIMEOUT_S", 0.5)
        start = time.monotonic()
        with pytest.raises(DataError, match=r"downloading CIFAR-10 into .* failed \(.*timed out.*\)") as error:
            load_splits(DataSpec("cifar10", root=str(tmp_path), download=True))
        assert time.monotonic() - start < 10
    assert error.value.key == "download" and "\n" not in str(error.value)
    assert socket.getdefaulttimeout() is None  # the process's default is restored


# ---------------------------------------------------------------------------------------------
# Images: a pixel limit checked from the header


@pytest.mark.parametrize("name, raw, says", [
    ("bomb.png", png_declaring(100_000, 100_000), "more than"),  # beyond PIL's own limit too
    ("wide.png", png_declaring(5000, 5000), "5000x5000 = 25,000,000"),  # beyond ours only
    ("huge.jpg", jpeg_declaring(6000, 3000), "6000x3000 = 18,000,000"),
], ids=["png_beyond_pil_limit", "png_beyond_our_limit", "jpeg_sof"])
def test_an_image_declaring_too_many_pixels_is_refused_from_its_header_naming_the_file(tmp_path, monkeypatch,
                                                                                      name, raw, says):
    write_tree(tmp_path / "tree")
    (tmp_path / "tree" / "train" / "cat" / name).write_bytes(raw)

    real_decode = data.sources._TORCHVISION_DECODE

    def decode_all_but_the_crafted_file(encoded, **kwargs):
        assert encoded.numpy().tobytes() != raw, f"{name} reached the decoder"
        return real_decode(encoded, **kwargs)

    monkeypatch.setattr(data.sources, "_TORCHVISION_DECODE", decode_all_but_the_crafted_file)
    with pytest.raises(DataError) as error:
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree")))
    message = str(error.value)
    assert "\n" not in message
    assert f"train/cat/{name} in {tmp_path / 'tree'} declares an image of" in message and says in message
    assert f"at most {data.MAX_IMAGE_PIXELS:,} are decoded" in message


def test_an_image_at_the_pixel_limit_still_decodes(tmp_path):
    side = int(data.MAX_IMAGE_PIXELS ** 0.5)  # 4096 x 4096
    write_tree(tmp_path / "tree")
    Image.new("RGB", (side, side), (200, 30, 30)).save(tmp_path / "tree" / "train" / "cat" / "large.png")
    splits = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert len(splits.train) + len(splits.val) == 13


# ---------------------------------------------------------------------------------------------
# Image trees: links that loop


@pytest.mark.timeout(60)
def test_an_image_tree_with_links_back_up_lists_every_image_once(tmp_path):
    write_tree(tmp_path / "tree")
    train = tmp_path / "tree" / "train"
    os.symlink("..", train / "cat" / "loop")  # -> train/
    os.symlink(".", train / "dog" / "self")
    os.symlink(".", train / "dog" / "self2")
    os.symlink("../..", train / "airplane" / "root")  # -> the tree, which holds train/ again
    members, _ = data.sources._list_directory(str(tmp_path / "tree"))
    images = [m for m in members if m.endswith((".png", ".jpg"))]
    assert len(images) == len(set(images)) == 12
    splits = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert len(splits.train) + len(splits.val) == 12 and splits.classes == ["airplane", "cat", "dog"]


def test_a_class_folder_linked_from_elsewhere_is_still_followed(tmp_path):
    write_tree(tmp_path / "tree")
    os.rename(tmp_path / "tree" / "train" / "dog", tmp_path / "dogs")
    os.symlink(tmp_path / "dogs", tmp_path / "tree" / "train" / "dog")
    splits = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert len(splits.train) + len(splits.val) == 12 and splits.classes == ["airplane", "cat", "dog"]


# ---------------------------------------------------------------------------------------------
# The decoded-image cache: private to the user


def test_the_decoded_image_cache_folder_is_0700_and_its_files_0600(tmp_path):
    old_umask = os.umask(0o022)  # the usual default, under which files used to come out 0644
    try:
        write_tree(tmp_path / "tree")
        load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree")))
    finally:
        os.umask(old_umask)
    cache = tmp_path / "cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("imagefolder-")
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_a_cache_file_is_read_with_weights_only(tmp_path, monkeypatch):
    write_tree(tmp_path / "tree")
    load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree")))
    (cached,) = (tmp_path / "cache").iterdir()
    marker = tmp_path / "pwned"
    torch.save({"train_images": RunsCode(os.system, f"touch {marker}")}, cached)  # a planted cache entry
    splits = load_splits(DataSpec("imagefolder", root=str(tmp_path / "tree"), val_fraction=0.2))
    assert not marker.exists()  # refused by weights_only, then decoded again from the images
    assert len(splits.train) + len(splits.val) == 12
