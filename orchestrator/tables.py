"""Tables and per-run plots (the HTML report is orchestrator/report/): the comparison table and
the leaderboard (terminal, CSV, JSON, markdown) and the plots (learning curves, confusion matrix,
accuracy vs size and speed). Pure formatting and drawing: the rows are `runs.Result` records (read
from MLflow by runs.py), the histories the trials' epochs. matplotlib draws with Agg (no display
anywhere we run)."""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from typing import Any, Sequence

import numpy as np


def print_table(rows: list[Sequence[Any]], stream=None) -> None:
    """Left-aligned columns, a rule under the header row."""
    stream = stream or sys.stdout
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip(), file=stream)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=stream)


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    # Lazily: `orchestrate compare` prints tables and never needs matplotlib; Agg must be chosen
    # before pyplot is first imported.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: str, title: str) -> None:
    plt = _pyplot()
    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, [m[key] for m in history], marker="o", label=key)
    for key in ("train_acc", "val_acc"):
        ax_acc.plot(epochs, [m[key] for m in history], marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(info: dict[str, Any], path: str, title: str) -> None:
    plt = _pyplot()
    cm = np.array(info["confusion_matrix"], dtype=float)
    classes = info["classes"]
    norm = cm / np.clip(cm.sum(1, keepdims=True), 1, None)
    size = max(4, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 20:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_scatter(results: Sequence, x: str, path: str, xlabel: str, log_x: bool) -> None:
    """Each trial's model val accuracy against its `x` attribute (params, imgs_per_s)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in results:
        if getattr(r, x) and r.val_acc is not None:
            ax.scatter(getattr(r, x), r.val_acc, s=30)
            ax.annotate(r.name, (getattr(r, x), r.val_acc), fontsize=7, alpha=0.8)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="val accuracy (best epoch)", title=f"val accuracy vs {xlabel}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Tables (shared by the parent run's artefacts, the sweep's summary and `orchestrate compare`)


@dataclasses.dataclass(frozen=True)
class Table:
    """Column names and rows of plain values (numbers as numbers, None for none), rendered as
    `table` (aligned columns), `csv`, `json` (a list of row objects) or `markdown`."""

    columns: tuple[str, ...]
    rows: list[list[Any]]

    def text(self) -> list[list[str]]:
        return [["-" if v is None else FORMATS.get(c, str)(v) for c, v in zip(self.columns, row)]
                for row in self.rows]

    def render(self, fmt: str) -> str:
        import io
        import json

        if fmt == "json":
            return json.dumps([dict(zip(self.columns, row)) for row in self.rows], indent=2)
        buffer = io.StringIO()
        if fmt == "csv":
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(self.columns)
            writer.writerows([["" if v is None else v for v in row] for row in self.rows])
        elif fmt == "markdown":
            buffer.write("| " + " | ".join(self.columns) + " |\n")
            buffer.write("|" + "---|" * len(self.columns) + "\n")
            for row in self.text():
                buffer.write("| " + " | ".join(row) + " |\n")
        else:
            print_table([self.columns] + self.text(), stream=buffer)
        return buffer.getvalue()


FORMATS = {"params": lambda v: f"{v / 1e6:.2f}M", "flops": lambda v: f"{v / 1e6:.0f}M",
           "val_acc": "{:.4f}".format, "val_loss": "{:.4f}".format, "val_top5": "{:.4f}".format,
           "mean": "{:.4f}".format, "std": "{:.4f}".format, "ci95_low": "{:.4f}".format, "ci95_high": "{:.4f}".format,
           "imgs_per_s": "{:.0f}".format, "infer_imgs_per_s": "{:.0f}".format, "latency_ms": "{:.2f}".format,
           "device_hours": "{:.4f}".format, "lr": "{:.4g}".format, "pareto": lambda v: "yes" if v else "no"}

# One row per trial. val_acc, the sweep's own metric (when it is another) and epoch are the
# logged model's: the best epoch by the sweep's metric and mode. `epochs` is how many the trial
# trained, of how many planned: trials that trained to the full budget are ranked first.
# `pareto`: on the Pareto set of the sweep's search.objectives (blank without objectives).
COMPARE_COLUMNS = ("name", "arch", "knobs", "lr", "params", "flops", "val_acc", "epoch", "epochs", "imgs_per_s",
                   "latency_ms", "infer_imgs_per_s", "device_hours", "pareto", "status", "run_id")
# The columns that show an objective's value already (schema.OBJECTIVE_METRICS -> column); any
# other objective gets a column of its own, named after it, after the sweep's metric.
OBJECTIVE_COLUMNS = {"val_acc": "val_acc", "param_count": "params", "flops": "flops",
                     "infer_latency_b1_ms": "latency_ms", "infer_imgs_per_s": "infer_imgs_per_s"}


def trial_table(results: Sequence) -> Table:
    """The comparison table: COMPARE_COLUMNS, with the sweep's metric after val_acc when it ranks
    by another, then any objective no column shows; json rows also carry the ranking `metric` and
    its `score`, each objective's value and whether the trial is the `selected` one."""
    metric = results[0].metric if results else "val_acc"
    cols = COMPARE_COLUMNS
    extra = [metric] if metric not in cols else []
    extra += [name for name, _ in (results[0].objectives if results else ())
              if name not in OBJECTIVE_COLUMNS and name not in cols + tuple(extra)]
    at = cols.index("val_acc") + 1
    cols = cols[:at] + tuple(extra) + cols[at:]

    def value(r, c):
        if c == r.metric:
            return r.score
        if c == "epochs":
            return None if r.epochs is None else f"{r.epochs}/{r.epochs_planned}"
        if c in extra:
            return dict(r.objectives).get(c)
        return getattr(r, c)

    return Table(cols, [[value(r, c) for c in cols] for r in results])


def render(results: Sequence, fmt: str) -> str:
    """The comparison table as text (see Table.render); json rows carry `metric` and `score`."""
    if fmt == "json":
        import json

        table = trial_table(results)
        return json.dumps([{**dict(zip(table.columns, row)), "metric": r.metric, "score": r.score,
                            **({"objectives": dict(r.objectives), "selected": r.selected} if r.objectives else {})}
                           for row, r in zip(table.rows, results)], indent=2)
    return trial_table(results).render(fmt)


def pareto_line(results: Sequence) -> str:
    """What the `pareto` column means for these results (a sweep with search.objectives)."""
    names = ", ".join(name for name, _ in results[0].objectives)
    picked = next((r.name for r in results if r.selected), "none")
    return (f"pareto: on the Pareto set over {names} ({sum(bool(r.pareto) for r in results)} of "
            f"{sum(r.has_model for r in results)} trials with a model); search.select picked {picked}")


# One row per model entry: its best configuration and the metric over that configuration's seed
# runs (mean, sample std, 95% t interval of the mean, n). `rank`: the leader, and the entries whose
# interval overlaps the leader's (statistically tied with it).
LEADERBOARD_COLUMNS = ("rank", "entry", "arch", "config", "metric", "mean", "std", "ci95_low", "ci95_high", "n",
                       "params", "flops", "latency_ms", "infer_imgs_per_s", "device_hours", "trials",
                       "seeds_to_separate", "separate_device_hours")


def leaderboard_table(standings: Sequence) -> Table:
    def rank(s):
        return "leader" if s.leader else ("tied" if s.tied else "")

    return Table(LEADERBOARD_COLUMNS, [[rank(s), s.entry, s.arch, s.config, s.metric, s.mean, s.std, s.low, s.high,
                                        s.n, s.params, s.flops, s.latency_ms, s.infer_imgs_per_s, s.device_hours,
                                        s.trials, s.seeds_to_separate, s.separate_device_hours] for s in standings])


def write_comparison(results: Sequence, standings: Sequence, folder: str) -> list[str]:
    """The parent run's artefacts: the trial table and the leaderboard as CSV and markdown, and
    the two scatter plots."""
    paths = []
    for table, stem in ((trial_table(results), "comparison"), (leaderboard_table(standings), "leaderboard")):
        for fmt, ext in (("csv", "csv"), ("markdown", "md")):
            paths.append(os.path.join(folder, f"{stem}.{ext}"))
            with open(paths[-1], "w", newline="") as f:
                f.write(table.render(fmt))
    if results:
        p1, p2 = os.path.join(folder, "accuracy_vs_params.png"), os.path.join(folder, "accuracy_vs_imgs_per_s.png")
        plot_scatter(results, "params", p1, "parameters", log_x=True)
        plot_scatter(results, "imgs_per_s", p2, "training img/s", log_x=True)
        paths += [p1, p2]
    return paths
