"""Small datasets in their real on-disk formats, for the data tests: an image tree (PNG, JPEG,
odd sizes, grey), its zip, CIFAR-10/100 python batches pickled as the real ones are, and crafted
files: a pickle that runs code, images whose headers declare huge sizes."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from orchestrator import data

# Solid colours per class: PNG keeps them exactly, JPEG within a few levels.
COLOURS = {"cat": (200, 30, 30), "airplane": (30, 200, 30), "dog": (30, 30, 200)}
CIFAR10_BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Decoded-image caching goes to the test's own folder, never to ~/.cache (autouse in every
    module that imports it)."""
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path / "cache"))


def solid(colour, height=32, width=32) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy()


def write_tree(root, split="train", per_class=3):
    """split/<class>/ with PNGs, one JPEG, one 40x48 image and one grayscale image."""
    for name, colour in COLOURS.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(solid(colour)).save(folder / f"{i}.png")
    Image.fromarray(solid(COLOURS["cat"])).save(root / split / "cat" / "photo.jpg", quality=95)
    Image.fromarray(solid(COLOURS["dog"], 40, 48)).save(root / split / "dog" / "big.png")
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(root / split / "airplane" / "grey.png")


def zip_tree(source, target, top_folder=""):
    with zipfile.ZipFile(target, "w") as archive:
        for dirpath, _, filenames in os.walk(source):
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                archive.write(path, top_folder + os.path.relpath(path, source))
    return target


def cifar_images(n, offset):
    return ((np.arange(n * 3072, dtype=np.int64).reshape(n, 3072) + offset) % 251).astype(np.uint8)


def write_cifar10(root, per_batch=4, protocol=2):
    """The real layout: pickled dicts with `data` uint8 [N, 3072] (channel-major) and `labels`."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate(CIFAR10_BATCHES):
        batch = {"batch_label": name, "data": cifar_images(per_batch, i),
                 "labels": [(i + j) % 10 for j in range(per_batch)],
                 "filenames": [f"{j}.png" for j in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                            "truck"], "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    return folder


def write_cifar100(root, train=10, test=3):
    folder = root / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", train), ("test", test)):
        batch = {"data": cifar_images(n, 0), "fine_labels": list(range(n)), "coarse_labels": [0] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)
    return folder


class RunsCode:
    """Unpickling this calls `function(argument)`: what a crafted batch would do."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def png_declaring(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR claims width x height (CRC recomputed, so it is well-formed)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(buffer, format="PNG")
    raw = bytearray(buffer.getvalue())
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 8x8 baseline JPEG whose SOF0 header claims width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    raw = bytearray(buffer.getvalue())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(raw)
