"""Sweep files: YAML -> a typed, validated `SweepSpec`. No torch, Ray or MLflow at import.

Every error is a `ConfigError` whose str() is one line: `FILE: KEY: what is wrong; what is allowed`,
e.g. `experiments/x.yaml: models[2].knobs.groups: 5 is not one of 1, 2, 3, 4, 8`.

Search spaces map 1:1 onto ray.tune primitives. A value is a literal or a one-key mapping:
    {grid: [..]} {choice: [..]} {uniform: [lo, hi]} {loguniform: [lo, hi]} {randint: [lo, hi]}
(randint's upper bound is exclusive, as in tune.randint).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SCHEDULERS = ("fifo", "asha")
PLACEMENT = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class ConfigError(ValueError):
    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")


@dataclasses.dataclass
class Resources:
    num_workers: int = 1  # DDP workers per trial
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only with use_gpu
    driver_cpus: float = 0.1  # the Tune trial driver only waits on its TorchTrainer
    placement_strategy: str = "PACK"  # SPREAD / STRICT_SPREAD put a trial's workers on different nodes


@dataclasses.dataclass
class Search:
    scheduler: str = "asha"
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: float = 2.0
    num_samples: int = 1
    max_concurrent_trials: int = 0  # 0: as many as the cluster fits
    metric: str = "val_acc"
    mode: str = "max"
    seed: int = 0


@dataclasses.dataclass
class Failure:
    max_failures: int = 0  # worker-group restarts per trial (Ray Train FailureConfig)
    num_to_keep: int = 2  # checkpoints kept per trial (best by metric + latest)


@dataclasses.dataclass
class Model:
    arch: str
    space: dict[str, Any]  # {"knobs": {...}, "lr": ..., plus train overrides} with tune-style leaves
    index: int


@dataclasses.dataclass
class SweepSpec:
    file: str
    name: str
    dataset: dict[str, Any]
    train: dict[str, Any]
    resources: Resources
    search: Search
    failure: Failure
    tracking_uri: str
    storage_path: str
    models: list[Model]
    raw: dict[str, Any]

    def trial_count(self) -> int:
        """Grid points x num_samples (random dimensions do not multiply)."""
        total = 0
        for m in self.models:
            total += _grid_size(m.space)
        return total * self.search.num_samples


# ---------------------------------------------------------------------------------------------

DATASET_KEYS = {"name": str, "root": str, "val_fraction": float, "subset": int, "split_seed": int,
                "download": bool}
TRAIN_KEYS = {"epochs": int, "batch_size": int, "optimizer": str, "lr": float, "momentum": float,
              "nesterov": bool, "weight_decay": float, "schedule": str, "warmup_epochs": float,
              "label_smoothing": float, "precision": str, "channels_last": bool, "compile": bool,
              "grad_clip": float, "seed": int, "deterministic": bool, "data_path": str,
              "loader_workers": int, "steps_per_epoch": int, "checkpoint_every": int}
TOP_KEYS = ("name", "dataset", "train", "resources", "search", "failure", "tracking", "storage", "models")


def _type_ok(value: Any, typ: type) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def _typed_section(file: str, section: str, raw: Any, keys: dict[str, type]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(file, section, f"{raw!r} is not a mapping")
    out = {}
    for key, value in raw.items():
        if key not in keys:
            raise ConfigError(file, f"{section}.{key}", f"unknown key; allowed: {', '.join(keys)}")
        if value is None and key in ("root", "subset"):
            continue
        if not _type_ok(value, keys[key]):
            raise ConfigError(file, f"{section}.{key}", f"{value!r} is not a {keys[key].__name__}")
        out[key] = float(value) if keys[key] is float else value
    return out


def _dataclass_section(file: str, section: str, raw: Any, cls):
    keys = {f.name: (float if f.type in ("float", float) else int if f.type in ("int", int)
                     else bool if f.type in ("bool", bool) else str) for f in dataclasses.fields(cls)}
    return cls(**_typed_section(file, section, raw, keys))


def _is_space(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS


def _check_space(file: str, key: str, value: Any) -> None:
    """Shape of a space leaf: the right argument list for its kind."""
    if isinstance(value, dict) and not _is_space(value):
        raise ConfigError(file, key, f"{value!r} is not a value or one of {{{': ..}, {'.join(SPACE_KINDS)}: ..}}")
    if not _is_space(value):
        return
    kind, args = next(iter(value.items()))
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise ConfigError(file, f"{key}.{kind}", f"{args!r} is not a non-empty list")
    else:
        if (not isinstance(args, list) or len(args) != 2
                or not all(_type_ok(a, int if kind == "randint" else float) for a in args)):
            raise ConfigError(file, f"{key}.{kind}", f"{args!r} is not [low, high] numbers")
        if not args[0] < args[1]:
            raise ConfigError(file, f"{key}.{kind}", f"low {args[0]} is not below high {args[1]}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(file, f"{key}.{kind}", f"low {args[0]} must be > 0 for a log scale")


def _check_continuous(file: str, key: str, value: Any, takes_any_float: bool, allowed: str) -> None:
    """uniform/loguniform sample any float: refuse them where only ints or listed values are valid."""
    if _is_space(value) and not takes_any_float:
        kind, args = next(iter(value.items()))
        if kind in ("uniform", "loguniform"):
            raise ConfigError(file, f"{key}.{kind}", f"samples any float in [{args[0]}, {args[1]}], but this "
                                                     f"must be {allowed}; use grid, choice or randint")


def _leaf_values(value: Any) -> list[Any] | None:
    """The discrete values a leaf can take, or None for a continuous range."""
    if not _is_space(value):
        return [value]
    kind, args = next(iter(value.items()))
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint" and args[1] - args[0] <= 64:
        return list(range(args[0], args[1]))
    return None


def _leaf_bounds(value: Any) -> list[Any]:
    """Values to check a leaf with: every discrete value, or both ends of a range."""
    values = _leaf_values(value)
    if values is not None:
        return values
    kind, args = next(iter(value.items()))
    return [args[0], args[1] - 1] if kind == "randint" else list(args)


def _grid_size(space: dict[str, Any]) -> int:
    size = 1
    for value in space.values():
        if isinstance(value, dict) and not _is_space(value):
            size *= _grid_size(value)
        elif _is_space(value) and next(iter(value)) == "grid":
            size *= len(value["grid"])
    return size


def _check_model(file: str, index: int, raw: Any, train_defaults: dict[str, Any]) -> Model:
    import archs  # the registry: validates knobs without building a model

    key = f"models[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(file, key, f"{raw!r} is not a mapping with an 'arch'")
    if "arch" not in raw:
        raise ConfigError(file, f"{key}.arch", "missing; choose one of " + ", ".join(archs.names()))
    arch_name = raw["arch"]
    if not isinstance(arch_name, str) or arch_name not in archs.names():
        raise ConfigError(file, f"{key}.arch", f"{arch_name!r} is not one of " + ", ".join(archs.names()))
    arch = archs.get(arch_name)
    space: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "arch":
            continue
        if k == "knobs":
            continue
        if k not in TRAIN_KEYS:
            raise ConfigError(file, f"{key}.{k}", "unknown key; allowed: arch, knobs, " + ", ".join(TRAIN_KEYS))
        _check_space(file, f"{key}.{k}", v)
        _check_continuous(file, f"{key}.{k}", v, TRAIN_KEYS[k] is float,
                          "an int" if TRAIN_KEYS[k] is int else f"a {TRAIN_KEYS[k].__name__}")
        for value in _leaf_bounds(v):
            if not _type_ok(value, TRAIN_KEYS[k]):
                raise ConfigError(file, f"{key}.{k}", f"{value!r} is not a {TRAIN_KEYS[k].__name__}")
        _check_train_values(file, f"{key}.{k}", k, _leaf_bounds(v))
        space[k] = v
    # The engine refuses warmup >= epochs (except with a constant schedule): check every combination
    # this model can produce, since its own epochs / warmup_epochs may override the train section's.
    epochs = _leaf_bounds(space.get("epochs", train_defaults.get("epochs", 10)))
    warmups = _leaf_bounds(space.get("warmup_epochs", train_defaults.get("warmup_epochs", 1.0)))
    schedules = _leaf_bounds(space.get("schedule", train_defaults.get("schedule", "onecycle")))
    for e, w, sched in itertools.product(epochs, warmups, schedules):
        if sched != "constant" and w >= e:
            bad = "warmup_epochs" if "warmup_epochs" in space else "epochs"
            raise ConfigError(file, f"{key}.{bad}", f"warmup_epochs {w} must be < epochs {e} "
                                                    f"(schedule {sched})")

    knobs = raw.get("knobs") or {}
    if not isinstance(knobs, dict):
        raise ConfigError(file, f"{key}.knobs", f"{knobs!r} is not a mapping of knob: value-or-space")
    declared = {k.name: k for k in arch.knobs}
    for name, v in knobs.items():
        if name not in declared:
            raise ConfigError(file, f"{key}.knobs.{name}",
                              f"is not a knob of {arch_name}; its knobs are " + (", ".join(declared) or "none"))
        _check_space(file, f"{key}.knobs.{name}", v)
        knob = declared[name]
        _check_continuous(file, f"{key}.knobs.{name}", v, knob.type is float and knob.choices is None,
                          knob.describe())
        for value in _leaf_bounds(v):
            try:
                declared[name].check(value)
            except archs.KnobError as e:
                raise ConfigError(file, f"{key}.knobs.{name}", f"{e.value!r} {e.allowed}") from None
    # Cross-knob rules over every discrete combination (ranges are checked at their ends above).
    discrete = {n: _leaf_values(v) for n, v in knobs.items()}
    names = [n for n, vals in discrete.items() if vals is not None]
    combos = itertools.product(*(discrete[n] for n in names))
    for combo in itertools.islice(combos, 4096):
        try:
            archs.validate(arch_name, dict(zip(names, combo)))
        except archs.KnobError as e:
            raise ConfigError(file, f"{key}.knobs.{e.knob}", f"{e.value!r} {e.allowed}"
                              + (f" (with {dict(zip(names, combo))})" if len(names) > 1 else "")) from None
    space["knobs"] = dict(knobs)
    if _grid_size(space) == 0:
        raise ConfigError(file, key, "the search space is empty")
    return Model(arch_name, space, index)


def _check_train_values(file: str, key: str, name: str, values: list[Any]) -> None:
    from orchestrator.engine_config import check_value

    for value in values:
        err = check_value(name, value)
        if err:
            raise ConfigError(file, key, err)


def load(path: str, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file. `overrides`: CLI values for tracking_uri / storage_path."""
    import yaml

    overrides = overrides or {}
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)  # never yaml.load: a sweep file is data, not code
    except FileNotFoundError:
        raise ConfigError(path, "", "no such file") from None
    except OSError as e:  # a directory, no permission ...
        raise ConfigError(path, "", f"cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"is not UTF-8 text (byte {e.object[e.start]:#x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, "", f"malformed YAML: {where}{problem}") from None
    return parse(raw, path, overrides)


def parse(raw: Any, path: str = "<sweep>", overrides: dict[str, Any] | None = None) -> SweepSpec:
    overrides = overrides or {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "", "the file must be a mapping with name, dataset, train, models ...")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(path, str(key), "unknown key; allowed: " + ", ".join(TOP_KEYS))
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(path, "name", f"{name!r} must be a non-empty string (the MLflow experiment)")

    dataset = _typed_section(path, "dataset", raw.get("dataset"), DATASET_KEYS)
    dataset.setdefault("name", "digits")
    _check_dataset(path, dataset)

    train = _typed_section(path, "train", raw.get("train"), TRAIN_KEYS)
    for key, value in train.items():
        _check_train_values(path, f"train.{key}", key, [value])
    epochs = train.get("epochs", 10)
    warmup = train.get("warmup_epochs", 1.0)
    if train.get("schedule", "onecycle") != "constant" and warmup >= epochs:
        raise ConfigError(path, "train.warmup_epochs", f"{warmup} must be < train.epochs ({epochs})")

    resources = _dataclass_section(path, "resources", raw.get("resources"), Resources)
    if resources.num_workers < 1:
        raise ConfigError(path, "resources.num_workers", f"{resources.num_workers} must be >= 1")
    for key in ("cpus_per_worker", "driver_cpus"):
        if getattr(resources, key) <= 0:
            raise ConfigError(path, f"resources.{key}", f"{getattr(resources, key)} must be > 0")
    if resources.placement_strategy not in PLACEMENT:
        raise ConfigError(path, "resources.placement_strategy",
                          f"{resources.placement_strategy!r} is not one of {', '.join(PLACEMENT)}")

    search = _dataclass_section(path, "search", raw.get("search"), Search)
    if search.scheduler not in SCHEDULERS:
        raise ConfigError(path, "search.scheduler", f"{search.scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    if search.mode not in ("max", "min"):
        raise ConfigError(path, "search.mode", f"{search.mode!r} is not one of max, min")
    metrics = ("val_acc", "val_loss", "val_top5", "train_loss", "train_acc", "best_val_acc")
    if search.metric not in metrics:
        raise ConfigError(path, "search.metric", f"{search.metric!r} is not one of {', '.join(metrics)}")
    if search.num_samples < 1:
        raise ConfigError(path, "search.num_samples", f"{search.num_samples} must be >= 1")
    if search.max_concurrent_trials < 0:
        raise ConfigError(path, "search.max_concurrent_trials", f"{search.max_concurrent_trials} must be >= 0")
    if search.scheduler == "asha":
        if search.grace_period < 1:
            raise ConfigError(path, "search.grace_period", f"{search.grace_period} must be >= 1")
        if search.grace_period > epochs:
            raise ConfigError(path, "search.grace_period",
                              f"{search.grace_period} is more than train.epochs ({epochs}): ASHA could never stop a trial")
        if search.reduction_factor <= 1:
            raise ConfigError(path, "search.reduction_factor", f"{search.reduction_factor} must be > 1")

    failure = _dataclass_section(path, "failure", raw.get("failure"), Failure)
    if failure.max_failures < 0:
        raise ConfigError(path, "failure.max_failures", f"{failure.max_failures} must be >= 0 (-1 is not supported)")
    if failure.num_to_keep < 1:
        raise ConfigError(path, "failure.num_to_keep", f"{failure.num_to_keep} must be >= 1")

    tracking = _typed_section(path, "tracking", raw.get("tracking"), {"uri": str})
    tracking_uri = (overrides.get("tracking_uri") or tracking.get("uri")
                    or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri())
    storage = raw.get("storage")
    if isinstance(storage, dict):
        storage = _typed_section(path, "storage", storage, {"path": str}).get("path")
    elif storage is not None and not isinstance(storage, str):
        raise ConfigError(path, "storage", f"{storage!r} is not a path")
    storage_path = overrides.get("storage_path") or storage or os.path.join(os.getcwd(), "ray_results")
    if "://" not in storage_path:
        storage_path = os.path.abspath(os.path.expanduser(storage_path))

    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(path, "models", "must be a non-empty list of {arch: ..., knobs: ..., lr: ...}")
    models = [_check_model(path, i, m, train) for i, m in enumerate(models_raw)]

    return SweepSpec(file=path, name=name.strip(), dataset=dataset, train=train, resources=resources,
                     search=search, failure=failure, tracking_uri=tracking_uri, storage_path=storage_path,
                     models=models, raw=raw)


def default_tracking_uri() -> str:
    return "sqlite:///" + os.path.join(os.getcwd(), "mlflow.db")


def _check_dataset(path: str, dataset: dict[str, Any]) -> None:
    names = ("cifar10", "cifar100", "imagefolder", "digits", "synthetic")
    name = dataset["name"]
    if name not in names:
        raise ConfigError(path, "dataset.name", f"{name!r} is not one of {', '.join(names)}")
    vf = dataset.get("val_fraction", 0.1)
    if not 0 < vf <= 0.5:
        raise ConfigError(path, "dataset.val_fraction", f"{vf} is not in (0, 0.5]")
    if dataset.get("subset") is not None and dataset["subset"] < 10:
        raise ConfigError(path, "dataset.subset", f"{dataset['subset']} must be >= 10 images")
    root = dataset.get("root")
    if name in ("cifar10", "cifar100", "imagefolder"):
        if not root:
            raise ConfigError(path, "dataset.root", f"required for {name}")
        root = os.path.abspath(os.path.expanduser(root))
        dataset["root"] = root  # workers run elsewhere: hand them an absolute path
        if name == "imagefolder" and not os.path.exists(root):
            raise ConfigError(path, "dataset.root", f"{root} does not exist (a folder with train/<class>/ or a .zip)")
        if name.startswith("cifar") and not dataset.get("download"):
            sub = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
            if not os.path.isdir(os.path.join(root, sub)):
                raise ConfigError(path, "dataset.root", f"{root} has no {sub}/ (put the python batches there "
                                                        f"or set dataset.download: true)")
