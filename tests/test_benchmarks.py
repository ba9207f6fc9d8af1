"""The benchmarks: the GPU ones run tiny on the CPU as real subprocesses (`python -m benchmarks.NAME`
from the repository root): they start, finish and write the JSON the report reads; the sweep
benchmarks' sweep files and figures, and their one way of reading a sweep back. Speed is not
asserted (these are CPU numbers on a shared machine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"


# Runs a benchmark as `python -m benchmarks.NAME ARGS` from the repository root would, then checks
# what it imported: the GPU machine has neither Ray nor MLflow nor PyYAML, so the benchmarks'
# import chain must not reach them.
RUN_AND_CHECK_IMPORTS = """
import runpy, sys
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
pulled = [m for m in ("ray", "mlflow", "yaml") if m in sys.modules]
assert not pulled, f"{module} imported {pulled}"
"""


def run_benchmark(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-c", RUN_AND_CHECK_IMPORTS, f"benchmarks.{name}", *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def is_positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_engine_throughput_reports_engine_and_peer_img_per_s_without_importing_ray_or_mlflow(tmp_path):
    result = run_benchmark("engine_throughput", "--device", "cpu", "--arch", "resnet18", "--smallest",
                           "--batch-size", "8", "--steps", "2", "--warmup", "1", "--repeats", "1",
                           "--synthetic-size", "64", "--peer-workers", "0", "--out", str(tmp_path))
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    *arch_results, summary = lines
    assert [r["arch"] for r in arch_results] == ["resnet18"]
    r = arch_results[0]
    assert r["knobs"] == {"width": 0.125} and r["steps"] == 2 and r["batch_size"] == 8
    for key in ("engine_imgs_per_s", "peer_imgs_per_s", "speedup", "params"):
        assert is_positive(r[key]), (key, r)
    assert r["engine"]["data_path"] == "loader" and r["engine"]["precision"] == "float32"
    assert r["peer"]["workers"] == 0
    assert summary["summary"] is True and summary["device_type"] == "cpu"
    for key in ("device", "torch", "date", "command"):
        assert summary[key], key
    written = json.loads((tmp_path / "engine_throughput.json").read_text())
    assert written == {"results": arch_results, "summary": summary}


def test_time_to_accuracy_reports_per_epoch_val_acc_and_cumulative_training_seconds_without_ray_or_mlflow(tmp_path):
    result = run_benchmark("time_to_accuracy", "--dataset", "synthetic", "--synthetic-size", "80",
                           "--width", "0.125", "--epochs", "2", "--warmup-epochs", "0.5", "--batch-size", "16",
                           "--device", "cpu", "--target", "0.0", "--out", str(tmp_path))
    r = json.loads(result.stdout.strip().splitlines()[-1])
    assert r == json.loads((tmp_path / "time_to_accuracy.json").read_text())
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    first, second = r["epochs"]
    assert is_positive(first["train_s"]) and is_positive(second["train_s"])
    # Each figure is rounded to 3 decimals on its own: sums agree to a few rounding steps.
    assert second["cumulative_train_s"] == pytest.approx(first["train_s"] + second["train_s"], abs=0.003)
    assert second["cumulative_train_s"] == r["train_s_total"]
    assert all(0 <= e["val_acc"] <= 1 for e in r["epochs"])
    # A target of 0 is reached after the first epoch: the time is that epoch's training alone.
    assert r["epoch_at_target"] == 1 and r["seconds_to_target"] == first["cumulative_train_s"]
    assert r["final_val_acc"] == second["val_acc"] and r["error"] is None
    assert r["recipe"]["label_smoothing"] == 0.1 and r["recipe"]["schedule"] == "onecycle"
    assert r["dataset"]["split_seed"] == 0 and r["dataset"]["train_images"] + r["dataset"]["val_images"] == 80
    for key in ("device", "torch", "date", "command"):
        assert r[key], key


def test_gpu_run_script_is_valid_bash_and_needs_an_output_folder():
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu_run.sh")]).returncode == 0
    result = subprocess.run(["bash", str(BENCHMARKS / "gpu_run.sh")], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "usage:" in result.stderr


def test_engine_throughput_step_only_times_the_models_training_step_without_loading_data(capsys):
    from benchmarks import engine_throughput

    engine_throughput.main(["--step-only", "--arch", "vgg11", "--smallest", "--device", "cpu", "--batch-size", "4",
                            "--steps", "1", "--warmup", "1", "--repeats", "2"])
    (r, summary) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert r["arch"] == "vgg11" and r["family"] == "VGG" and r["knobs"] == {"width": 0.125}
    assert is_positive(r["step_imgs_per_s"]) and is_positive(r["params"])
    assert len(r["step"]["imgs_per_s_runs"]) == 2 and "engine_imgs_per_s" not in r
    assert summary["measured"] == "step" and summary["dataset"] is None and summary["train_images"] is None
    assert summary["command"].startswith("python -m benchmarks.engine_throughput --step-only")


def test_engine_throughput_per_family_takes_one_arch_of_every_family():
    import archs
    from benchmarks import engine_throughput

    chosen = engine_throughput.family_representatives()
    assert sorted(archs.get(n).family for n in chosen) == sorted(archs.families())
    assert {"resnet18", "vgg11", "se_resnet18", "densenet_bc", "mobilenet_v2"} <= set(chosen)


def test_engine_throughput_knobs_set_on_every_arch_and_a_bad_one_is_one_line(capsys):
    from benchmarks import engine_throughput

    engine_throughput.main(["--step-only", "--arch", "resnet18", "--knob", "width=0.25", "--device", "cpu",
                            "--batch-size", "2", "--steps", "1", "--warmup", "1", "--repeats", "1"])
    r = json.loads(capsys.readouterr().out.splitlines()[0])
    assert r["knobs"] == {"width": 0.25} and r["params"] > 176402  # wider than resnet18 at width 0.125
    with pytest.raises(SystemExit, match="--knob: resnet18: groups: 3 is not a knob of resnet18"):
        engine_throughput.main(["--step-only", "--arch", "resnet18", "--knob", "groups=3", "--device", "cpu"])
    with pytest.raises(SystemExit):
        engine_throughput.parse_args(["--arch", "resnet18", "--defaults"])  # --defaults goes with --per-family


def test_gpu_sharing_reads_overlap_and_recommends_the_fraction_with_the_most_img_per_s_that_fits():
    from benchmarks import gpu_sharing

    assert gpu_sharing.parse_model("shufflenet_v1:groups=3,width=0.25") == ("shufflenet_v1", ["groups=3", "width=0.25"])
    assert gpu_sharing.overlap([[0, 10], [2, 10]]) == 1.0  # the shorter window lies inside the longer
    assert gpu_sharing.overlap([[0, 10], [5, 15]]) == 0.5 and gpu_sharing.overlap([[0, 1], [2, 3]]) == 0.0
    rows = [{"procs": 1, "aggregate_imgs_per_s": 100.0, "peak_mem_mb": 1000},
            {"procs": 2, "aggregate_imgs_per_s": 180.0, "peak_mem_mb": 1000},
            {"procs": 4, "aggregate_imgs_per_s": 240.0, "peak_mem_mb": 1000}]
    assert gpu_sharing.recommend(rows, memory_mb=10_000) == {
        "gpus_per_worker": 0.25, "procs": 4, "aggregate_imgs_per_s": 240.0, "gain_over_one": 2.4}
    # Four processes would not fit in 90% of a 3,000 MB card: two do.
    assert gpu_sharing.recommend(rows, memory_mb=3_000)["gpus_per_worker"] == 0.5


def test_gpu_sharing_smoke_runs_engine_processes_side_by_side_and_writes_its_lines(tmp_path):
    # Two processes only (each a cold torch import): the K = 1, 2, 4 loop is the same code.
    result = run_benchmark("gpu_sharing", "--smoke", "--procs", "2", "--out", str(tmp_path), timeout=240)
    lines = [json.loads(line) for line in (tmp_path / "gpu_sharing.jsonl").read_text().splitlines()]
    processes = [r for r in lines if "process" in r]
    [two] = [r for r in lines if "aggregate_imgs_per_s" in r]
    assert [(r["procs"], r["process"]) for r in processes] == [(2, 0), (2, 1)]
    assert two["aggregate_imgs_per_s"] == pytest.approx(sum(r["imgs_per_s"] for r in processes), abs=0.1)
    assert two["slowest_process_imgs_per_s"] == min(r["imgs_per_s"] for r in processes)
    # Smoke windows last milliseconds, so whether they overlap is luck here; on a GPU they last seconds.
    assert 0 <= two["timed_windows_overlap"] <= 1 and two["peak_mem_mb_per_process"] is None  # no CUDA here
    assert lines[-1]["summary"] and lines[-1]["recommended"]["resnet18:width=0.125"] == {
        "gpus_per_worker": 0.5, "procs": 2, "aggregate_imgs_per_s": two["aggregate_imgs_per_s"], "gain_over_one": None}
    assert result.stdout.strip().splitlines()[-1] == json.dumps(lines[-1])


# ---------------------------------------------------------------------------------------------
# The sweep benchmarks (their sweeps take minutes: here their sweep files and figures)


def test_search_efficiency_gives_grid_random_tpe_and_asha_the_same_budget_on_one_task():
    from benchmarks import search_efficiency as se
    from orchestrator import config

    s = se.Settings(epochs=4, lrs=6, widths=(0.125, 0.25))
    specs = {m: config.parse(se.search_sweep(m, 1, s)) for m in ("grid", "random", "tpe", "asha")}
    assert {m: spec.trial_count() for m, spec in specs.items()} == dict.fromkeys(specs, 12)
    assert {m: (spec.search.algorithm, spec.search.scheduler) for m, spec in specs.items()} == {
        "grid": ("grid", "fifo"), "random": ("random", "fifo"), "tpe": ("tpe", "fifo"), "asha": ("grid", "asha")}
    for spec in specs.values():
        assert spec.search.seed == 1 and spec.search.max_concurrent_trials == 2 and spec.train.epochs == 4
        assert spec.resources.num_workers == 1 and [m.arch for m in spec.models] == ["resnet18"]
        assert spec.train.optimizer == "adamw"  # the quickstart's recipe
    # The grid's learning rates are log-spaced over the range the random searches sample.
    lrs = sorted(specs["grid"].models[0].overrides["lr"]["grid"])
    assert lrs[0] == se.LR_RANGE[0] and lrs[-1] == se.LR_RANGE[1] and len(lrs) == 6
    assert specs["tpe"].models[0].overrides["lr"] == {"loguniform": list(se.LR_RANGE)}


def test_search_efficiency_brackets_sweeps_differ_only_in_brackets_and_centre_each_lr_range_on_the_quickstarts():
    from benchmarks import search_efficiency as se
    from orchestrator import config

    s = se.Settings(families=se.FAMILIES, trials_per_model=5, bracket_epochs=6)
    per_model, global_ = (config.parse(se.brackets_sweep(b, s)) for b in ("per_model", "global"))
    assert (per_model.search.brackets, global_.search.brackets) == ("per_model", "global")
    assert per_model.models == global_.models and per_model.train == global_.train
    in_quickstart_order = [m["arch"] for m in se.quickstart()["models"] if m["arch"] in se.FAMILIES]
    assert [m.arch for m in per_model.models] == in_quickstart_order and len(in_quickstart_order) == 4
    assert per_model.trial_count() == 4 * 5 and per_model.max_epochs() == 6
    quick = {m["arch"]: m for m in se.quickstart()["models"]}
    for m in per_model.models:
        lr = quick[m.arch].get("lr", se.quickstart()["train"]["lr"])
        assert m.overrides["lr"] == {"loguniform": [lr / 10, lr * 10]} and m.knobs == quick[m.arch]["knobs"]


def trial_run(name: str, val_acc: float | None, train_s: float, start_s: float, status: str = "completed"):
    from benchmarks.sweep_run import TrialRun
    from orchestrator import runs

    result = runs.Result(name=name, arch="resnet18", knobs="width=0.125", lr=0.01, params=1, flops=1,
                         metric="val_acc", score=val_acc, val_acc=val_acc, val_loss=None, epoch=4, epochs=4,
                         epochs_planned=4, imgs_per_s=None, latency_ms=None, infer_imgs_per_s=None,
                         device_hours=train_s / 3600, status=status,
                         run_id=name, error=None, model_id=None, seed=0, entry=0, phase="search")
    return TrialRun(result, workers=1, start_s=start_s, end_s=start_s + train_s + 1)


def test_search_line_counts_trials_and_device_seconds_in_start_order_until_one_comes_within_the_target():
    from benchmarks import search_efficiency as se
    from benchmarks.sweep_run import SweepRun

    trials = [trial_run("a", 0.50, 5.0, 0.0), trial_run("b", None, 2.0, 1.0, status="failed"),
              trial_run("c", 0.95, 6.0, 7.0), trial_run("d", 0.97, 6.0, 8.0)]
    done = SweepRun(name="x", exit_code=0, wall_s=30.0, concurrency=2, trials=trials, tracking_uri="", output="")
    found = se.search_line("random", 0, done, target=0.95)
    assert (found["trials_to_target"], found["device_s_to_target"], found["epochs_to_target"]) == (3, 13.0, 12)
    assert found["best_val_acc"] == 0.97 and found["best_trial"] == "d" and found["device_s"] == 19.0
    assert found["statuses"] == {"completed": 3, "failed": 1} and found["epochs_trained"] == 16
    # No target: the method's own best (how long the grid takes to reach its best).
    own = se.search_line("grid", 0, done, target=None)
    assert (own["trials_to_target"], own["device_s_to_target"], own["target_val_acc"]) == (4, 19.0, 0.97)
    assert se.search_line("tpe", 0, done, target=0.98)["trials_to_target"] is None


@pytest.mark.ray  # the ddp_sweep fixture runs a real Ray sweep (shared with other tests)
def test_sweep_run_reads_a_sweeps_trials_back_in_start_order_through_the_run_record(ddp_sweep):
    from benchmarks.sweep_run import read_trials

    trials = read_trials(ddp_sweep.uri, ddp_sweep.experiment)
    assert sorted(t.result.name for t in trials) == ["resnet18-width0.125-lr0.05", "resnet18-width0.125-lr0.1"]
    assert [t.start_s for t in trials] == sorted(t.start_s for t in trials)
    for t in trials:
        assert t.workers == 2 and t.result.status == "completed" and t.result.epochs == 3
        assert t.device_s == pytest.approx(2 * t.train_s) and is_positive(t.train_s)
        assert 0 <= t.result.val_acc <= 1 and t.span_s > t.train_s
