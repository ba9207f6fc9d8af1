"""`orchestrate evaluate RUN_ID`: load a trial's logged MLflow model and score it on a split.

The dataset defaults to the run's own (the resolved Trial recorded with the run, runs.decode), so
`--split val` rebuilds the exact validation split the trial was selected on, and `--split test`
scores the held-out test split that selection never saw. Normalisation comes from the model's
own metadata (the training split's statistics), never recomputed from the evaluation data.

A store is not trusted to hold only safe files: a model is loaded only in MLflow's pt2
(torch.export) form, which runs no pickle; a pickled model (what the sweep logs for a model
torch.export cannot trace) needs `allow_pickle`, since unpickling runs whatever code the file
names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any

import mlflow
import mlflow.pytorch
import torch
from mlflow.exceptions import MlflowException

from orchestrator import data, engine, runs
from orchestrator.runs import Artifact
from orchestrator.preflight import show_uri
from orchestrator.schema import DataSpec, show


class EvaluateError(ValueError):
    pass


def check_model_folder(path: str, allow_pickle: bool) -> None:
    """Refuse a downloaded MLflow pytorch model whose loading would run code: a pickled module
    (data/model.pth, unpickled with a module the folder itself names) or bundled code (code/,
    put on sys.path), unless `allow_pickle`."""
    data_dir = os.path.join(path, "data")
    pickled = os.path.exists(os.path.join(data_dir, "model.pth")) or os.path.isdir(os.path.join(path, "code"))
    if pickled and not allow_pickle:
        raise EvaluateError("its model is a pickled PyTorch module (torch.export could not trace it), and "
                            "loading it runs code from the store; pass --allow-pickle if you trust this store")
    if not pickled and not os.path.exists(os.path.join(data_dir, "model.pt2")):
        raise EvaluateError("its model folder holds neither a pt2 nor a pickled PyTorch model")


def load_logged_model(client: mlflow.MlflowClient, run, allow_pickle: bool = False) -> tuple[Any, dict[str, Any]]:
    """(the run's model on the CPU, its metadata), downloaded to a temporary folder that is gone
    when this returns."""
    with tempfile.TemporaryDirectory(prefix="orchestrate-evaluate-") as tmp:
        try:
            local = runs.download_model(client, run, os.path.join(tmp, Artifact.MODEL))
            meta_file = client.download_artifacts(run.info.run_id, Artifact.MODEL_META, tmp)
        except (MlflowException, OSError) as e:
            raise EvaluateError(f"has no logged model ({str(e).splitlines()[0]})") from None
        check_model_folder(local, allow_pickle)
        with open(meta_file) as f:
            meta = json.load(f)
        return mlflow.pytorch.load_model(local, map_location="cpu"), meta


def evaluate_run(run_id: str, tracking_uri: str, *, dataset: str | None = None, root: str | None = None,
                 split: str = "test", batch_size: int = 256, device: str | None = None,
                 allow_pickle: bool = False) -> dict[str, Any]:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        trial = runs.decode(run)
    except MlflowException:
        raise EvaluateError(f"no run {show(run_id)} in {show_uri(tracking_uri)}") from None
    except runs.NotATrialRun as e:
        raise EvaluateError(str(e)) from None
    try:
        model, meta = load_logged_model(client, run, allow_pickle)
    except EvaluateError as e:
        raise EvaluateError(f"run {run_id}: {e}") from None

    if dataset is not None and dataset != trial.dataset.name:
        spec = DataSpec(name=dataset, root=root)  # other data: its own defaults
    else:
        spec = dataclasses.replace(trial.dataset, root=root) if root else trial.dataset
    try:
        splits = data.load_splits(spec)
    except data.DataError as e:
        raise EvaluateError(str(e)) from None
    subset = getattr(splits, split)
    if subset is None:
        raise EvaluateError(f"{spec.name} has no {split} split; use --split val")
    if splits.num_classes != len(meta["classes"]):
        raise EvaluateError(f"{spec.name} has {splits.num_classes} classes, the model {len(meta['classes'])}")

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    loader = data.eval_loader(subset, tuple(meta["mean"]), tuple(meta["std"]), batch_size)
    metrics, _ = engine.evaluate_batches(model.to(dev), loader, len(meta["classes"]), dev)
    return {"arch": meta["arch"], "dataset": spec.name, "loss": metrics["val_loss"], "acc": metrics["val_acc"],
            "top5": metrics["val_top5"], "n": len(subset)}
