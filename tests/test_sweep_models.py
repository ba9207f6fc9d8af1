"""What a child run says about its model is the model's own truth: the parameter count and FLOPs
for the data set's real number of classes (measured by the engine, not assumed), and the logged
model is the best checkpoint by the sweep's metric and mode, so the comparison table, the model
and `orchestrate evaluate` agree. What is tested is the run record, so each trial is replayed
(support.record_one_trial: the engine trains it on the CPU, the run record records Tune's events
for it) rather than swept through Ray; real MLflow (sqlite), real files in the real formats. That
a whole sweep records its trials this way is proven by the end-to-end sweeps (test_sweep.py)."""

from __future__ import annotations

import pickle
import textwrap
import zipfile

import numpy as np
import pytest

from support import Sweep, record_one_trial, run_cli
from orchestrator.runs import Tag

pytestmark = pytest.mark.slow  # no Ray, but two trained and exported models and evaluate's subprocess: ~1 min



def write_cifar100(root, n_train=200, n_test=20):
    """CIFAR-100's python layout: `train`, `test`, `meta` pickles with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [i % 100 for i in range(n)],
                 "coarse_labels": [i % 20 for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["x"] * 20}, f)


def write_three_class_zip(path, per_class=40):
    """train/<class>/*.png for three classes, each a noisy solid colour (learnable in an epoch)."""
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(1)
    colours = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}
    with zipfile.ZipFile(path, "w") as archive:
        for name, colour in colours.items():
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
                buffer = BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                archive.writestr(f"train/{name}/{i}.png", buffer.getvalue())


def model_size(arch, num_classes, **knobs):
    import archs

    model = archs.create(arch, num_classes=num_classes, **knobs)
    return archs.count_params(model), archs.count_flops(model)


def recorded(tmp_path_factory, name: str, write_data, text: str) -> Sweep:
    """The one trial of sweep file `text`, its data written by `write_data(folder)` ("DATA" in
    `text`), replayed into a fresh store."""
    folder = tmp_path_factory.mktemp(name)
    (folder / "sweep.yaml").write_text(textwrap.dedent(text).replace("DATA", str(write_data(folder))))
    uri, _ = record_one_trial(folder, "sweep.yaml")
    return Sweep(folder, None, uri, name)


@pytest.fixture(scope="module")
def cifar100_trial(tmp_path_factory):
    return recorded(tmp_path_factory, "c100", lambda folder: write_cifar100(folder / "data") or folder / "data", """\
        name: c100
        dataset: {name: cifar100, root: 'DATA'}
        train: {epochs: 1, batch_size: 32, warmup_epochs: 0.5}
        search: {scheduler: fifo}
        models: [{arch: resnet18, knobs: {width: 0.125}}]
        """)


@pytest.fixture(scope="module")
def three_class_trial(tmp_path_factory):
    """metric val_loss, mode max: the "best" epoch is the first (loss falls), not the last, so a
    model taken from the last epoch would be caught."""
    return recorded(tmp_path_factory, "three", lambda folder: write_three_class_zip(folder / "three.zip") or
                    folder / "three.zip", """\
        name: three
        dataset: {name: imagefolder, root: 'DATA', val_fraction: 0.25}
        train: {epochs: 3, batch_size: 16, lr: 0.05, warmup_epochs: 0.5}
        search: {scheduler: fifo, metric: val_loss, mode: max}
        failure: {num_to_keep: 1}
        models: [{arch: shufflenet_v1, knobs: {groups: 3, width: 0.25}}]
        """)


def test_a_100_class_sweep_logs_the_params_and_flops_of_the_100_class_model(cifar100_trial):
    (child,) = cifar100_trial.trials()
    params, flops = model_size("resnet18", 100, width=0.125)
    assert (child.data.params["param_count"], child.data.params["flops"]) == (str(params), str(flops))
    assert params != model_size("resnet18", 10, width=0.125)[0]  # the old driver-side count was this


def test_a_3_class_image_folder_sweep_logs_the_3_class_model(three_class_trial):
    (child,) = three_class_trial.trials()
    params, flops = model_size("shufflenet_v1", 3, groups=3, width=0.25)
    assert (child.data.params["param_count"], child.data.params["flops"]) == (str(params), str(flops))


def test_the_logged_model_is_the_best_epoch_by_the_sweeps_metric_and_evaluate_agrees(three_class_trial):
    import json

    import mlflow

    (child,) = three_class_trial.trials()
    client = three_class_trial.client()
    history = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "val_loss")}
    accs = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "val_acc")}
    best = max(history, key=history.get)  # mode max
    assert sorted(history) == [1, 2, 3] and best != 3, history
    assert child.data.tags[Tag.BEST_EPOCH] == str(best)
    meta = json.load(open(mlflow.artifacts.download_artifacts(
        run_id=child.info.run_id, artifact_path="model_meta.json", tracking_uri=three_class_trial.uri)))
    assert meta["epoch"] == best
    assert child.data.metrics["model_val_loss"] == pytest.approx(history[best])
    # with num_to_keep 1 Tune keeps the best checkpoint by the sweep's metric and mode, not the
    # latest, and the run's best_checkpoint is that one
    from ray.tune import CheckpointConfig

    from orchestrator import config, ray_train

    spec = config.load(str(three_class_trial.folder / "sweep.yaml"))
    kept = ray_train.checkpoint_config(CheckpointConfig, spec)
    assert (kept.num_to_keep, kept.checkpoint_score_attribute, kept.checkpoint_score_order) == (1, "val_loss", "max")
    ckpt = json.load(open(mlflow.artifacts.download_artifacts(
        run_id=child.info.run_id, artifact_path="best_checkpoint/model.json", tracking_uri=three_class_trial.uri)))
    assert ckpt["epoch"] == best

    out = run_cli(["evaluate", child.info.run_id, "--split", "val", "--tracking-uri", three_class_trial.uri],
                  cwd=three_class_trial.folder)
    assert out.returncode == 0, out.stderr[-2000:]
    loss = float(out.stdout.split(" loss ")[1].split()[0])
    acc = float(out.stdout.split(" acc ")[1].split()[0])
    # evaluate prints 4 decimals
    assert loss == pytest.approx(history[best], abs=6e-5) and acc == pytest.approx(accs[best], abs=6e-5)


def test_compare_ranks_by_the_model_the_run_holds(three_class_trial):
    out = run_cli(["compare", "three", "--tracking-uri", three_class_trial.uri], cwd=three_class_trial.folder)
    assert out.returncode == 0, out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if ln.startswith("shufflenet_v1-")]
    child = three_class_trial.trials()[0]
    tokens = line.split()
    val_acc = tokens.index(f"{child.data.metrics['model_val_acc']:.4f}")  # the model's val accuracy,
    assert tokens[val_acc + 1] == f"{child.data.metrics['model_val_loss']:.4f}"  # the sweep's metric (val_loss)
    assert tokens[val_acc + 2] == child.data.tags[Tag.BEST_EPOCH]  # and its epoch
