"""The report page: a ReportData and its figures -> one self-contained HTML file, through the
Jinja2 template beside this module (templates/report.html.j2) with autoescape on, so every value
from the store (run names, knobs, the sweep file) is escaped by Jinja2, never by hand. CSS is in
the page, figures are data: images, no script, nothing fetched when it is viewed (its
Content-Security-Policy forbids it too)."""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

from orchestrator.report import figures
from orchestrator.report.model import COSTS, NEAR_BEST_FOR_LATENCY, NEAR_BEST_FOR_SIZE, ReportData
from orchestrator.runs import Tag

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
# No script, nothing fetched: images are data: URIs, the style is in the page.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


@functools.cache
def _template():
    import jinja2  # comes with MLflow (Flask); only a report pays for it

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("report.html.j2")


@functools.cache
def _style() -> str:
    with open(os.path.join(TEMPLATES, "report.css"), encoding="utf-8") as f:
        return f.read()


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


@dataclasses.dataclass(frozen=True)
class Row:
    """One leaderboard row, its numbers as the page shows them."""

    label: str
    config: str
    leader: bool
    tied: bool
    mean: str
    interval: str
    n: int
    params: str
    flops: str
    latency: str
    throughput: str
    device_hours: str
    trials: str
    frontier: str


@dataclasses.dataclass(frozen=True)
class FrontierFigure:
    cost: str
    label: str
    uri: str
    members: tuple[str, ...]
    unmeasured: tuple[str, ...]


def view(data: ReportData) -> dict[str, Any]:
    """What the template shows beyond ReportData itself: formatted rows, drawn figures, notes."""
    on_front: dict[int, list[str]] = {}
    for f in data.frontiers:
        for i in f.members:
            on_front.setdefault(i, []).append(next(c[2] for c in COSTS if c[0] == f.cost))
    rows = []
    for i, e in enumerate(data.entries):
        s = e.standing
        rows.append(Row(
            label=e.label, config=s.config, leader=s.leader, tied=s.tied,
            mean=_num(s.mean, "{:.4f}") + (f" ± {s.std:.4f}" if s.std is not None else ""),
            interval=f"{s.low:.4f} – {s.high:.4f}" if s.low is not None else "-", n=s.n,
            params=_num(s.params and s.params / 1e6, "{:.2f} M"), flops=_num(s.flops and s.flops / 1e6, "{:.0f} M"),
            latency=_num(s.latency_ms, "{:.2f}"), throughput=_num(s.infer_imgs_per_s, "{:,.0f}"),
            device_hours=f"{s.device_hours:.4f}",
            trials=f"{e.search_trials}" + (f" + {e.seed_trials} seeds" if e.seed_trials else ""),
            frontier=", ".join(on_front.get(i, []))))
    budget = [f"{e.label}: {e.search_trials} search" + (f" + {e.seed_trials} seed" if e.seed_trials else "")
              + " trial(s)" + (f" ({e.failed_trials} without a model)" if e.failed_trials else "") for e in data.entries]
    out: dict[str, Any] = {"rows": rows, "budget": budget, "direction": "higher" if data.mode == "max" else "lower",
                           "near_latency": f"{NEAR_BEST_FOR_LATENCY:.0%}", "near_size": f"{NEAR_BEST_FOR_SIZE:.0%}",
                           "pareto_tag": Tag.PARETO}
    if data.empty:
        return out
    out["seeds_note"] = ("mean ± sample std over the best configuration's seed runs, 95% Student-t interval of the "
                         "mean (on the metric's own scale: it stays inside the metric's range); "
                         if any(e.standing.n > 1 for e in data.entries) else
                         "one run per entry (no seed runs: set search.seeds >= 2 for a spread and an interval); ")
    out["frontiers"] = [FrontierFigure(f.cost, label, figures.plot_frontier(data, f),
                                       tuple(data.entries[i].label for i in f.members),
                                       tuple(data.entries[i].label for i in f.unmeasured))
                        for f, (_, label, _) in zip(data.frontiers, COSTS)]
    if data.objectives:
        out["objectives"] = ", ".join(f"{m} ({'higher' if d == 'max' else 'lower'} is better)"
                                      for m, d in data.objectives)
        out["pareto_figure"] = figures.plot_objectives(data)
        out["pareto_members"] = [t.name for t in data.trials if t.pareto]
        out["selected"] = next((t.name for t in data.trials if t.selected), None)
    out["curves"] = figures.plot_curves(data)
    out["lr"] = figures.plot_response(data, "lr")
    out["width"] = figures.plot_response(data, "width")
    out["single_lr"] = [f"{e.label} ({e.trials[0].lr:g})" for e in data.entries
                        if len({t.lr for t in e.trials}) == 1 and e.trials[0].lr is not None]
    return out


def render(data: ReportData) -> str:
    """The whole page."""
    from markupsafe import Markup  # jinja2's: our own constants go in as they are, not escaped

    # The style sits in a <style> element, where an escaped quote would stay escaped.
    return _template().render(data=data, v=view(data), csp=Markup(CSP), style=Markup(_style())) + "\n"


def write(data: ReportData, path: str) -> str:
    """The page at `path`, written whole or not at all; its absolute path."""
    path = os.path.abspath(path)
    page = render(data)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
