"""The report's data from a store: `collect(client, experiment, parent_run_id)` reads one sweep
(or every sweep of an experiment) from MLflow into a ReportData through runs.py's queries, and
`publish` is what a sweep does when it ends: the page as the parent run's `report.html`, and the
tag Tag.PARETO=true on the runs the frontiers name, so the MLflow UI can filter them
(`tags.orchestrate.pareto = 'true'`)."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import tempfile
from typing import TYPE_CHECKING, Any, Iterable

from orchestrator import runs, spend
from orchestrator.report.model import (EntryView, ObjectivePoint, Provenance, ReportData, TrialPoint, answers,
                                       frontiers, labels_of)
from orchestrator.report.page import write
from orchestrator.runs import Result, Tag
from orchestrator.schema import PHASE_SEEDS, mask

if TYPE_CHECKING:  # the callers hand in their client
    from mlflow import MlflowClient

REPORT_FILE = "report.html"  # the parent run's artefact
SWEEP_FILE_CHARS = 200_000  # a longer sweep file is shown cut
DATE_FORMAT = "%Y-%m-%d %H:%M UTC"


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "None") else None
    except ValueError:
        return None


def _date(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(DATE_FORMAT)


def _distinct(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))


def _sweep_file(client: MlflowClient, parent) -> tuple[str | None, str | None]:
    """The sweep file's name and its text as the parent run holds it (uploaded masked; masked
    again here, in case a store predates that)."""
    path = parent.data.tags.get(Tag.SWEEP_FILE)
    if not path:
        return None, None
    name = os.path.basename(path)
    with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as tmp:
        try:
            local = client.download_artifacts(parent.info.run_id, name, tmp)
            with open(local, encoding="utf-8", errors="replace") as f:
                text = f.read(SWEEP_FILE_CHARS + 1)
        except Exception:  # noqa: BLE001 - a missing or unreadable artefact: the page says so
            return name, None
    if len(text) > SWEEP_FILE_CHARS:
        text = text[:SWEEP_FILE_CHARS] + f"\n... (cut at {SWEEP_FILE_CHARS} characters)"
    return name, mask(text)


def collect(client: MlflowClient, experiment_id: str, parent_run_id: str | None,
            trial_runs: list | None = None) -> ReportData:
    """The page's data for one sweep (its parent run), or for every sweep of the experiment
    (`parent_run_id` None: one row per arch, as `compare --all-sweeps --by arch`). `trial_runs`:
    that scope's trial runs, where the caller has them already."""
    experiment = client.get_experiment(experiment_id).name
    if trial_runs is None:
        trial_runs = runs.trial_runs(client, experiment_id, parent_run_id)
    metric, mode = runs.selection(client, parent_run_id, trial_runs)
    by_id = {r.info.run_id: r for r in trial_runs}
    results = runs.read_results(trial_runs, metric, mode)
    by_arch = parent_run_id is None
    ranked = runs.leaderboard(results, mode, by_arch=by_arch)
    # An entry all of whose trials were priced over search.constraints has no model: counted in
    # the budget line, in no table or figure.
    standings = [s for s in ranked if s.mean is not None]
    unpriced = tuple(f"{s.arch}: {s.trials} trial(s), all infeasible (priced over search.constraints, never trained)"
                     for s in ranked if s.mean is None)
    if parent_run_id:
        parents = [client.get_run(parent_run_id)]
        scope = f"sweep run {parents[0].info.run_name} ({parent_run_id})"
    else:
        parents = runs.sweep_runs(client, experiment_id)
        scope = f"all {len(parents)} sweep(s)"
    labels = labels_of(standings)
    groups: dict[Any, list[Result]] = {}
    for r in results:
        groups.setdefault(runs.entry_key(r, by_arch), []).append(r)
    entries = []
    for s, label in zip(standings, labels):
        rs = groups[s.entry]
        # One metric's history (step = epoch), not runs.history's every metric: a call per entry.
        curve = tuple(sorted((int(m.step), float(m.value)) for m in client.get_metric_history(s.best_run_id, metric)))
        points = tuple(TrialPoint(r.lr, _number(by_id[r.run_id].data.params.get("knobs.width")), r.score)
                       for r in rs if r.has_model and r.score is not None)
        family = by_id[s.best_run_id].data.tags.get(Tag.FAMILY, s.arch)
        entries.append(EntryView(
            s, label, family, curve, points,
            search_trials=sum(r.phase != PHASE_SEEDS for r in rs), seed_trials=sum(r.phase == PHASE_SEEDS for r in rs),
            failed_trials=sum(not r.has_model for r in rs)))
    statuses = collections.Counter(r.status for r in results)
    search = runs.objectives(trial_runs)
    points = tuple(ObjectivePoint(r.name, r.run_id, tuple(v for _, v in r.objectives), bool(r.pareto), r.selected)
                   for r in results if r.pareto is not None and r.has_model)
    return ReportData(
        experiment=experiment, scope=scope, metric=metric, mode=mode, entries=tuple(entries),
        frontiers=frontiers(standings, mode), answers=tuple(answers(standings, labels, metric, mode)),
        provenance=read_provenance(client, parents, trial_runs), statuses=tuple(sorted(statuses.items())),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime(DATE_FORMAT),
        objectives=tuple(search.objectives.items()) if search else (), select=search.select if search else "first",
        trials=points, spend=spend.read(client, parent_run_id) if parent_run_id else None,
        infeasible_entries=unpriced)


def _pairs(section) -> tuple[tuple[str, str], ...]:
    """A section of the sweep's settings as the page lists it: (key, value) pairs, sorted, a mapping
    flattened as in the params (objectives.val_acc)."""
    return tuple(sorted((k, str(v)) for k, v in runs.flatten(dataclasses.asdict(section)).items())) if section else ()


def read_provenance(client: MlflowClient, parents: list, trial_runs: list) -> Provenance:
    latest = parents[0] if parents else None  # newest first
    settings = runs.decode_sweep(latest) if latest else runs.SweepSettings()
    name, text = _sweep_file(client, latest) if latest else (None, None)
    child = [r.data.params for r in trial_runs]
    return Provenance(
        sweeps=tuple(f"{p.info.run_name} ({p.info.run_id})" for p in parents),
        sweep_file_name=name, sweep_file_text=text, train=_pairs(settings.train), search=_pairs(settings.search),
        dataset=(settings.dataset.name if settings.dataset else None)
        or next((p["dataset.name"] for p in child if "dataset.name" in p), None),
        image_sizes=_distinct(p.get("dataset.image_size") for p in child),
        dataset_digests=_distinct(p.get("dataset_digest") for p in child),
        git_commits=_distinct([p.data.tags.get("mlflow.source.git.commit") for p in parents]
                              + [r.data.tags.get("mlflow.source.git.commit") for r in trial_runs]),
        versions=tuple((k.split("_")[0], ", ".join(_distinct(p.get(k) for p in child))) for k in runs.LIBRARY_VERSIONS
                       if any(p.get(k) for p in child)),
        devices=_distinct(p.get("device_name") for p in child),
        infer_devices=_distinct(p.get("infer_device") for p in child),
        started=_date(min((p.info.start_time for p in parents if p.info.start_time), default=None)),
        ended=_date(max((p.info.end_time for p in parents if p.info.end_time), default=None)))


def publish(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_runs: list | None = None) -> ReportData:
    """At a sweep's end: the report as the parent run's `report.html` (a page saying so when no
    trial completed), and Tag.PARETO=true on the frontier runs (taken off runs of this sweep that
    a resumed sweep's frontier no longer names). `trial_runs`: the sweep's trial runs, where the
    caller has read them already."""
    if trial_runs is None:
        trial_runs = runs.trial_runs(client, experiment_id, parent_run_id)
    data = collect(client, experiment_id, parent_run_id, trial_runs)
    # The sweep ends as its report is written (the parent run is marked finished just after).
    data = dataclasses.replace(data, provenance=dataclasses.replace(data.provenance, ended=data.generated))
    with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as tmp:
        client.log_artifact(parent_run_id, write(data, os.path.join(tmp, REPORT_FILE)))
    on = set(data.frontier_runs())
    for run in trial_runs:
        if run.info.run_id in on:
            client.set_tag(run.info.run_id, Tag.PARETO, "true")
        elif run.data.tags.get(Tag.PARETO):
            client.delete_tag(run.info.run_id, Tag.PARETO)
    return data
