"""What a sweep shows a person: the comparison table (terminal, CSV, markdown) and the plots
(learning curves, confusion matrix, accuracy vs size and speed). Pure formatting and drawing:
the rows come from tracking.py (MLflow), the histories from the trials. matplotlib draws with Agg
(no display anywhere we run)."""

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


def plot_scatter(rows: list[dict[str, Any]], x: str, path: str, xlabel: str, log_x: bool) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in rows:
        if r.get(x) and r.get("val_acc") is not None:
            ax.scatter(r[x], r["val_acc"], s=30)
            ax.annotate(r["name"], (r[x], r["val_acc"]), fontsize=7, alpha=0.8)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="val accuracy (best epoch)", title=f"val accuracy vs {xlabel}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Comparison table (shared by the parent run's artefacts and `orchestrate compare`)

# val_acc and epoch are the logged model's: the best epoch by the sweep's metric and mode.
COMPARE_COLUMNS = ("name", "arch", "knobs", "lr", "params", "flops", "val_acc", "epoch", "imgs_per_s",
                   "device_hours", "status", "run_id")


FORMATS = {"params": lambda v: f"{v / 1e6:.2f}M", "flops": lambda v: f"{v / 1e6:.0f}M",
           "val_acc": "{:.4f}".format, "imgs_per_s": "{:.0f}".format, "device_hours": "{:.4f}".format,
           "lr": "{:.4g}".format}


def format_rows(rows: list[dict]) -> list[list[str]]:
    return [["-" if r[k] is None else FORMATS.get(k, str)(r[k]) for k in COMPARE_COLUMNS] for r in rows]


def render(rows: list[dict], fmt: str) -> str:
    """The comparison table as text: `table` (aligned columns), `csv`, `json` (a list of row
    objects, numbers as numbers) or `markdown`."""
    import io
    import json

    if fmt == "json":
        return json.dumps([{k: r[k] for k in COMPARE_COLUMNS} for r in rows], indent=2)
    buffer = io.StringIO()
    if fmt == "csv":
        writer = csv.DictWriter(buffer, fieldnames=COMPARE_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    elif fmt == "markdown":
        buffer.write("| " + " | ".join(COMPARE_COLUMNS) + " |\n")
        buffer.write("|" + "---|" * len(COMPARE_COLUMNS) + "\n")
        for row in format_rows(rows):
            buffer.write("| " + " | ".join(row) + " |\n")
    else:
        print_table([COMPARE_COLUMNS] + format_rows(rows), stream=buffer)
    return buffer.getvalue()


FORMATS_OUT = ("table", "csv", "json", "markdown")


def write_comparison(rows: list[dict], folder: str) -> list[str]:
    """The parent run's artefacts: the table as CSV and markdown, and the two scatter plots."""
    paths = []
    for fmt, name in (("csv", "comparison.csv"), ("markdown", "comparison.md")):
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "w", newline="") as f:
            f.write(render(rows, fmt))
    if rows:
        p1, p2 = os.path.join(folder, "accuracy_vs_params.png"), os.path.join(folder, "accuracy_vs_imgs_per_s.png")
        plot_scatter(rows, "params", p1, "parameters", log_x=True)
        plot_scatter(rows, "imgs_per_s", p2, "training img/s", log_x=True)
        paths += [p1, p2]
    return paths
