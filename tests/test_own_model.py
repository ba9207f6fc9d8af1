"""Your own model and your own images (issue #22): a model file outside the repository, named in a
sweep file as `PATH.py:NAME`, searched beside zoo models on an image folder at 48x48, end to end
through the real CLI (real Ray, a real MLflow store); and the user-code loader's own rules."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import archs
from datafiles import zip_tree
from support import record_one_trial, run_cli

# Two typed knobs, one a Literal; `image_size` is passed because the signature has it.
TINY_NET = textwrap.dedent('''\
    from typing import Literal

    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, num_classes: int, image_size: int = 32, width: int = 4,
                     act: Literal["relu", "gelu"] = "relu"):
            super().__init__()
            assert image_size == 48, image_size
            self.features = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1),
                                          nn.ReLU() if act == "relu" else nn.GELU(), nn.AdaptiveAvgPool2d(1),
                                          nn.Flatten())
            self.classifier = nn.Linear(width, num_classes)

        def forward(self, x):
            return self.classifier(self.features(x))
    ''')


def tiny_net_params(width: int, classes: int = 3) -> int:
    return 3 * 9 * width + width + width * classes + classes  # conv weight and bias, linear weight and bias


def write_shapes_zip(folder: Path, per_class: int = 8, size: int = 48) -> Path:
    """3 classes of 48x48 PNGs: a bright square in a different corner per class, on noise."""
    rng = np.random.default_rng(0)
    tree = folder / "tree"
    for index, name in enumerate(("top_left", "top_right", "bottom")):
        (tree / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            rows = slice(0, size // 2) if index < 2 else slice(size // 2, size)
            cols = slice(0, size // 2) if index != 1 else slice(size // 2, size)
            image[rows, cols] = 230
            Image.fromarray(image).save(tree / "train" / name / f"{i}.png")
    return zip_tree(tree, folder / "shapes.zip")


@pytest.mark.ray
@pytest.mark.slow
def test_a_model_file_outside_the_repo_is_searched_beside_the_zoo_at_48x48_and_exported(tmp_path, ray_tmpdir):
    outside = tmp_path / "outside" / "nets"
    outside.mkdir(parents=True)
    (outside / "tiny.py").write_text(TINY_NET)
    data = tmp_path / "data"
    data.mkdir()
    shapes = write_shapes_zip(data)
    sweeps, work = tmp_path / "sweeps", tmp_path / "work"
    sweeps.mkdir()
    work.mkdir()
    (sweeps / "own.yaml").write_text(textwrap.dedent(f"""\
        name: own-model
        dataset: {{name: imagefolder, root: {shapes}, image_size: 48, val_fraction: 0.25}}
        train: {{epochs: 1, batch_size: 6, lr: 0.05, inference_batch_size: 4}}
        resources: {{num_workers: 1, cpus_per_worker: 1}}
        search: {{scheduler: fifo, algorithm: tpe}}
        models:
          - {{arch: ../outside/nets/tiny.py:TinyNet, knobs: {{width: {{grid: [2, 4]}}, act: {{choice: [relu, gelu]}}}}}}
          - {{arch: resnet18, knobs: {{width: 0.125}}}}
          - {{arch: mobilenet_v2, knobs: {{width: 0.125}}}}
        """))
    uri = f"sqlite:///{work}/mlflow.db"
    env = {"RAY_TMPDIR": ray_tmpdir, "ORCHESTRATE_CACHE_DIR": str(tmp_path / "cache")}
    ref = "../outside/nets/tiny.py:TinyNet"

    # Started from another working folder: the file is found beside the sweep file, not here.
    dry = run_cli(["sweep", "../sweeps/own.yaml", "--tracking-uri", uri, "--dry-run"], cwd=work, env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"imports {ref}: {outside / 'tiny.py'}" in dry.stdout

    result = run_cli(["sweep", "../sweeps/own.yaml", "--tracking-uri", uri], cwd=work, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    import mlflow

    from orchestrator.runs import ROLE_TRIAL, Artifact, Tag

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("own-model")
    trials = [r for r in client.search_runs([experiment.experiment_id])
              if r.data.tags.get(Tag.ROLE) == ROLE_TRIAL]
    assert sorted(r.data.params["arch"] for r in trials) == sorted([ref, ref, "resnet18", "mobilenet_v2"])
    sha = hashlib.sha256((outside / "tiny.py").read_bytes()).hexdigest()
    own = [r for r in trials if r.data.params["arch"] == ref]
    assert sorted(int(r.data.params["knobs.width"]) for r in own) == [2, 4]  # the grid
    for run in trials:
        assert run.data.tags[Tag.STATUS] == "completed"
        assert run.data.params["dataset.image_size"] == "48"
    for run in own:
        # The 3-class model its knobs build, counted by the engine that trained it.
        assert int(run.data.params["param_count"]) == tiny_net_params(int(run.data.params["knobs.width"]))
        assert run.data.params["knobs.act"] in ("relu", "gelu")
        assert run.data.params[Tag.CODE_SHA256] == run.data.tags[Tag.CODE_SHA256] == sha
        code = client.download_artifacts(run.info.run_id, f"{Artifact.CODE}/tiny.py", str(tmp_path / "dl"))
        assert Path(code).read_text() == TINY_NET

    # ONNX, checked against the eager model on the run's own 48x48 validation images.
    best = max(own, key=lambda r: r.data.metrics.get("model_val_acc", 0))
    export = run_cli(["export", best.info.run_id, "--tracking-uri", uri, "--out", str(work / "exported")],
                     cwd=work, env=env)
    assert export.returncode == 0, export.stderr[-3000:]
    assert client.get_run(best.info.run_id).data.metrics["onnx_max_abs_diff"] < 1e-4
    assert len(list((work / "exported").glob("*.onnx"))) == 1

    compare = run_cli(["compare", "own-model", "--tracking-uri", uri, "--by", "arch", "--format", "json"],
                      cwd=work, env=env)
    assert compare.returncode == 0, compare.stderr[-3000:]
    rows = json.loads(compare.stdout)
    assert sorted(row["arch"] for row in rows) == sorted([ref, "resnet18", "mobilenet_v2"])

    report = run_cli(["report", "own-model", "--tracking-uri", uri, "--out", str(work / "report.html")],
                     cwd=work, env=env)
    assert report.returncode == 0, report.stderr[-3000:]
    page = (work / "report.html").read_text()
    assert ref in page and "48x48" in page


# ---------------------------------------------------------------------------------------------
# The loader's rules, without Ray


def test_knobs_come_from_the_signature_typed_with_literal_choices_and_required_arguments(tmp_path):
    (tmp_path / "sig_net.py").write_text(textwrap.dedent('''\
        from typing import Literal
        import torch

        def build(num_classes: int, depth: int, rate: float = 0.5, bn: bool = True, name: str = "x",
                  mode: Literal[1, 2, 4] = 2):
            return torch.nn.Linear(3, num_classes)
        '''))
    arch = archs.user.load("sig_net.py:build", base_dir=str(tmp_path))
    knobs = {k.name: k for k in arch.knobs}
    assert [(k.name, k.type) for k in arch.knobs] == [("depth", int), ("rate", float), ("bn", bool),
                                                      ("name", str), ("mode", int)]
    assert knobs["depth"].required and knobs["mode"].choices == (1, 2, 4) and not arch.takes_image_size
    assert archs.validate("sig_net.py:build", {"depth": 3}) == {"depth": 3, "rate": 0.5, "bn": True, "name": "x",
                                                              "mode": 2}
    with pytest.raises(archs.KnobError, match="is missing"):
        archs.validate("sig_net.py:build", {})
    with pytest.raises(archs.KnobError, match="bn: 1 is not a bool"):
        archs.validate("sig_net.py:build", {"depth": 1, "bn": 1})
    with pytest.raises(archs.KnobError, match="mode: 3 is not one of 1, 2, 4"):
        archs.validate("sig_net.py:build", {"depth": 1, "mode": 3})
    assert archs.get("sig_net.py:build").code.sha256 == hashlib.sha256(
        (tmp_path / "sig_net.py").read_bytes()).hexdigest()
    assert "sig_net.py:build" not in archs.names()  # the zoo's list stays the zoo


def test_a_package_module_reference_is_imported_from_the_sweep_folder_and_shipped_whole(tmp_path):
    package = tmp_path / "mymodels_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "small.py").write_text("import torch\n\ndef Small(num_classes: int, width: int = 2):\n"
                                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))\n")
    arch = archs.user.load("mymodels_pkg.small:Small", base_dir=str(tmp_path))
    assert arch.code.ship == str(package) and arch.code.file == str(package / "small.py")
    assert archs.user.check_model(arch, {"width": 2}, num_classes=5, image_size=16) is None


def test_a_file_whose_name_is_an_importable_module_is_refused(tmp_path):
    (tmp_path / "json.py").write_text("def Net(num_classes: int):\n    pass\n")
    with pytest.raises(archs.user.CodeError, match="module name 'json' is already"):
        archs.user.load("json.py:Net", base_dir=str(tmp_path))


def test_a_sweep_ships_its_model_file_and_lists_a_files_models(tmp_path, monkeypatch, capsys):
    from orchestrator import cli, config

    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "tiny.py").write_text(TINY_NET.replace("assert image_size == 48, image_size", "pass"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the file is found beside the sweep file, not in the working folder
    spec = config.parse({"name": "ship", "dataset": {"name": "synthetic", "synthetic_size": 64, "num_classes": 3},
                         "train": {"batch_size": 8},
                         "models": [{"arch": "nets/tiny.py:TinyNet", "knobs": {"width": {"grid": [2, 3]}}},
                                    {"arch": "resnet18"}]},
                        str(tmp_path / "sweep.yaml"), {"tracking_uri": f"sqlite:///{tmp_path}/m.db",
                                                       "storage_path": str(tmp_path / "rr")})
    assert spec.py_modules() == [str(tmp_path / "nets" / "tiny.py")]  # Ray's runtime_env py_modules
    (code,) = spec.code()
    assert code.ref == "nets/tiny.py:TinyNet" and code.module == "tiny"

    assert cli.main(["archs", "--from", str(tmp_path / "nets" / "tiny.py")]) == 0
    out = capsys.readouterr().out
    assert "tiny.py:TinyNet" in out and "width=4 (any int)" in out and "act=relu (one of relu, gelu)" in out


def test_export_rebuilds_a_user_model_from_its_file_only_while_the_file_is_what_the_run_trained(tmp_path, capsys):
    # The run record without Ray: a real engine run recorded in a real store.
    import mlflow

    from orchestrator import cli
    from orchestrator.runs import Artifact

    (tmp_path / "tiny.py").write_text(TINY_NET.replace("assert image_size == 48, image_size", "pass"))
    (tmp_path / "own.yaml").write_text("name: own-export\ndataset: {name: synthetic, synthetic_size: 48, num_classes: 3, "
                                       "image_size: 24}\ntrain: {epochs: 1, batch_size: 8, benchmark_inference: false}\n"
                                       "search: {scheduler: fifo}\nmodels: [{arch: tiny.py:TinyNet, knobs: {width: 3}}]\n")
    uri, run_id = record_one_trial(tmp_path, "own.yaml")
    client = mlflow.MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(run_id, Artifact.CODE)] == ["code/tiny.py"]

    assert cli.main(["export", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 0
    assert client.get_run(run_id).data.metrics["onnx_max_abs_diff"] < 1e-4
    capsys.readouterr()

    (tmp_path / "tiny.py").write_text(TINY_NET.replace("assert image_size == 48, image_size", "pass  # edited"))
    assert cli.main(["export", run_id, "--tracking-uri", uri, "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"trained tiny.py:TinyNet from {tmp_path / 'tiny.py'}" in err[0]
    assert "which has changed here; put that file back" in err[0]
