"""The training engine, alone and under a real 2-process gloo DDP group. No Ray, no MLflow."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from orchestrator import data, engine
from orchestrator.engine import CollectingReporter, Engine, ModelSpec, TrainConfig

TINY = ModelSpec("resnet18", {"width": 0.125})


@pytest.fixture(scope="module")
def digits():
    return data.load_splits(data.DataSpec("digits"))


@pytest.fixture(scope="module")
def synthetic():
    return data.load_splits(data.DataSpec("synthetic", synthetic_size=256))


def test_engine_reaches_95_percent_on_digits_with_a_small_resnet(digits):
    # The device-resident path (batched augmentation) is the quicker one on CPU too.
    cfg = TrainConfig(epochs=6, batch_size=32, lr=0.1, warmup_epochs=1, seed=0, data_path="device")
    reporter = CollectingReporter()
    final = Engine(cfg, TINY, digits, device="cpu").fit(reporter)
    assert [m["epoch"] for m in reporter.history] == [1, 2, 3, 4, 5, 6]
    assert final["val_acc"] >= 0.95, reporter.history
    for m in reporter.history:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_top5", "lr", "imgs_per_s", "epoch_s"):
            assert math.isfinite(m[key]), key
        assert 0 <= m["val_acc"] <= m["val_top5"] <= 1


def _run(splits, epochs, resume_from=None, checkpoint_every=1, data_path="loader"):
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, warmup_epochs=1, seed=3, benchmark_inference=False,
                      deterministic=True, checkpoint_every=checkpoint_every, data_path=data_path)
    reporter = CollectingReporter()
    kept = []

    class Keep(CollectingReporter):
        def report(self, metrics, checkpoint_dir):
            reporter.report(metrics, checkpoint_dir)
            if checkpoint_dir:
                import shutil
                import tempfile

                dest = tempfile.mkdtemp()
                shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
                kept.append(dest)

    run = Engine(cfg, TINY, splits, device="cpu")
    run.fit(Keep(), resume_from=resume_from)
    return run, reporter.history, kept


@pytest.mark.parametrize("data_path", ["loader", "device"])
def test_resume_after_two_epochs_matches_four_straight_epochs(synthetic, data_path):
    # Deterministic CPU kernels, RNG states and per-epoch shuffles restored from the checkpoint:
    # the resumed run must equal the straight run to float32 round-off (we allow 1e-5).
    straight, straight_hist, _ = _run(synthetic, 4, data_path=data_path)
    # A 4-epoch run killed after its epoch-2 checkpoint, then resumed from that checkpoint.
    _, first_hist, kept4 = _run_until(synthetic, 4, stop_after=2, data_path=data_path)
    timing = ("imgs_per_s", "train_s", "epoch_s")  # the clock; _run measures no inference cost
    assert [{k: v for k, v in m.items() if k not in timing} for m in first_hist] == \
        [{k: v for k, v in m.items() if k not in timing} for m in straight_hist[:2]]
    resumed, resumed_hist, _ = _run(synthetic, 4, resume_from=kept4[-1], data_path=data_path)
    assert [m["epoch"] for m in resumed_hist] == [3, 4]
    for a, b in zip(straight_hist[2:], resumed_hist):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-5)
    for (name, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-5), name


def _run_until(splits, epochs, stop_after, data_path):
    """A run of `epochs` epochs killed after `stop_after` (its reporter raises)."""
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, warmup_epochs=1, seed=3, benchmark_inference=False,
                      deterministic=True, data_path=data_path)
    kept, hist = [], []

    class Stop(Exception):
        pass

    class Killer:
        def report(self, metrics, checkpoint_dir):
            import shutil
            import tempfile

            hist.append(metrics)
            dest = tempfile.mkdtemp()
            shutil.copytree(checkpoint_dir, dest, dirs_exist_ok=True)
            kept.append(dest)
            if metrics["epoch"] == stop_after:
                raise Stop

    run = Engine(cfg, TINY, splits, device="cpu")
    with pytest.raises(Stop):
        run.fit(Killer())
    return run, hist, kept


def test_checkpoint_holds_model_optimizer_schedule_epoch_rng_and_loads_weights_only(synthetic):
    _, _, kept = _run(synthetic, 2)
    state = torch.load(os.path.join(kept[-1], engine.STATE_FILE), weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "best_val_acc"} <= set(state)
    assert state["epoch"] == 2
    model, meta = engine.load_model(kept[-1])
    assert meta["arch"] == "resnet18" and meta["knobs"] == {"width": 0.125}
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    import json

    with open(os.path.join(kept[-1], engine.EVAL_FILE)) as f:
        info = json.load(f)
    assert len(info["confusion_matrix"]) == 10 and len(info["per_class_acc"]) == 10
    assert sum(map(sum, info["confusion_matrix"])) == len(synthetic.val.labels)


def test_weight_decay_skips_norm_weights_and_biases():
    import archs

    model = archs.create("resnet18", width=0.125)
    decay, no_decay = engine.param_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"])
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    ids = {id(p) for p in no_decay["params"]}
    assert id(bn.weight) in ids and id(bn.bias) in ids and id(model.fc.bias) in ids


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedules_warm_up_to_the_peak_lr_then_decay(schedule):
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(epochs=10, lr=0.4, schedule=schedule, warmup_epochs=2)
    opt = engine.make_optimizer(model, cfg, torch.device("cpu"))
    sched = engine.make_schedule(opt, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    peak = max(range(100), key=lambda i: lrs[i])
    assert lrs[0] < 0.05 and lrs[peak] == pytest.approx(0.4, rel=1e-3)
    assert 15 <= peak <= 25
    assert lrs[-1] < 0.01


def test_nan_loss_stops_training_with_diverged(synthetic):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e6, schedule="constant", weight_decay=0, seed=0)
    reporter = CollectingReporter()
    with pytest.raises(engine.Diverged, match="train_loss is nan"):
        Engine(cfg, TINY, synthetic, device="cpu").fit(reporter)
    assert len(reporter.history) < 3


def test_bf16_autocast_label_smoothing_grad_clip_and_adamw_run_on_cpu(synthetic):
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adamw", lr=1e-3, precision="bf16",
                      label_smoothing=0.1, grad_clip=1.0, steps_per_epoch=2, warmup_epochs=0)
    run = Engine(cfg, TINY, synthetic, device="cpu")
    assert run.amp_dtype == torch.bfloat16
    final = run.fit(CollectingReporter())
    assert math.isfinite(final["train_loss"])


def test_precision_auto_is_fp32_on_cpu():
    assert engine.autocast_dtype("auto", torch.device("cpu")) is None
    assert engine.autocast_dtype("fp32", torch.device("cuda")) is None


def test_bad_config_values_are_rejected_with_the_key():
    with pytest.raises(ValueError, match="optimizer: 'lbfgs' is not one of sgd, adamw"):
        TrainConfig(optimizer="lbfgs").check()
    with pytest.raises(ValueError, match="lr: -0.1 must be > 0"):
        TrainConfig(lr=-0.1).check()


# --- DDP with two real gloo processes --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir, data_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        splits = data.load_splits(data.DataSpec("synthetic", synthetic_size=256))
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, steps_per_epoch=3, warmup_epochs=0, data_path=data_path)
        run = Engine(cfg, TINY, splits, device="cpu")
        # The samples this rank trains on in epoch 0: the loader path shards with
        # DistributedSampler, the device path by slicing a shared permutation.
        if data_path == "loader":
            sampler = run.train_batches.sampler
            sampler.set_epoch(0)
            seen = list(iter(sampler))
        else:
            run.train_batches.set_epoch(0)
            g = torch.Generator().manual_seed(data.epoch_seed(cfg.seed, 0))
            seen = torch.randperm(len(splits.train.labels), generator=g)[rank::world_size][: run.train_batches.per_rank].tolist()
        reporter = CollectingReporter()
        run.fit(reporter)
        params = torch.cat([p.detach().flatten() for p in engine.unwrap(run.model).parameters()])
        torch.save({"seen": seen, "params": params, "metrics": reporter.history[-1]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("data_path", ["loader", "device"])
def test_ddp_two_gloo_ranks_see_disjoint_shards_and_end_with_equal_parameters(tmp_path, data_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), data_path), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert set(r0["seen"]).isdisjoint(r1["seen"])
    assert len(r0["seen"]) == len(r1["seen"]) > 0
    assert torch.equal(r0["params"], r1["params"])  # DDP all-reduced gradients: identical steps
    assert r0["metrics"]["val_acc"] == r1["metrics"]["val_acc"]  # metrics reduced across ranks


def test_the_first_report_describes_the_data_the_device_and_the_models_inference_cost(synthetic):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05, steps_per_epoch=2, inference_batch_size=8, data_path="device")
    reporter = CollectingReporter()
    Engine(cfg, TINY, synthetic, device="cpu").fit(reporter)
    first, second = reporter.history
    assert first["dataset_digest"] == synthetic.digest() and first["device_name"].startswith("cpu")
    assert first["infer_latency_b1_ms"] > 0 and first["infer_imgs_per_s"] > 0 and first["infer_peak_mem_mb"] > 0
    assert (first["infer_precision"], first["infer_throughput_batch"]) == ("fp32", "8")
    assert "infer_latency_b1_ms" not in second and "dataset_digest" not in second  # once per run
    # The digest is the content's: the same splits loaded again give it, other data does not.
    assert data.load_splits(data.DataSpec("synthetic", synthetic_size=256)).digest() == synthetic.digest()
    assert data.load_splits(data.DataSpec("synthetic", synthetic_size=260)).digest() != synthetic.digest()
