"""The sweep file's schema: one typed dataclass per section, and the `Trial` record. Torch-free.

Each field is a setting: its name is the YAML key (and the `orchestrate train` option), its type
annotation the allowed type, its default the default, and its metadata the one rule it obeys
(`choices`, or a `check` returning what is wrong). Nothing else in the code restates a key, a
default or a rule: `config.py` validates YAML against these fields, `cli.py` builds options from
them, the engine and the data loader take the dataclasses as they are.

Rules that tie two fields together live in the dataclass's `problems()` (e.g. warm-up shorter
than training), so every place that builds one — a YAML section, a model entry's override, a CLI
run — applies the same rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import reprlib
import types
import typing
from typing import Any, Callable, Iterator, Mapping

from orchestrator import pareto
from orchestrator.pareto import DIRECTIONS, SELECT_RULES

DATASETS = ("cifar10", "cifar100", "imagefolder", "digits", "synthetic")
# More trials than this in one sweep is a typo (num_samples: 1000000000), not a plan: Tune's
# driver and a dry run's preview would build every one of them.
MAX_TRIALS = 10_000
# What the engine reports every epoch (the run record logs each as a metric, step = epoch); any of
# them may select trials, checkpoints and the logged model (`search.metric`).
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "best_val_acc", "lr", "imgs_per_s",
                 "train_s", "epoch_s")
METRICS = EPOCH_METRICS
# The range each metric lives in ((low, high), None where open): an interval reported over seed
# runs never leaves it (runs.interval).
METRIC_RANGE = {"train_acc": (0.0, 1.0), "val_acc": (0.0, 1.0), "val_top5": (0.0, 1.0), "best_val_acc": (0.0, 1.0),
                "train_loss": (0.0, None), "val_loss": (0.0, None), "lr": (0.0, None), "imgs_per_s": (0.0, None),
                "train_s": (0.0, None), "epoch_s": (0.0, None)}
# What a model costs to run, known before its first step (it depends on the architecture, not the
# weights): a trial reports each with its first epoch (engine.describe). param_count and flops are
# logged as params, the infer_* ones as metrics (runs.MODEL_FACTS, runs.INFERENCE_METRICS).
COST_METRICS = ("param_count", "flops", "infer_latency_b1_ms", "infer_imgs_per_s", "infer_peak_mem_mb")
# `search.objectives`: two or three of these, each `max` or `min`; the first one is the sweep's
# `search.metric`/`mode`, so it is a training metric (it picks each trial's checkpoint).
OBJECTIVE_METRICS = METRICS + COST_METRICS
OBJECTIVES_MIN, OBJECTIVES_MAX = 2, 3

class CheckpointFile:
    """The files of a checkpoint folder: the engine writes them, the run record reads the eval and
    history files without importing torch."""

    STATE = "state.pt"
    MODEL = "model.json"  # how to rebuild the model: arch, knobs, classes, normalisation
    EVAL = "eval.json"  # per-class accuracy and confusion matrix on the val split
    HISTORY = "history.json"  # every epoch's reported metrics up to this checkpoint


# A trial either searches its entry's space, or re-trains the entry's best configuration with a
# fresh seed after the search (`search.seeds`).
PHASE_SEARCH, PHASE_SEEDS = "search", "seeds"


# ---------------------------------------------------------------------------------------------
# Showing a value in a message

SHOWN_CHARS = 80  # a value in a message is cut to this: input is never echoed unbounded
_REPR = reprlib.Repr()  # keyword arguments only from Python 3.12
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 6, 10, 10, 6
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = SHOWN_CHARS


# A URI's user:password@ (in any text): what `mask` hides wherever a URI is shown or stored. The
# password is everything up to the last '@' before the host (an unencoded '@' in it is still masked
# whole), anywhere in a text (a sweep file, a message).
CREDENTIALS = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:'\"]*):"
                         r"(?P<password>[^\s/'\"]*)@")


def mask(uri: str) -> str:
    """`uri` (or any text holding URIs) with each password replaced by ***:
    http://me:secret@host:5000 -> http://me:***@host:5000."""
    return CREDENTIALS.sub(r"\g<scheme>\g<user>:***@", uri)


# The URIs with a password this process was given (a sweep's tracking URI), by their masked form:
# what is pickled (Ray Tune's tuner.pkl, a searcher's state, Ray's object store) holds the masked
# URI, and `unmask` gives the password back in this process only, never from a file.
_GIVEN_URIS: dict[str, str] = {}


def remember(uri: str) -> None:
    """Keep `uri`'s password in this process, for `unmask` of its masked form."""
    if mask(uri) != uri:
        _GIVEN_URIS[mask(uri)] = uri


def unmask(uri: str) -> str:
    """A URI as stored (masked) -> the URI this process was given with that masked form; one
    this process was not given loses its user:***@ instead (MLflow's client then sends
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""
    if "***@" not in uri:
        return uri
    return _GIVEN_URIS.get(uri) or CREDENTIALS.sub(r"\g<scheme>", uri)


def slug(text: str, fallback: str) -> str:
    """`text` as one file or folder name: letters, digits, '_', '-' and single dots, never a path
    separator, '..' or a leading dot (a name read from a store may be `../../x`); `fallback`
    when nothing is left."""
    name = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.-]+", "-", text)).strip("-.")
    return name[:NAME_CHARS] or fallback


def show(value: Any) -> str:
    """repr() of `value` for a one-line message: cut to SHOWN_CHARS characters, never built in
    full (a 1 MB string or a deep list costs what its first few items cost), control characters
    escaped (repr writes a newline as \\n)."""
    text = _REPR.repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


MAX_LINE_CHARS = 1000  # an error line's hard limit, whatever went into it


def cut(text: str, limit: int = 120) -> str:
    """Free text (a library's message inside ours, a whole error line) as one line of at most
    `limit` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


def show_key(key: Any) -> str:
    """A key from the input as a message names it (`train.lr`): as written when it is a short,
    printable string, else shown like a value."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= SHOWN_CHARS else show(key)


# ---------------------------------------------------------------------------------------------
def better(a: float, b: float, mode: str) -> bool:
    """Whether metric value `a` beats `b` under `mode` (max or min)."""
    return a > b if mode == "max" else a < b


# Rules, each a function value -> None (fine) or what is wrong with it


def positive(v) -> str | None:
    return None if v > 0 else f"{show(v)} must be > 0"


def non_negative(v) -> str | None:
    return None if v >= 0 else f"{show(v)} must be >= 0"


def at_least(low) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"{show(v)} must be >= {low}"


def above(low) -> Callable[[Any], str | None]:
    return lambda v: None if v > low else f"{show(v)} must be > {low}"


def in_interval(low, high, *, low_open: bool, high_open: bool) -> Callable[[Any], str | None]:
    def check(v):
        ok = (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
        return None if ok else f"{show(v)} is not in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    return check


def objectives_problem(v) -> str | None:
    """`search.objectives`: {metric: max | min, ...}, OBJECTIVES_MIN to OBJECTIVES_MAX of
    OBJECTIVE_METRICS, the first a training metric. (A metric written twice is YAML's duplicate
    key, refused as the file is read.)"""
    if not OBJECTIVES_MIN <= len(v) <= OBJECTIVES_MAX:
        names = ", ".join(show_key(k) for k in v) or "none"
        return (f"{len(v)} objective(s) ({cut(names, SHOWN_CHARS)}); give {OBJECTIVES_MIN} or {OBJECTIVES_MAX} "
                f"(one objective is search.metric and search.mode)")
    for metric, direction in v.items():
        if metric not in OBJECTIVE_METRICS:
            return f"{show_key(metric)} is not a metric; allowed: {', '.join(OBJECTIVE_METRICS)}"
        if direction not in DIRECTIONS:
            return f"{metric}: {show(direction)} is not one of {', '.join(DIRECTIONS)}"
    first = next(iter(v))
    if first not in METRICS:
        return (f"the first objective {first} is not a training metric: it is the sweep's search.metric "
                f"(it picks each trial's checkpoint); put one of {', '.join(METRICS)} first")
    return None


# The smallest share of a CPU or a GPU a worker may ask for. Ray counts resources in units of
# 0.0001 and refuses a request below one (after the cluster has started); a share under 1% of a
# processor is a typo, not a plan.
MIN_SHARE = 0.01


def resource_share(v) -> str | None:
    """CPUs: any number from MIN_SHARE up."""
    return None if v >= MIN_SHARE else f"{show(v)} is less than {MIN_SHARE}; allowed: {MIN_SHARE} or more"


def gpu_share(v) -> str | None:
    """A fraction of one GPU (several trials share it) or whole GPUs: MIN_SHARE <= g <= 1, or an integer."""
    if v < MIN_SHARE or (v > 1 and v != int(v)):
        return f"{show(v)} must be in [{MIN_SHARE}, 1] (a share of one GPU) or a whole number of GPUs"
    return None


# One 32x32 RGB batch of this many float32 images is ~200 MB before the model's activations: more
# than any card needs to reach its throughput, and a typo (1e9) is refused, not a trial's OOM.
INFERENCE_BATCH_MAX = 16_384

# numpy's RandomState (Tune's random search, the engine's numpy seeding) takes exactly these;
# torch.manual_seed and random.seed take more, and the engine's derived seeds (seed * 100_003 +
# epoch) stay far inside torch's 64 bits.
SEED_MAX = 2**32 - 1
seed_range = in_interval(0, SEED_MAX, low_open=False, high_open=False)

# What MLflow (3.x, mlflow/utils/validation.py) accepts as a Model Registry name — not blank, no
# '/' or ':', not a path that normalises to another name — and what one folder name can hold
# (the storage folder of a sweep is named after it): at most NAME_CHARS printable characters.
# The tests check this against MLflow's own validators, which are not imported here (torch- and
# MLflow-free; importing mlflow costs seconds).
NAME_CHARS = 200


def mlflow_name(v) -> str | None:
    """A sweep `name` (the MLflow experiment, the storage folder) or a Model Registry name."""
    if not isinstance(v, str) or not v.strip():
        return f"{show(v)} must be a non-empty string"
    if len(v) > NAME_CHARS:
        return f"{show(v)} is {len(v)} characters; at most {NAME_CHARS}"
    if not v.isprintable():
        bad = next(c for c in v if not c.isprintable())
        return f"{show(v)} holds the unprintable character {bad!r}; use printable characters"
    if "/" in v or ":" in v:
        return f"{show(v)} holds '/' or ':', which MLflow's Model Registry refuses"
    if v.strip() == "." or v.strip().startswith(".."):
        return f"{show(v)} reads as a path ('.' or '..'), which MLflow refuses"
    return None


# Synthetic images are made in memory at once, 12 KB each while being drawn: twice CIFAR-10's
# training set is plenty for a smoke run and ~1.2 GB at its peak.
SYNTHETIC_MAX = 100_000


def setting(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple | None = None,
            check: Callable[[Any], str | None] | None = None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field that is also a documented, validated setting."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"help": help, "choices": choices, "check": check})


# ---------------------------------------------------------------------------------------------
# Sections


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """`dataset:` — what to train on. The validation split is carved from the training data."""

    name: str = setting("digits", "dataset", choices=DATASETS)
    # cifar: the folder holding cifar-10-batches-py/ (or cifar-100-python/), or that folder itself;
    # imagefolder: a directory holding train/<class>/*.jpg|png (optionally test/), or such a .zip.
    root: str | None = setting(None, "dataset folder (or .zip for imagefolder)")
    val_fraction: float = setting(0.1, "share of the training data held out for validation",
                                  check=in_interval(0, 0.5, low_open=True, high_open=False))
    subset: int | None = setting(None, "keep only this many training images (seeded, before the split)",
                                 check=at_least(2))
    split_seed: int = setting(0, "seed of the subset and the train/val split", check=seed_range)
    download: bool = setting(False, "cifar: let torchvision fetch the batches into root")
    synthetic_size: int = setting(512, "synthetic: training images (the test split is a quarter)",
                                  check=in_interval(4, SYNTHETIC_MAX, low_open=False, high_open=False))
    num_classes: int = setting(10, "synthetic: number of classes", check=at_least(2))
    image_size: int = setting(32, "side of the square RGB images every model sees: an imagefolder is decoded at it, "
                                  "cifar, digits and synthetic are resized to it",
                              check=in_interval(16, 256, low_open=False, high_open=False))

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.name in ("cifar10", "cifar100", "imagefolder") and not self.root:
            yield "root", f"required for {self.name}"
        if self.name == "synthetic" and self.synthetic_size < 2 * self.num_classes:
            yield "synthetic_size", f"{self.synthetic_size} must be at least twice num_classes ({self.num_classes})"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`train:` (and any model entry's overrides) — how one trial trains."""

    epochs: int = setting(10, "epochs", check=positive)
    batch_size: int = setting(128, "images per step per worker", check=positive)
    optimizer: str = setting("sgd", "sgd (Nesterov momentum) or adamw", choices=("sgd", "adamw"))
    lr: float = setting(0.1, "peak learning rate", check=positive)
    momentum: float = setting(0.9, "SGD momentum", check=non_negative)
    nesterov: bool = setting(True, "Nesterov momentum (sgd)")
    weight_decay: float = setting(5e-4, "not applied to norm weights and biases", check=non_negative)
    schedule: str = setting("onecycle", "per-step lr schedule", choices=("onecycle", "cosine", "constant"))
    warmup_epochs: float | None = setting(None, "epochs of lr warm-up (default: 1, or a quarter of a run "
                                                       "shorter than 4 epochs)", check=non_negative)
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing",
                                     check=in_interval(0, 1, low_open=False, high_open=True))
    precision: str = setting("auto", "auto: bf16 on GPUs that support it, else fp32",
                             choices=("auto", "bf16", "fp32"))
    channels_last: bool = setting(True, "NHWC memory format")
    compile: bool = setting(False, "torch.compile the model")
    grad_clip: float = setting(0.0, "max global grad norm; 0 disables", check=non_negative)
    seed: int = setting(0, "seed of init, order and augmentation", check=seed_range)
    deterministic: bool = setting(False, "torch.use_deterministic_algorithms (slower on GPU)")
    data_path: str = setting("auto", "device: whole dataset on the device (GPU fast path); loader: DataLoader; "
                                     "auto: device on CUDA, loader on CPU", choices=("auto", "device", "loader"))
    loader_workers: int = setting(0, "DataLoader worker processes (loader path)", check=non_negative)
    steps_per_epoch: int = setting(0, "cap on train steps per epoch; 0 = the whole split", check=non_negative)
    benchmark_inference: bool = setting(True, "measure the model's inference cost once per trial on its own "
                                              "device: latency at batch 1, throughput at inference_batch_size")
    inference_batch_size: int = setting(256, "the large batch of the inference benchmark",
                                        check=in_interval(1, INFERENCE_BATCH_MAX, low_open=False, high_open=False))
    checkpoint_every: int = setting(1, "epochs between checkpoints; the last epoch always checkpoints",
                                    check=positive)

    @property
    def effective_warmup_epochs(self) -> float:
        """The warm-up the schedule uses. Unset: one epoch (the usual CIFAR warm-up), but at most a
        quarter of the run, so `--epochs 1` works and a short run keeps most of its steps for the
        decay (one-cycle's own default peak is at 30%)."""
        return self.warmup_epochs if self.warmup_epochs is not None else min(1.0, self.epochs / 4)

    def problems(self) -> Iterator[tuple[str, str]]:
        # Only a warm-up the user set can be too long: the default fits any epoch count.
        if self.schedule != "constant" and self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            yield "warmup_epochs", (f"warmup_epochs {self.warmup_epochs} must be < epochs {self.epochs} "
                                    f"(schedule {self.schedule})")

    def check(self) -> None:
        """Raise ValueError('key: what is wrong') for the first bad setting."""
        for key, message in problems(self):
            raise ValueError(f"{key}: {message}")


@dataclasses.dataclass(frozen=True)
class Resources:
    """`resources:` — what one trial asks Ray for."""

    num_workers: int = setting(1, "DDP workers per trial (1: the trial trains in its own process)",
                               check=at_least(1))
    use_gpu: bool = setting(False, "train on GPUs")
    cpus_per_worker: float = setting(1.0, "CPUs per worker", check=resource_share)
    gpus_per_worker: float = setting(1.0, "GPUs per worker with use_gpu: a share in (0, 1] lets trials share a GPU",
                                     check=gpu_share)
    driver_cpus: float = setting(0.1, "CPUs of a multi-worker trial's driver (it only waits on its workers)",
                                 check=resource_share)
    placement_strategy: str = setting("PACK", "SPREAD / STRICT_SPREAD put a trial's workers on different nodes",
                                      choices=("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))

    @property
    def in_process(self) -> bool:
        """A single-worker trial trains inside its Tune trial process: no worker actors to start."""
        return self.num_workers == 1

    def per_worker(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}

    def devices(self) -> float:
        """The devices a trial holds, for its device-hours under `search.budget` (wall x devices):
        its workers' GPUs with use_gpu (num_workers x gpus_per_worker), else their CPUs
        (num_workers x cpus_per_worker). A DDP trial's driver only waits on its workers: not counted."""
        return self.num_workers * (self.gpus_per_worker if self.use_gpu else self.cpus_per_worker)

    def per_trial(self) -> dict[str, float]:
        """Everything one trial holds while it runs: its workers, plus the driver of a DDP trial."""
        total = {k: v * self.num_workers for k, v in self.per_worker().items()}
        if not self.in_process:
            total["CPU"] += self.driver_cpus
        return total


@dataclasses.dataclass(frozen=True)
class Budget:
    """`search.budget:` — what the whole sweep may spend. No new trial starts once the sweep's
    device-hours (its ended trials' and its running trials' so far; a trial's = its wall time x
    `Resources.devices()`) reach `device_hours`; running trials finish."""

    device_hours: float | None = setting(None, "device-hours the sweep may spend (wall x the GPUs, or without "
                                               "use_gpu the CPUs, each trial holds)", check=positive)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.device_hours is None:
            yield "device_hours", "missing; give a number > 0 (e.g. {device_hours: 20})"


@dataclasses.dataclass(frozen=True)
class Search:
    """`search:` — Ray Tune's scheduler and what it optimises."""

    scheduler: str = setting("asha", "asha stops poor trials early; fifo runs every trial to the end",
                             choices=("fifo", "asha"))
    brackets: str = setting("per_model", "asha ranks a trial against its own model entry's trials (per_model: "
                                         "every entry keeps its best to the full budget) or the whole sweep's",
                            choices=("per_model", "global"))
    grace_period: int = setting(1, "epochs before ASHA may stop a trial", check=at_least(1))
    reduction_factor: float = setting(2.0, "ASHA keeps 1/reduction_factor of trials at each rung", check=above(1))
    algorithm: str = setting("random", "how leaves other than grid are chosen: random, or tpe (Optuna's TPE, one "
                                       "study per model entry); grid allows grid leaves only",
                             choices=("grid", "random", "tpe"))
    num_samples: int = setting(1, "trials per grid point of each entry (each a new seed and new samples)",
                               check=in_interval(1, MAX_TRIALS, low_open=False, high_open=False))
    trials_per_model: int = setting(0, "trials each model entry gets, its grid points taken in turn "
                                       "(0: its grid points x num_samples)",
                                   check=in_interval(0, MAX_TRIALS, low_open=False, high_open=False))
    seeds: int = setting(0, "after the search, train each entry's best configuration again with this many fresh "
                            "seeds (full budget, never stopped early): the leaderboard's spread",
                        check=in_interval(0, MAX_TRIALS, low_open=False, high_open=False))
    max_concurrent_trials: int = setting(0, "0: as many as the cluster fits", check=non_negative)
    metric: str = setting("val_acc", "what selects trials, checkpoints and the logged model", choices=METRICS)
    mode: str = setting("max", "max or min", choices=("max", "min"))
    seed: int = setting(0, "seed of the random search dimensions", check=seed_range)
    objectives: dict | None = setting(None, "two or three {metric: max | min}: tpe searches them together, compare "
                                            "marks the Pareto set; the first is search.metric and mode",
                                      check=objectives_problem)
    select: str = setting("first", "with objectives, the Pareto trial registered as @best (and seeded): first "
                                   "(best on the first objective) or knee (nearest the ideal point)",
                          choices=SELECT_RULES)
    budget: Budget | None = setting(None, "{device_hours: X}: no new trial starts once the sweep has spent X "
                                          "device-hours (Budget)")

    def __post_init__(self):  # a record read back (runs.decode, a state file) holds the budget as a mapping
        if isinstance(self.budget, dict):
            object.__setattr__(self, "budget", Budget(**self.budget))

    def better(self, a: float, b: float | None) -> bool:
        """Whether metric value `a` beats `b` (None: nothing yet)."""
        return b is None or better(a, b, self.mode)

    @staticmethod
    def implied(raw: Mapping[str, Any]) -> dict[str, Any]:
        """The keys a `search:` mapping with `objectives` leaves out and the objectives decide: the
        metric and mode are the first objective's, and the scheduler is fifo (no early stopping:
        ASHA ranks on one metric and would stop the cheap, less accurate trials a Pareto set needs)."""
        objectives = raw.get("objectives")
        if not isinstance(objectives, dict) or not objectives:
            return {}
        metric, mode = next(iter(objectives.items()))
        implied = {"metric": metric, "mode": mode, "scheduler": "fifo"}
        return {k: v for k, v in implied.items() if k not in raw}

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.objectives:
            first = next(iter(self.objectives.items()))
            if (self.metric, self.mode) != first:
                key = "metric" if self.metric != first[0] else "mode"
                yield key, (f"{self.metric}/{self.mode} with objectives: the first objective ({first[0]}: "
                            f"{first[1]}) is the metric and mode; leave search.metric and search.mode out")
            if self.scheduler == "asha":
                yield "scheduler", ("asha with objectives: ASHA stops trials on one metric and would cut the cheap, "
                                    "less accurate trials the Pareto set needs; use fifo (or leave it out)")
        elif self.select != Search.select:
            yield "select", f"{self.select} picks among the Pareto set of search.objectives, which is not given"

    def directions(self) -> tuple[str, ...]:
        return tuple(self.objectives.values()) if self.objectives else (self.mode,)

    def objective_names(self) -> tuple[str, ...]:
        """The objectives' metrics in order; the metric alone without objectives."""
        return tuple(self.objectives) if self.objectives else (self.metric,)

    def pareto(self, points: list[tuple[float | None, ...]]) -> tuple[list[int], int | None]:
        """The sweep's rule over `points` (each a value per objective, None where unknown): the
        indices on their Pareto set, and the index `select` picks from it (None: no point known)."""
        return pareto.front(points, self.directions()), pareto.select(points, self.directions(), self.select)


@dataclasses.dataclass(frozen=True)
class Failure:
    """`failure:` — retries and checkpoint retention."""

    max_failures: int = setting(0, "restarts per trial from its last checkpoint", check=non_negative)
    max_preemptions: int = setting(10, "restarts per DDP trial from its last checkpoint after a node drained for "
                                       "preemption (a spot reclaim), counted apart from max_failures; > 0 turns "
                                       "on Ray Train's preemption watcher", check=non_negative)
    num_to_keep: int = setting(2, "checkpoints kept per trial (the best by search.metric are kept)",
                               check=at_least(1))


@dataclasses.dataclass(frozen=True)
class Tracking:
    """`tracking:` — the MLflow store."""

    uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    registered_model: str | None = setting(None, "Model Registry name of the sweep's best model, alias `best` "
                                                 "(default: the sweep's name)", check=mlflow_name)
    wait_s: float = setting(120.0, "seconds the sweep's end waits for writes the store has not taken (it is "
                                   "unreachable or full); then exit 1 with the --resume command that records them",
                            check=in_interval(0, 86400, low_open=False, high_open=False))


SECTIONS: dict[str, type] = {"dataset": DataSpec, "train": TrainConfig, "resources": Resources,
                             "search": Search, "failure": Failure, "tracking": Tracking}


# ---------------------------------------------------------------------------------------------
# Field-driven checks


@functools.cache
def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """{field: (type, None allowed)} from the annotations (`int | None` -> (int, True))."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            (base,) = [a for a in args if a is not type(None)]
            out[name] = (base, True)
        else:
            out[name] = (hint, False)
    return {f.name: out[f.name] for f in dataclasses.fields(cls)}


def choices(cls: type, name: str) -> tuple | None:
    """The allowed values of a field with a fixed list (e.g. choices(TrainConfig, "precision"))."""
    return next(f.metadata["choices"] for f in dataclasses.fields(cls) if f.name == name)


INT_LIMIT = 2**63  # ints are 64-bit wherever they go (numpy, torch, Tune's randint)


def type_problem(value: Any, typ: type) -> str | None:
    """None if `value` is a `typ` a setting can hold, else what is wrong. Numbers must be finite
    (no .inf / .nan) and ints 64-bit: every float field, int field and space bound goes through here."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is float and number or typ is int and isinstance(value, int) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{show(value)} is not a finite number"
        if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
            return f"{show(value)} is outside the 64-bit integer range"
        return None
    if typ not in (int, float) and isinstance(value, typ):
        return None
    if dataclasses.is_dataclass(typ):  # a section inside a section (search.budget)
        return f"{show(value)} is not a mapping; allowed keys: {', '.join(f.name for f in dataclasses.fields(typ))}"
    return f"{show(value)} is not a {typ.__name__}"


def type_ok(value: Any, typ: type) -> bool:
    return type_problem(value, typ) is None


def check_field(cls: type, name: str, value: Any) -> str | None:
    """None if `value` is allowed for field `name` of `cls`, else what is wrong with it."""
    typ, optional = field_types(cls)[name]
    if value is None:
        return None if optional else f"None is not a {typ.__name__}"
    wrong_type = type_problem(value, typ)
    if wrong_type:
        return wrong_type
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    if meta["choices"] is not None and value not in meta["choices"]:
        return f"{show(value)} is not one of {', '.join(map(str, meta['choices']))}"
    return meta["check"](value) if meta["check"] is not None else None


def problems(obj: Any) -> Iterator[tuple[str, str]]:
    """(field, what is wrong) for every bad field of a built dataclass, then its cross-field rules."""
    for f in dataclasses.fields(obj):
        err = check_field(type(obj), f.name, getattr(obj, f.name))
        if err:
            yield f.name, err
    yield from getattr(obj, "problems", lambda: iter(()))()


def coerce(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Ints given for float fields become floats (YAML writes `1` for 1.0)."""
    types_ = field_types(cls)
    return {k: float(v) if types_[k][0] is float and type_ok(v, float) else v for k, v in values.items()}


# ---------------------------------------------------------------------------------------------
# The trial record


@dataclasses.dataclass(frozen=True)
class Trial:
    """One sampled point of a sweep, fully resolved: what its driver, its workers and the MLflow
    callback all read as-is. Built by `SweepSpec.trial` (config.py) and nowhere else."""

    trial_id: str
    arch: str
    knobs: Mapping[str, Any]  # as sampled; archs.validate fills the arch's defaults
    train: TrainConfig
    dataset: DataSpec
    resources: Resources
    failure: Failure
    search: Search
    entry: int = 0  # its `models:` entry (index in the sweep file)
    repeat: int = 0  # how many trials of the same point came before it: its seed is train.seed + repeat
    phase: str = PHASE_SEARCH

    @property
    def name(self) -> str:
        """The MLflow child run's name: `<arch>-<knob><value>...-lr<lr>`, and `-seed<seed>` for a
        repeat of a point."""
        parts = [self.arch] + [f"{k}{_short(v)}" for k, v in sorted(self.knobs.items())] + [f"lr{_short(self.train.lr)}"]
        if self.repeat or self.phase == PHASE_SEEDS:
            parts.append(f"seed{self.train.seed}")
        return "-".join(parts)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
