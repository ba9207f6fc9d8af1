"""A trained model as a deployable file, and proof that the file computes what the model does.

- `to_onnx`: ONNX through torch's dynamo exporter (`torch.onnx.export(..., dynamo=True)`), with a
  dynamic batch axis, of the deployed form (`inference.deployable`: eval mode, ParNet fused);
- `to_pt2`: the same program as a torch.export archive (`torch.export.save`), which needs only torch
  to load (`torch.export.load(path).module()`);
- `check_onnx`: ONNX Runtime (CPU) against eager PyTorch on a real batch — the largest logit
  difference and top-1 agreement — and ONNX Runtime's own latency and throughput, timed as
  `inference.measure` times PyTorch.

onnx, onnxscript and onnxruntime are the `export` extra (`pip install 'orchestrate[export]'`) and are
imported only here, only when called: the engine and a bare-torch GPU box never need them.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from orchestrator import inference

FORMATS = ("onnx", "pt2")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(RuntimeError):
    """An export needs a package that is not installed; str() says which and how to get it."""


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"ONNX export needs the '{module}' package: pip install 'orchestrate[export]' "
                          "(onnx, onnxscript, onnxruntime)") from None


def _exportable(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, tuple[torch.Tensor], tuple[dict]]:
    """The deployed form on the CPU in fp32, an example batch of at least two images (torch.export
    specialises a dimension it sees at size 1, so a batch-1 example would fix the batch size), and
    the dynamic shape that keeps the batch axis free."""
    if example.dim() != 4 or example.shape[0] < 1:
        raise ValueError(f"example: a batch of images [N, C, H, W] with N >= 1, not shape {tuple(example.shape)}")
    example = example.detach().to("cpu", torch.float32)
    if example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()
    deployed = inference.deployable(model).to("cpu", torch.float32)
    return deployed, (example,), ({0: torch.export.Dim("batch", min=1)},)


def _prepare(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def to_onnx(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Write `deployable(model)` to `path` as one self-contained ONNX file (weights inside: every
    model in the zoo is far below ONNX's 2 GB limit), input `images` [batch, C, H, W] -> output
    `logits` [batch, classes], batch dynamic. `example` is a batch of the model's input (its values
    do not matter, its shape does). The file is written only once the export has succeeded."""
    _require("onnxscript")
    deployed, args, dynamic_shapes = _exportable(model, example)
    path = _prepare(path)
    torch.onnx.export(deployed, args, str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False)
    return path


def to_pt2(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Write `deployable(model)` to `path` as a torch.export archive, batch dynamic; load it back with
    `torch.export.load(path).module()` (no `archs` import needed)."""
    deployed, args, dynamic_shapes = _exportable(model, example)
    program = torch.export.export(deployed, args, dynamic_shapes=dynamic_shapes)
    path = _prepare(path)
    torch.export.save(program, str(path))
    return path


def export_model(model: nn.Module, path: str | os.PathLike, example: torch.Tensor, fmt: str = "onnx") -> Path:
    """`to_onnx` or `to_pt2`, by `fmt` (one of FORMATS)."""
    writers: dict[str, Callable[..., Path]] = {"onnx": to_onnx, "pt2": to_pt2}
    if fmt not in writers:
        raise ValueError(f"format: {str(fmt)[:40]!r} is not one of {', '.join(FORMATS)}")
    return writers[fmt](model, path, example)


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """ONNX Runtime against eager PyTorch on one batch, and ONNX Runtime's speed on the CPU."""

    path: str
    file_mb: float
    batch_size: int  # images in the compared batch
    max_abs_diff: float  # largest |logit difference| over the batch
    top1_agreement: float  # fraction of images whose top-1 class is the same
    speed: inference.Speed  # ONNX Runtime, CPUExecutionProvider
    num_threads: int  # ONNX Runtime's intra-op threads
    onnxruntime_version: str


def session(path: str | os.PathLike, num_threads: int | None = None):
    """An ONNX Runtime session on the CPU with `num_threads` intra-op threads (default: torch's
    current count, so the two runtimes are timed on the same cores)."""
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1  # one image classifier: no parallel branches worth a second pool
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def agreement(model: nn.Module, logits: torch.Tensor, images: torch.Tensor) -> tuple[float, float]:
    """How well an export's `logits` on `images` match `model` run eagerly (a copy, fp32, CPU, eval
    mode): the largest absolute logit difference and the share of images with the same top-1."""
    eager = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with torch.inference_mode():
        reference = eager(images).float()
    return (logits - reference).abs().max().item(), (logits.argmax(1) == reference.argmax(1)).float().mean().item()


def check_onnx(model: nn.Module, path: str | os.PathLike, batch: torch.Tensor, *,
               batch_sizes: tuple[int, int] = inference.BATCH_SIZES,
               min_run_time_s: float = inference.MIN_RUN_TIME_S, num_threads: int | None = None) -> ExportCheck:
    """Run the ONNX file at `path` (ONNX Runtime, CPU) and `model` (eager PyTorch, eval mode, as
    trained: not fused, so the comparison covers the fold too) on `batch`, a batch of real normalised
    images; then time ONNX Runtime at batch_sizes[0] (latency, median and IQR) and batch_sizes[1]
    (throughput) exactly as `inference.measure` times PyTorch."""
    ort = _require("onnxruntime")
    threads = num_threads or torch.get_num_threads()
    sess = session(path, threads)
    images = batch.detach().to("cpu", torch.float32).contiguous()
    onnx_logits = torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])
    max_abs_diff, top1_agreement = agreement(model, onnx_logits, images)

    rng = np.random.default_rng(0)
    image_shape = tuple(images.shape[1:])

    def run_on(n: int) -> Callable[[], Any]:
        feed = {INPUT_NAME: rng.standard_normal((n, *image_shape), dtype=np.float32)}
        return lambda: sess.run([OUTPUT_NAME], feed)

    speed = inference.time_forward(run_on, batch_sizes, min_run_time_s, threads)
    return ExportCheck(str(path), os.path.getsize(path) / 2**20, len(images), max_abs_diff, top1_agreement, speed,
                       threads, ort.__version__)


def as_metrics(check: ExportCheck) -> dict[str, float]:
    """onnx_max_abs_diff, onnx_top1_agreement, onnx_latency_b1_ms, onnx_latency_b1_iqr_ms,
    onnx_imgs_per_s, onnx_file_mb."""
    return {"onnx_max_abs_diff": check.max_abs_diff, "onnx_top1_agreement": check.top1_agreement,
            **check.speed.metrics("onnx"), "onnx_file_mb": check.file_mb}


def as_params(check: ExportCheck) -> dict[str, str]:
    return {"onnx_check_batch": str(check.batch_size), "onnx_num_threads": str(check.num_threads),
            "onnxruntime_version": check.onnxruntime_version}
