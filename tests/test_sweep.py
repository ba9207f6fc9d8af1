"""End to end: `orchestrate sweep` on a real local Ray cluster (Train V2 DDP on gloo, Tune, ASHA)
tracked in a real MLflow store (a sqlite file; the same sweep through a real `mlflow server` process,
across two Ray nodes, is compared with it in test_multinode.py)."""

from __future__ import annotations

import os
import textwrap

import pytest

from support import PAIR_SWEEP, run_sweep, run_cli
from orchestrator import runs
from orchestrator.runs import ROLE_SWEEP, Tag


TIMING = {"imgs_per_s", "epoch_s"}


def by_name(runs):
    return {r.info.run_name: r for r in runs}


def test_ddp_sweep_makes_one_parent_and_two_child_runs_with_every_epoch_once(ddp_sweep):
    runs = ddp_sweep.runs()
    parents = [r for r in runs if r.data.tags.get(Tag.ROLE) == ROLE_SWEEP]
    children = ddp_sweep.trials()
    assert len(parents) == 1 and len(children) == 2
    parent_id = parents[0].info.run_id
    client = ddp_sweep.client()
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_id
        assert child.data.tags["status"] == "completed" and child.info.status == "FINISHED"
        assert child.data.tags["arch"] == "resnet18"
        assert child.data.params["world_size"] == "2" and child.data.params["resources.num_workers"] == "2"
        assert child.data.params["param_count"] == "176402"  # archs.create("resnet18", width=0.125)
        for key in ("flops", "torch_version", "ray_version", "mlflow_version", "knobs.width", "lr",
                    "optimizer", "schedule", "dataset.name"):
            assert key in child.data.params, key
        for metric in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "imgs_per_s", "epoch_s"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
            assert sorted(steps) == [1, 2, 3], (metric, steps)  # each epoch exactly once
        # Rank 0 measured the model's inference cost once, on its device, in its first report.
        for metric in ("infer_latency_b1_ms", "infer_imgs_per_s", "infer_peak_mem_mb"):
            assert [m.step for m in client.get_metric_history(child.info.run_id, metric)] == [1], metric
        assert child.data.params["infer_device"].startswith("cpu") and len(child.data.params["dataset_digest"]) == 16
    assert {c.info.run_name for c in children} == {"resnet18-width0.125-lr0.05", "resnet18-width0.125-lr0.1"}


def test_child_runs_hold_curves_confusion_matrix_best_checkpoint_and_a_loadable_model(ddp_sweep):
    import mlflow.pytorch
    import torch

    client = ddp_sweep.client()
    child = ddp_sweep.trials()[0]
    names = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"curves.png", "confusion_matrix.png", "best_checkpoint", "per_class_accuracy.json"} <= names
    ckpt = {a.path for a in client.list_artifacts(child.info.run_id, "best_checkpoint")}
    assert {"best_checkpoint/state.pt", "best_checkpoint/model.json", "best_checkpoint/eval.json"} <= ckpt
    mlflow.set_tracking_uri(ddp_sweep.uri)
    model = mlflow.pytorch.load_model(f"runs:/{child.info.run_id}/model")
    assert model(torch.zeros(4, 3, 32, 32)).shape == (4, 10)
    assert child.data.tags["model_format"] == "pt2"


# Loads the logged model the way a user on another machine would: torch and MLflow only, with
# MLflow's pickle deserialisation switched off (it then checks the .pt2 archive is pickle-free).
LOAD_WITHOUT_PICKLE = """
import sys, mlflow, mlflow.pytorch, torch
model = mlflow.pytorch.load_model(f"runs:/{sys.argv[1]}/model")
with torch.no_grad():
    print(tuple(model(torch.zeros(3, 3, 32, 32)).shape), "archs" in sys.modules, type(model).__name__)
"""


def test_the_logged_model_is_torch_export_format_and_loads_without_pickle_or_our_code(ddp_sweep, tmp_path):
    import subprocess
    import sys

    child = ddp_sweep.trials()[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="false", MLFLOW_TRACKING_URI=ddp_sweep.uri)
    # A pickled module would import `archs` to rebuild its classes; the exported graph needs none.
    out = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PICKLE, child.info.run_id],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[:4] == ["(3,", "10)", "False", "GraphModule"], out.stdout


def test_parent_run_holds_the_sweep_file_comparison_table_and_plots(ddp_sweep):
    client = ddp_sweep.client()
    parent = [r for r in ddp_sweep.runs() if r.data.tags.get(Tag.ROLE) == ROLE_SWEEP][0]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep.yaml", "comparison.csv", "comparison.md", "accuracy_vs_params.png",
            "accuracy_vs_imgs_per_s.png"} <= names
    assert parent.info.status == "FINISHED" and parent.data.tags.get("trials_completed") == "2"


def test_evaluate_scores_the_logged_model_at_its_logged_val_accuracy(ddp_sweep):
    for child in ddp_sweep.trials():
        final = child.data.metrics["model_val_acc"]  # the logged model's: its best epoch
        out = run_cli(["evaluate", child.info.run_id, "--split", "val", "--tracking-uri", ddp_sweep.uri],
                      cwd=ddp_sweep.folder)
        assert out.returncode == 0, out.stderr[-2000:]
        acc = float(out.stdout.split(" acc ")[1].split()[0])
        assert abs(acc - final) * 100 <= 0.5, (acc, final)
    test = run_cli(["evaluate", child.info.run_id, "--split", "test", "--tracking-uri", ddp_sweep.uri],
                   cwd=ddp_sweep.folder)
    assert test.returncode == 0 and " n 359" in test.stdout  # digits' held-out test split


def test_compare_lists_the_trials_best_val_accuracy_first(ddp_sweep):
    out = run_cli(["compare", "e2e-ddp", "--tracking-uri", ddp_sweep.uri], cwd=ddp_sweep.folder)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("resnet18-")]
    assert len(lines) == 2
    accs = [float(ln.split()[6]) for ln in lines]
    assert accs == sorted(accs, reverse=True)
    assert "completed" in lines[0] and "width=0.125" in lines[0]


def test_terminal_shows_the_live_view_and_summary_not_worker_logs_nor_rays_reporter(ddp_sweep):
    out = ddp_sweep.result.stdout
    assert "orchestrate ui --tracking-uri" in out
    assert "Trial status:" not in out  # Ray's own reporter: only with -v
    assert "epoch   1  train_loss" not in out  # the engine's own per-epoch prints stay in worker logs


def test_a_default_sweeps_output_has_no_ray_warning_and_no_mlflow_info_line(pair_sweep):
    # MLflow's "Creating initial MLflow database tables..." on a new store, Tune's "on_trial_result
    # operation took 0.7 s, which may be a performance bottleneck": neither belongs in the live view.
    assert pair_sweep.result.stderr == ""
    for line in pair_sweep.result.stdout.splitlines():
        assert " INFO " not in line and "WARNING" not in line and "bottleneck" not in line, line


def test_without_a_terminal_the_live_view_names_each_trials_knobs_and_lr_per_epoch(pair_sweep):
    out = pair_sweep.result.stdout
    for name in ("resnet18-width0.125-lr0.05", "resnet18-width0.125-lr0.1"):
        for epoch in (1, 2, 3):
            assert any(f"] {name}  epoch {epoch}/3  val_acc" in ln for ln in out.splitlines()), (name, epoch)
        assert any(f"] {name}  done  epoch 3/3" in ln for ln in out.splitlines())
    assert "\x1b[" not in out  # plain lines, no cursor movement


# Two model entries under ASHA (grace 1, reduction factor 3: rungs at epochs 1 and 3), one trial at a
# time in the entries' order. VGG's grid, in order: a good lr, one far too small (ASHA stops it), one
# that diverges to NaN. ShuffleNet learns slowly in its first epoch (val acc 0.19 at epoch 1, 0.92
# at epoch 4 on this machine; VGG's good lr: 0.43 then 0.94, its small one 0.10). In one global
# bracket ShuffleNet's epoch 1 is ranked against VGG's (cutoff ~0.32) and stopped; with a bracket
# per model entry it is the first of its own rung and trains to the full budget.
ASHA_SWEEP = textwrap.dedent("""\
    name: e2e-asha
    dataset: {name: digits}
    train: {epochs: 4, batch_size: 32, optimizer: adamw, lr: 0.003, weight_decay: 0.05, warmup_epochs: 0.5, seed: 0,
            benchmark_inference: false}
    resources: {num_workers: 1, cpus_per_worker: 1, driver_cpus: 0.1}
    search: {scheduler: asha, grace_period: 1, reduction_factor: 3, max_concurrent_trials: 1, brackets: BRACKETS}
    models:
      - {arch: vgg11, knobs: {width: 0.125}, lr: {grid: [0.003, 0.00001, 1000000.0]}}
      - {arch: shufflenet_v1, knobs: {groups: 3, width: 0.25}, lr: 0.01}
    """)
SLOW = "shufflenet_v1-groups3-width0.25-lr0.01"


@pytest.fixture(scope="module")
def asha_sweep(tmp_path_factory):
    """One ASHA bracket over every trial of the sweep (the behaviour before brackets per entry)."""
    return run_sweep(tmp_path_factory, "asha-global", ASHA_SWEEP.replace("BRACKETS", "global"))


@pytest.fixture(scope="module")
def asha_per_model_sweep(tmp_path_factory):
    return run_sweep(tmp_path_factory, "asha-per-model", ASHA_SWEEP.replace("BRACKETS", "per_model"))


def val_acc_curve(sweep, run):
    return [m.value for m in sorted(sweep.client().get_metric_history(run.info.run_id, "val_acc"), key=lambda m: m.step)]


def test_asha_stops_the_bad_lr_trial_before_its_last_epoch(asha_sweep):
    trials = by_name(asha_sweep.trials())
    client = asha_sweep.client()
    good, bad = trials["vgg11-width0.125-lr0.003"], trials["vgg11-width0.125-lr1e-05"]
    assert good.data.tags["status"] == "completed"
    assert bad.data.tags["status"] == "early-stopped"
    good_steps = [m.step for m in client.get_metric_history(good.info.run_id, "val_acc")]
    bad_steps = [m.step for m in client.get_metric_history(bad.info.run_id, "val_acc")]
    assert sorted(good_steps) == [1, 2, 3, 4]
    assert max(bad_steps) < 4 and len(bad_steps) == len(set(bad_steps))


def test_asha_per_entry_keeps_a_slow_starting_entrys_trial_to_the_full_budget_one_global_bracket_stops_it(
        asha_sweep, asha_per_model_sweep):
    own = by_name(asha_per_model_sweep.trials())[SLOW]
    own_curve = val_acc_curve(asha_per_model_sweep, own)
    assert own.data.tags["status"] == "completed" and len(own_curve) == 4
    assert own_curve[0] < 0.3 and own_curve[-1] >= own_curve[0] + 0.4, own_curve  # slow start, good end
    shared = by_name(asha_sweep.trials())[SLOW]
    shared_curve = val_acc_curve(asha_sweep, shared)
    assert shared.data.tags["status"] == "early-stopped" and len(shared_curve) == 1, shared_curve
    # The global bracket's answer for ShuffleNet is its first epoch, well below what it reaches.
    assert shared.data.metrics["model_val_acc"] == shared_curve[0] < own.data.metrics["model_val_acc"] - 0.4
    # compare says how far each row trained, and puts full-budget rows first.
    out = run_cli(["compare", "e2e-asha", "--tracking-uri", asha_sweep.uri], cwd=asha_sweep.folder)
    rows = [ln.split() for ln in out.stdout.splitlines() if ln.startswith(("vgg11-", "shufflenet_v1-"))]
    assert [r[0] for r in rows][0] == "vgg11-width0.125-lr0.003"
    assert any(r[0] == SLOW and "1/4" in r for r in rows), rows


def test_a_trial_whose_loss_goes_nan_is_tagged_failed_and_the_sweep_finishes(asha_sweep):
    trials = by_name(asha_sweep.trials())
    nan = trials["vgg11-width0.125-lr1e+06"]
    assert nan.data.tags["status"] == "failed" and nan.info.status == "FAILED"
    assert "train_loss is nan" in nan.data.tags.get("error", "") or "Diverged" in nan.data.tags.get("error", "")
    assert asha_sweep.result.returncode == 0
    assert "failed" in asha_sweep.result.stdout


# ---------------------------------------------------------------------------------------------
# Single-worker trials: trained in the Tune trial's own process, packed side by side




@pytest.fixture(scope="module")
def pair_sweep(tmp_path_factory):
    return run_sweep(tmp_path_factory, "pair", PAIR_SWEEP)


def epoch_intervals(client, run_id):
    """[(start, end)] in seconds of each epoch, from the epochs' own times: the metric's log time
    is the epoch's end, `epoch_s` its length (a run may start long before its trial trains)."""
    return [(m.timestamp / 1000 - m.value, m.timestamp / 1000) for m in client.get_metric_history(run_id, "epoch_s")]


def test_two_single_worker_trials_train_side_by_side_on_two_cpus_as_the_sweep_said(pair_sweep):
    assert "2 trial(s) at a time on 2 CPUs (each trial holds 1 CPU)" in pair_sweep.result.stdout
    client = pair_sweep.client()
    a, b = [epoch_intervals(client, c.info.run_id) for c in pair_sweep.trials()]
    overlap = sum(max(0.0, min(e1, e2) - max(s1, s2)) for s1, e1 in a for s2, e2 in b)
    assert overlap > 0.5 * min(sum(e - s for s, e in a), sum(e - s for s, e in b)), (a, b)


def layout(sweep, child):
    """The names a trial's run carries. Tag.PARETO is left out: the sweep's report puts it on the
    frontier runs only, so whether one run has it says which trial won, not how runs are laid out.
    So are runs.RESTART_COUNTS: only a DDP trial's worker group can be restarted (Ray Train's)."""
    client = sweep.client()
    tags = {t for t in child.data.tags if not t.startswith("mlflow.") and t != Tag.PARETO}
    return ({a.path for a in client.list_artifacts(child.info.run_id)},
            set(child.data.params), set(child.data.metrics) - set(runs.RESTART_COUNTS),
            tags | {"mlflow.parentRunId"} & set(child.data.tags))


def test_single_worker_and_ddp_trials_leave_the_same_mlflow_layout(pair_sweep, ddp_sweep):
    single, ddp = layout(pair_sweep, pair_sweep.trials()[0]), layout(ddp_sweep, ddp_sweep.trials()[0])
    assert single == ddp
    for sweep in (pair_sweep, ddp_sweep):
        for child in sweep.trials():
            steps = [m.step for m in sweep.client().get_metric_history(child.info.run_id, "val_acc")]
            assert sorted(steps) == [1, 2, 3]


def test_a_single_worker_trial_asks_ray_for_its_worker_and_a_ddp_trial_for_its_driver():
    from ray import tune

    from orchestrator import ray_train, sweep
    from orchestrator.schema import Resources

    quarter = Resources(use_gpu=True, gpus_per_worker=0.25, cpus_per_worker=2)
    trainable = tune.with_resources(lambda config: None, ray_train.trial_resources(quarter))
    assert trainable._resources.bundles == [{"CPU": 2.0, "GPU": 0.25}]
    assert sweep.packing(quarter, {"CPU": 16, "GPU": 1})[0] == 4  # four trials share the GPU
    ddp = Resources(num_workers=2, cpus_per_worker=1, driver_cpus=0.1)
    assert ray_train.trial_resources(ddp) == {"cpu": 0.1}
    fits, line = sweep.packing(ddp, {"CPU": 2})
    assert fits == 0 and "each trial holds 2.1 CPU" in line  # workers + driver: 2.2 would not fit twice
    assert sweep.packing(ddp, {"CPU": 16})[0] == 7


# ---------------------------------------------------------------------------------------------
# What an MLflow user expects of the runs


def test_the_best_trials_model_is_registered_with_the_alias_best_and_loads_by_it(ddp_sweep):
    import mlflow
    import mlflow.pytorch
    import torch

    assert "Best model registered: e2e-ddp version 1, alias 'best'" in ddp_sweep.result.stdout
    client = ddp_sweep.client()
    version = client.get_model_version_by_alias("e2e-ddp", "best")
    best = max(ddp_sweep.trials(), key=lambda r: r.data.metrics["model_val_acc"])
    assert version.run_id == best.info.run_id or version.source.endswith(best.data.tags[Tag.LOGGED_MODEL_ID])
    mlflow.set_tracking_uri(ddp_sweep.uri)
    model = mlflow.pytorch.load_model("models:/e2e-ddp@best")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_runs_carry_the_dataset_input_context_tags_and_metrics_linked_to_the_model(ddp_sweep):
    from mlflow.entities import LoggedModelStatus

    client = ddp_sweep.client()
    for child in ddp_sweep.trials():
        run = client.get_run(child.info.run_id)
        (data_input,) = run.inputs.dataset_inputs
        assert data_input.dataset.name == "digits" and data_input.dataset.digest
        tags = {t.key: t.value for t in data_input.tags}
        assert tags["mlflow.data.context"] == "training" and (tags["train_size"], tags["val_size"]) == ("1294", "144")
        assert run.data.tags["mlflow.source.name"] == str(ddp_sweep.folder / "sweep.yaml")
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.type"] == "LOCAL"
        model = client.get_logged_model(run.data.tags[Tag.LOGGED_MODEL_ID])
        assert model.status == LoggedModelStatus.READY
        linked = {m.key for m in model.metrics}
        assert {"val_acc", "val_loss", "model_val_acc"} <= linked


def test_evaluate_log_records_the_test_scores_on_the_run(ddp_sweep):
    child = ddp_sweep.trials()[0]
    out = run_cli(["evaluate", child.info.run_id, "--split", "test", "--log", "--tracking-uri", ddp_sweep.uri],
                  cwd=ddp_sweep.folder)
    assert out.returncode == 0, out.stderr[-2000:]
    acc = float(out.stdout.split(" acc ")[1].split()[0])
    metrics = ddp_sweep.client().get_run(child.info.run_id).data.metrics
    assert abs(metrics["test_acc"] - acc) < 6e-5 and "test_loss" in metrics and "test_top5" in metrics


def test_compare_prints_json_csv_and_markdown(ddp_sweep):
    import csv
    import io
    import json

    out = run_cli(["compare", "e2e-ddp", "--format", "json", "--tracking-uri", ddp_sweep.uri], cwd=ddp_sweep.folder)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["run_id"] for r in rows} == {c.info.run_id for c in ddp_sweep.trials()}
    assert rows[0]["val_acc"] >= rows[1]["val_acc"] and isinstance(rows[0]["params"], int)
    out = run_cli(["compare", "e2e-ddp", "--format", "csv", "--tracking-uri", ddp_sweep.uri], cwd=ddp_sweep.folder)
    assert len(list(csv.DictReader(io.StringIO(out.stdout)))) == 2
    out = run_cli(["compare", "e2e-ddp", "--format", "markdown", "--tracking-uri", ddp_sweep.uri], cwd=ddp_sweep.folder)
    assert out.stdout.startswith("| name | arch |") and out.stdout.count("\n") == 4


def test_the_summary_lists_each_trials_run_id(ddp_sweep):
    for child in ddp_sweep.trials():
        assert child.info.run_id in ddp_sweep.result.stdout


@pytest.mark.ray
def test_a_sweep_whose_every_trial_fails_exits_1(tmp_path):
    text = PAIR_SWEEP.replace("e2e-pair", "e2e-diverge").replace("epochs: 3", "epochs: 1").replace(
        "warmup_epochs: 0.5", "warmup_epochs: 0.5, schedule: constant").replace(
        "lr: {grid: [0.05, 0.1]}", "lr: 1000000.0")
    (tmp_path / "sweep.yaml").write_text(text)
    out = run_cli(["sweep", "sweep.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 of 1 trial(s) failed" in out.stdout and "No trial completed (exit code 1)" in out.stdout
    assert "Best model registered" not in out.stdout
