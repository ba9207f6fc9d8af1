"""`orchestrate evaluate RUN_ID`: load a trial's logged MLflow model and score it on a split.

The dataset defaults to the run's own (its `dataset.*` params), so `--split val` rebuilds the exact
validation split the trial was selected on, and `--split test` scores the held-out test split that
selection never saw. Normalisation comes from the model's own metadata (the training split's
statistics), never recomputed from the evaluation data.
"""

from __future__ import annotations

import json
from typing import Any


class EvaluateError(ValueError):
    pass


def _param(params: dict[str, str], key: str, cast, default=None):
    v = params.get(key)
    if v is None or v == "None":
        return default
    return cast(v)


def evaluate_run(run_id: str, tracking_uri: str, *, dataset: str | None = None, root: str | None = None,
                 split: str = "test", batch_size: int = 256, device: str | None = None) -> dict[str, Any]:
    import mlflow
    import mlflow.pytorch
    import torch
    import torch.nn.functional as F
    from mlflow.exceptions import MlflowException

    from orchestrator import data

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

    name = dataset or params.get("dataset.name", "digits")
    same_data = dataset is None or dataset == params.get("dataset.name")
    spec = data.DataSpec(
        name=name,
        root=root or (params.get("dataset.root") if same_data and params.get("dataset.root") not in (None, "None") else None),
        val_fraction=_param(params, "dataset.val_fraction", float, 0.1) if same_data else 0.1,
        subset=_param(params, "dataset.subset", int) if same_data else None,
        split_seed=_param(params, "dataset.split_seed", int, 0) if same_data else 0,
    )
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
    if not isinstance(model, torch.fx.GraphModule):  # pt2 models are exported in eval mode and refuse .eval()
        model = model.eval()
    model = model.to(dev)
    loader = data.eval_loader(subset, tuple(meta["mean"]), tuple(meta["std"]), batch_size)
    loss = correct = top5 = n = 0.0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            logits = model(x).float()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct += (top[:, 0] == y).sum().item()
            top5 += (top == y[:, None]).any(1).sum().item()
            n += y.numel()
    return {"arch": meta["arch"], "dataset": name, "loss": loss / n, "acc": correct / n, "top5": top5 / n, "n": int(n)}
