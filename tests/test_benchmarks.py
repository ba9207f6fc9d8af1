"""The benchmarks: the GPU ones run tiny on the CPU as real subprocesses (`python -m benchmarks.NAME`
from the repository root): they start, finish and write the JSON the report reads; the sweep
benchmarks' one way of reading a sweep back. Speed is not
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
# what it imported: the GPU machine has neither Ray nor MLflow, so the benchmarks' import chain
# must not reach them.
RUN_AND_CHECK_IMPORTS = """
import runpy, sys
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
pulled = [m for m in ("ray", "mlflow") if m in sys.modules]
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


# ---------------------------------------------------------------------------------------------
# The sweep benchmarks (their sweeps take minutes: here how they read a sweep back)


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
