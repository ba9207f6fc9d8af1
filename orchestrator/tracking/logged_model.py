"""A trial's model in MLflow: saved as an MLflow model folder (torch.export's "pt2", else the pickled
module), logged as the run's LoggedModel from its best checkpoint; a user's model file logged as
the run's code."""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import tempfile
import threading
import warnings
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, RunTag

from orchestrator.runs import Artifact, Tag
from orchestrator.schema import DataSpec

# The writer's thread loads and exports models deep in torch's C++ code. A sweep that exits
# meanwhile (interrupted while its models are logged) ends that daemon thread where it next takes
# the GIL, and a C++ frame on its stack turns the unwinding into std::terminate: the process aborts
# (exit -6, a C++ stack on stderr) instead of exiting 130. So that work holds IN_TORCH, and at exit
# the lock is taken: the model in hand is finished (up to EXIT_WAIT_S) and no other one starts.
IN_TORCH = threading.Lock()
EXIT_WAIT_S = 30.0


@atexit.register
def _no_torch_work_at_exit() -> None:
    try:
        IN_TORCH.acquire(timeout=EXIT_WAIT_S)
    except BaseException:  # noqa: BLE001 - a signal meanwhile: exit as it asks
        pass


def save_model(model, path: str, pip_requirements: list[str], metadata: dict[str, Any],
               mlflow_model=None) -> str:
    """Save `model` (eval mode, CPU, RGB input of metadata's image_size, else the default) as an
    MLflow model folder at `path`.
    Preferred format: MLflow's "pt2" (torch.export): no pickle, loads with torch alone, and the
    batch dimension stays dynamic because the example holds two images. A model torch.export
    cannot trace falls back to the pickled module, with a warning. Returns the format used."""
    import shutil

    import mlflow.pytorch  # imports torch: only the sweep driver pays for it

    size = metadata.get("image_size", DataSpec.image_size)  # the model's input side (dataset.image_size)
    example = np.zeros((2, 3, size, size), dtype=np.float32)  # batch 2: a size-1 batch would be exported static
    common = dict(input_example=example, pip_requirements=pip_requirements, metadata=metadata,
                  mlflow_model=mlflow_model)
    with IN_TORCH:
        try:
            with releasing_trace_state():
                mlflow.pytorch.save_model(model, path, serialization_format="pt2", **common)
            return "pt2"
        except Exception as e:  # noqa: BLE001 - torch.export raises many types; the pickled module still works
            warnings.warn(f"torch.export could not trace {type(model).__name__} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); logging the pickled module instead",
                          stacklevel=2)
            shutil.rmtree(path, ignore_errors=True)
        mlflow.pytorch.save_model(model, path, serialization_format="pickle", **common)
        return "pickle"


@contextlib.contextmanager
def releasing_trace_state():
    """Empty, on the way out, the tracing state torch.export made inside: each export leaves its
    ShapeEnv and FakeTensorMode alive, holding the traced graph's fake tensors and their dispatch
    cache (~0.3 MB a call), in a reference cycle through C++ tensors that Python's gc cannot see.
    Emptied, those objects drop what they hold (benchmarks/export_memory.py measures it).
    Found by scanning gc's objects before and after (~0.1 s each with a driver's heap); an object
    another thread makes meanwhile would be emptied too, so only one thread of the process may trace
    while this runs: in the sweep's driver that is the writer, the only place it traces."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    kinds = (ShapeEnv, FakeTensorMode)  # by type(o): isinstance would read every object's __class__,
    # which some lazy objects answer with a deprecation warning
    before = {id(o) for o in gc.get_objects() if issubclass(type(o), kinds)}
    try:
        yield
    finally:
        for o in gc.get_objects():
            if issubclass(type(o), kinds) and id(o) not in before:
                o.__dict__.clear()


def log_model(client: MlflowClient, run_id: str, model_id: str, checkpoint_dir: str, step: int) -> str:
    """The checkpoint's model as the run's LoggedModel `model_id` (runs:/<run_id>/model and
    models:/<model_id> both load it), linked to the run at `step`. Returns the format."""
    import torch
    import torchvision
    from mlflow.models import Model

    from orchestrator import engine  # torch: only the sweep driver pays for it

    with IN_TORCH:
        model, meta = engine.load_model(checkpoint_dir)
    logged = client.get_logged_model(model_id)
    # Explicit requirements: MLflow's inference imports the model in a subprocess (slow).
    reqs = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    with tempfile.TemporaryDirectory(prefix="orchestrate-model-") as tmp:
        local = os.path.join(tmp, Artifact.MODEL)
        description = Model(artifact_path=logged.artifact_location, model_uuid=model_id, run_id=run_id,
                            model_id=model_id)
        keep = ("arch", "knobs", "classes", "mean", "std", "epoch", "image_size")
        fmt = save_model(model, local, reqs, {k: meta[k] for k in keep if k in meta}, mlflow_model=description)
        client.log_model_artifacts(model_id, local)
    outputs = client.get_run(run_id).outputs
    if not any(o.model_id == model_id for o in (outputs.model_outputs if outputs else ())):  # a retry: once
        client.log_outputs(run_id, [LoggedModelOutput(model_id, step)])
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    client.log_batch(run_id, tags=[RunTag(Tag.MODEL_FORMAT, fmt)])
    client.log_dict(run_id, meta, Artifact.MODEL_META)
    return fmt


def log_code(client: MlflowClient, run_id: str, arch: str) -> None:
    """A user's model: the file that defines it, as an artefact of the run (code/FILE.py)."""
    import archs  # torch: see records.encode

    code = archs.get(arch).code
    if code is not None:
        client.log_artifact(run_id, code.file, Artifact.CODE)
