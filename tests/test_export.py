"""ONNX and torch.export files of the deployed models: every family of the zoo exports, the file
computes what eager PyTorch does, and its batch size stays free.

Each family is exported once (a module-scoped fixture; torch's dynamo exporter costs seconds per
model) with the arch that has the fewest modules at its smallest knobs. A randomly initialised
model's logits are useless for comparing runtimes (from 1e-13 to 1e4 across the zoo, with ties), so
every model first gets eval-mode BatchNorm statistics from its batch, as training would leave it,
and the compared batch holds only images whose eager top-1 margin exceeds twice the logit
tolerance: a difference within the tolerance cannot swap their classes, so top-1 must agree on all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import archs
from orchestrator import export, inference
from support import calibrate_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent

LOGIT_TOLERANCE = 1e-4  # fp32, ONNX Runtime vs eager
BATCH = 16


def smallest_arch_of_each_family() -> dict[str, str]:
    def modules(name: str) -> int:
        return len(list(archs.create(name, **archs.get(name).smallest).modules()))

    return {family: min(names, key=modules) for family, names in archs.families().items()}


FAMILY_ARCHS = smallest_arch_of_each_family()


@torch.no_grad()
def decisive_batch(model: nn.Module, size: int = BATCH) -> torch.Tensor:
    """`size` images on which `model`'s top-1 class wins by more than 2 x LOGIT_TOLERANCE."""
    images = torch.randn(4 * size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calibrate_batchnorm(model, images)
    top2 = model(images).topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    decisive = margin > 2 * LOGIT_TOLERANCE
    assert decisive.sum() >= size, f"only {int(decisive.sum())} of {len(images)} images have a decisive top-1"
    return images[margin.argsort(descending=True)[:size]]


@pytest.fixture(scope="module", params=sorted(FAMILY_ARCHS), ids=str)
def exported(request, tmp_path_factory):
    """(arch name, model, batch, ONNX path) of one family; the example given to the exporter has one
    image, the case where torch.export would otherwise fix the batch size."""
    name = FAMILY_ARCHS[request.param]
    torch.manual_seed(0)
    model = archs.create(name, num_classes=10, **archs.get(name).smallest)
    batch = decisive_batch(model)
    path = export.to_onnx(model, tmp_path_factory.mktemp(name) / f"{name}.onnx", batch[:1])
    return name, model, batch, path


def test_every_family_exports_to_onnx_that_matches_eager_pytorch(exported):
    name, model, batch, path = exported
    check = export.check_onnx(model, path, batch, batch_sizes=(1, 8), min_run_time_s=0.01)
    assert check.max_abs_diff <= LOGIT_TOLERANCE, (name, check.max_abs_diff)
    assert check.top1_agreement == 1.0, (name, check.top1_agreement)
    assert check.batch_size == BATCH and check.file_mb > 0 and check.num_threads == torch.get_num_threads()
    speed = check.speed
    assert speed.latency_ms > 0 and speed.latency_iqr_ms >= 0 and speed.imgs_per_s > 0, speed


def test_exported_onnx_runs_at_any_batch_size(exported):
    name, model, batch, path = exported
    session = export.session(path)
    with torch.inference_mode():
        eager = model.eval()(batch)
    for n in (1, 7):
        (logits,) = session.run([export.OUTPUT_NAME], {export.INPUT_NAME: batch[:n].numpy()})
        assert logits.shape == (n, 10), (name, n, logits.shape)
        assert (torch.from_numpy(logits) - eager[:n]).abs().max() <= LOGIT_TOLERANCE, (name, n)


def test_onnx_file_holds_the_deployed_form_with_named_input_and_output(exported):
    onnx = pytest.importorskip("onnx")
    name, model, _, path = exported
    graph = onnx.load(str(path)).graph

    def convs(m: nn.Module) -> int:
        return sum(isinstance(c, nn.Conv2d) for c in m.modules())

    # One Conv node per conv of the deployed model: for ParNet that is after the fold (each block's
    # 3x3 and 1x1 branch convs are one), so fewer than the trained model has.
    assert sum(node.op_type == "Conv" for node in graph.node) == convs(inference.deployable(model)), name
    if name == "parnet":
        assert convs(inference.deployable(model)) < convs(model)
    assert [i.name for i in graph.input] == [export.INPUT_NAME] and [o.name for o in graph.output] == [export.OUTPUT_NAME]


def test_pt2_archive_loads_with_torch_alone_and_runs_at_any_batch_size(tmp_path):
    torch.manual_seed(0)
    model = archs.create("parnet", **archs.get("parnet").smallest)
    batch = decisive_batch(model, size=7)
    path = export.export_model(model, tmp_path / "parnet.pt2", batch[:1], "pt2")
    loaded = torch.export.load(str(path)).module()
    with torch.inference_mode():
        eager = model(batch)
        for n in (1, 7):
            assert (loaded(batch[:n]) - eager[:n]).abs().max() <= LOGIT_TOLERANCE, n


def test_export_rejects_an_unknown_format_and_a_batch_that_is_not_images(tmp_path):
    model = archs.create("vgg11", **archs.get("vgg11").smallest)
    with pytest.raises(ValueError, match=r"^format: 'tflite' is not one of onnx, pt2$"):
        export.export_model(model, tmp_path / "m", torch.randn(2, 3, 32, 32), "tflite")
    with pytest.raises(ValueError, match=r"^example: a batch of images \[N, C, H, W\] with N >= 1, not shape \(3, 32, 32\)$"):
        export.to_pt2(model, tmp_path / "m.pt2", torch.randn(3, 32, 32))
    assert not any(tmp_path.iterdir())


def test_export_without_onnxruntime_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is absent
    with pytest.raises(export.ExportError, match=r"needs the 'onnxruntime' package: pip install 'orchestrate\[export\]'"):
        export.session(tmp_path / "absent.onnx")


def test_inference_and_export_import_neither_onnx_nor_ray_nor_mlflow():
    # The engine imports `inference`, and a bare-torch GPU box must run it; `export` pulls onnx in
    # only when called.
    code = ("import sys, orchestrator.inference, orchestrator.export; "
            "print([m for m in ('onnx', 'onnxscript', 'onnxruntime', 'ray', 'mlflow') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]", result.stdout


def test_saving_models_leaves_no_tracing_state_holding_their_graphs(tmp_path):
    """torch.export keeps each call's ShapeEnv and FakeTensorMode alive (a cycle through C++ that
    gc cannot free); save_model empties the ones its export made, so a sweep's driver logging a
    model per trial does not grow with the trial count. The models still save as pt2 and load."""
    import gc
    import warnings

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from orchestrator import tracking

    def holding():
        gc.collect()
        return sum(1 for o in gc.get_objects() if issubclass(type(o), (ShapeEnv, FakeTensorMode)) and vars(o))

    import torch.distributed  # noqa: F401 - its lazy `reduce_op` warns when its __class__ is read

    x = torch.randn(3, 3, 32, 32)
    before = holding()
    for i in range(3):
        model = archs.create("vgg11", num_classes=10, width=0.125).eval()
        folder = tmp_path / f"m{i}"
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)  # the scan reads no object's __class__
            assert tracking.save_model(model, str(folder), [], {"image_size": 32}) == "pt2"
    assert holding() == before
    loaded = torch.export.load(str(folder / "data" / "model.pt2")).module()
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    # The control: a plain torch.export keeps its tracing state (if a torch fixes that, the
    # release in save_model can go).
    torch.export.export(model, (x,))
    assert holding() > before


# A sweep interrupted while its writer exports a model: the process exits while a daemon thread
# is inside torch's C++ code, which (where that thread next takes the GIL) aborts it with exit -6.
EXIT_MID_EXPORT = """
import os, sys, threading, time
import torch
from orchestrator.tracking.logged_model import save_model

inside = threading.Event()

class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        inside.set()
        time.sleep(1.5)  # torch.export runs forward: the export is under way for 1.5 s
        return self.fc(x.flatten(1))

def log():
    save_model(Slow().eval(), os.path.join(sys.argv[1], "model"), [], {"image_size": 32})
    open(os.path.join(sys.argv[1], "saved"), "w").close()

threading.Thread(target=log, daemon=True).start()
inside.wait()
sys.exit(130)
"""


def test_a_process_exiting_while_a_model_is_exported_waits_for_it_and_exits_with_its_code(tmp_path):
    script = tmp_path / "exit_mid_export.py"
    script.write_text(EXIT_MID_EXPORT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 130, result.stderr[-3000:]
    assert (tmp_path / "saved").exists()  # the export in hand was finished, not cut off by the exit
    assert (tmp_path / "model" / "data" / "model.pt2").exists()
