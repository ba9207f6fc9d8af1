"""The run record's layout: how a sweep lives in MLflow, written down once. No Ray, no torch.

Every tag, param, metric and artefact name of a sweep's runs is a constant here; `encode` turns a
`schema.Trial` into a child run's params and tags and `decode` turns a run back into the exact
`Trial` (from the resolved record logged with it, as Lightning logs its resolved config);
`encode_sweep`/`decode_sweep` do the same for the sweep's parent run (`SweepSettings`); the
queries `compare`, `evaluate`, `report`, the benchmarks and the tests share live here too. What a
run's life looks like (created, reopened, per-epoch writes, finished) is tracking/'s; this
module only knows the shapes.

    experiment = the sweep's `name`
    ├─ parent run  (tag orchestrate.role=sweep): the sweep file, comparison table, plots
    │    params  search.*, train.*, dataset.*, resources.*, failure.*, trials (the settings it ran with)
    │    tags    orchestrate.sweep (the resolved SweepSettings, JSON: decode_sweep reads it), sweep_file
    │    files   sweep.json (the same record), the sweep file (passwords masked), report.html
    └─ child run per trial (orchestrate.role=trial, parent = the sweep's run):
         params  arch, knobs.*, every train field, dataset.* (image_size too), resources.*, world_size,
                 versions, param_count, flops, train_size, val_size (the model the engine built),
                 code_sha256 (a user's model: its file's sha256, also a tag)
         tags    trial_id, arch, family, status, best_epoch, best_value, best_checkpoint,
                 logged_model_id, model_format, orchestrate.trial (the resolved Trial, JSON)
         metrics every EPOCH_METRICS key per epoch (step = epoch); model_<metric> at best_epoch;
                 a DDP trial's RESTART_COUNTS per epoch
         files   trial.json, curves.png, confusion_matrix.png, per_class_accuracy.json,
                 best_checkpoint/, model (a LoggedModel), model_meta.json, code/FILE.py (a user's model)
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from orchestrator.schema import (CREDENTIALS, EPOCH_METRICS, METRIC_RANGE, DataSpec, Failure, Resources, Search, TrainConfig,
                                 Trial)

if TYPE_CHECKING:  # mlflow is imported by the callers that talk to a store
    from mlflow import MlflowClient
    from mlflow.entities import Run


class Tag:
    """Run tags. (MLflow's own: `mlflow.parentRunId`, `mlflow.runName`, `mlflow.source.*`.)"""

    ROLE = "orchestrate.role"  # "sweep" on the parent run, "trial" on each child run
    TRIAL = "orchestrate.trial"  # the resolved Trial record as JSON: decode() reads it
    SWEEP = "orchestrate.sweep"  # parent run: its SweepSettings as JSON: decode_sweep() reads it
    PARENT = "mlflow.parentRunId"
    TRIAL_ID = "trial_id"
    ARCH = "arch"
    FAMILY = "family"
    STATUS = "status"  # Status.*; written last, so an unfinished run still says "running"
    ERROR = "error"
    BEST_EPOCH = "best_epoch"  # the epoch whose checkpoint is the run's model (search.metric/mode)
    BEST_VALUE = "best_value"
    BEST_CHECKPOINT = "best_checkpoint"  # its path in the sweep's storage
    LOGGED_MODEL_ID = "logged_model_id"
    MODEL_FORMAT = "model_format"  # pt2 | pickle
    TRAIN_SECONDS = "train_seconds"
    EPOCHS_COMPLETED = "epochs_completed"
    SWEEP_FILE = "sweep_file"  # parent run
    REGISTERED_MODEL = "registered_model"  # parent run: NAME/VERSION of the registered best model
    ONNX_MODEL_ID = "onnx_model_id"  # `orchestrate export --format onnx`: the run's ONNX LoggedModel
    CODE_SHA256 = "code_sha256"  # a user's model (arch: PATH.py:NAME): the sha256 of its file (also a param)
    CODE_FILE = "code_file"  # ... and that file's absolute path on the machine that ran the sweep
    EXTENDED = "extended"  # parent run: `orchestrate sweep --extend` went on from Tune experiment A in B ("A -> B")
    PARETO = "orchestrate.pareto"  # "true" on each entry's best run that is on a Pareto frontier (the report)


ROLE_SWEEP, ROLE_TRIAL = "sweep", "trial"


class Status:
    RUNNING = "running"
    COMPLETED = "completed"
    EARLY_STOPPED = "early-stopped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


MODEL_STATUSES = (Status.COMPLETED, Status.EARLY_STOPPED)  # the trial trained to a model
FINISHED_STATUSES = MODEL_STATUSES + (Status.FAILED,)  # nothing more will be written


class Artifact:
    TRIAL = "trial.json"
    SWEEP = "sweep.json"  # parent run: its SweepSettings
    CURVES = "curves.png"
    CONFUSION = "confusion_matrix.png"
    PER_CLASS = "per_class_accuracy.json"
    BEST_CHECKPOINT = "best_checkpoint"
    MODEL = "model"  # the LoggedModel's name: runs:/<run_id>/model resolves to it
    MODEL_META = "model_meta.json"
    ONNX = "onnx"  # the LoggedModel `orchestrate export` logs, in MLflow's onnx flavour
    EXPORT = "export"  # other exported files (a pt2 archive)
    CODE = "code"  # a user's model: the file that defines it, as the trial imported it
    SPEND = "spend.json"  # parent run: each entry's device-hours and trials not started (orchestrator/spend.py)


# Facts the engine reports with its first epoch (engine.describe), logged once: the model it built
# for the data set's classes, the split sizes, what the numbers depend on (a digest of the data's
# content, the device and its software), and the model's inference cost on that device
# (orchestrator/inference.py: latency at batch 1, throughput at a large batch, peak memory).
MODEL_FACTS = ("param_count", "flops")
SPLIT_SIZES = ("train_size", "val_size")
PROVENANCE = ("dataset_digest", "device_name", "cuda_version", "driver_version")
INFERENCE_PARAMS = ("infer_precision", "infer_device", "infer_latency_batch", "infer_throughput_batch",
                    "infer_num_threads")
INFERENCE_METRICS = ("infer_latency_b1_ms", "infer_latency_b1_iqr_ms", "infer_imgs_per_s", "infer_peak_mem_mb")
ONCE_PARAMS = MODEL_FACTS + SPLIT_SIZES + PROVENANCE + INFERENCE_PARAMS
# A DDP trial's worker-group restarts so far (metrics, step = epoch), one per budget: after a failure
# (a worker or its node lost: failure.max_failures) and after a preemption (failure.max_preemptions).
RESTART_COUNTS = ("restarts", "preemptions")
# The libraries every child run records (params, at its start).
LIBRARY_VERSIONS = ("torch_version", "torchvision_version", "ray_version", "mlflow_version")


def model_metric(name: str) -> str:
    """The metric holding `name`'s value at the logged model's epoch (e.g. model_val_acc)."""
    return f"model_{name}"


# ---------------------------------------------------------------------------------------------
# Trial <-> run


# The Trial's sections, by field name: each is rebuilt as its dataclass, every other field as it is.
SECTIONS = {"train": TrainConfig, "dataset": DataSpec, "resources": Resources, "failure": Failure, "search": Search}


def trial_to_dict(trial: Trial) -> dict[str, Any]:
    out = {f.name: getattr(trial, f.name) for f in dataclasses.fields(Trial)}
    return {k: dataclasses.asdict(v) if k in SECTIONS else dict(v) if k == "knobs" else v for k, v in out.items()}


def trial_from_dict(d: dict[str, Any]) -> Trial:
    return Trial(**{k: SECTIONS[k](**v) if k in SECTIONS else v for k, v in d.items()})


def encode(trial: Trial, knobs: dict[str, Any], family: str, code_sha256: str | None = None,
           code_file: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of a trial's child run. `knobs` are the arch's full knobs (defaults filled
    in by archs.validate), `family` the arch's family, `code_sha256` and `code_file` a user
    model's file's sha256 and path: the caller has the registry, this module does not import torch."""
    params = {"arch": trial.arch, **{f"knobs.{k}": v for k, v in knobs.items()},
              **dataclasses.asdict(trial.train), "warmup_epochs": trial.train.effective_warmup_epochs,
              **{f"dataset.{k}": v for k, v in dataclasses.asdict(trial.dataset).items()},
              **{f"resources.{k}": v for k, v in dataclasses.asdict(trial.resources).items()},
              "world_size": trial.resources.num_workers}
    tags = {Tag.ROLE: ROLE_TRIAL, Tag.TRIAL_ID: trial.trial_id, Tag.ARCH: trial.arch, Tag.FAMILY: family,
            Tag.TRIAL: json.dumps(trial_to_dict(trial), separators=(",", ":"))}
    if code_sha256:
        params[Tag.CODE_SHA256] = tags[Tag.CODE_SHA256] = code_sha256
        tags[Tag.CODE_FILE] = code_file or ""
    return {k: str(v) for k, v in params.items()}, tags


class NotATrialRun(ValueError):
    """A run that orchestrate did not record as a trial (no resolved Trial on it)."""


def decode(run: Run) -> Trial:
    """The exact Trial a child run trained (types and all), from the record logged with it."""
    raw = run.data.tags.get(Tag.TRIAL)
    if raw is None:
        raise NotATrialRun(f"run {run.info.run_id} is not an orchestrate trial run (no {Tag.TRIAL} tag)")
    return trial_from_dict(json.loads(raw))


# ---------------------------------------------------------------------------------------------
# The sweep <-> its parent run


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """What a sweep's parent run records of it: the sections of its file as resolved (its trials
    take theirs from the same) and how many trials it planned. A section the run does not record
    is None (a parent run may hold part of them: one written by a test, or before this record)."""

    search: Search | None = None
    train: TrainConfig | None = None
    dataset: DataSpec | None = None
    resources: Resources | None = None
    failure: Failure | None = None
    trials: int | None = None


PARAM_CHARS = 6000  # MLflow's longest param value


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"search": {"metric": "val_acc"}} -> {"search.metric": "val_acc"}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def sweep_to_dict(sweep: SweepSettings) -> dict[str, Any]:
    return {f.name: dataclasses.asdict(v) if f.name in SECTIONS else v
            for f in dataclasses.fields(SweepSettings) if (v := getattr(sweep, f.name)) is not None}


def sweep_from_dict(d: dict[str, Any]) -> SweepSettings:
    """The settings from their dict; a section may be given as its dataclass or as its fields."""
    return SweepSettings(**{k: SECTIONS[k](**v) if k in SECTIONS and isinstance(v, dict) else v for k, v in d.items()})


def encode_sweep(sweep: SweepSettings) -> tuple[dict[str, str], dict[str, str]]:
    """(params, tags) of a sweep's parent run: each setting as a param `section.key` (what the
    MLflow UI shows), the record itself as JSON in Tag.SWEEP."""
    record = sweep_to_dict(sweep)
    params = {k: str(v)[:PARAM_CHARS] for k, v in flatten(record).items()}
    return params, {Tag.ROLE: ROLE_SWEEP, Tag.SWEEP: json.dumps(record, separators=(",", ":"))}


def decode_sweep(run: Run) -> SweepSettings:
    """The settings a sweep's parent run records (types and all): its Tag.SWEEP record or, on a
    parent run logged before that record, the `section.key` params read back as their fields'
    types (each section that has params; the others None)."""
    raw = run.data.tags.get(Tag.SWEEP)
    if raw is not None:
        return sweep_from_dict(json.loads(raw))
    params, sections = run.data.params, {}
    for name, cls in SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        given = {key: _typed(fields[key].type, value) for k, value in params.items()
                 if k.startswith(name + ".") and (key := k[len(name) + 1:]) in fields}
        if given:
            sections[name] = cls(**given)
    return SweepSettings(**sections, trials=int(params["trials"]) if params.get("trials", "").isdigit() else None)


def _typed(annotation: str, text: str) -> Any:
    """A param's text as the value str(value) wrote: a str field's text as it is, else a literal."""
    if text == "None" and "None" in annotation:
        return None
    if annotation.startswith("str"):
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ---------------------------------------------------------------------------------------------
# Queries


def _and(*clauses: str) -> str:
    return " and ".join(c for c in clauses if c)


PAGE_SIZE = 1000  # runs per search request: every query pages through all of them


def search_all(client: MlflowClient, experiment_id: str, query: str, order_by: list[str] | None = None) -> list[Run]:
    """Every run matching `query`, one request per page of PAGE_SIZE (MLflow's page_token): an
    experiment filled over many sweeps loses none of them."""
    found: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], query, order_by=order_by, max_results=PAGE_SIZE,
                                  page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def sweep_runs(client: MlflowClient, experiment_id: str) -> list[Run]:
    """The experiment's sweeps (parent runs), newest first."""
    return search_all(client, experiment_id, f"tags.`{Tag.ROLE}` = '{ROLE_SWEEP}'",
                      order_by=["attributes.start_time DESC"])


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None,
               trial_id: str | None = None) -> list[Run]:
    """Trial runs of the experiment; of one sweep (`parent_run_id`), one trial (`trial_id`)."""
    query = _and(f"tags.`{Tag.ROLE}` = '{ROLE_TRIAL}'",
                 parent_run_id and f"tags.`{Tag.PARENT}` = '{parent_run_id}'",
                 trial_id and f"tags.`{Tag.TRIAL_ID}` = '{trial_id}'")
    return search_all(client, experiment_id, query)


def history(client: MlflowClient, run_id: str) -> list[dict[str, Any]]:
    """Per-epoch metrics of a run, rebuilt from MLflow: [{"epoch": 1, "val_acc": ..., ...}, ...]."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for key in EPOCH_METRICS:
        for m in client.get_metric_history(run_id, key):
            by_epoch.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [by_epoch[e] for e in sorted(by_epoch)]


def selection(client: MlflowClient, parent_run_id: str | None, runs: Iterable[Run] = ()) -> tuple[str, str]:
    """(metric, mode) a sweep ranks by: its parent's record (decode_sweep), else the first
    trial's record, else val_acc/max."""
    if parent_run_id:
        search = decode_sweep(client.get_run(parent_run_id)).search
        if search is not None:
            return search.metric, search.mode
    for run in runs:
        if Tag.TRIAL in run.data.tags:
            search = decode(run).search
            return search.metric, search.mode
    return Search.metric, Search.mode  # the schema's defaults


def objectives(runs: Iterable[Run]) -> Search | None:
    """The search settings of the sweep the runs belong to when it has search.objectives (from the
    first trial's record); None when it has none."""
    for run in runs:
        if Tag.TRIAL in run.data.tags:
            search = decode(run).search
            return search if search.objectives else None
    return None


@dataclasses.dataclass(frozen=True)
class Result:
    """One trial run as the comparison table shows it. `score` is the sweep's metric at the
    logged model's epoch; `epochs` the epochs it trained, of `epochs_planned`."""

    name: str
    arch: str
    knobs: str
    lr: float | None
    params: int | None
    flops: int | None
    metric: str
    score: float | None
    val_acc: float | None
    val_loss: float | None
    epoch: int | None  # the model's (best) epoch
    epochs: int | None
    epochs_planned: int | None
    imgs_per_s: float | None  # training throughput (last epoch)
    latency_ms: float | None  # inference, batch 1, on the trial's device (median)
    infer_imgs_per_s: float | None  # inference throughput at a large batch
    device_hours: float
    status: str
    run_id: str
    error: str | None
    model_id: str | None
    seed: int | None
    entry: int | None  # its `models:` entry
    phase: str | None  # search, or seeds (a re-training of the entry's best configuration)
    objectives: tuple[tuple[str, float | None], ...] = ()  # (metric, value at the logged model), search.objectives
    pareto: bool | None = None  # on the Pareto set of the sweep's objectives (None: no objectives)
    selected: bool = False  # the Pareto trial search.select picks: the one registered as @best

    @property
    def has_model(self) -> bool:
        return self.status in MODEL_STATUSES

    @property
    def full_budget(self) -> bool:
        """Trained every epoch it was planned (not stopped early, not failed)."""
        return self.status == Status.COMPLETED


def objective_value(run: Run, name: str) -> float | None:
    """A run's value of objective `name` (schema.OBJECTIVE_METRICS) at its logged model: a training
    metric at the model's epoch (model_<name>), a model fact from its params, an inference cost as
    measured."""
    if name in MODEL_FACTS:
        text = run.data.params.get(name)
        return float(text) if text not in (None, "", "None") else None
    return run.data.metrics.get(model_metric(name) if name in EPOCH_METRICS else name)


def result(run: Run, metric: str, objectives: Sequence[str] = ()) -> Result:
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    trial = decode(run) if Tag.TRIAL in t else None
    knobs = {k[len("knobs."):]: v for k, v in p.items() if k.startswith("knobs.")}
    seconds = float(t.get(Tag.TRAIN_SECONDS, 0) or 0)
    world = trial.resources.num_workers if trial else int(p.get("world_size", 1) or 1)
    return Result(
        name=run.info.run_name, arch=t.get(Tag.ARCH, ""),
        knobs=" ".join(f"{k}={v}" for k, v in sorted(knobs.items())),
        lr=trial.train.lr if trial else None,
        params=int(p["param_count"]) if "param_count" in p else None,
        flops=int(p["flops"]) if "flops" in p else None,
        metric=metric, score=m.get(model_metric(metric)),
        val_acc=m.get(model_metric("val_acc")), val_loss=m.get(model_metric("val_loss")),
        epoch=int(t[Tag.BEST_EPOCH]) if t.get(Tag.BEST_EPOCH) else None,
        epochs=int(t[Tag.EPOCHS_COMPLETED]) if t.get(Tag.EPOCHS_COMPLETED) else None,
        epochs_planned=trial.train.epochs if trial else None,
        imgs_per_s=m.get("imgs_per_s"), latency_ms=m.get("infer_latency_b1_ms"),
        infer_imgs_per_s=m.get("infer_imgs_per_s"), device_hours=seconds * world / 3600.0,
        status=t.get(Tag.STATUS, ""), run_id=run.info.run_id, error=t.get(Tag.ERROR),
        model_id=t.get(Tag.LOGGED_MODEL_ID), seed=trial.train.seed if trial else None,
        entry=trial.entry if trial else None, phase=trial.phase if trial else None,
        objectives=tuple((name, objective_value(run, name)) for name in objectives))


def mark_pareto(results: Sequence[Result], search: Search | None) -> list[Result]:
    """The results (in their order), each marked on or off the Pareto set of `search`'s objectives
    among the trials with a model and every objective's value, and the one its `select` rule picks
    marked selected (Search.pareto); as they are without objectives."""
    if search is None or not search.objectives:
        return list(results)
    pool = [i for i, r in enumerate(results) if r.has_model]
    front, picked = search.pareto([tuple(v for _, v in results[i].objectives) for i in pool])
    on = {pool[k] for k in front}
    chosen = pool[picked] if picked is not None else None
    return [dataclasses.replace(r, pareto=i in on, selected=i == chosen) for i, r in enumerate(results)]


def rank(results: Iterable[Result], mode: str) -> list[Result]:
    """Trials trained to their full budget first, then early-stopped ones, then the rest; within
    each, best first by `score` in `mode` (max or min). An early-stopped trial's score is from
    fewer epochs: it is never ranked as the equal of a full-budget one."""
    sign = -1.0 if mode == "max" else 1.0
    tier = {Status.COMPLETED: 0, Status.EARLY_STOPPED: 1}
    return sorted(results, key=lambda r: (tier.get(r.status, 2), r.score is None,
                                          sign * r.score if r.score is not None else 0.0))


def results(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None) -> list[Result]:
    """Every trial run (of one sweep when `parent_run_id` is given), ranked by the sweep's own
    metric and mode, each read at the run's logged model."""
    runs = trial_runs(client, experiment_id, parent_run_id)
    return read_results(runs, *selection(client, parent_run_id, runs))


def read_results(runs: Sequence[Run], metric: str, mode: str) -> list[Result]:
    """The runs as Results ranked by `metric` and `mode`, marked on or off the Pareto set of their
    sweep's objectives (mark_pareto)."""
    search = objectives(runs)
    names = search.objective_names() if search else ()
    return mark_pareto(rank((result(r, metric, names) for r in runs), mode), search)


def download_model(client: MlflowClient, run: Run, dst: str) -> str:
    """The run's logged model folder (MLmodel, data/, ...) downloaded as `dst`; its path. Reads
    through `client`'s store alone (MLflow's runs:/ and models:/ resolution would use the
    process-global tracking URI)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    model_id = run.data.tags.get(Tag.LOGGED_MODEL_ID)
    if not model_id or run.data.tags.get(Tag.MODEL_FORMAT) is None:
        raise FileNotFoundError(f"run {run.info.run_id} has no logged model")
    location = client.get_logged_model(model_id).artifact_location
    repo = get_artifact_repository(location, tracking_uri=client.tracking_uri)
    os.makedirs(dst, exist_ok=True)
    return repo.download_artifacts("", dst_path=dst)


# ---------------------------------------------------------------------------------------------
# The MLflow UI

UI_PORT = 5000  # where `orchestrate ui` serves a local store's UI by default
COMPARE_MAX_RUNS = 100  # runs in one compare-runs link (a URL holds their ids): the best ones


def compare_url(tracking_uri: str, experiment_id: str, run_ids: Iterable[str]) -> str:
    """The MLflow UI's compare-runs page of `run_ids` (best first; at most COMPARE_MAX_RUNS): each
    trial's params, metrics and val_acc side by side, one click from every curve. A tracking
    server serves its own UI; any other store is shown by `orchestrate ui` on 127.0.0.1:UI_PORT.
    Credentials are never in the link (the browser asks)."""
    from urllib.parse import quote

    if tracking_uri.startswith(("http://", "https://")):
        base = CREDENTIALS.sub(r"\g<scheme>", tracking_uri).rstrip("/")
    else:
        base = f"http://127.0.0.1:{UI_PORT}"
    ids = json.dumps(list(run_ids)[:COMPARE_MAX_RUNS], separators=(",", ":"))
    return f"{base}/#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([experiment_id]))}"


# ---------------------------------------------------------------------------------------------
# The per-architecture leaderboard


@dataclasses.dataclass(frozen=True)
class Standing:
    """One model entry on the leaderboard: its best configuration and the sweep's metric over
    that configuration's seed runs (`search.seeds`), or over its one best run when the sweep
    trained no seeds. Search trials picked the configuration; the seed runs, trained afterwards,
    measure it without that selection's luck."""

    entry: int | str  # the `models:` entry's index (its arch, when grouped by arch)
    arch: str
    config: str  # the best configuration (its run name, less the seed)
    metric: str
    mean: float | None
    std: float | None  # sample standard deviation (n - 1); None below 2 runs
    low: float | None  # 95% interval of the mean (Student's t); None below 2 runs
    high: float | None
    n: int
    params: int | None
    flops: int | None
    latency_ms: float | None  # inference of the best configuration, batch 1, on its trial's device
    infer_imgs_per_s: float | None
    device_hours: float  # every trial of the entry: search and seeds
    trials: int
    best_run_id: str  # the entry's best-ranked run with a model (the report's curve, its Pareto tag)
    leader: bool = False
    tied: bool = False  # its interval overlaps the leader's: not told apart from the best
    scores: tuple[float, ...] = ()  # the seed runs' values (the one best run's without seeds)
    seed_device_hours: float = 0.0  # of one seed run, on average (0 without seed runs)
    # For a tied entry: seed runs per entry (it and the leader) that would separate the two at the
    # observed means and spreads, and the device-hours those extra runs would cost.
    seeds_to_separate: int | None = None
    separate_device_hours: float | None = None


# Accuracies at the range's edge (every seed 1.0) are moved this far inside before the logit: a
# continuity correction as for a proportion, about half an image of a few-hundred-image val split.
EDGE = 1e-3


def _to_scale(metric: str):
    """(forward, back) transforms onto the scale the interval is computed on: the logit for a
    metric in [0, 1] (accuracies), the log for one in [0, inf) (losses, times), none otherwise."""
    import math

    low, high = METRIC_RANGE.get(metric, (None, None))
    if low == 0.0 and high == 1.0:
        def forward(v):
            v = min(max(v, EDGE), 1.0 - EDGE)
            return math.log(v / (1.0 - v))
        return forward, lambda x: 1.0 / (1.0 + math.exp(-x))
    if low == 0.0 and high is None:
        return (lambda v: math.log(max(v, 1e-12))), math.exp
    return (lambda v: v), (lambda x: x)


def _t(n: int, confidence: float) -> float:
    from scipy import stats  # scipy comes with scikit-learn

    return float(stats.t.ppf(0.5 + confidence / 2, n - 1))


def interval(values: list[float], metric: str, confidence: float = 0.95
             ) -> tuple[float, float | None, float | None, float | None]:
    """(mean, sample std, low, high) of a metric over seed runs; std and the interval need two
    values. The interval is Student's t on the metric's own scale (`_to_scale`: logit for an
    accuracy, log for a loss), mapped back, so it stays inside the metric's range: with n = 3
    seeds a plain t interval of accuracies near 1 reaches past 1. The mean and std are the
    plain ones, as measured."""
    import statistics

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None, None
    std = statistics.stdev(values)
    forward, back = _to_scale(metric)
    scaled = [forward(v) for v in values]
    centre, spread = statistics.fmean(scaled), statistics.stdev(scaled)
    half = _t(len(values), confidence) * spread / len(values) ** 0.5
    return mean, std, back(centre - half), back(centre + half)


MAX_SEEDS = 1000  # past this, seeds will not tell two entries apart: "not within reach"


def seeds_to_separate(a: list[float], b: list[float], metric: str, confidence: float = 0.95) -> int | None:
    """How many seed runs per entry would make the intervals of `a` and `b` (seed runs of two
    entries) stop overlapping, if their means and spreads (on the interval's scale) stayed as
    observed; None when they cannot be told apart within MAX_SEEDS (equal means), or either has
    fewer than two runs."""
    import statistics

    if len(a) < 2 or len(b) < 2:
        return None
    forward, _ = _to_scale(metric)
    fa, fb = [forward(v) for v in a], [forward(v) for v in b]
    gap = abs(statistics.fmean(fa) - statistics.fmean(fb))
    spread = statistics.stdev(fa) + statistics.stdev(fb)
    if spread == 0.0:
        return None if gap == 0.0 else max(len(a), len(b))
    for n in range(2, MAX_SEEDS + 1):
        if _t(n, confidence) * spread / n ** 0.5 < gap:
            return n
    return None


def _base_name(name: str) -> str:
    return name.rsplit("-seed", 1)[0]


def entry_key(result: Result, by_arch: bool = False) -> Any:
    """What the leaderboard groups a result by: its model entry, or its arch (`by_arch`, and for
    runs that record no entry)."""
    return result.arch if by_arch or result.entry is None else result.entry


def leaderboard(results: list[Result], mode: str, by_arch: bool = False) -> list[Standing]:
    """One Standing per model entry (per arch with `by_arch`, e.g. over several sweeps), best
    first by mean in `mode`; the leader is marked, and so is every entry whose 95% interval
    overlaps the leader's (statistically tied with it)."""
    by_entry: dict[Any, list[Result]] = {}
    for r in results:
        by_entry.setdefault(entry_key(r, by_arch), []).append(r)
    standings = []
    for entry, rs in by_entry.items():
        scored = [r for r in rank(rs, mode) if r.has_model and r.score is not None]  # best first
        seeds = [r for r in scored if r.phase == "seeds"]
        best = (seeds or scored or [None])[0]
        if best is None:
            continue
        scores = [r.score for r in seeds] if seeds else [best.score]
        mean, std, low, high = interval(scores, best.metric)
        standings.append(Standing(entry, best.arch, _base_name(best.name), best.metric, mean, std, low, high,
                                  len(scores), best.params, best.flops, best.latency_ms, best.infer_imgs_per_s,
                                  sum(r.device_hours for r in rs), len(rs), scored[0].run_id, scores=tuple(scores),
                                  seed_device_hours=sum(r.device_hours for r in seeds) / len(seeds) if seeds else 0.0))
    sign = -1.0 if mode == "max" else 1.0
    standings.sort(key=lambda s: sign * s.mean)
    if not standings:
        return []
    top = standings[0]
    marked = [dataclasses.replace(top, leader=True, tied=True)]
    for s in standings[1:]:
        overlaps = (top.low is not None and s.low is not None and s.high >= top.low and s.low <= top.high)
        need = seeds_to_separate(list(top.scores), list(s.scores), s.metric) if overlaps else None
        cost = (max(0, need - top.n) * top.seed_device_hours + max(0, need - s.n) * s.seed_device_hours
                if need is not None else None)
        marked.append(dataclasses.replace(s, tied=overlaps, seeds_to_separate=need, separate_device_hours=cost))
    return marked
