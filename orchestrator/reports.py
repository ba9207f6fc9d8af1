"""What a sweep shows a person: the comparison table (terminal, CSV, markdown) and the plots
(learning curves, confusion matrix, accuracy vs size and speed). Pure formatting and drawing: the
rows are `runs.Result` records (read from MLflow by runs.py), the histories the trials' epochs.
matplotlib draws with Agg (no display anywhere we run)."""

from __future__ import annotations

import csv
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
# Comparison table (shared by the parent run's artefacts and `orchestrate compare`)

# val_acc, the sweep's own metric (when it is another) and epoch are the logged model's: the best
# epoch by the sweep's metric and mode. `epochs` is how many the trial trained, of how many planned.
COMPARE_COLUMNS = ("name", "arch", "knobs", "lr", "params", "flops", "val_acc", "epoch", "epochs", "imgs_per_s",
                   "device_hours", "status", "run_id")


FORMATS = {"params": lambda v: f"{v / 1e6:.2f}M", "flops": lambda v: f"{v / 1e6:.0f}M",
           "val_acc": "{:.4f}".format, "val_loss": "{:.4f}".format, "val_top5": "{:.4f}".format,
           "imgs_per_s": "{:.0f}".format, "device_hours": "{:.4f}".format, "lr": "{:.4g}".format}


def columns(results: Sequence) -> tuple[str, ...]:
    """COMPARE_COLUMNS, with the sweep's metric after val_acc when it ranks by another."""
    metric = results[0].metric if results else "val_acc"
    if metric in COMPARE_COLUMNS:
        return COMPARE_COLUMNS
    at = COMPARE_COLUMNS.index("val_acc") + 1
    return COMPARE_COLUMNS[:at] + (metric,) + COMPARE_COLUMNS[at:]


def value(result, column: str) -> Any:
    """A result's value for a table column (data, not text)."""
    if column == result.metric:
        return result.score
    if column == "epochs":
        return None if result.epochs is None else f"{result.epochs}/{result.epochs_planned}"
    return getattr(result, column)


def format_rows(results: Sequence, cols: Sequence[str] | None = None) -> list[list[str]]:
    cols = cols or columns(results)
    return [["-" if value(r, c) is None else FORMATS.get(c, str)(value(r, c)) for c in cols] for r in results]


def render(results: Sequence, fmt: str) -> str:
    """The comparison table as text: `table` (aligned columns), `csv`, `json` (a list of row
    objects, numbers as numbers, with the ranking `metric` and its `score`) or `markdown`."""
    import io
    import json

    cols = columns(results)
    if fmt == "json":
        return json.dumps([{**{c: value(r, c) for c in cols}, "metric": r.metric, "score": r.score}
                           for r in results], indent=2)
    buffer = io.StringIO()
    if fmt == "csv":
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(cols)
        writer.writerows([["" if value(r, c) is None else value(r, c) for c in cols] for r in results])
    elif fmt == "markdown":
        buffer.write("| " + " | ".join(cols) + " |\n")
        buffer.write("|" + "---|" * len(cols) + "\n")
        for row in format_rows(results, cols):
            buffer.write("| " + " | ".join(row) + " |\n")
    else:
        print_table([cols] + format_rows(results, cols), stream=buffer)
    return buffer.getvalue()


def write_comparison(results: Sequence, folder: str) -> list[str]:
    """The parent run's artefacts: the table as CSV and markdown, and the two scatter plots."""
    paths = []
    for fmt, name in (("csv", "comparison.csv"), ("markdown", "comparison.md")):
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "w", newline="") as f:
            f.write(render(results, fmt))
    if results:
        p1, p2 = os.path.join(folder, "accuracy_vs_params.png"), os.path.join(folder, "accuracy_vs_imgs_per_s.png")
        plot_scatter(results, "params", p1, "parameters", log_x=True)
        plot_scatter(results, "imgs_per_s", p2, "training img/s", log_x=True)
        paths += [p1, p2]
    return paths
