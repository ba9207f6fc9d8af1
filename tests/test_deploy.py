"""`orchestrate export`: a finished trial's model (here recorded by the run record itself, from a
real engine run, in a real sqlite store) written as ONNX or a torch.export archive, checked
against the trained model on the run's validation images, and logged back to the run."""

from __future__ import annotations

import onnx
import pytest
import torch
from mlflow import MlflowClient

from orchestrator import cli
from orchestrator.runs import Artifact, Tag
from support import record_one_trial

SWEEP = """\
name: deploy
dataset: {name: synthetic, synthetic_size: 64, num_classes: 4}
train: {epochs: 2, batch_size: 16, lr: 0.05}
search: {scheduler: fifo}
models:
  - {arch: parnet, knobs: {width: 0.125, depth: 8}}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One trial's run, finished with its model and registered as deploy@best."""
    folder = tmp_path_factory.mktemp("deploy")
    (folder / "deploy.yaml").write_text(SWEEP)
    uri, run_id = record_one_trial(folder, "deploy.yaml", register_as="deploy")
    return uri, run_id, folder


def test_export_writes_onnx_that_matches_the_trained_model_and_logs_the_check_and_the_file(finished_run, tmp_path, capsys):
    uri, run_id, _ = finished_run
    assert cli.main(["export", "models:/deploy@best", "--format", "onnx", "--out", str(tmp_path),
                     "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    (path,) = tmp_path.glob("*.onnx")
    onnx.checker.check_model(str(path))
    assert "top-1 agreement 100.00%" in out and "ONNX Runtime on this CPU" in out

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)  # the registered best is this run
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4 and run.data.metrics["onnx_top1_agreement"] == 1.0
    assert run.data.metrics["onnx_latency_b1_ms"] > 0 and run.data.metrics["onnx_imgs_per_s"] > 0
    model = client.get_logged_model(run.data.tags[Tag.ONNX_MODEL_ID])
    assert model.name == Artifact.ONNX and model.source_run_id == run_id
    assert {"MLmodel", "model.onnx"} <= {a.path for a in client.list_logged_model_artifacts(model.model_id)}


def test_export_writes_a_torch_export_archive_that_loads_with_torch_alone(finished_run, tmp_path):
    uri, run_id, _ = finished_run
    assert cli.main(["export", run_id, "--format", "pt2", "--out", str(tmp_path), "--tracking-uri", uri,
                     "--no-log"]) == 0
    (path,) = tmp_path.glob("*.pt2")
    module = torch.export.load(str(path)).module()
    assert module(torch.zeros(3, 3, 32, 32)).shape == (3, 4)  # the batch axis is free
    assert "pt2_max_abs_diff" not in MlflowClient(tracking_uri=uri).get_run(run_id).data.metrics


def test_export_of_a_name_that_is_no_run_is_one_line_and_exit_2(finished_run, tmp_path, capsys):
    uri, _, _ = finished_run
    assert cli.main(["export", "models:/nothing@best", "--out", str(tmp_path), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export: models:/nothing@best names no run")
    assert not list(tmp_path.iterdir())


def test_export_out_naming_a_file_is_one_line_and_exit_2_before_the_store_is_read(finished_run, tmp_path, capsys):
    uri, run_id, _ = finished_run
    (tmp_path / "taken").write_text("mine")
    assert cli.main(["export", run_id, "--out", str(tmp_path / "taken"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export: --out: ") and "is a file; give a folder" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and (tmp_path / "taken").read_text() == "mine"


def test_export_names_its_file_after_the_run_but_never_writes_outside_out(finished_run, tmp_path):
    # The run's name comes from the store, where anyone with write access may rename it.
    uri, run_id, _ = finished_run
    client = MlflowClient(tracking_uri=uri)
    name = client.get_run(run_id).info.run_name
    client.update_run(run_id, name="../../x")
    out = tmp_path / "a" / "b"
    try:
        assert cli.main(["export", run_id, "--format", "pt2", "--out", str(out), "--tracking-uri", uri,
                         "--no-log"]) == 0
    finally:
        client.update_run(run_id, name=name)
    assert [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()] == ["a/b/x.pt2"]


def test_the_trials_run_carries_its_inference_cost_and_provenance(finished_run):
    uri, run_id, _ = finished_run
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.data.metrics["infer_latency_b1_ms"] > 0 and run.data.metrics["infer_imgs_per_s"] > 0
    assert run.data.params["infer_precision"] == "fp32" and run.data.params["device_name"].startswith("cpu")
    assert len(run.data.params["dataset_digest"]) == 16
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.digest == run.data.params["dataset_digest"]  # the content's, not a file date's
