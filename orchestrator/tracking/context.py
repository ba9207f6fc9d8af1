"""What a run records about where and on what it ran: the library versions, MLflow's context tags
(the sweep file as the source, its git commit), the dataset as an MLflow input."""

from __future__ import annotations

import os
import subprocess
import warnings

from orchestrator import runs
from orchestrator.schema import DataSpec


def library_versions() -> dict[str, str]:
    import mlflow
    import ray  # here, like torch: `orchestrate compare` loads neither
    import torch
    import torchvision

    return dict(zip(runs.LIBRARY_VERSIONS, (torch.__version__, torchvision.__version__, ray.__version__,
                                            mlflow.__version__)))


def git_commit(path: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(path)) or ".", "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def context_tags(sweep_file: str) -> dict[str, str]:
    """MLflow's standard context tags (mlflow.user, mlflow.source.name/type), with the source and
    its git commit being the sweep file's, not the `orchestrate` script's."""
    from mlflow.tracking.context.registry import resolve_tags

    tags = {**resolve_tags(), "mlflow.source.name": os.path.abspath(sweep_file)}
    commit = git_commit(sweep_file)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def dataset_input(spec: DataSpec, digest: str, sizes: dict[str, int]):
    """The trial's dataset as an MLflow input (`log_inputs`' entity): name, source, the digest of
    its content (data.Splits.digest), and the split sizes as input tags."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    if spec.root:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": a local path is
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(spec.root)
    else:
        source = CodeDatasetSource({"mlflow.source.name": {"digits": "sklearn.datasets.load_digits"}.get(
            spec.name, "orchestrator.data (seeded synthetic)")})
    dataset = MetaDataset(source, name=spec.name, digest=digest)
    tags = [InputTag("mlflow.data.context", "training")] + [InputTag(k, str(v)) for k, v in sizes.items()]
    return DatasetInput(dataset._to_mlflow_entity(), tags)
