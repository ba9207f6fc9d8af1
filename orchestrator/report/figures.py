"""The report's figures: matplotlib (Agg), each an SVG inlined as a data: URI (text as paths: no
font needed to view it, nothing fetched)."""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

from orchestrator import tables
from orchestrator.report.model import COSTS, EntryView, Frontier, ReportData, TrialPoint

FRONT_COLOUR, OFF_COLOUR = "#1f5fbf", "#b0b0b0"
ACCURACIES = ("val_acc", "val_top5", "train_acc", "best_val_acc")  # metrics that live in [0, 1]


def _svg_uri(fig) -> str:
    plt = tables._pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # text as paths: no font needed to view it
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_if_wide(ax, values: Sequence[float]) -> None:
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > 10:
        _log_axis(ax)


def _log_axis(ax) -> None:
    """A log x axis labelled 0.01, 0.02, 0.05, 0.1 ... (not 2x10^-2), without minor labels."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _metric_label(data: ReportData) -> str:
    return f"{data.metric} ({'higher' if data.mode == 'max' else 'lower'} is better)"


def plot_frontier(data: ReportData, frontier: Frontier) -> str:
    plt = tables._pyplot()
    cost, axis_label, _ = next(c for c in COSTS if c[0] == frontier.cost)
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.margins(x=0.1, y=0.08)
    drawn = [i for i in range(len(data.entries)) if i not in frontier.unmeasured]
    scale = 1e6 if cost in ("params", "flops") else 1.0
    rightmost = max((getattr(data.entries[i].standing, cost) / scale for i in drawn), default=0.0)
    for i in drawn:
        s = data.entries[i].standing
        on = i in frontier.members
        x = getattr(s, cost) / scale
        yerr = [[s.mean - s.low], [s.high - s.mean]] if s.low is not None else None
        ax.errorbar(x, s.mean, yerr=yerr, fmt="o", color=FRONT_COLOUR if on else OFF_COLOUR, ecolor=(
            FRONT_COLOUR if on else OFF_COLOUR), elinewidth=1, capsize=3, markersize=6, zorder=3 if on else 2)
        right = x >= rightmost and len(drawn) > 1  # its label to the left, inside the axes
        ax.annotate(data.entries[i].label, (x, s.mean), xytext=(-5 if right else 5, 4), textcoords="offset points",
                    fontsize=8, ha="right" if right else "left", color="#222222" if on else "#888888")
    front = [data.entries[i].standing for i in frontier.members]
    if len(front) > 1:
        ax.step([getattr(s, cost) / scale for s in front], [s.mean for s in front], where="post",
                color=FRONT_COLOUR, linewidth=1.2, alpha=0.8, zorder=1, label="Pareto frontier")
        ax.legend(fontsize=8, loc="best")
    _log_if_wide(ax, [getattr(data.entries[i].standing, cost) / scale for i in drawn])
    unit = " (millions)" if scale != 1.0 else ""
    ax.set(xlabel=axis_label + unit, ylabel=_metric_label(data))
    if data.metric in ACCURACIES:  # a 95% interval of two seeds can reach past 0 or 1: the axis does not
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))
    ax.grid(alpha=0.3)
    _margins(fig)
    return _svg_uri(fig)


def _margins(fig) -> None:
    """Fixed margins in inches (tick labels, axis labels, a panel title): tight_layout would
    measure every text and double the drawing time."""
    width_in, height_in = fig.get_size_inches()
    rows = len({ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_visible()}) or 1
    fig.subplots_adjust(left=0.75 / width_in, right=1 - 0.15 / width_in, bottom=0.55 / height_in,
                        top=1 - 0.3 / height_in, wspace=0.4, hspace=0.9 / (height_in / rows))


def _family_panels(data: ReportData, shown: Sequence[int], draw, xlabel: str, log_x: bool = False) -> str | None:
    """A figure with a panel per family holding any of the `shown` entries, `draw(ax, entry)`
    drawing each entry in its family's panel; None when no entry is shown."""
    families: dict[str, list[int]] = {}
    for i in shown:
        families.setdefault(data.entries[i].family, []).append(i)
    if not families:
        return None
    plt = tables._pyplot()
    cols = min(4, len(families))
    rows = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(families):]:
        ax.set_visible(False)
    for ax, (family, ix) in zip(flat, sorted(families.items())):
        for i in ix:
            draw(ax, data.entries[i])
        if log_x:
            _log_axis(ax)
        ax.set_title(family, fontsize=10)
        ax.set(xlabel=xlabel, ylabel=data.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _margins(fig)
    return _svg_uri(fig)


def plot_curves(data: ReportData) -> str | None:
    """Each entry's best run's metric per epoch, a panel per family."""
    def draw(ax, e: EntryView):
        ax.plot([p[0] for p in e.curve], [p[1] for p in e.curve], marker="o", markersize=3, label=e.label)

    return _family_panels(data, [i for i, e in enumerate(data.entries) if e.curve], draw, "epoch")


def plot_response(data: ReportData, knob: str) -> str | None:
    """Each entry's trials: the metric against lr (log axis), or against the width knob, for the
    entries whose trials tried more than one value; a panel per family. None when none did."""
    def value(t: TrialPoint):
        return t.lr if knob == "lr" else t.width

    def draw(ax, e: EntryView):
        shown = [t for t in e.trials if value(t) is not None]
        ax.scatter([value(t) for t in shown], [t.score for t in shown], s=18, label=e.label, alpha=0.85)

    varied = [i for i, e in enumerate(data.entries) if len({value(t) for t in e.trials if value(t) is not None}) > 1]
    return _family_panels(data, varied, draw, "learning rate" if knob == "lr" else "width", log_x=knob == "lr")


def plot_objectives(data: ReportData) -> str | None:
    """A sweep with search.objectives: every trial with a model, the first objective against each
    other one (a panel each), the Pareto set over all of them in blue (a step line through it with
    two objectives), the trial search.select picked ringed; None when no trial has every value."""
    drawn = [t for t in data.trials if all(v is not None for v in t.values)]
    if not drawn or len(data.objectives) < 2:
        return None
    plt = tables._pyplot()
    (first, first_dir), others = data.objectives[0], data.objectives[1:]
    fig, axes = plt.subplots(1, len(others), figsize=(5.2 * len(others), 4.0), squeeze=False)
    for k, ax in enumerate(axes[0], start=1):
        name, direction = others[k - 1]
        for on in (False, True):
            ts = [t for t in drawn if t.pareto == on]
            ax.scatter([t.values[k] for t in ts], [t.values[0] for t in ts], s=28 if on else 18,
                       color=FRONT_COLOUR if on else OFF_COLOUR, zorder=3 if on else 2,
                       label="Pareto set" if on else "dominated")
        for t in drawn:
            if t.pareto:
                ax.annotate(t.name, (t.values[k], t.values[0]), xytext=(4, 3), textcoords="offset points", fontsize=7,
                            color="#222222")
            if t.selected:
                ax.scatter([t.values[k]], [t.values[0]], s=140, facecolors="none", edgecolors="#d62728",
                           linewidths=1.5, zorder=4, label=f"@best ({data.select})")
        if len(others) == 1:
            front = sorted((t for t in drawn if t.pareto), key=lambda t: t.values[1] * (1 if direction == "min" else -1))
            if len(front) > 1:
                ax.step([t.values[1] for t in front], [t.values[0] for t in front], where="post", color=FRONT_COLOUR,
                        linewidth=1.2, alpha=0.8, zorder=1)
        _log_if_wide(ax, [t.values[k] for t in drawn])
        ax.set(xlabel=f"{name} ({'higher' if direction == 'max' else 'lower'} is better)",
               ylabel=f"{first} ({'higher' if first_dir == 'max' else 'lower'} is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    _margins(fig)
    return _svg_uri(fig)
