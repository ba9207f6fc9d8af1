"""Security defaults: data is never code, servers stay on loopback, secrets stay out of MLflow."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from orchestrator import cli, engine
from support import refused


class Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_sweep_file_with_a_python_object_tag_is_rejected_not_executed(tmp_path, capsys):
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['touch pwned']\nmodels: []\n")
    refused(["sweep", "evil.yaml", "--dry-run"], tmp_path, capsys, starts="evil.yaml: malformed YAML")
    assert not (tmp_path / "pwned").exists()


def test_checkpoints_load_with_weights_only_and_refuse_pickled_code(tmp_path):
    torch.save({"model": {}, "payload": Boom()}, tmp_path / engine.STATE_FILE, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(pickle.UnpicklingError):
        engine.load_state(str(tmp_path))


def test_servers_the_tool_starts_bind_to_loopback_by_default():
    ui = cli.build_parser().parse_args(["ui"])
    assert ui.host == "127.0.0.1"


def test_sweep_params_hold_no_tracking_credentials(tmp_path):
    # A tracking URI may carry credentials (https://user:token@host): it must not become a param.
    from orchestrator import config, tracking

    spec = config.parse({"name": "s", "models": [{"arch": "resnet18"}],
                         "tracking": {"uri": f"sqlite:///{tmp_path}/m.db"}}, "s.yaml")
    (tmp_path / "s.yaml").write_text("name: s\n")
    record = tracking.SweepRecord.start(spec.tracking_uri, spec.name, str(tmp_path / "s.yaml"), str(tmp_path), {
        "search": {"metric": "val_acc"}, "dataset": spec.dataset})
    params = record.client.get_run(record.parent_run_id).data.params
    assert not any("tracking" in k or "sqlite" in str(v) or "@" in str(v) for k, v in params.items())


def test_a_model_torch_export_cannot_trace_is_saved_pickled_with_a_warning_and_loads_only_when_allowed(tmp_path):
    import mlflow.pytorch

    from orchestrator import evaluate, tracking

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 10)

        def forward(self, x):
            y = self.fc(x.flatten(1))
            return y if y.sum() > 0 else -y  # a branch on data: torch.export cannot trace it

    model = Branchy().eval()
    folder = str(tmp_path / "model")
    with pytest.warns(UserWarning, match="torch.export could not trace Branchy"):
        fmt = tracking.save_model(model, folder, [], {"arch": "branchy"})
    assert fmt == "pickle"
    # `orchestrate evaluate` refuses it: unpickling runs whatever code the store's file names.
    with pytest.raises(evaluate.EvaluateError, match="--allow-pickle"):
        evaluate.check_model_folder(folder, allow_pickle=False)
    evaluate.check_model_folder(folder, allow_pickle=True)
    loaded = mlflow.pytorch.load_model(folder)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# MLflow's errors quote the tracking URI as given, password included ("API request to
# http://me:s3cret@host/api/... failed"): a warning or a traceback the CLI's process prints is masked.
LEAKS = """
import warnings
from orchestrator import cli
cli._mask_secrets_in_output()
cli._mask_secrets_in_output()  # installed once, not wrapped twice
warnings.warn("the sweep's report was not written (MlflowException: API request to http://me:s3cret@host/api failed)")
raise RuntimeError("API request to http://me:s3cret@host:5000/api/2.0/mlflow/runs/get failed")
"""


def test_warnings_and_tracebacks_of_the_cli_process_mask_uri_passwords():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", LEAKS], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert result.returncode == 1 and "s3cret" not in result.stderr
    assert "(MlflowException: API request to http://me:***@host/api failed)" in result.stderr
    assert "RuntimeError: API request to http://me:***@host:5000/api/2.0/mlflow/runs/get failed" in result.stderr
    assert result.stderr.count("me:***@host/api failed") == 1


# ---------------------------------------------------------------------------------------------
# A tracking server's password in the URI: used, never printed, never stored in the storage


def test_a_pickled_sweep_spec_holds_the_tracking_password_masked_and_only_this_process_gets_it_back():
    from orchestrator import config, schema

    spec = config.parse({"name": "s", "models": [{"arch": "resnet18"}]}, "s.yaml",
                        {"tracking_uri": "http://me:s3cret@h:5000", "storage_path": "/tmp/x"})
    stored = pickle.dumps(spec)  # what Tune writes: tuner.pkl, the searcher's state
    assert b"s3cret" not in stored and b"http://me:***@h:5000" in stored
    assert pickle.loads(stored).tracking_uri == "http://me:s3cret@h:5000"  # this process was given it
    given = dict(schema._GIVEN_URIS)
    schema._GIVEN_URIS.clear()
    try:  # a process that was not: MLFLOW_TRACKING_USERNAME/PASSWORD, not a masked password
        assert pickle.loads(stored).tracking_uri == "http://h:5000"
    finally:
        schema._GIVEN_URIS.update(given)


SECRET_SWEEP = """\
name: e2e-secret
dataset: {name: digits}
train: {epochs: 2, batch_size: 32, lr: 0.05, warmup_epochs: 0.5, steps_per_epoch: 4, benchmark_inference: false}
resources: {num_workers: 1, cpus_per_worker: 1}
search: {scheduler: fifo}
models:
  - {arch: resnet18, knobs: {width: 0.125}}
"""


@pytest.mark.ray
def test_a_sweep_through_a_tracking_uri_with_a_password_neither_prints_nor_stores_it(mlflow_server, tmp_path,
                                                                                     ray_tmpdir):
    # A plain `mlflow server` ignores the credentials: what is proven is where the password goes.
    from mlflow import MlflowClient

    from orchestrator.runs import ROLE_TRIAL, Status, Tag
    from support import run_cli

    uri = mlflow_server.replace("http://", "http://me:s3cret@")
    (tmp_path / "sweep.yaml").write_text(SECRET_SWEEP)
    result = run_cli(["sweep", "sweep.yaml", "--tracking-uri", uri, "-q"], cwd=tmp_path,
                     env={"RAY_TMPDIR": ray_tmpdir}, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "s3cret" not in result.stdout + result.stderr
    assert "View run" not in result.stdout  # MLflow's own lines: the URI as given
    files = [p for p in (tmp_path / "ray_results").rglob("*") if p.is_file()]
    assert any(p.name == "tuner.pkl" for p in files) and any(p.name.startswith("searcher-state") for p in files)
    assert [str(p) for p in files if b"s3cret" in p.read_bytes()] == []
    # ... and the sweep did record through it: the trial's run finished with its model
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("e2e-secret")
    (trial,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL]
    assert trial.info.status == "FINISHED" and trial.data.tags[Tag.STATUS] == Status.COMPLETED
