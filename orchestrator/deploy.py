"""`orchestrate export RUN_ID | models:/NAME@ALIAS`: a trial's model as a deployable file, checked
against the trained model on the run's own validation images, and logged back to the run.

The model comes from the run's best checkpoint (`best_checkpoint/`: weights loaded with
`torch.load(weights_only=True)`, the architecture rebuilt from the registry), never from a pickle
in the store. ONNX files are checked with ONNX Runtime against eager PyTorch (largest logit
difference, top-1 agreement) and timed on this CPU; the numbers go on the run as metrics, and the
file as the run's `onnx` LoggedModel in MLflow's onnx flavour.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from typing import Any

import torch
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, RunTag
from mlflow.exceptions import MlflowException

from orchestrator import data, engine, export, runs, schema
from orchestrator.runs import Artifact, Tag

CHECK_IMAGES = 256  # validation images the export is checked on


class DeployError(ValueError):
    """One line for the user."""


@dataclasses.dataclass(frozen=True)
class Exported:
    run_id: str
    path: str
    check: export.ExportCheck | None  # ONNX only
    max_abs_diff: float
    top1_agreement: float


def resolve(client: MlflowClient, ref: str):
    """The run a reference names: a run id, or a registered model `models:/NAME@ALIAS` (or
    `models:/NAME/VERSION`)."""
    try:
        if ref.startswith("models:/"):
            name, at, alias = ref[len("models:/"):].partition("@")
            if at:
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = name.partition("/")
                version = client.get_model_version(name, number)
            return client.get_run(version.run_id)
        return client.get_run(ref)
    except MlflowException as e:
        raise DeployError(f"{ref[:120]} names no run here ({str(e).splitlines()[0][:200]})") from None


def trained_model(client: MlflowClient, run, folder: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The run's model rebuilt from its best checkpoint (no pickle), in eval mode, on the CPU."""
    try:
        local = client.download_artifacts(run.info.run_id, Artifact.BEST_CHECKPOINT, folder)
    except (MlflowException, OSError):
        raise DeployError(f"run {run.info.run_id} has no best checkpoint (it trained no model)") from None
    return engine.load_model(local)


def validation_batch(trial, meta: dict[str, Any], n: int = CHECK_IMAGES) -> torch.Tensor:
    """The first `n` images of the trial's own validation split, normalised as in training."""
    try:
        splits = data.load_splits(trial.dataset)
    except data.DataError as e:
        raise DeployError(f"the run's dataset cannot be loaded here to check the export ({e})") from None
    return data.normalize(splits.val.images[:n], tuple(meta["mean"]), tuple(meta["std"]))


def export_run(client: MlflowClient, run, fmt: str, out_dir: str, log: bool = True) -> Exported:
    trial = runs.decode(run)
    os.makedirs(out_dir, exist_ok=True)
    # The run's name is read from the store: as a file name it may hold no path (a run renamed `../../x`).
    path = os.path.join(out_dir, f"{schema.slug(run.info.run_name or '', run.info.run_id)}.{fmt}")
    with tempfile.TemporaryDirectory(prefix="orchestrate-export-") as tmp:
        model, meta = trained_model(client, run, tmp)
        batch = validation_batch(trial, meta)
        export.export_model(model, path, batch, fmt)
        if fmt == "onnx":
            check = export.check_onnx(model, path, batch)
            diff, agree = check.max_abs_diff, check.top1_agreement
        else:
            check = None
            with torch.inference_mode():
                logits = torch.export.load(path).module()(batch).float()
            diff, agree = export.agreement(model, logits, batch)
        if log:
            record(client, run, fmt, path, check, diff, agree)
    return Exported(run.info.run_id, path, check, diff, agree)


def record(client: MlflowClient, run, fmt: str, path: str, check: export.ExportCheck | None,
           diff: float, agree: float) -> None:
    """The check's numbers on the run (metrics `<fmt>_max_abs_diff`, `<fmt>_top1_agreement`, and
    ONNX Runtime's speed), and an ONNX file as the run's `onnx` LoggedModel (MLflow's onnx flavour)."""
    run_id, now = run.info.run_id, int(time.time() * 1000)
    metrics = export.as_metrics(check) if check else {f"{fmt}_max_abs_diff": diff, f"{fmt}_top1_agreement": agree}
    tags = export.as_params(check) if check else {}
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    if fmt != "onnx":
        client.log_artifact(run_id, path, Artifact.EXPORT)
        return
    import mlflow.onnx
    import onnx

    logged = client.create_logged_model(run.info.experiment_id, name=Artifact.ONNX, source_run_id=run_id)
    with tempfile.TemporaryDirectory(prefix="orchestrate-onnx-") as tmp:
        local = os.path.join(tmp, Artifact.ONNX)
        mlflow.onnx.save_model(onnx.load(path), local)
        client.log_model_artifacts(logged.model_id, local)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, 0)])
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.set_tag(run_id, Tag.ONNX_MODEL_ID, logged.model_id)
