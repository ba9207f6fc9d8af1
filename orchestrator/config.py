"""Sweep files: YAML -> a typed, validated `SweepSpec`. No torch, Ray or MLflow at import.

The keys, types, defaults and rules come from the dataclasses in schema.py; this module only
reads YAML, checks it against those fields, and checks the model entries' search spaces and
knobs against the arch registry. Every error is a `ConfigError` whose str() is one line:
`FILE: KEY: what is wrong; what is allowed`, e.g.
`experiments/x.yaml: models[2].knobs.groups: 5 is not one of 1, 2, 3, 4, 8`.

Search spaces map 1:1 onto ray.tune primitives. A value is a literal or a one-key mapping:
    {grid: [..]} {choice: [..]} {uniform: [lo, hi]} {loguniform: [lo, hi]} {randint: [lo, hi]}
(randint's upper bound is exclusive, as in tune.randint).

The YAML is read by a SafeLoader that also refuses what a sweep file never needs and a hostile
one uses: aliases expanding to more than MAX_YAML_VALUES values (a "billion laughs" file of a few
hundred bytes), nesting deeper than MAX_YAML_DEPTH, duplicate keys (YAML lets the last one win
silently) and files over MAX_FILE_BYTES.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import stat
from typing import Any

import yaml

from orchestrator import schema
from orchestrator.schema import DataSpec, Failure, Resources, Search, TrainConfig, Trial, show, show_key

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
TOP_KEYS = ("name", "dataset", "train", "resources", "search", "failure", "tracking", "storage", "models")
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))

__all__ = ["ConfigError", "ModelEntry", "SweepSpec", "load", "parse", "default_tracking_uri",
           "DataSpec", "Failure", "Resources", "Search", "TrainConfig", "Trial"]


class ConfigError(ValueError):
    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        line = f"{file}: {key}: {message}" if key else f"{file}: {message}"
        super().__init__(schema.cut(line, schema.MAX_LINE_CHARS))


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One `models:` entry: an arch, its knobs' space and its train overrides' space (tune-style
    leaves, checked)."""

    arch: str
    knobs: dict[str, Any]
    overrides: dict[str, Any]  # TrainConfig field -> value or space

    def point_space(self) -> dict[str, Any]:
        """The entry as a sweep-file mapping: what Tune samples one point of."""
        return {"arch": self.arch, "knobs": self.knobs, **self.overrides}


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    file: str
    name: str
    dataset: DataSpec
    train: TrainConfig
    resources: Resources
    search: Search
    failure: Failure
    tracking_uri: str
    storage_path: str
    models: tuple[ModelEntry, ...]
    registered_model: str  # the Model Registry name of the sweep's best model
    tracking_wait_s: float = schema.Tracking.wait_s  # tracking.wait_s: how long the end waits for the store

    # Ray Tune pickles the spec into the storage (tuner.pkl holds the MLflow callback's, the
    # searcher's state file the searcher's) and Ray's object store (the trainable's parameter): a
    # password in tracking_uri is masked in every pickle, and a spec unpickled in a process that
    # was given that URI (this run's sweep file or --tracking-uri) gets it back (schema.unmask).
    def __post_init__(self):
        schema.remember(self.tracking_uri)

    def __getstate__(self):
        return {**self.__dict__, "tracking_uri": schema.mask(self.tracking_uri)}

    def __setstate__(self, state):
        self.__dict__.update(state, tracking_uri=schema.unmask(state["tracking_uri"]))

    def code(self) -> tuple:
        """The user's code the sweep imports (archs.user.Code: reference, file, sha256, what is
        shipped), one per `arch: PATH.py:NAME` / `package.module:NAME` reference, in entry order."""
        import archs  # torch: the file was checked, so the registry is loaded

        refs = dict.fromkeys(m.arch for m in self.models if archs.user.is_reference(m.arch))
        return tuple(archs.get(ref).code for ref in refs)

    def py_modules(self) -> list[str]:
        """What Ray's runtime_env `py_modules` ships to every node: each user file or package
        found beside the sweep file (one installed in the environment is every node's already)."""
        return list(dict.fromkeys(c.ship for c in self.code() if c.ship))

    def entry_budget(self, entry: ModelEntry) -> int:
        """The trials a model entry's search gets: `search.trials_per_model`, else its grid
        points x num_samples (random dimensions do not multiply)."""
        return self.search.trials_per_model or _grid_size(entry.point_space()) * self.search.num_samples

    def search_trial_count(self) -> int:
        return sum(self.entry_budget(m) for m in self.models)

    def trial_count(self) -> int:
        """Every entry's search budget, plus its `search.seeds` re-trainings."""
        return self.search_trial_count() + self.search.seeds * len(self.models)

    def entry_max_epochs(self, entry: ModelEntry) -> int:
        return max(_leaf_bounds(entry.overrides.get("epochs", self.train.epochs)))

    def max_epochs(self) -> int:
        return max(self.entry_max_epochs(m) for m in self.models)

    def trial(self, point: dict[str, Any], trial_id: str, *, entry: int = 0, repeat: int = 0,
              phase: str = schema.PHASE_SEARCH) -> Trial:
        """The one place a sampled point (arch, knobs, train overrides) becomes a resolved Trial;
        a repeat of a point trains with its own seed, train.seed + repeat."""
        overrides = {k: v for k, v in point.items() if k not in ("arch", "knobs")}
        train = dataclasses.replace(self.train, **schema.coerce(TrainConfig, overrides))
        return Trial(trial_id=trial_id, arch=point["arch"], knobs=dict(point.get("knobs") or {}),
                     train=dataclasses.replace(train, seed=train.seed + repeat), dataset=self.dataset,
                     resources=self.resources, failure=self.failure, search=self.search, entry=entry,
                     repeat=repeat, phase=phase)

    def tune_trial(self, config: dict[str, Any], trial_id: str) -> Trial:
        """The Trial of a Tune trial's config ({"model": point, "entry", "repeat", "phase"}, as
        search.EntrySearch suggests it)."""
        return self.trial(config["model"], trial_id, entry=config.get("entry", 0), repeat=config.get("repeat", 0),
                          phase=config.get("phase", schema.PHASE_SEARCH))


# ---------------------------------------------------------------------------------------------
# Sections


def section(file: str, name: str, raw: Any, cls: type, extra: dict[str, Any] | None = None):
    """A YAML mapping -> `cls`, every key checked against its field; `extra` fills in values
    derived elsewhere (e.g. an absolute path)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(file, name, f"{show(raw)} is not a mapping")
    fields = schema.field_types(cls)
    records = {}  # a field that is itself a section (search.budget): checked key by key the same way
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(file, f"{name}.{show_key(key)}", f"unknown key; allowed: {', '.join(fields)}")
        if dataclasses.is_dataclass(fields[key][0]) and isinstance(value, dict):
            records[key] = section(file, f"{name}.{key}", value, fields[key][0])
            continue
        err = schema.check_field(cls, key, value)
        if err:
            raise ConfigError(file, f"{name}.{key}", err)
    obj = cls(**schema.coerce(cls, {**raw, **records, **(extra or {})}))
    for key, message in obj.problems() if hasattr(obj, "problems") else ():
        raise ConfigError(file, f"{name}.{key}", message)
    return obj


# ---------------------------------------------------------------------------------------------
# Search spaces


def is_space(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in SPACE_KINDS


def _check_space(file: str, key: str, value: Any) -> None:
    """Shape of a space leaf: the right argument list for its kind."""
    if isinstance(value, dict) and not is_space(value):
        raise ConfigError(file, key, f"{show(value)} is not a value or one of {{{': ..}, {'.join(SPACE_KINDS)}: ..}}")
    if not is_space(value):
        return
    kind, args = next(iter(value.items()))
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise ConfigError(file, f"{key}.{kind}", f"{show(args)} is not a non-empty list")
    else:
        if not isinstance(args, list) or len(args) != 2:
            raise ConfigError(file, f"{key}.{kind}", f"{show(args)} is not [low, high] numbers")
        for bound in args:
            wrong = schema.type_problem(bound, int if kind == "randint" else float)
            if wrong:
                raise ConfigError(file, f"{key}.{kind}", f"{show(args)}: {wrong}")
        if not args[0] < args[1]:
            raise ConfigError(file, f"{key}.{kind}", f"low {args[0]} is not below high {args[1]}")
        if kind == "loguniform" and args[0] <= 0:
            raise ConfigError(file, f"{key}.{kind}", f"low {args[0]} must be > 0 for a log scale")


def _check_continuous(file: str, key: str, value: Any, takes_any_float: bool, allowed: str) -> None:
    """uniform/loguniform sample any float: refuse them where only ints or listed values are valid."""
    if is_space(value) and not takes_any_float:
        kind, args = next(iter(value.items()))
        if kind in ("uniform", "loguniform"):
            raise ConfigError(file, f"{key}.{kind}", f"samples any float in [{args[0]}, {args[1]}], but this "
                                                     f"must be {allowed}; use grid, choice or randint")


def _leaf_values(value: Any) -> list[Any] | None:
    """The discrete values a leaf can take, or None for a continuous range."""
    if not is_space(value):
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
        if isinstance(value, dict) and not is_space(value):
            size *= _grid_size(value)
        elif is_space(value) and next(iter(value)) == "grid":
            size *= len(value["grid"])
    return size


# ---------------------------------------------------------------------------------------------
# Model entries


def _check_model(file: str, index: int, raw: Any, train: TrainConfig) -> ModelEntry:
    import archs  # the registry (torch): only when a file is checked, so this module stays torch-free

    key = f"models[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(file, key, f"{show(raw)} is not a mapping with an 'arch'")
    if "arch" not in raw:
        raise ConfigError(file, f"{key}.arch", "missing; choose one of " + ", ".join(archs.names()))
    arch_name = raw["arch"]
    if isinstance(arch_name, str) and archs.user.is_reference(arch_name):
        # The user's own model: its code is imported here, as `python FILE.py` would run it.
        try:
            archs.user.load(arch_name, base_dir=os.path.dirname(os.path.abspath(file)))
        except archs.user.CodeError as e:
            raise ConfigError(file, f"{key}.arch", str(e)) from None
    elif not isinstance(arch_name, str) or arch_name not in archs.names():
        raise ConfigError(file, f"{key}.arch", f"{show(arch_name)} is not one of " + ", ".join(archs.names())
                          + "; or your own model as PATH.py:NAME or package.module:NAME")

    train_types = schema.field_types(TrainConfig)
    overrides: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("arch", "knobs"):
            continue
        if k not in train_types:
            raise ConfigError(file, f"{key}.{show_key(k)}",
                              "unknown key; allowed: arch, knobs, " + ", ".join(TRAIN_FIELDS))
        _check_space(file, f"{key}.{k}", v)
        typ = train_types[k][0]
        _check_continuous(file, f"{key}.{k}", v, typ is float, "an int" if typ is int else f"a {typ.__name__}")
        for value in _leaf_bounds(v):
            err = schema.check_field(TrainConfig, k, value)
            if err:
                raise ConfigError(file, f"{key}.{k}", err)
        overrides[k] = v
    # Cross-field rules (warm-up shorter than training ...) over every combination this entry can
    # produce, since its overrides may change either side of a rule.
    names = list(overrides)
    for combo in itertools.islice(itertools.product(*(_leaf_bounds(overrides[n]) for n in names)), 4096):
        resolved = dataclasses.replace(train, **schema.coerce(TrainConfig, dict(zip(names, combo))))
        for field, message in resolved.problems():
            bad = field if field in overrides else next((n for n in names if n != field), field)
            raise ConfigError(file, f"{key}.{bad}", message)

    knobs = raw.get("knobs") or {}
    if not isinstance(knobs, dict):
        raise ConfigError(file, f"{key}.knobs", f"{show(knobs)} is not a mapping of knob: value-or-space")
    _check_knobs(file, key, arch_name, knobs)
    entry = ModelEntry(arch_name, dict(knobs), overrides)
    if _grid_size(entry.point_space()) == 0:
        raise ConfigError(file, key, "the search space is empty")
    return entry


def _check_knobs(file: str, key: str, arch_name: str, knobs: dict[str, Any]) -> None:
    import archs  # torch: see _check_model

    declared = {k.name: k for k in archs.get(arch_name).knobs}
    for name, v in knobs.items():
        if name not in declared:
            raise ConfigError(file, f"{key}.knobs.{show_key(name)}",
                              f"is not a knob of {arch_name}; its knobs are " + (", ".join(declared) or "none"))
        _check_space(file, f"{key}.knobs.{name}", v)
        knob = declared[name]
        _check_continuous(file, f"{key}.knobs.{name}", v, knob.type is float and knob.choices is None,
                          knob.describe())
        for value in _leaf_bounds(v):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(file, f"{key}.knobs.{name}", f"{show(value)} is not a finite number")
            try:
                knob.check(value)
            except archs.KnobError as e:
                raise ConfigError(file, f"{key}.knobs.{name}", f"{show(e.value)} {e.allowed}") from None
    # Cross-knob rules (and knobs without a default) over every discrete combination (ranges are
    # checked at their ends above).
    discrete = {n: _leaf_values(v) for n, v in knobs.items()}
    names = [n for n, vals in discrete.items() if vals is not None]
    for combo in itertools.islice(itertools.product(*(discrete[n] for n in names)), 4096):
        try:
            archs.validate(arch_name, dict(zip(names, combo)))
        except archs.KnobError as e:
            if e.value is archs.registry.REQUIRED:
                if e.knob in knobs:  # set, by a range
                    continue
                raise ConfigError(file, f"{key}.knobs.{e.knob}", e.allowed) from None
            raise ConfigError(file, f"{key}.knobs.{e.knob}", f"{show(e.value)} {e.allowed}"
                              + (f" (with {show(dict(zip(names, combo)))})" if len(names) > 1 else "")) from None


# ---------------------------------------------------------------------------------------------
# The file

# A real sweep file has a few hundred values, nested five or six deep, in a few kilobytes.
MAX_FILE_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # after aliases are expanded: a shared anchor counts at every use
MAX_YAML_DEPTH = 32


class YamlRefused(yaml.MarkedYAMLError):
    """Well-formed YAML that a sweep file may not be (an alias bomb, deep nesting, a duplicate key)."""


class SweepLoader(yaml.SafeLoader):
    """yaml.SafeLoader (data only, never code) that measures each node as it is composed: its
    values counted with every alias expanded, and its depth, from its children's measures (so
    measuring costs no more than composing, however far the aliases would expand). Anchors and
    aliases stay allowed within those bounds: sharing one `knobs:` mapping between entries is
    legitimate YAML."""

    def __init__(self, stream):
        super().__init__(stream)
        self._measures: dict[int, tuple[Any, int, int]] = {}  # id(node) -> (node, values, depth)
        self._open = 0  # collections being composed around the current node

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            if id(node) not in self._measures:  # its anchor is still being composed: a cycle
                raise YamlRefused(None, None, "an alias refers to its own anchor (a recursive structure)", mark)
            return node
        mark = self.peek_event().start_mark
        self._open += 1
        if self._open > MAX_YAML_DEPTH:
            raise YamlRefused(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark)
        node = super().compose_node(parent, index)
        self._open -= 1
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        measured = [self._measures[id(c)] for c in children]
        values = 1 + sum(m[1] for m in measured)
        depth = 1 + max((m[2] for m in measured), default=0)
        if values > MAX_YAML_VALUES:
            raise YamlRefused(None, None, f"this value expands to more than {MAX_YAML_VALUES:,} values through its "
                                          f"aliases (an alias bomb?); allowed: up to {MAX_YAML_VALUES:,}", mark)
        if depth > MAX_YAML_DEPTH:
            raise YamlRefused(None, None, f"nests more than {MAX_YAML_DEPTH} levels deep with its aliases", mark)
        self._measures[id(node)] = (node, values, depth)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: overriding it is the point
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable: SafeLoader reports it
                    continue
                if first is not None:
                    raise YamlRefused(None, None, f"duplicate key {show(key)} (first on line {first + 1}); "
                                                  f"a key may appear once per mapping", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def yaml_value(text: str) -> Any:
    """YAML text -> data, through SweepLoader (yaml.YAMLError if it is malformed or refused)."""
    loader = SweepLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: str) -> Any:
    kind = _file_kind(os.stat(path).st_mode)
    if kind:  # opening a FIFO waits for a writer forever; /dev/zero never ends
        raise ConfigError(path, "", f"is {kind}, not a regular file; allowed: a YAML file")
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(path, "", f"is larger than {MAX_FILE_BYTES // 1024} KiB; a sweep file is a few KiB")
    return yaml_value(data.decode("utf-8"))


def _file_kind(mode: int) -> str | None:
    """None for a regular file, else what it is."""
    kinds = ((stat.S_ISREG, None), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "something else")


def load(path: str, overrides: dict[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep file. `overrides`: CLI values for tracking_uri / storage_path."""
    try:
        raw = _read_yaml(path)  # a SafeLoader, never yaml.load: a sweep file is data, not code
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
        kind = "" if isinstance(e, YamlRefused) else "malformed YAML: "
        raise ConfigError(path, "", f"{kind}{where}{problem}") from None
    return parse(raw, path, overrides)


def parse(raw: Any, path: str = "<sweep>", overrides: dict[str, Any] | None = None) -> SweepSpec:
    overrides = overrides or {}
    if not isinstance(raw, dict):
        raise ConfigError(path, "", "the file must be a mapping with name, dataset, train, models ...")
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError(path, show_key(key), "unknown key; allowed: " + ", ".join(TOP_KEYS))
    name = raw.get("name")
    name = name.strip() if isinstance(name, str) else name
    wrong = schema.mlflow_name(name)
    if wrong:
        raise ConfigError(path, "name", f"{wrong} (the MLflow experiment and the storage folder)")

    dataset = _dataset(path, raw.get("dataset"))
    train = section(path, "train", raw.get("train"), TrainConfig)
    resources = section(path, "resources", raw.get("resources"), Resources)
    raw_search = raw.get("search")
    search = section(path, "search", raw_search, Search,
                     extra=Search.implied(raw_search) if isinstance(raw_search, dict) else None)
    if search.scheduler == "asha" and search.grace_period > train.epochs:
        raise ConfigError(path, "search.grace_period",
                          f"{search.grace_period} is more than train.epochs ({train.epochs}): ASHA could never stop a trial")
    failure = section(path, "failure", raw.get("failure"), Failure)
    tracking = section(path, "tracking", raw.get("tracking"), schema.Tracking)
    tracking_uri = (overrides.get("tracking_uri") or tracking.uri
                    or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri())
    storage = raw.get("storage")
    if isinstance(storage, dict):
        if set(storage) - {"path"}:
            raise ConfigError(path, f"storage.{show_key(next(iter(set(storage) - {'path'})))}",
                              "unknown key; allowed: path")
        storage = storage.get("path")
    if storage is not None and not isinstance(storage, str):
        raise ConfigError(path, "storage", f"{show(storage)} is not a path")
    storage_path = overrides.get("storage_path") or storage or os.path.join(os.getcwd(), "ray_results")
    if "://" not in storage_path:
        storage_path = os.path.abspath(os.path.expanduser(storage_path))

    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise ConfigError(path, "models", "must be a non-empty list of {arch: ..., knobs: ..., lr: ...}")
    models = tuple(_check_model(path, i, m, train) for i, m in enumerate(models_raw))
    _check_search(path, search, models)
    _check_objectives(path, search, train, models)
    _check_sizes(path, models, dataset.image_size)
    num_classes = _check_data(path, dataset, train, resources, models)
    _check_builds(path, models, num_classes, dataset.image_size)

    spec = SweepSpec(file=path, name=name, dataset=dataset, train=train, resources=resources,
                     search=search, failure=failure, tracking_uri=tracking_uri, storage_path=storage_path,
                     models=models, registered_model=tracking.registered_model or name,
                     tracking_wait_s=float(tracking.wait_s))
    if spec.trial_count() > schema.MAX_TRIALS:
        raise ConfigError(path, "models", f"{spec.trial_count():,} trials (grid points x search.num_samples "
                                          f"{search.num_samples}) are more than {schema.MAX_TRIALS:,}; "
                                          f"split the sweep or use random dimensions")
    return spec


def _check_search(file: str, search: Search, models: tuple[ModelEntry, ...]) -> None:
    """Rules between the search section and the model entries' spaces."""
    if search.trials_per_model and search.num_samples != 1:
        raise ConfigError(file, "search.num_samples", f"{search.num_samples} with trials_per_model "
                          f"{search.trials_per_model}: give one of them (trials per grid point, or per entry)")
    for i, m in enumerate(models):
        grid = _grid_size(m.point_space())
        if search.trials_per_model and search.trials_per_model < grid:
            raise ConfigError(file, "search.trials_per_model", f"{search.trials_per_model} cannot cover the "
                              f"{grid} grid points of models[{i}] ({m.arch}); give at least {grid}")
        if search.algorithm == "grid":
            sampled = _sampled_leaves(m.point_space())
            if sampled:
                raise ConfigError(file, f"models[{i}].{sampled[0]}", "is sampled, but search.algorithm is grid; "
                                  "use {grid: [...]} or a value, or algorithm random or tpe")


def _check_objectives(file: str, search: Search, train: TrainConfig, models: tuple[ModelEntry, ...]) -> None:
    """An inference cost as an objective needs every trial to measure it (train.benchmark_inference)."""
    measured = [m for m in (search.objectives or {}) if m.startswith("infer_")]
    if not measured:
        return
    for key, value in [("train.benchmark_inference", train.benchmark_inference)] + [
            (f"models[{i}].benchmark_inference", v) for i, m in enumerate(models)
            for v in _leaf_bounds(m.overrides.get("benchmark_inference", True))]:
        if value is False:
            raise ConfigError(file, key, f"false, but search.objectives has {measured[0]}, which the inference "
                                         f"benchmark measures; set it true or drop that objective")


def _sampled_leaves(space: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys of the leaves that are sampled (choice, uniform, loguniform, randint), not grid."""
    out = []
    for key, value in space.items():
        if is_space(value) and next(iter(value)) != "grid":
            out.append(f"{prefix}{key}")
        elif isinstance(value, dict) and not is_space(value):
            out += _sampled_leaves(value, f"{prefix}{key}.")
    return out


def default_tracking_uri() -> str:
    return "sqlite:///" + os.path.join(os.getcwd(), "mlflow.db")


def _dataset(path: str, raw: Any) -> DataSpec:
    """The dataset section, its root made absolute (trials may run on other nodes)."""
    spec = section(path, "dataset", raw, DataSpec)
    if spec.root is not None:
        spec = dataclasses.replace(spec, root=os.path.abspath(os.path.expanduser(spec.root)))
    return spec


def _check_sizes(path: str, models: tuple[ModelEntry, ...], image_size: int) -> None:
    """A zoo arch whose design fixes its input size (the registry's rule) is refused at another."""
    import archs  # torch: see _check_model

    for index, entry in enumerate(models):
        arch = archs.get(entry.arch)
        wrong_size = arch.size_problem(image_size)
        if wrong_size:
            raise ConfigError(path, f"models[{index}].arch", f"{wrong_size} (dataset.image_size); "
                              f"use image_size {arch.input_size} or another arch")


def _check_builds(path: str, models: tuple[ModelEntry, ...], num_classes: int, image_size: int) -> None:
    """Every user model is built for the data's classes at `image_size` (on the meta device, else
    the CPU) with each discrete combination of its knobs (ranges at their ends, at most
    MAX_BUILDS) and must map a batch of 2 to [2, num_classes]: one line naming the entry, its arch
    and the call that failed."""
    import archs  # torch: see _check_model

    for index, entry in enumerate(models):
        arch = archs.get(entry.arch)
        if arch.code is None:
            continue
        bounds = {n: _leaf_bounds(v) for n, v in entry.knobs.items()}
        for combo in itertools.islice(itertools.product(*bounds.values()), MAX_BUILDS):
            knobs = archs.validate(entry.arch, dict(zip(bounds, combo)))
            wrong = archs.user.check_model(arch, knobs, num_classes, image_size)
            if wrong:
                raise ConfigError(path, f"models[{index}].arch", f"{entry.arch}: {wrong}")


MAX_BUILDS = 8  # user-model builds per entry in the check before Ray (each can take a second)


def _check_data(path: str, spec: DataSpec, train: TrainConfig, resources: Resources,
                models: tuple[ModelEntry, ...]) -> int:
    """The data loaded as the sweep's driver will load it to ship it to the trials (decoded once;
    an imagefolder into this machine's cache, CIFAR downloaded if asked), and every batch size a model entry can take leaving
    each worker a full batch of the training split. Before Ray starts, so bad data is one line,
    never a failed trial; near the end of `parse`, being slow. Returns the number of classes."""
    from orchestrator import data  # torch: see _check_model

    try:
        images, num_classes = data.check_source(spec)
    except data.DataError as e:
        raise ConfigError(path, f"dataset.{e.key}", str(e).removeprefix(f"{spec.name}: ")) from None
    for index, entry in enumerate(models):
        overridden = "batch_size" in entry.overrides
        for batch_size in _leaf_bounds(entry.overrides["batch_size"] if overridden else train.batch_size):
            try:
                data.check_fits(images, batch_size, resources.num_workers)
            except data.DataError as e:
                raise ConfigError(path, f"models[{index}].batch_size" if overridden else "train.batch_size",
                                  str(e)) from None
    return num_classes
