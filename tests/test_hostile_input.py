"""Hostile input (issue #15): each row is a probe that once broke the bad-input contract — a
traceback, a hang, a 16 MB error line, a store or a folder half-written, a password printed — and
is now answered the documented way: exit code 2, exactly one line on stderr naming the file or
option, the key, the bad value and what is allowed, and nothing written (the folder holds exactly
what the row put there, byte for byte; Ray was not started).

The rows run `orchestrator.cli.main` in-process (torch, Ray and MLflow are imported once); sweeps
run with --dry-run, which makes the same checks as a run, except the rows marked `run`, which
prove the real run refuses before it starts anything. The cases that need Ray's own processes or
signals run the CLI as a subprocess.
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from support import ORCHESTRATE, REPO, free_port, processes_mentioning, refused
from orchestrator import cli, config, preflight, schema, storage
from test_config_errors import sweep_yaml  # a valid sweep, a section replaced per row

def billion_laughs(levels: int) -> str:
    """The classic: each level an anchored list of nine aliases of the level below."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        name, below = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{below}"] * 9) + "]")
    return "\n".join(lines) + "\n"


UNREACHABLE_PORT = free_port()  # bound and released: nothing listens there
NO_SUCH_DB = f"sqlite:///{REPO}/no-such-folder/x.db"


@dataclasses.dataclass
class Probe:
    id: str
    argv: list[str]  # "{tmp}" is the row's folder
    says: tuple[str, ...]  # fragments of the one line: the key, the value, what is allowed
    files: dict[str, str | bytes] = dataclasses.field(default_factory=dict)
    setup: Callable[[Path], object] | None = None  # returns something to close after the call
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    never: tuple[str, ...] = ()  # must not appear anywhere in the output (a password)
    run: bool = False  # a sweep row run for real, not --dry-run

    def __str__(self):
        return self.id


def sweep(text: str, *extra: str, files: dict | None = None, **kw) -> dict:
    """A sweep row's argv and files: `bad.yaml` holding `text`, and `files`."""
    return {"argv": ["sweep", "bad.yaml", *extra], "files": {"bad.yaml": text, **(files or {})}, **kw}


def _listening(tmp: Path):
    server = socket.socket()
    server.bind(("127.0.0.1", UI_BUSY_PORT))
    server.listen()
    return server


def _state(folder: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / "ray_results" / folder).mkdir(parents=True)
        (tmp / "ray_results" / folder / storage.STATE_FILE).write_text(text)
    return setup


class _ReadOnlyMount:
    """An empty read-only tmpfs at tmp/ro (root, the test set-up, writes anywhere else)."""

    def __init__(self, tmp: Path):
        self.folder = tmp / "ro"
        self.folder.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(self.folder)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a read-only tmpfs here ({mounted.stderr.strip()[:120]})")

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.folder)], capture_output=True)


def _checkpoint(tmp: Path) -> None:
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / "state.pt").write_bytes(b"not a torch checkpoint")


# A user's model file (issue #22): two typed knobs, one a Literal; a constructor that raises past a
# width; a function missing a default and giving the wrong number of logits.
MYNET = """from typing import Literal
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 4, act: Literal["relu", "gelu"] = "relu"):
        super().__init__()
        if width > 64:
            raise ValueError(f"width {width} is wider than this net allows")
        self.body = nn.Sequential(nn.Conv2d(3, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)


def seven_logits(num_classes: int, depth: int):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 7))
"""


def own_model(models: str, files: dict | None = None, dataset: str = "{name: digits, val_fraction: 0.1}") -> dict:
    """A sweep row naming mynet.py's models (beside bad.yaml)."""
    return sweep(sweep_yaml(models=models, dataset=dataset), files={"mynet.py": MYNET, **(files or {})})


UI_BUSY_PORT = free_port()
EMPTY_STORE = {"mlflow.db": b""}  # an empty file is a new sqlite database, not garbage
PROBES = [
    # --- YAML
    Probe("alias_bomb_of_354_bytes", **sweep(billion_laughs(9)),
          says=("bad.yaml: line 6, column 4: this value expands to more than 100,000 values", "alias bomb")),
    Probe("alias_bomb_that_exhausted_memory", **sweep(billion_laughs(10) + sweep_yaml()),
          says=("expands to more than 100,000 values",)),
    Probe("alias_of_its_own_anchor", **sweep(sweep_yaml(models="&m [*m]")),
          says=("an alias refers to its own anchor",)),
    Probe("nesting_2000_deep", **sweep("name: " + "[" * 2000 + "]" * 2000 + "\n"),
          says=("nested more than 32 levels deep",)),
    Probe("duplicate_top_level_key", **sweep(sweep_yaml() + "name: other\n"),
          says=("line 7", "duplicate key 'name' (first on line 1)")),
    Probe("duplicate_key_in_a_flow_mapping", **sweep(sweep_yaml(train="{lr: 0.1, lr: 0.2}")),
          says=("line 3", "duplicate key 'lr'")),
    Probe("file_over_a_mebibyte", **sweep("# " + "x" * (1 << 20) + "\n" + sweep_yaml()),
          says=("bad.yaml: is larger than 1024 KiB",)),
    Probe("long_value_is_cut", **sweep(sweep_yaml(train="{optimizer: " + "y" * 200_000 + "}")),
          says=("bad.yaml: train.optimizer: 'yyyy", "...", "is not one of sgd, adamw")),
    Probe("long_key_is_cut", **sweep(sweep_yaml(train="{" + "k" * 1000 + ": 1}")),  # YAML's longest plain key
          says=("bad.yaml: train.'kkkk", "unknown key; allowed: epochs")),
    # --- numbers: finite floats, 64-bit ints, seeds numpy accepts, a bounded trial count
    Probe("infinite_lr", **sweep(sweep_yaml(train="{lr: .inf}")), says=("train.lr: inf is not a finite number",)),
    Probe("nan_momentum", **sweep(sweep_yaml(train="{momentum: .nan}")),
          says=("train.momentum: nan is not a finite number",)),
    Probe("infinite_weight_decay", **sweep(sweep_yaml(train="{weight_decay: .inf}")),
          says=("train.weight_decay: inf is not a finite number",)),
    Probe("infinite_reduction_factor", **sweep(sweep_yaml(search="{reduction_factor: .inf}")),
          says=("search.reduction_factor: inf is not a finite number",)),
    Probe("inference_batch_of_a_billion", **sweep(sweep_yaml(train="{inference_batch_size: 1000000000}")),
          says=("train.inference_batch_size: 1000000000 is not in [1, 16384]",)),
    Probe("infinite_gpus_per_worker", **sweep(sweep_yaml(resources="{use_gpu: true, gpus_per_worker: .inf}")),
          says=("resources.gpus_per_worker: inf is not a finite number",)),
    Probe("uniform_range_to_infinity", **sweep(sweep_yaml(models="[{arch: resnet18, lr: {uniform: [0.1, .inf]}}]")),
          says=("models[0].lr.uniform: [0.1, inf]: inf is not a finite number",)),
    Probe("randint_beyond_64_bits", **sweep(sweep_yaml(models="[{arch: resnet18, batch_size: {randint: [1, 10**20]}}]"
                                                       .replace("10**20", str(10**20)))),
          says=("models[0].batch_size.randint:", "outside the 64-bit integer range")),
    Probe("nan_knob", **sweep(sweep_yaml(models="[{arch: resnet18, knobs: {width: .nan}}]")),
          says=("models[0].knobs.width: nan is not a finite number",)),
    Probe("negative_search_seed", **sweep(sweep_yaml(search="{seed: -1}")),
          says=("search.seed: -1 is not in [0, 4294967295]",)),
    Probe("search_seed_of_2_to_the_76", **sweep(sweep_yaml(search=f"{{seed: {2**76}}}")),
          says=("search.seed: 75557863725914323419136 is outside the 64-bit integer range",)),
    Probe("negative_train_seed", **sweep(sweep_yaml(train="{seed: -1}")),
          says=("train.seed: -1 is not in [0, 4294967295]",)),
    Probe("train_seed_above_32_bits", **sweep(sweep_yaml(train=f"{{seed: {2**40}}}")),
          says=("train.seed: 1099511627776 is not in [0, 4294967295]",)),
    Probe("split_seed_beyond_64_bits", **sweep(sweep_yaml(dataset=f"{{name: digits, split_seed: {2**76}}}")),
          says=("dataset.split_seed: 75557863725914323419136 is outside the 64-bit integer range",)),
    Probe("a_billion_samples", **sweep(sweep_yaml(search="{num_samples: 1000000000}")),
          says=("search.num_samples: 1000000000 is not in [1, 10000]",)),
    Probe("a_grid_of_more_than_10000_trials",
          **sweep(sweep_yaml(search="{num_samples: 101}", models="[{arch: resnet18, lr: {grid: "
                             + str([round(0.001 * (i + 1), 3) for i in range(100)]) + "}}]")),
          says=("bad.yaml: models: 10,100 trials", "more than 10,000")),
    # --- names: what MLflow's registry and experiments take, and one folder name
    Probe("name_with_a_slash", **sweep(sweep_yaml(name="a/b")), says=("name: 'a/b' holds '/' or ':'",)),
    Probe("name_with_a_colon", **sweep(sweep_yaml(name="'a:b'")), says=("name: 'a:b' holds '/' or ':'",)),
    Probe("name_of_500_characters", **sweep(sweep_yaml(name="n" * 500)),
          says=("name: 'nnnn", "is 500 characters; at most 200",)),
    Probe("name_with_a_newline", **sweep(sweep_yaml(name='"a\\nb"')),
          says=("name: 'a\\nb' holds the unprintable character '\\n'",)),
    Probe("name_with_a_nul", **sweep(sweep_yaml(name='"a\\0b"')), says=("unprintable character '\\x00'",)),
    Probe("name_with_a_right_to_left_override", **sweep(sweep_yaml(name='"evil\\u202egpj.exe"')),
          says=("unprintable character '\\u202e'",)),
    Probe("name_dot_dot", **sweep(sweep_yaml(name="'..'")), says=("name: '..' reads as a path",)),
    Probe("registered_model_with_a_slash", **sweep(sweep_yaml(tracking="{registered_model: x/y}")),
          says=("tracking.registered_model: 'x/y' holds '/' or ':'",)),
    # --- places: storage
    Probe("storage_is_a_file", **sweep(sweep_yaml(), "--storage", "{tmp}/taken", files={"taken": "a file"}),
          says=("bad.yaml: storage: {tmp}/taken: {tmp}/taken is a file, not a folder",)),
    Probe("storage_is_a_file_run_for_real",
          **sweep(sweep_yaml(), "--storage", "{tmp}/taken/sub", files={"taken": "a file"}, run=True),
          says=("bad.yaml: storage:", "{tmp}/taken is a file, not a folder")),
    Probe("storage_where_nothing_may_be_written", **sweep(sweep_yaml(), "--storage", "/sys/orchestrate-test"),
          says=("bad.yaml: storage: /sys/orchestrate-test: cannot write in /sys",)),
    Probe("storage_of_an_unknown_scheme", **sweep(sweep_yaml(), "--storage", "ftp://user:s3cret@host/x"),
          says=("bad.yaml: storage: ftp://user:***@host/x: 'ftp' is not a storage Ray can write", "s3://"),
          never=("s3cret",)),
    # --- places: the tracking store
    Probe("tracking_on_ftp", **sweep(sweep_yaml(), "--tracking-uri", "ftp://host/x"),
          says=("bad.yaml: tracking.uri: ftp://host/x: 'ftp' is not a tracking store MLflow knows", "sqlite:///FILE")),
    Probe("tracking_in_etc_passwd", **sweep(sweep_yaml(), "--tracking-uri", "file:///etc/passwd"),
          says=("tracking.uri: file:///etc/passwd: MLflow 3 keeps its file-system store in maintenance mode",)),
    Probe("tracking_in_etc_passwd_with_the_file_store_allowed",
          **sweep(sweep_yaml(), "--tracking-uri", "file:///etc/passwd"), env={"MLFLOW_ALLOW_FILE_STORE": "true"},
          says=("tracking.uri: file:///etc/passwd: /etc/passwd is a file, not a file store's folder",)),
    Probe("tracking_on_postgresql_without_its_driver",
          **sweep(sweep_yaml(), "--tracking-uri", "postgresql://me:s3cret@127.0.0.1/mlflow"),
          says=("tracking.uri: postgresql://me:***@127.0.0.1/mlflow: its driver is not installed",
                "use postgresql+psycopg2://... with pip install 'orchestrate[postgres]'"),
          never=("s3cret",)),
    Probe("tracking_in_a_file_that_is_not_sqlite",
          **sweep(sweep_yaml(), "--tracking-uri", "sqlite:///{tmp}/junk.db", files={"junk.db": b"\x00" * 64 + b"junk"}),
          says=("{tmp}/junk.db is not a sqlite database",)),
    Probe("tracking_in_a_folder_named_like_a_database",
          **sweep(sweep_yaml(), "--tracking-uri", "sqlite:///{tmp}/dir.db", run=True),
          setup=lambda tmp: (tmp / "dir.db").mkdir(), says=("{tmp}/dir.db is a folder, not a sqlite file",)),
    Probe("tracking_server_with_a_password_unreachable",
          **sweep(sweep_yaml(), "--tracking-uri", f"http://me:s3cret@127.0.0.1:{UNREACHABLE_PORT}"),
          says=(f"tracking.uri: http://me:***@127.0.0.1:{UNREACHABLE_PORT} is unreachable",), never=("s3cret",)),
    # --- places: --resume
    Probe("resume_from_an_unknown_storage_scheme", **sweep(sweep_yaml(), "--resume", "--storage", "nope://x"),
          says=("bad.yaml: storage: nope://x: 'nope' is not a storage",)),
    Probe("resume_with_a_state_file_that_is_not_json", **sweep(sweep_yaml(), "--resume", run=True),
          setup=_state("bad-input-1", "{not json"),
          says=("bad.yaml: --resume: {tmp}/ray_results/bad-input-1/orchestrate_sweep.json is corrupt",)),
    Probe("resume_with_a_state_file_that_is_a_list", **sweep(sweep_yaml(), "--resume"),
          setup=_state("bad-input-1", "[1, 2]"), says=("orchestrate_sweep.json is corrupt",)),
    Probe("resume_with_a_state_file_without_a_parent_run", **sweep(sweep_yaml(), "--resume"),
          setup=_state("bad-input-1", json.dumps({"experiment": "bad-input"})),
          says=("--resume: {tmp}/ray_results/bad-input-1/orchestrate_sweep.json names no MLflow parent run",)),
    Probe("resume_with_nothing_to_resume", **sweep(sweep_yaml(), "--resume"),
          says=("bad.yaml: --resume: no earlier run of 'bad-input' under {tmp}/ray_results",)),
    # --- resources Ray refuses only once it has started, and data too large to make
    Probe("cpus_per_worker_of_1e-7", **sweep(sweep_yaml(resources="{cpus_per_worker: 1.0e-7}"), run=True),
          says=("bad.yaml: resources.cpus_per_worker: 1e-07 is less than 0.01; allowed: 0.01 or more",)),
    Probe("driver_cpus_of_1e-7", **sweep(sweep_yaml(resources="{num_workers: 2, cpus_per_worker: 0.5, "
                                                              "driver_cpus: 1.0e-7}"), run=True),
          says=("bad.yaml: resources.driver_cpus: 1e-07 is less than 0.01; allowed: 0.01 or more",)),
    Probe("gpus_per_worker_of_1e-7", **sweep(sweep_yaml(resources="{use_gpu: true, gpus_per_worker: 1.0e-7}")),
          says=("resources.gpus_per_worker: 1e-07 must be in [0.01, 1] (a share of one GPU) or a whole number",)),
    Probe("synthetic_data_of_10_to_the_12_images",
          **sweep(sweep_yaml(dataset="{name: synthetic, synthetic_size: 1000000000000}")),
          says=("bad.yaml: dataset.synthetic_size: 1000000000000 is not in [4, 100000]",)),
    # --- the sweep file itself: only a regular file is read (a FIFO would block forever, /dev/zero never end)
    Probe("sweep_file_that_is_a_fifo", ["sweep", "fifo.yaml"], setup=lambda tmp: os.mkfifo(tmp / "fifo.yaml"),
          says=("fifo.yaml: is a FIFO (named pipe), not a regular file; allowed: a YAML file",)),
    Probe("sweep_file_that_is_a_fifo_run_for_real", ["sweep", "fifo.yaml"], run=True,
          setup=lambda tmp: os.mkfifo(tmp / "fifo.yaml"), says=("fifo.yaml: is a FIFO (named pipe), not a regular file",)),
    Probe("sweep_file_that_is_dev_zero", ["sweep", "/dev/zero"],
          says=("/dev/zero: is a character device, not a regular file; allowed: a YAML file",)),
    Probe("sweep_file_that_is_a_folder", ["sweep", "{tmp}"], says=("{tmp}: is a folder, not a regular file",)),
    # --- places: what this machine holds (no --address: a local cluster)
    Probe("more_cpus_per_worker_than_the_machine", **sweep(sweep_yaml(resources="{cpus_per_worker: 4096}"), run=True),
          says=("resources.cpus_per_worker: 1 workers x 4096 CPU = 4096 CPUs, but this machine has",)),
    Probe("a_thousand_workers", **sweep(sweep_yaml(resources="{num_workers: 1000, cpus_per_worker: 1}",
                                                   train="{epochs: 3, batch_size: 1, lr: 0.1}")),
          says=("resources.num_workers: 1000 workers x 1 CPU + 0.1 driver CPU = 1000.1 CPUs, but this machine has",)),
    Probe("more_gpus_than_the_machine", **sweep(sweep_yaml(resources="{use_gpu: true, gpus_per_worker: 4096}")),
          says=("resources.gpus_per_worker: 1 workers x 4096 GPU = 4096 GPUs, but this machine has",)),
    Probe("strict_spread_on_one_node",
          **sweep(sweep_yaml(resources="{num_workers: 2, cpus_per_worker: 0.5, placement_strategy: STRICT_SPREAD}")),
          says=("resources.placement_strategy: STRICT_SPREAD puts each of the 2 workers on its own node",)),
    # --- places: the Ray cluster to join
    Probe("address_that_is_not_one", **sweep(sweep_yaml(), "--address", "not an address!"),
          says=("bad.yaml: --address: 'not an address!' is not a Ray address; allowed: HOST:PORT",)),
    Probe("address_with_a_port_out_of_range", **sweep(sweep_yaml(), "--address", "127.0.0.1:99999"),
          says=("--address: '127.0.0.1:99999': port 99999 is not in 1..65535",)),
    Probe("address_of_the_dashboard", **sweep(sweep_yaml(), "--address", "http://127.0.0.1:8265"),
          says=("--address: 'http://127.0.0.1:8265' is not a Ray address",)),
    Probe("address_where_nothing_listens", **sweep(sweep_yaml(), "--address", "127.0.0.1:1"),
          says=("--address: 127.0.0.1:1: cannot connect to 127.0.0.1:1 (Connection refused)",)),
    Probe("ray_client_address_where_nothing_listens", **sweep(sweep_yaml(), "--address", "ray://127.0.0.1:1"),
          says=("--address: ray://127.0.0.1:1: cannot connect to 127.0.0.1:1",)),
    Probe("ray_address_variable_that_is_not_one", **sweep(sweep_yaml()), env={"RAY_ADDRESS": "garbage:port"},
          says=("bad.yaml: RAY_ADDRESS: 'garbage:port' is not a Ray address",)),
    # --- train
    Probe("train_knob_that_is_not_yaml", ["train", "--arch", "resnet18", "--knob", "width=["],
          says=("train: --knob width: '[' is not a YAML value",)),
    Probe("train_knob_that_is_an_alias_of_itself", ["train", "--arch", "resnet18", "--knob", "width=&a [*a]"],
          says=("train: --knob width: '&a [*a]' is not a YAML value", "its own anchor")),
    Probe("train_batch_larger_than_the_data", ["train", "--arch", "resnet18", "--batch-size", "100000"],
          says=("train: --batch-size: 100000 is more than the", "training images of digits; allowed: 1..")),
    Probe("train_resume_from_nowhere", ["train", "--arch", "resnet18", "--resume", "/nonexistent"],
          says=("train: --resume: '/nonexistent' holds no checkpoint (state.pt)",)),
    Probe("train_resume_from_a_garbage_checkpoint",
          ["train", "--arch", "resnet18", "--width", "0.125", "--subset", "64", "--batch-size", "16",
           "--resume", "{tmp}/ckpt"],
          setup=_checkpoint, says=("train: --resume: '{tmp}/ckpt' is not a checkpoint of this model",)),
    Probe("train_on_a_bogus_device", ["train", "--arch", "resnet18", "--device", "bogus"],
          says=("orchestrate train: argument --device: 'bogus' is not a device; allowed: cpu, cuda, cuda:N, mps",)),
    Probe("train_on_a_cuda_device_this_machine_lacks", ["train", "--arch", "resnet18", "--device", "cuda:7"],
          says=("argument --device: 'cuda:7': this machine has",)),
    # --- evaluate, compare, ui
    Probe("evaluate_on_a_bogus_device", ["evaluate", "0123", "--device", "bogus"],
          says=("orchestrate evaluate: argument --device: 'bogus' is not a device",)),
    Probe("evaluate_with_batch_size_0", ["evaluate", "0123", "--batch-size", "0"],
          says=("orchestrate evaluate: argument --batch-size: '0' is not a whole number >= 1",)),
    Probe("evaluate_in_a_folder_without_a_store", ["evaluate", "0123"],
          says=("evaluate: no MLflow store at {tmp}/mlflow.db", "orchestrate sweep FILE")),
    Probe("compare_in_a_folder_without_a_store", ["compare"], says=("compare: no MLflow store at {tmp}/mlflow.db",)),
    Probe("compare_on_ftp", ["compare", "--tracking-uri", "ftp://host/x"],
          says=("compare: --tracking-uri: ftp://host/x: 'ftp' is not a tracking store",)),
    # --- your own model (arch: PATH.py:NAME) and the image size (issue #22)
    Probe("own_model_unknown_knob", **own_model("[{arch: mynet.py:TinyNet, knobs: {depth: 3}}]"),
          says=("bad.yaml: models[0].knobs.depth: is not a knob of mynet.py:TinyNet; its knobs are width, act",)),
    Probe("own_model_knob_of_the_wrong_type", **own_model("[{arch: mynet.py:TinyNet, knobs: {width: wide}}]"),
          says=("bad.yaml: models[0].knobs.width: 'wide' is not a int",)),
    Probe("own_model_literal_knob_outside_its_values",
          **own_model("[{arch: mynet.py:TinyNet, knobs: {act: {grid: [relu, tanh]}}}]"),
          says=("bad.yaml: models[0].knobs.act: 'tanh' is not one of relu, gelu",)),
    Probe("own_model_file_missing", **own_model("[{arch: nets/tiny.py:TinyNet}]"),
          says=("bad.yaml: models[0].arch: nets/tiny.py:TinyNet: {tmp}/nets/tiny.py does not exist",)),
    Probe("own_model_file_with_a_syntax_error", **own_model("[{arch: broken.py:Net}]",
                                                            files={"broken.py": "import torch\ndef Net(:\n"}),
          says=("models[0].arch: broken.py:Net: importing {tmp}/broken.py failed at {tmp}/broken.py line 2: "
                "SyntaxError",)),
    Probe("own_model_file_raising_on_import", **own_model("[{arch: raising.py:Net}]",
                                                          files={"raising.py": "x = 1\nimport no_such_module_here\n"}),
          says=("models[0].arch: raising.py:Net: importing {tmp}/raising.py failed at {tmp}/raising.py line 2: "
                "ModuleNotFoundError",)),
    Probe("own_model_name_not_in_the_file", **own_model("[{arch: mynet.py:HugeNet}]"),
          says=("models[0].arch: mynet.py:HugeNet: {tmp}/mynet.py defines no 'HugeNet'",)),
    Probe("own_model_constructor_raising", **own_model("[{arch: mynet.py:TinyNet, knobs: {width: {grid: [8, 100]}}}]"),
          says=("models[0].arch: mynet.py:TinyNet: TinyNet(num_classes=10, width=100, act='relu') raised "
                "ValueError: width 100 is wider than this net allows",)),
    Probe("own_model_wrong_output_shape", **own_model("[{arch: mynet.py:seven_logits, knobs: {depth: 2}}]"),
          says=("models[0].arch: mynet.py:seven_logits: seven_logits(num_classes=10, depth=2) on a batch of 2 "
                "32x32 images gives [2, 7]; expected [2, 10]",)),
    Probe("own_model_missing_required_argument", **own_model("[{arch: mynet.py:seven_logits}]"),
          says=("models[0].knobs.depth: is missing: mynet.py:seven_logits has no default for it",)),
    Probe("own_model_reference_of_the_wrong_form", **own_model("[{arch: 'my net.py:Tiny Net'}]"),
          says=("models[0].arch: 'my net.py:Tiny Net' is not PATH.py:NAME or package.module:NAME",)),
    Probe("own_model_file_changed_before_resume",
          **{**own_model("[{arch: mynet.py:TinyNet}]"), "argv": ["sweep", "bad.yaml", "--resume"]},
          setup=_state("bad-input-1", json.dumps({"experiment": "bad-input", "parent_run_id": "abc",
                                                  "code": {"mynet.py:TinyNet": "0" * 64}})),
          says=("bad.yaml: --resume: mynet.py:TinyNet: {tmp}/mynet.py changed since the sweep started (sha256 "
                "000000000000 -> ", "restore the file, or start the sweep afresh without --resume")),
    Probe("zoo_model_at_a_size_it_cannot_take",
          **own_model("[{arch: alexnet}]", dataset="{name: digits, image_size: 48}"),
          says=("models[0].arch: alexnet takes 32x32 images only (its classifier's first Linear is sized for the "
                "4x4 feature map of a 32x32 input), not 48x48",)),
    Probe("image_size_0", **sweep(sweep_yaml(dataset="{name: digits, image_size: 0}")),
          says=("bad.yaml: dataset.image_size: 0 is not in [16, 256]",)),
    Probe("image_size_10000", **sweep(sweep_yaml(dataset="{name: digits, image_size: 10000}")),
          says=("bad.yaml: dataset.image_size: 10000 is not in [16, 256]",)),
    Probe("image_size_big", **sweep(sweep_yaml(dataset="{name: digits, image_size: big}")),
          says=("bad.yaml: dataset.image_size: 'big' is not a int",)),
    Probe("compare_store_named_by_the_environment", ["compare"], env={"MLFLOW_TRACKING_URI": NO_SUCH_DB},
          says=("compare: MLFLOW_TRACKING_URI: no MLflow store at",)),
    # --- report and export: an --out nothing can be written in, refused before the store is read
    Probe("report_out_where_nothing_may_be_written", ["report", "--out", "/sys/orchestrate-test/r.html"],
          says=("report: --out: '/sys/orchestrate-test/r.html': cannot write in /sys",)),
    Probe("report_out_under_a_file", ["report", "--out", "{tmp}/taken/r.html"], files={"taken": "a file"},
          says=("report: --out: '{tmp}/taken/r.html': {tmp}/taken is a file, not a folder",)),
    Probe("report_out_in_a_read_only_folder", ["report", "--out", "{tmp}/ro/r.html"], setup=_ReadOnlyMount,
          says=("report: --out: '{tmp}/ro/r.html': cannot write in {tmp}/ro (Read-only file system)",)),
    Probe("export_out_in_a_read_only_folder", ["export", "0123", "--out", "{tmp}/ro/sub"], setup=_ReadOnlyMount,
          says=("export: --out: '{tmp}/ro/sub': cannot write in {tmp}/ro (Read-only file system)",)),
    Probe("export_out_where_nothing_may_be_written", ["export", "0123", "--out", "/sys/orchestrate-test"],
          files=EMPTY_STORE, says=("export: --out: '/sys/orchestrate-test': cannot write in /sys",)),
    Probe("export_out_under_a_file", ["export", "0123", "--out", "{tmp}/taken/sub"], files={"taken": "a file"},
          says=("export: --out: '{tmp}/taken/sub': {tmp}/taken is a file, not a folder",)),
    Probe("ui_on_port_99999", ["ui", "--port", "99999"],
          says=("orchestrate ui: argument --port: '99999' is not a port in 1..65535",)),
    Probe("ui_on_a_port_in_use", ["ui", "--port", str(UI_BUSY_PORT)], files=EMPTY_STORE, setup=_listening,
          says=(f"ui: --port: {UI_BUSY_PORT} is in use on 127.0.0.1; pick another with --port",)),
    Probe("ui_in_a_folder_without_a_store", ["ui"], says=("ui: no MLflow store at {tmp}/mlflow.db",)),
]


def _place(probe: Probe, tmp: Path):
    for name, content in probe.files.items():
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return probe.setup(tmp) if probe.setup else None


def _argv(probe: Probe, tmp: Path) -> list[str]:
    argv = [a.replace("{tmp}", str(tmp)) for a in probe.argv]
    return argv + ["--dry-run"] if argv[0] == "sweep" and not probe.run else argv


def test_there_are_at_least_60_probes_each_with_its_own_name():
    assert len(PROBES) >= 60
    assert len({p.id for p in PROBES}) == len(PROBES)


@pytest.mark.parametrize("probe", PROBES, ids=str)
def test_hostile_input_is_one_line_exit_2_and_nothing_written(probe, tmp_path, capfd):
    held = _place(probe, tmp_path)
    try:
        start = time.monotonic()
        line = refused(_argv(probe, tmp_path), tmp_path, capfd, says=probe.says, never=probe.never, env=probe.env)
        seconds = time.monotonic() - start
    finally:
        if held is not None:
            held.close()
    assert len(line) <= schema.MAX_LINE_CHARS
    assert seconds < 15, f"took {seconds:.1f} s to refuse"


# ---------------------------------------------------------------------------------------------
# What the rows rely on, checked directly


def test_the_name_rule_refuses_every_name_mlflows_registry_and_experiments_refuse():
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_experiment_name, _validate_model_name

    names = ["ok", "a/b", "a:b", "", "  ", ".", "..", "..x", "a..b", "x" * 200, "x" * 201, "x" * 501,
             "a\nb", "a\x00b", "r\u202el", "ünïcödé", "with space", "a\\b", "-dash", "_"]
    for name in names:
        mlflow_refuses = False
        for validate in (_validate_model_name, _validate_experiment_name):
            try:
                validate(name)
            except MlflowException:
                mlflow_refuses = True
        if mlflow_refuses:
            assert schema.mlflow_name(name), f"{name!r}: MLflow refuses it, we accepted it"
    assert schema.mlflow_name("ünïcödé") is None and schema.mlflow_name("a..b") is None


def test_values_in_messages_are_cut_to_80_characters():
    assert len(schema.show("x" * 10**6)) == schema.SHOWN_CHARS
    assert len(schema.show(list(range(10**6)))) <= schema.SHOWN_CHARS
    assert len(schema.show(10**1000)) <= schema.SHOWN_CHARS
    nested: list = []
    for _ in range(10_000):
        nested = [nested]
    assert schema.show(nested) == "[[[[...]]]]"
    assert schema.show("a\nb") == "'a\\nb'"


def test_anchors_and_merge_keys_within_the_bounds_still_load():
    raw = config.yaml_value("defaults: &d {width: 0.125}\nmodels:\n  - {arch: resnet18, knobs: *d}\n"
                            "  - {arch: resnet34, knobs: {<<: *d, width: 0.25}}\n")
    assert raw["models"][0]["knobs"] == {"width": 0.125} and raw["models"][1]["knobs"] == {"width": 0.25}


def test_the_default_warmup_fits_any_epoch_count_and_an_explicit_one_is_checked():
    assert [schema.TrainConfig(epochs=e).effective_warmup_epochs for e in (1, 2, 4, 30)] == [0.25, 0.5, 1.0, 1.0]
    assert not list(schema.problems(schema.TrainConfig(epochs=1)))
    assert schema.TrainConfig(epochs=3, warmup_epochs=0.5).effective_warmup_epochs == 0.5
    assert [k for k, _ in schema.problems(schema.TrainConfig(epochs=1, warmup_epochs=1.0))] == ["warmup_epochs"]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_every_schedule_runs_for_any_short_run_and_warmup(schedule):
    import torch

    from orchestrator import engine

    for epochs, steps_per_epoch, warmup in itertools.product((1, 2, 3, 5), (1, 2, 3, 4), (None, 0.0, 0.5)):
        cfg = schema.TrainConfig(epochs=epochs, schedule=schedule, warmup_epochs=warmup)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        sched = engine.make_schedule(opt, cfg, steps_per_epoch)
        for _ in range(epochs * steps_per_epoch):
            opt.step()
            sched.step()
        assert all(0 <= g["lr"] <= cfg.lr * 1.0001 for g in opt.param_groups), (epochs, steps_per_epoch, warmup)


def test_train_with_the_defaults_and_one_epoch_trains(capsys):
    # issue #14 item 7: `orchestrate train --arch vgg11 --epochs 1` was refused by the default warm-up
    assert cli.main(["train", "--arch", "vgg11", "--width", "0.125", "--epochs", "1", "--subset", "128",
                     "--steps-per-epoch", "2", "--batch-size", "16", "--device", "cpu"]) == 0
    assert "best val_acc" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Credentials: masked wherever a URI is shown or stored, and usable by the reachability probe


@pytest.mark.parametrize("uri, masked", [
    ("http://me:s3cret@host:5000", "http://me:***@host:5000"),
    ("https://me:p@ss@host/prefix", "https://me:***@host/prefix"),
    ("postgresql+psycopg2://me:s3cret@db:5432/mlflow", "postgresql+psycopg2://me:***@db:5432/mlflow"),
    ("http://me@host:5000", "http://me@host:5000"),
    ("http://host:5000/a@b", "http://host:5000/a@b"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_mask_replaces_the_password_and_nothing_else(uri, masked):
    assert preflight.mask(uri) == masked


def test_the_sweep_file_artefact_text_has_its_passwords_masked(tmp_path):
    (tmp_path / "s.yaml").write_text("name: s\ntracking: {uri: 'http://me:s3cret@host:5000'}  # mine\n")
    assert preflight.masked_sweep_text(str(tmp_path / "s.yaml")) == (
        "name: s\ntracking: {uri: 'http://me:***@host:5000'}  # mine\n")


def test_the_state_file_stores_the_tracking_uri_masked(tmp_path):
    storage.write_state(str(tmp_path), "run", {"experiment": "e", "tracking_uri": "http://me:s3cret@h:5000"})
    text = (tmp_path / "run" / storage.STATE_FILE).read_text()
    assert "s3cret" not in text and json.loads(text)["tracking_uri"] == "http://me:***@h:5000"


def test_printed_commands_are_shell_quoted_and_leave_credentials_out():
    line = preflight.command_line("orchestrate", "sweep", "my sweep's.yaml", "--storage", "/tmp/a b")
    assert shlex.split(line) == ["orchestrate", "sweep", "my sweep's.yaml", "--storage", "/tmp/a b"]
    # MLflow's client would send a URI's (masked) credentials over MLFLOW_TRACKING_USERNAME/PASSWORD
    line = preflight.command_line("orchestrate", "ui", "--tracking-uri", "http://me:s3cret@h:1")
    assert shlex.split(line, comments=True) == ["orchestrate", "ui", "--tracking-uri", "http://h:1"]
    assert line.endswith("# credentials left out: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")


def test_the_summary_prints_the_ui_command_without_the_password():
    import io

    from orchestrator import sweep

    spec = config.parse({"name": "s", "models": [{"arch": "resnet18"}]}, "s.yaml",
                        {"tracking_uri": "http://me:s3cret@h:5000", "storage_path": "/tmp/x"})
    out = io.StringIO()
    sweep.print_summary([], spec, True, out)
    assert "orchestrate ui --tracking-uri http://h:5000  # credentials left out" in out.getvalue()
    assert "s3cret" not in out.getvalue()


@pytest.fixture
def health_server_with_basic_auth():
    """An HTTP server whose /health answers 200 only to me:s3cret (as a tracking server behind
    basic auth does)."""
    good = "Basic " + base64.b64encode(b"me:s3cret").decode()

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.headers.get("Authorization") == good and self.path == "/health" else 401)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_reachability_probe_sends_the_uris_credentials_or_mlflows_variables(health_server_with_basic_auth,
                                                                                monkeypatch, tmp_path, capsys):
    host = health_server_with_basic_auth
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert preflight.check_tracking(f"http://me:s3cret@{host}") is None
    wrong = preflight.check_tracking(f"http://me:wrong@{host}")
    assert wrong == (f"http://me:***@{host} refused the credentials (HTTP 401); give them as "
                     f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "me")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert preflight.check_tracking(f"http://{host}") is None
    # ... and a dry run with the password in the URI shows it masked
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "s.yaml").write_text(sweep_yaml())
    assert cli.main(["sweep", "s.yaml", "--dry-run", "--tracking-uri", f"http://me:s3cret@{host}"]) == 0
    out = capsys.readouterr().out
    assert f"tracking http://me:***@{host};" in out and "s3cret" not in out


def test_a_dry_run_lists_at_most_50_trials_and_says_how_many_more(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "s.yaml").write_text(sweep_yaml(search="{num_samples: 10000}",
                                                models="[{arch: resnet18, lr: {loguniform: [0.01, 0.1]}}]"))
    assert cli.main(["sweep", "s.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s.yaml: valid; 10000 search trial(s)" in out and out.rstrip().endswith("... and 9950 more search trial(s)")
    assert len(out.splitlines()) == 1 + 2 + 50 + 1


# ---------------------------------------------------------------------------------------------
# Where Ray or signals are involved: the real CLI


def test_a_dead_ray_address_is_refused_in_seconds_without_starting_ray(tmp_path):
    (tmp_path / "s.yaml").write_text(sweep_yaml())
    start = time.monotonic()
    refused(["sweep", "s.yaml", "--address", "127.0.0.1:1"], tmp_path, timeout=120,
            starts="s.yaml: --address: 127.0.0.1:1: cannot connect to 127.0.0.1:1 (Connection refused)")
    assert time.monotonic() - start < 60  # Python and torch start-up; ray.init alone used to take 80 s


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_ui_exits_with_the_signals_code_and_stops_its_server(signum, code, tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"")
    # Started as a shell starts a background job (`orchestrate ui &`, or any command under a CI job
    # run with `&`): SIGINT ignored on entry, so Python alone would never raise KeyboardInterrupt.
    proc = subprocess.Popen(ORCHESTRATE + ["ui", "--port", str(free_port())], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline().startswith("MLflow UI for sqlite:///")
        time.sleep(0.5)  # the server process exists
        proc.send_signal(signum)
        assert proc.wait(timeout=60) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 10
    while processes_mentioning(f"--backend-store-uri sqlite:///{tmp_path}") and time.time() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(f"--backend-store-uri sqlite:///{tmp_path}")
