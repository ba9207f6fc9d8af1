"""What a sweep spent, per model entry, against its device-hour budget (`search.budget`): the
lines the summary prints and the parent run's record of it (artefact `spend.json`, metric
`device_hours_spent`, tag `budget_reached`), which the report reads back. No Ray, no torch; the
numbers come from the searcher (search.EntrySearch.spend), which decided what started.

A trial's device-hours are its wall time, from its trainable's start to its end, times the
devices it holds (schema.Resources.devices: its workers' GPUs with use_gpu, else their CPUs)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any, Iterable

from orchestrator.runs import Artifact

if TYPE_CHECKING:
    from mlflow import MlflowClient

METRIC = "device_hours_spent"  # parent run: the whole sweep's device-hours
REACHED_TAG = "budget_reached"  # parent run: "true" when the budget stopped trials from starting


@dataclasses.dataclass(frozen=True)
class Spend:
    """A sweep's spend: its budget (None: none set), whether it stopped new trials, each entry's row."""

    limit: float | None
    reached: bool
    entries: tuple[dict[str, Any], ...]  # entry, arch, device_hours, started, planned, not_started

    @property
    def device_hours(self) -> float:
        return sum(e["device_hours"] for e in self.entries)

    @property
    def not_started(self) -> int:
        return sum(e["not_started"] for e in self.entries)


def of(limit: float | None, reached: bool, rows: Iterable[Any]) -> Spend:
    """A Spend from the searcher's EntrySpend rows."""
    return Spend(limit, reached, tuple(dataclasses.asdict(r) for r in rows))


def lines(spend: Spend) -> list[str]:
    """The summary's lines: the sweep's total against its budget, then one line per entry."""
    head = (f"Device-hours: {spend.device_hours:.4g} spent" + (f" of a budget of {spend.limit:g}" if spend.limit
                                                                   else ""))
    if spend.reached:
        head += f"; the budget stopped new trials: {spend.not_started} trial(s) never started"
    out = [head + " (each trial's wall x the devices it held):"]
    for e in spend.entries:
        left = f", {e['not_started']} not started" if e["not_started"] else ""
        out.append(f"  models[{e['entry']}] {e['arch']}: {e['device_hours']:.4g} device-hours, "
                   f"{e['started']} of {e['planned']} trial(s) started{left}")
    return out


def log(client: MlflowClient, parent_run_id: str, spend: Spend) -> None:
    """The spend on the parent run (an extended or resumed sweep's replaces the earlier one)."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-spend-") as tmp:
        path = os.path.join(tmp, Artifact.SPEND)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(spend), f, indent=1)
        client.log_artifact(parent_run_id, path)
    client.log_metric(parent_run_id, METRIC, spend.device_hours)
    client.set_tag(parent_run_id, REACHED_TAG, "true" if spend.reached else "false")


def read(client: MlflowClient, parent_run_id: str) -> Spend | None:
    """The parent run's spend, or None (a sweep from before, or one that never recorded it)."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-spend-") as tmp:
        try:
            with open(client.download_artifacts(parent_run_id, Artifact.SPEND, tmp), encoding="utf-8") as f:
                raw = json.load(f)
            return Spend(raw["limit"], bool(raw["reached"]), tuple(raw["entries"]))
        except Exception:  # noqa: BLE001 - none recorded: the report leaves the section out
            return None
