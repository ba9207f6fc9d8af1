"""The sweep's parent run encoded and decoded like a trial's run (runs.encode_sweep / decode_sweep):
the settings it ran with as a typed record (tag and sweep.json), read back exactly; a parent run
logged before that record (its settings only as `section.key` params) still reads, to the same
record. Real sqlite MLflow store, no Ray."""

from __future__ import annotations

import json

from mlflow import MlflowClient
from mlflow.entities import Param

from orchestrator import config, runs, tracking
from orchestrator.report import queries
from orchestrator.runs import Artifact, Tag
from orchestrator.schema import Search

SWEEP = """\
name: parent-record
dataset: {name: synthetic, synthetic_size: 64, num_classes: 4}
train: {epochs: 2, batch_size: 16, lr: 0.05, warmup_epochs: 0.5, nesterov: false}
search: {scheduler: fifo, metric: val_loss, mode: min}
models:
  - {arch: vgg11, knobs: {width: 0.125}}
"""


def test_a_parent_run_decodes_to_its_settings_with_or_without_the_record(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = config.load(str(tmp_path / "s.yaml"), {"tracking_uri": uri, "storage_path": str(tmp_path)})
    settings = runs.SweepSettings(spec.search, spec.train, spec.dataset, spec.resources, spec.failure,
                                  spec.trial_count())
    sweep = tracking.SweepRecord.start(uri, spec.name, spec.file, str(tmp_path), runs.sweep_to_dict(settings))
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(sweep.parent_run_id)
    assert runs.decode_sweep(parent) == settings
    assert json.loads(parent.data.tags[Tag.SWEEP]) == runs.sweep_to_dict(settings)
    with open(client.download_artifacts(parent.info.run_id, Artifact.SWEEP, str(tmp_path))) as f:
        assert json.load(f) == runs.sweep_to_dict(settings)
    assert parent.data.params["search.metric"] == "val_loss" and parent.data.params["train.nesterov"] == "False"

    # A parent run as the sweeps before this record logged it: the params alone.
    old = client.create_run(sweep.experiment_id, tags={Tag.ROLE: runs.ROLE_SWEEP}).info.run_id
    params = [Param(k, v) for k, v in parent.data.params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(old, params=params[i:i + 100])
    old_parent = client.get_run(old)
    assert Tag.SWEEP not in old_parent.data.tags
    assert runs.decode_sweep(old_parent) == settings  # types and all: floats, bools, None
    assert runs.selection(client, old) == runs.selection(client, parent.info.run_id) == ("val_loss", "min")
    new_view, old_view = (queries.read_provenance(client, [p], []) for p in (parent, old_parent))
    assert (new_view.train, new_view.search, new_view.dataset) == (old_view.train, old_view.search, "synthetic")
    assert ("lr", "0.05") in new_view.train and ("mode", "min") in new_view.search

    # One that holds no settings at all: nothing decoded, the trials' record decides.
    bare = client.create_run(sweep.experiment_id, tags={Tag.ROLE: runs.ROLE_SWEEP}).info.run_id
    assert runs.decode_sweep(client.get_run(bare)) == runs.SweepSettings()


def test_a_mapping_in_a_section_is_listed_key_by_key_as_its_params_are():
    pairs = queries._pairs(Search(objectives={"val_acc": "max", "param_count": "min"}))
    assert ("objectives.val_acc", "max") in pairs and ("objectives.param_count", "min") in pairs
