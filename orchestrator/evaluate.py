"""`orchestrate evaluate RUN_ID`: load a trial's logged MLflow model and score it on a split.

The dataset defaults to the run's own (its `dataset.*` params), so `--split val` rebuilds the exact
validation split the trial was selected on, and `--split test` scores the held-out test split that
selection never saw. Normalisation comes from the model's own metadata (the training split's
statistics), never recomputed from the evaluation data.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.exceptions import MlflowException

from orchestrator import data, engine, schema
from orchestrator.schema import DataSpec


class EvaluateError(ValueError):
    pass


def run_dataset(params: dict[str, str]) -> DataSpec:
    """The DataSpec a run trained on, from its `dataset.*` params (typed by the schema's fields)."""
    values = {}
    for name, (typ, _) in schema.field_types(DataSpec).items():
        raw = params.get(f"dataset.{name}")
        if raw is not None and raw != "None":
            values[name] = raw == "True" if typ is bool else typ(raw)
    return DataSpec(**values)


def evaluate_run(run_id: str, tracking_uri: str, *, dataset: str | None = None, root: str | None = None,
                 split: str = "test", batch_size: int = 256, device: str | None = None) -> dict[str, Any]:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise EvaluateError(f"no run {run_id!r} in {tracking_uri}") from None
    params = run.data.params
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pytorch.load_model(f"runs:/{run_id}/model", map_location="cpu")
        meta = json.loads(open(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="model_meta.json", tracking_uri=tracking_uri)).read())
    except (MlflowException, OSError) as e:
        raise EvaluateError(f"run {run_id} has no logged model ({str(e).splitlines()[0]})") from None

    if dataset is not None and dataset != params.get("dataset.name"):
        spec = DataSpec(name=dataset, root=root)  # other data: its own defaults
    else:
        spec = run_dataset(params)
        if root:
            spec = dataclasses.replace(spec, root=root)
    name = spec.name
    try:
        splits = data.load_splits(spec)
    except data.DataError as e:
        raise EvaluateError(str(e)) from None
    subset = getattr(splits, split)
    if subset is None:
        raise EvaluateError(f"{name} has no {split} split; use --split val")
    if splits.num_classes != len(meta["classes"]):
        raise EvaluateError(f"{name} has {splits.num_classes} classes, the model {len(meta['classes'])}")

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = data.eval_loader(subset, tuple(meta["mean"]), tuple(meta["std"]), batch_size)
    metrics, _ = engine.evaluate_batches(model.to(dev), loader, len(meta["classes"]), dev)
    return {"arch": meta["arch"], "dataset": name, "loss": metrics["val_loss"], "acc": metrics["val_acc"],
            "top5": metrics["val_top5"], "n": len(subset)}
