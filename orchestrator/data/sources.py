"""Where a dataset's images come from: one loader per `DataSpec.name`, each returning
(train ImageSet, test ImageSet or None, class names) as uint8 [N, 3, 32, 32] tensors.

- `cifar10`/`cifar100`: the python-pickle batches (torchvision downloads them on request);
- `imagefolder`: a `train/<class>/*.jpg|png` tree, as a directory or a .zip read in memory, its
  decoded tensors cached per machine (`CACHE_ENV`), so a sweep's driver, `evaluate` and `export`
  decode it once (a sweep's trials get the driver's copy through Ray's object store);
- `digits`: scikit-learn's bundled 8x8 digits, upscaled (works offline);
- `synthetic`: seeded coloured noise a model can learn, for tests and smoke runs.

Nothing here splits or normalises: see `splits` and `inputs`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import socket
import tempfile
import warnings
import zipfile
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision

from orchestrator.schema import DataSpec

IMAGE_SIZE = 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The most pixels an image file may declare (4096 x 4096): far above any CIFAR-sized source, far
# below a decompression bomb. Checked from the header, before decoding.
MAX_IMAGE_PIXELS = 2 ** 24

# Fixed seeds that must not follow `split_seed`: the digits test split and the synthetic images
# are the same data in every run, so results across sweeps stay comparable.
DIGITS_TEST_SEED = 20_240_601
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SEED = 1_234_567

CACHE_ENV = "ORCHESTRATE_CACHE_DIR"  # where decoded imagefolder tensors go; "" turns caching off
CACHE_FORMAT = 1  # bump when the cached content changes meaning
DOWNLOAD_TIMEOUT_S = 30.0  # a connect or read of the CIFAR download that stalls this long fails it


class DataError(ValueError):
    """A dataset that cannot be loaded as asked. str() is one line for the user: it names the
    dataset or path and says what to do; `key` is the `dataset:` setting to change."""

    def __init__(self, message: str, key: str = "root"):
        super().__init__(message)
        self.key = key


@dataclasses.dataclass
class ImageSet:
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)


def take(data: ImageSet, indices: torch.Tensor) -> ImageSet:
    return ImageSet(data.images.index_select(0, indices), data.labels.index_select(0, indices))


def load_source(spec: DataSpec) -> tuple[ImageSet, ImageSet | None, list[str]]:
    """(training images, the official test split or None, class names) of `spec`, whole and
    unsplit. Raises DataError with a one-line message."""
    return LOADERS[spec.name](spec)


# ---------------------------------------------------------------------------------------------
# CIFAR: the python-pickle batches


_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", title="CIFAR-10",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test="test_batch",
                    meta="batches.meta", names_key="label_names", labels_key="labels",
                    torchvision_class="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", title="CIFAR-100", train=["train"], test="test",
                     meta="meta", names_key="fine_label_names", labels_key="fine_labels",
                     torchvision_class="CIFAR100"),
}


def _cifar_files(spec: DataSpec) -> tuple[dict, str, list[str]]:
    """(the dataset's layout, the folder its batches are in, the batch files) for `spec.root`,
    which may be the folder holding cifar-10-batches-py/ or that folder itself."""
    info = _CIFAR[spec.name]
    root = os.path.expanduser(spec.root)
    folder = root if os.path.basename(os.path.normpath(root)) == info["folder"] \
        else os.path.join(root, info["folder"])
    return info, folder, info["train"] + [info["test"], info["meta"]]


def _cifar_missing_error(spec: DataSpec, info: dict, folder: str, needed: list[str]) -> DataError | None:
    if all(os.path.isfile(os.path.join(folder, f)) for f in needed):
        return None
    return DataError(f"{spec.name}: no {info['title']} python batches under {spec.root} (expected "
                     f"{os.path.join(folder, needed[0])} ...); download them from "
                     f"https://www.cs.toronto.edu/~kriz/cifar.html or set dataset.download: true")


def _load_cifar(spec: DataSpec):
    """Reads the batches directly (the format torchvision reads: pickled dicts whose `data` is
    uint8 [N, 3072], channel-major, so a reshape gives NCHW), through `_CifarUnpickler`, and checks
    each batch's shape and labels. torchvision's dataset class is used only to download, because
    its constructor also md5-checks all files on every load."""
    info, folder, needed = _cifar_files(spec)

    def missing() -> bool:
        return _cifar_missing_error(spec, info, folder, needed) is not None

    if missing() and spec.download:
        _download_cifar(spec, info, folder)
    if missing():
        raise _cifar_missing_error(spec, info, folder, needed)

    def read(name: str) -> tuple[str, dict]:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                entry = _CifarUnpickler(f, encoding="latin1").load()  # the files were pickled by Python 2
        except _Refused as e:
            raise DataError(f"{spec.name}: {path} refers to {e}, which no CIFAR batch does: refused, nothing "
                            f"in it was run; download the batches again") from None
        except Exception as e:  # truncated, not a pickle, ...
            raise DataError(f"{spec.name}: {path} is not a readable CIFAR batch ({_one_line(e)}); "
                            f"download it again") from e
        if not isinstance(entry, dict):
            raise DataError(f"{spec.name}: {path} holds a {type(entry).__name__}, not a CIFAR batch's dict; "
                            f"download it again")
        return path, {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}

    def field(path: str, entry: dict, key: str):
        if key not in entry:
            raise DataError(f"{spec.name}: {path} has no {key!r}, which every {info['title']} batch has; "
                            f"download it again")
        return entry[key]

    def read_split(names: list[str], num_classes: int) -> ImageSet:
        images, labels = [], []
        for name in names:
            path, entry = read(name)
            data = field(path, entry, "data")
            if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                    and data.shape[1] == 3 * IMAGE_SIZE * IMAGE_SIZE):
                found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
                raise DataError(f"{spec.name}: {path}: 'data' is {found[:80]}, not uint8 [N, 3072] (N 32x32 RGB "
                                f"images); download it again")
            try:
                batch_labels = np.asarray(field(path, entry, info["labels_key"]), dtype=np.int64)
            except (TypeError, ValueError):
                batch_labels = np.zeros((0, 0), dtype=np.int64)  # not integers: reported as the wrong shape
            if batch_labels.shape != (len(data),):
                raise DataError(f"{spec.name}: {path}: {info['labels_key']!r} is not {len(data)} integer labels, "
                                f"one per image; download it again")
            outside = batch_labels[(batch_labels < 0) | (batch_labels >= num_classes)]
            if len(outside):
                raise DataError(f"{spec.name}: {path}: label {outside[0]} is not one of the {num_classes} classes "
                                f"of {info['meta']}; download the batches again")
            images.append(data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
            labels.append(batch_labels)
        return ImageSet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))

    meta_path, meta = read(info["meta"])
    names = field(meta_path, meta, info["names_key"])
    if not isinstance(names, list) or not names or not all(isinstance(c, (str, bytes)) for c in names):
        raise DataError(f"{spec.name}: {meta_path}: {info['names_key']!r} is not a list of class names; "
                        f"download it again")
    classes = [c.decode() if isinstance(c, bytes) else c for c in names]
    return read_split(info["train"], len(classes)), read_split([info["test"]], len(classes)), classes


def _download_cifar(spec: DataSpec, info: dict, folder: str) -> None:
    download_root = os.path.dirname(os.path.normpath(folder))
    dataset_class = getattr(torchvision.datasets, info["torchvision_class"])
    # torchvision opens its URLs without a timeout: where packets are dropped, a connect would
    # wait minutes (in the check before Ray, and in every trial). Offline it fails at once anyway.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        os.makedirs(download_root, exist_ok=True)
        dataset_class(download_root, train=True, download=True)
    except Exception as e:  # offline, disk full, bad checksum: all end the same way for the user
        raise DataError(f"{spec.name}: downloading {info['title']} into {download_root} failed "
                        f"({_one_line(e)}); put the python batches under {folder}/ by hand", key="download") from e
    finally:
        socket.setdefaulttimeout(previous_timeout)


class _Refused(pickle.UnpicklingError):
    """A pickle that names a callable a CIFAR batch never holds; str() is its dotted name."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3's pickle protocols 0-2 write bytes: `_codecs.encode(text, "latin1")`."""
    if encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode(..., {encoding[:40]!r})")
    return text.encode("latin1")


# Everything a CIFAR python batch may name: numpy's array reconstruction (under numpy 1's and 2's
# module names, and protocol 5's `_frombuffer`), ndarray, dtype, and bytes as Python 3's protocols
# 0-2 write them. Dicts, lists, str and int need no name. Anything else (os.system,
# builtins.exec, ...) is refused before it is called: a crafted batch cannot run code.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_CIFAR_PICKLE_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("__builtin__", "bytes"): lambda: b"",  # b"" in protocols 0-2: bytes() with no argument
    ("builtins", "bytes"): lambda: b"",
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _CIFAR_PICKLE_NAMES.get((module, name))
        if found is None:
            raise _Refused(f"{module}.{name}"[:100])
        return found


def _one_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first line, cut to `limit` characters (messages name files, never dump them)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if len(line) <= limit else line[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# imagefolder: a train/<class>/ tree in a directory or a zip


def _imagefolder_root(spec: DataSpec) -> str:
    root = os.path.abspath(os.path.expanduser(spec.root))
    if not os.path.exists(root):
        raise DataError(f"imagefolder: {root} does not exist; expected a directory or .zip holding "
                        f"train/<class>/*.jpg")
    if not os.path.isdir(root) and not zipfile.is_zipfile(root):
        raise DataError(f"imagefolder: {root} is neither a directory nor a .zip file")
    return root


def _load_imagefolder(spec: DataSpec):
    root = _imagefolder_root(spec)
    # The cache key is the source's identity: a zip's path, size and mtime (checked before its
    # 50,000-entry directory is even parsed); for a directory, every listed file's.
    if os.path.isdir(root):
        members, read = _list_directory(root)
        cache_key = _cache_key([(m, *_stat_key(os.path.join(root, m))) for m in members])
        cached = _cache_load(cache_key)
    else:  # a zip (_imagefolder_root checked)
        cache_key = _cache_key([(root, *_stat_key(root))])
        cached = _cache_load(cache_key)
        if cached is None:
            with zipfile.ZipFile(root) as archive:
                members, read = _list_zip(root, archive)
                return _decode_tree(root, members, read, cache_key)
    return cached if cached is not None else _decode_tree(root, members, read, cache_key)


def _decode_tree(root: str, members: Sequence[str], read: Callable[[str], bytes], cache_key: str):
    train_files, test_files, classes = _layout(root, members)
    index = {c: i for i, c in enumerate(classes)}
    train = _decode_files(root, train_files, index, read)
    test = _decode_files(root, test_files, index, read) if test_files else None
    _cache_store(cache_key, (train, test, classes))
    return train, test, classes


def _cache_key(parts: list[tuple]) -> str:
    return hashlib.sha256(repr((CACHE_FORMAT, parts)).encode()).hexdigest()[:32]


def _stat_key(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _list_directory(root: str) -> tuple[list[str], Callable[[str], bytes]]:
    """Members as in a zip (`train/cat/1.jpg`, and `train/cat/` for every folder). Links are
    followed (a class folder may live elsewhere), but each real folder is listed once: a link back
    up the tree (`train/cat/loop -> ..`) would otherwise make the walk endless."""
    members = []
    for folder in ("train", "test"):
        top = os.path.join(root, folder)
        listed = {os.path.realpath(top)}
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            unseen = []
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real not in listed:
                    listed.add(real)
                    unseen.append(d)
            dirnames[:] = unseen
            relative = os.path.relpath(dirpath, root).replace(os.sep, "/")
            members += [f"{relative}/{d}/" for d in dirnames]  # so empty class folders are seen
            members += [f"{relative}/{f}" for f in sorted(filenames)]

    def read(member: str) -> bytes:
        with open(os.path.join(root, member), "rb") as f:
            return f.read()

    return members, read


def _list_zip(root: str, archive: zipfile.ZipFile) -> tuple[list[str], Callable[[str], bytes]]:
    """Members with any single top-level folder stripped (`cifar/train/cat/1.jpg` ->
    `train/cat/1.jpg`), so zipping the tree or the folder above it both work."""
    names = [n for n in archive.namelist() if not n.startswith("__MACOSX/")]
    prefix = ""
    if not any(n.startswith(("train/", "test/")) for n in names):
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) == 1:
            prefix = tops.pop() + "/"
    stripped = {n[len(prefix):]: n for n in names if n.startswith(prefix) and len(n) > len(prefix)}
    return list(stripped), lambda member: archive.read(stripped[member])


def _layout(root: str, members: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]],
                                                        list[str]]:
    """From `split/class/.../file` paths: ([(member, class)] for train and test, sorted classes).
    Class names are the sorted folder names under train/, as in torchvision's ImageFolder."""
    expected = "expected train/<class>/*.jpg|png (and optionally test/<class>/...)"
    files: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    folders: dict[str, set[str]] = {"train": set(), "test": set()}
    for member in members:
        parts = member.split("/")
        if len(parts) < 3 or parts[0] not in files or any(p.startswith(".") for p in parts if p):
            continue
        folders[parts[0]].add(parts[1])
        if parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            files[parts[0]].append((member, parts[1]))
    if not folders["train"]:
        raise DataError(f"imagefolder: {root} has no train/<class>/ folders; {expected}")
    classes = sorted(folders["train"])
    with_images = {c for _, c in files["train"]}
    empty = [c for c in classes if c not in with_images]
    if empty:
        raise DataError(f"imagefolder: {root}: train/{empty[0]}/ holds no .jpg/.png images; {expected}")
    unknown = sorted({c for _, c in files["test"]} - set(classes))
    if unknown:
        raise DataError(f"imagefolder: {root}: test/{unknown[0]}/ is not a class under train/")
    return sorted(files["train"]), sorted(files["test"]), classes


def _decode_files(root: str, files: list[tuple[str, str]], index: dict[str, int],
                  read: Callable[[str], bytes]) -> ImageSet:
    images = torch.empty(len(files), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    labels = torch.tensor([index[c] for _, c in files], dtype=torch.int64)
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work and
        # are twice as fast as PIL here, and _decode falls back to PIL once they are gone.
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, (member, _) in enumerate(files):
            try:
                images[i] = _decode(read(member))
            except _TooManyPixels as e:
                raise DataError(f"imagefolder: {member} in {root} declares an image of {e} pixels; at most "
                                f"{MAX_IMAGE_PIXELS:,} are decoded, so it is refused (shrink or remove it)") from None
            except Exception as e:
                raise DataError(f"imagefolder: cannot decode {member} in {root} ({_one_line(e)})") from e
    return ImageSet(images, labels)


_TORCHVISION_DECODE = getattr(torchvision.io, "decode_image", None)


class _TooManyPixels(ValueError):
    """An image header declaring more than MAX_IMAGE_PIXELS; str() says how many it declares."""


def _decode(raw: bytes) -> torch.Tensor:
    """JPEG/PNG bytes -> uint8 [3, 32, 32]: grey becomes RGB, other sizes are resized
    (antialiased; the aspect ratio is not kept, as for any fixed-size CIFAR-style input)."""
    _check_declared_pixels(raw)
    image = None
    if _TORCHVISION_DECODE is not None:
        try:
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            image = _TORCHVISION_DECODE(data, mode=torchvision.io.ImageReadMode.RGB)
        except RuntimeError:  # a variant torchvision's libjpeg/libpng rejects: PIL may read it
            pass
    if image is None:
        from PIL import Image  # only for what torchvision's codecs cannot read

        with Image.open(io.BytesIO(raw)) as pil:
            array = np.array(pil.convert("RGB"))
        image = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    if image.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        image = torchvision.transforms.functional.resize(image, [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
    return image


def _check_declared_pixels(raw: bytes) -> None:
    """Raise _TooManyPixels for an image whose header declares more than MAX_IMAGE_PIXELS, before
    anything is decoded: a file of a few bytes can declare an image that takes gigabytes to decode
    (a decompression bomb). PIL's `Image.open` reads only the header (PNG's IHDR, JPEG's SOF)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(raw)) as pil:
                width, height = pil.size
        except Image.DecompressionBombError:  # PIL's own limit, far above ours
            raise _TooManyPixels(f"more than {2 * (Image.MAX_IMAGE_PIXELS or 0):,}") from None
        except Image.UnidentifiedImageError:
            raise ValueError("not an image: no JPEG or PNG header") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise _TooManyPixels(f"{width}x{height} = {width * height:,}")


# Decoded imagefolder tensors are cached outside the repository, keyed by the source's path,
# size and mtime, so the commands run on one machine decode a 50,000-image zip once.


def _cache_dir() -> str | None:
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return os.path.expanduser(configured) or None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "orchestrate")


def _cache_load(key: str):
    directory = _cache_dir()
    path = directory and os.path.join(directory, f"imagefolder-{key}.pt")
    if not path or not os.path.isfile(path):
        return None
    try:
        entry = torch.load(path, map_location="cpu", weights_only=True)
        train = ImageSet(entry["train_images"], entry["train_labels"])
        test = ImageSet(entry["test_images"], entry["test_labels"]) if entry["has_test"] else None
        return train, test, list(entry["classes"])
    except Exception:  # a truncated or foreign file: decode again and overwrite it
        return None


def _cache_store(key: str, value) -> None:
    directory = _cache_dir()
    if not directory:
        return
    train, test, classes = value
    no_test = ImageSet(torch.empty(0, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8),
                       torch.empty(0, dtype=torch.int64))
    entry = {"train_images": train.images, "train_labels": train.labels, "has_test": test is not None,
             "test_images": (test or no_test).images, "test_labels": (test or no_test).labels,
             "classes": list(classes)}
    try:
        # Private to the user, as the dataset may be: a folder only they can enter (when created
        # here) and files only they can read (mkstemp's 0600, kept through the rename).
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Write beside the target and rename: trials starting together never read a half file.
        fd, temp = tempfile.mkstemp(dir=directory, prefix=".imagefolder-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(entry, f)
            os.replace(temp, os.path.join(directory, f"imagefolder-{key}.pt"))
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
    except OSError as e:  # a read-only or full cache disk only costs time
        warnings.warn(f"imagefolder: not caching decoded images in {directory} ({e})")


# ---------------------------------------------------------------------------------------------
# digits and synthetic


def _load_digits(spec: DataSpec):
    from sklearn.datasets import load_digits  # lazily: only this dataset needs scikit-learn

    digits = load_digits()
    values = torch.from_numpy(digits.images).float().mul(255.0 / 16.0).unsqueeze(1)  # [N, 1, 8, 8]
    values = torch.nn.functional.interpolate(values, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                             align_corners=False)
    images = values.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    data = ImageSet(images, torch.from_numpy(digits.target).to(torch.int64))
    # The test split is fixed (independent of split_seed) so every run scores on the same images.
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(DIGITS_TEST_SEED))
    n_test = round(len(data) * DIGITS_TEST_FRACTION)
    test = take(data, perm[:n_test].sort().values)
    train = take(data, perm[n_test:].sort().values)
    return train, test, [str(d) for d in range(10)]


def _load_synthetic(spec: DataSpec):
    """Each class has its own mean colour; pixels are that colour plus noise. A linear model can
    learn it, so a few epochs of any network should beat chance clearly."""
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED)
    colours = torch.rand(spec.num_classes, 3, 1, 1, generator=generator) * 160 + 48

    def make(n: int) -> ImageSet:
        labels = (torch.arange(n) % spec.num_classes)[torch.randperm(n, generator=generator)]
        noise = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 40
        images = (colours[labels] + noise).round().clamp(0, 255).to(torch.uint8)
        return ImageSet(images, labels)

    train = make(spec.synthetic_size)
    test = make(max(spec.synthetic_size // 4, spec.num_classes))
    return train, test, [f"class_{i}" for i in range(spec.num_classes)]


# One loader per dataset name in schema.DATASETS (a test holds the two equal).
LOADERS: dict[str, Callable[[DataSpec], tuple[ImageSet, ImageSet | None, list[str]]]] = {
    "cifar10": _load_cifar, "cifar100": _load_cifar, "imagefolder": _load_imagefolder,
    "digits": _load_digits, "synthetic": _load_synthetic,
}
