"""Everything MLflow. One process writes: the sweep driver, through a Ray Tune callback that sees
every trial's per-epoch results (and checkpoint paths) as Tune receives them. Workers never talk to
MLflow, so a run on a many-node cluster needs only the driver to reach the tracking server.

Layout (what a user sees in the UI):
- experiment = the sweep file's `name`;
- parent run `sweep-<timestamp>`: the sweep file, comparison table (CSV + markdown), plots of
  accuracy vs params and vs img/s;
- one nested child run per trial, `<arch>-<knobs>-lr<lr>`: params, per-epoch metrics (step =
  epoch, each logged once), tags (arch, trial_id, status), learning curves, confusion matrix, the
  final model (mlflow.pytorch) and the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "imgs_per_s", "epoch_s")
STATUS_TAG = "status"  # completed | early-stopped | failed | running


def run_name(arch: str, knobs: dict[str, Any], lr: float) -> str:
    parts = [arch] + [f"{k}{_short(v)}" for k, v in sorted(knobs.items())] + [f"lr{_short(lr)}"]
    return "-".join(parts)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def log_torch_model(model, pip_requirements: list[str], metadata: dict[str, Any]) -> str:
    """Log `model` (eval mode, CPU, 32x32 RGB input) as the active run's `model`. Preferred format:
    MLflow's "pt2" (torch.export): no pickle, loads with torch alone (no `archs` import), and the
    batch dimension stays dynamic because the example holds two images. A model torch.export cannot
    trace falls back to the pickled module, with a warning. Returns the format used."""
    import warnings

    import mlflow.pytorch
    import numpy as np

    example = np.zeros((2, 3, 32, 32), dtype=np.float32)  # batch 2: a size-1 batch would be exported static
    try:
        mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=pip_requirements,
                                 serialization_format="pt2", metadata=metadata)
        return "pt2"
    except Exception as e:  # noqa: BLE001 - torch.export raises many types; the pickled module still works
        warnings.warn(f"torch.export could not trace {type(model).__name__} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); logging the pickled module instead", stacklevel=2)
    mlflow.pytorch.log_model(model, name="model", input_example=example, pip_requirements=pip_requirements,
                             serialization_format="pickle", metadata=metadata)
    return "pickle"


def library_versions() -> dict[str, str]:
    import ray
    import torch
    import torchvision

    return {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "ray_version": ray.__version__, "mlflow_version": mlflow.__version__}


def git_commit(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(path)) or ".", "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_reachable(uri: str, timeout_s: float = 5.0) -> str | None:
    """None if the tracking store answers, else a one-line reason. HTTP servers get a health
    probe with a short timeout (MLflow's own client retries for minutes)."""
    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                return None if r.status == 200 else f"{uri}/health answered {r.status}"
        except Exception as e:  # noqa: BLE001 - any failure means unreachable
            return f"{uri} is unreachable ({getattr(e, 'reason', e)})"
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///"):]) or "."
        if not os.path.isdir(folder):
            return f"{uri}: folder {folder} does not exist"
    return None


def artifact_location_for(uri: str, experiment: str) -> str | None:
    """For a local sqlite store, keep artefacts beside the database (not in whatever directory the
    process happened to start in)."""
    if uri.startswith("sqlite:///"):
        root = os.path.dirname(os.path.abspath(uri[len("sqlite:///"):]))
        return "file://" + os.path.join(root, "mlartifacts")
    return None  # a server decides (proxied artefacts)


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location_for(uri, name))


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg: no display anywhere we run)


def _pyplot():
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
    import numpy as np

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
        if r.get(x) and r.get("best_val_acc") is not None:
            ax.scatter(r[x], r["best_val_acc"], s=30)
            ax.annotate(r["name"], (r[x], r["best_val_acc"]), fontsize=7, alpha=0.8)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="best val accuracy", title=f"best val accuracy vs {xlabel}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Comparison table (shared by the parent run's artefacts and `orchestrate compare`)

COMPARE_COLUMNS = ("name", "arch", "knobs", "lr", "params", "flops", "best_val_acc", "imgs_per_s",
                   "device_hours", "status", "run_id")


def comparison_rows(client: MlflowClient, experiment_id: str, parent_run_id: str | None = None) -> list[dict]:
    """One row per trial run (child runs; of `parent_run_id` when given), best val accuracy first."""
    query = "tags.`orchestrate.role` = 'trial'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=5000)
    rows = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        knobs = {k[len("knobs."):]: v for k, v in p.items() if k.startswith("knobs.")}
        seconds = float(t.get("train_seconds", 0) or 0)
        world = float(p.get("world_size", 1) or 1)
        rows.append({
            "name": r.info.run_name, "arch": t.get("arch", ""),
            "knobs": " ".join(f"{k}={v}" for k, v in sorted(knobs.items())),
            "lr": float(p["lr"]) if "lr" in p else None,
            "params": int(p["param_count"]) if "param_count" in p else None,
            "flops": int(p["flops"]) if "flops" in p else None,
            "best_val_acc": m.get("best_val_acc"), "imgs_per_s": m.get("imgs_per_s"),
            "device_hours": seconds * world / 3600.0, "status": t.get(STATUS_TAG, ""),
            "run_id": r.info.run_id,
        })
    rows.sort(key=lambda row: -(row["best_val_acc"] or -1.0))
    return rows


def format_rows(rows: list[dict]) -> list[list[str]]:
    def fmt(key, v):
        if v is None:
            return "-"
        if key == "params":
            return f"{v / 1e6:.2f}M"
        if key == "flops":
            return f"{v / 1e6:.0f}M"
        if key == "best_val_acc":
            return f"{v:.4f}"
        if key == "imgs_per_s":
            return f"{v:.0f}"
        if key == "device_hours":
            return f"{v:.4f}"
        if key == "lr":
            return f"{v:.4g}"
        return str(v)

    return [[fmt(k, r[k]) for k in COMPARE_COLUMNS] for r in rows]


def write_comparison(rows: list[dict], folder: str) -> list[str]:
    import csv

    csv_path = os.path.join(folder, "comparison.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COMPARE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    md_path = os.path.join(folder, "comparison.md")
    table = format_rows(rows)
    with open(md_path, "w") as f:
        f.write("| " + " | ".join(COMPARE_COLUMNS) + " |\n")
        f.write("|" + "---|" * len(COMPARE_COLUMNS) + "\n")
        for row in table:
            f.write("| " + " | ".join(row) + " |\n")
    paths = [csv_path, md_path]
    if rows:
        p1, p2 = os.path.join(folder, "accuracy_vs_params.png"), os.path.join(folder, "accuracy_vs_imgs_per_s.png")
        plot_scatter(rows, "params", p1, "parameters", log_x=True)
        plot_scatter(rows, "imgs_per_s", p2, "training img/s", log_x=True)
        paths += [p1, p2]
    return paths


# ---------------------------------------------------------------------------------------------


class SweepTracker:
    """The parent run of one sweep and the bookkeeping for its child runs."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None):
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        self.experiment_id = get_or_create_experiment(self.client, experiment, uri)
        self.parent_run_id = parent_run_id

    def start_parent(self, sweep_file: str, spec_params: dict[str, Any]) -> str:
        name = time.strftime("sweep-%Y%m%d-%H%M%S")
        tags = {"orchestrate.role": "sweep", "sweep_file": os.path.abspath(sweep_file)}
        commit = git_commit(sweep_file)
        if commit:
            tags["git_commit"] = commit
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(spec_params).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.parent_run_id, params=params[i:i + 100])
        self.client.log_artifact(self.parent_run_id, sweep_file)
        return self.parent_run_id

    def finish_parent(self, status: str = "FINISHED") -> list[dict]:
        rows = comparison_rows(self.client, self.experiment_id, self.parent_run_id)
        with tempfile.TemporaryDirectory() as tmp:
            for path in write_comparison(rows, tmp):
                self.client.log_artifact(self.parent_run_id, path)
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        self.client.log_batch(self.parent_run_id, tags=[RunTag(f"trials_{k}", str(v)) for k, v in counts.items()])
        self.client.set_terminated(self.parent_run_id, status)
        return rows

    def find_child(self, trial_id: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.trial_id = '{trial_id}'",
            max_results=1)
        return runs[0] if runs else None

    def start_child(self, trial_id: str, model: dict[str, Any], train: dict[str, Any],
                    dataset: dict[str, Any], resources: dict[str, Any]) -> tuple[str, int, bool]:
        """The child run for `trial_id` (created, or found again after a restore), the last epoch
        it already holds (so a resumed trial never logs a step twice), and whether it is already
        finished (a completed trial that Tune's last snapshot had not yet seen end: leave it be)."""
        existing = self.find_child(trial_id)
        if existing is not None:
            history = self.client.get_metric_history(existing.info.run_id, "val_acc")
            last = max((m.step for m in history), default=0)
            if existing.data.tags.get(STATUS_TAG) in ("completed", "early-stopped"):
                return existing.info.run_id, last, True
            if existing.info.status != "RUNNING":
                self.client.update_run(existing.info.run_id, status="RUNNING")
            self.client.set_tag(existing.info.run_id, STATUS_TAG, "running")
            return existing.info.run_id, last, False
        import archs

        from orchestrator.engine_config import TrainConfig

        train = dataclasses.asdict(TrainConfig(**train))  # log the resolved config, defaults included
        knobs = archs.validate(model["arch"], model.get("knobs") or {})
        built = archs.create(model["arch"], num_classes=10, **knobs)
        name = run_name(model["arch"], model.get("knobs") or {}, train["lr"])
        tags = {"mlflow.parentRunId": self.parent_run_id, "orchestrate.role": "trial", "arch": model["arch"],
                "family": archs.get(model["arch"]).family, "trial_id": trial_id, STATUS_TAG: "running"}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        params = {"arch": model["arch"], **{f"knobs.{k}": v for k, v in knobs.items()}, **train,
                  **{f"dataset.{k}": v for k, v in dataset.items()},
                  **{f"resources.{k}": v for k, v in resources.items()},
                  "world_size": resources["num_workers"], "param_count": archs.count_params(built),
                  "flops": archs.count_flops(built), **library_versions()}
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return run.info.run_id, 0, False

    def log_epoch(self, run_id: str, metrics: dict[str, Any]) -> None:
        step = int(metrics["epoch"])
        now = int(time.time() * 1000)
        batch = [Metric(k, float(metrics[k]), now, step) for k in EPOCH_METRICS + ("best_val_acc",)
                 if k in metrics]
        self.client.log_batch(run_id, metrics=batch)

    def finish_child(self, run_id: str, status: str, history: list[dict[str, Any]],
                     last_checkpoint: str | None, best_checkpoint: str | None, error: str | None = None) -> None:
        tags = [RunTag(STATUS_TAG, status)]
        if history:
            tags.append(RunTag("train_seconds", f"{sum(m.get('train_s', 0.0) for m in history):.3f}"))
            tags.append(RunTag("epochs_completed", str(int(history[-1]["epoch"]))))
        if error:
            tags.append(RunTag("error", error[:4000]))
        self.client.log_batch(run_id, tags=tags)
        with tempfile.TemporaryDirectory() as tmp:
            title = self.client.get_run(run_id).info.run_name
            if history:
                path = os.path.join(tmp, "curves.png")
                plot_curves(history, path, title)
                self.client.log_artifact(run_id, path)
            if best_checkpoint and os.path.isdir(best_checkpoint):
                eval_file = os.path.join(best_checkpoint, "eval.json")
                if os.path.exists(eval_file):
                    with open(eval_file) as f:
                        info = json.load(f)
                    path = os.path.join(tmp, "confusion_matrix.png")
                    plot_confusion(info, path, f"{title} (best epoch, val)")
                    self.client.log_artifact(run_id, path)
                    self.client.log_dict(run_id, info, "per_class_accuracy.json")
                self.client.log_artifacts(run_id, best_checkpoint, "best_checkpoint")
            if last_checkpoint and os.path.isdir(last_checkpoint) and status != "failed":
                self.log_model(run_id, last_checkpoint)
        self.client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")

    def log_model(self, run_id: str, checkpoint_dir: str) -> None:
        import torch
        import torchvision

        from orchestrator import engine

        model, meta = engine.load_model(checkpoint_dir)
        # Explicit requirements: MLflow's inference imports the model in a subprocess (slow).
        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=run_id):
            fmt = log_torch_model(model, reqs, {k: meta[k] for k in ("arch", "knobs", "classes", "mean", "std", "epoch")})
            mlflow.set_tag("model_format", fmt)
            mlflow.log_dict(meta, "model_meta.json")
