"""Bad sweep files: `orchestrate sweep FILE` answers each with one line `FILE: KEY: what is wrong`,
exit code 2, and leaves nothing behind (no MLflow run, no ray_results/ folder, no Ray processes).

Most cases fail in config validation and run `orchestrator.cli.main` in-process (torch is
imported once, not once per case). Three run the real CLI as a subprocess: malformed YAML, the
unreachable tracking server and more workers than the machine holds (the probes made before Ray
could start). Each subprocess gets its own RAY_TMPDIR, so the Ray processes it would start are
told apart from other Ray clusters running on the machine (support.refused).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ORCHESTRATE, REPO, free_port, refused
from datafiles import write_cifar10
from orchestrator import cli, config
from orchestrator.preflight import local_cpus

# A valid sweep, one flow-style line per section. A case replaces sections (None drops one).
GOOD = {
    "name": "bad-input",
    "dataset": "{name: digits, val_fraction: 0.1}",
    "train": "{epochs: 3, batch_size: 32, lr: 0.1, warmup_epochs: 0.5}",
    "resources": "{num_workers: 1, cpus_per_worker: 1}",
    "search": "{scheduler: asha, grace_period: 1, num_samples: 1}",
    "models": "[{arch: resnet18, knobs: {width: 0.125}}]",
}


def sweep_yaml(**sections: str | None) -> str:
    merged = {**GOOD, **sections}
    return "".join(f"{key}: {value}\n" for key, value in merged.items() if value is not None)


@dataclasses.dataclass
class Case:
    id: str
    text: str | None  # the file's content; None: the file is not written
    key: str | None  # the key the line must name (None: a whole-file problem)
    says: tuple[str, ...]  # fragments the line must contain (the bad value, what is allowed)
    subprocess: bool = False  # run the real CLI as a subprocess
    file_setup: str | None = None  # "directory" | "binary": what bad.yaml is instead of text
    uri: str | None = None  # --tracking-uri (default: a sqlite file in tmp_path; "": none)

    def __str__(self):
        return self.id


UNREACHABLE_PORT = free_port()  # bound and released: nothing listens there

CASES = [
    # --- models: archs, knobs, spaces
    Case("unknown_arch_is_rejected_with_the_known_archs",
         sweep_yaml(models="[{arch: resnet9000}]"),
         "models[0].arch", ("'resnet9000' is not one of", "resnet18", "shufflenet_v1")),
    Case("unknown_knob_is_rejected_with_the_archs_knobs",
         sweep_yaml(models="[{arch: resnet18, knobs: {depth: 50}}]"),
         "models[0].knobs.depth", ("is not a knob of resnet18", "its knobs are width")),
    Case("shufflenet_groups_5_is_rejected_with_the_allowed_groups",
         sweep_yaml(models="[{arch: shufflenet_v1, knobs: {groups: 5}}]"),
         "models[0].knobs.groups", ("5 is not one of 1, 2, 3, 4, 8",)),
    Case("shufflenet_width_that_groups_does_not_divide_is_rejected_within_a_grid",
         sweep_yaml(models="[{arch: shufflenet_v1, knobs: {groups: 4, width: {grid: [1.0, 1.5]}}}]"),
         "models[0].knobs.width", ("1.5 with groups=4", "not divisible by groups=4", "widths that work")),
    Case("knob_grid_value_outside_its_range_is_rejected",
         sweep_yaml(models="[{arch: resnet18, knobs: {width: {grid: [0.5, 8.0]}}}]"),
         "models[0].knobs.width", ("8.0 is not a float in [0.125, 4.0]",)),
    Case("uniform_over_a_knob_with_listed_values_is_rejected",
         sweep_yaml(models="[{arch: shufflenet_v1, knobs: {groups: {uniform: [1, 8]}}}]"),
         "models[0].knobs.groups.uniform", ("samples any float", "one of 1, 2, 3, 4, 8")),
    Case("uniform_over_an_int_setting_is_rejected",
         sweep_yaml(models="[{arch: resnet18, batch_size: {uniform: [16, 64]}}]"),
         "models[0].batch_size.uniform", ("samples any float in [16, 64]", "an int")),
    Case("empty_grid_is_rejected",
         sweep_yaml(models="[{arch: resnet18, lr: {grid: []}}]"),
         "models[0].lr.grid", ("[] is not a non-empty list",)),
    Case("misspelt_space_kind_is_rejected_with_the_known_kinds",
         sweep_yaml(models="[{arch: resnet18, lr: {grdi: [0.1, 0.2]}}]"),
         "models[0].lr", ("'grdi'", "grid", "loguniform")),
    Case("negative_model_lr_is_rejected",
         sweep_yaml(models="[{arch: resnet18, lr: -0.01}]"),
         "models[0].lr", ("-0.01 must be > 0",)),
    Case("loguniform_lr_with_low_0_is_rejected",
         sweep_yaml(models="[{arch: resnet18, lr: {loguniform: [0, 0.1]}}]"),
         "models[0].lr.loguniform", ("low 0 must be > 0",)),
    Case("uniform_with_low_above_high_is_rejected",
         sweep_yaml(models="[{arch: resnet18, lr: {uniform: [0.2, 0.1]}}]"),
         "models[0].lr.uniform", ("low 0.2 is not below high 0.1",)),
    Case("model_epochs_not_above_the_warmup_is_rejected",
         sweep_yaml(train="{epochs: 3, warmup_epochs: 1.0}", models="[{arch: resnet18, epochs: 1}]"),
         "models[0].epochs", ("warmup_epochs 1.0 must be < epochs 1",)),
    Case("unknown_model_key_is_rejected",
         sweep_yaml(models="[{arch: resnet18, learning_rate: 0.1}]"),
         "models[0].learning_rate", ("unknown key", "knobs", "lr")),
    Case("empty_models_list_is_rejected",
         sweep_yaml(models="[]"),
         "models", ("must be a non-empty list",)),
    Case("model_without_arch_is_rejected_with_the_known_archs",
         sweep_yaml(models="[{knobs: {width: 0.5}}]"),
         "models[0].arch", ("missing; choose one of", "resnet18")),
    Case("model_that_is_not_a_mapping_is_rejected",
         sweep_yaml(models="[resnet18]"),
         "models[0]", ("'resnet18' is not a mapping",)),
    # --- train
    Case("negative_train_lr_is_rejected",
         sweep_yaml(train="{epochs: 3, lr: -0.1, warmup_epochs: 0.5}"),
         "train.lr", ("-0.1 must be > 0",)),
    Case("epochs_as_text_is_rejected",
         sweep_yaml(train="{epochs: ten}"),
         "train.epochs", ("'ten' is not a int",)),
    Case("fractional_batch_size_is_rejected",
         sweep_yaml(train="{epochs: 3, batch_size: 1.5, warmup_epochs: 0.5}"),
         "train.batch_size", ("1.5 is not a int",)),
    Case("unknown_train_key_is_rejected_with_the_known_keys",
         sweep_yaml(train="{epochs: 3, learning_rate: 0.1}"),
         "train.learning_rate", ("unknown key; allowed: epochs, batch_size",)),
    Case("unknown_optimizer_is_rejected",
         sweep_yaml(train="{epochs: 3, optimizer: adam, warmup_epochs: 0.5}"),
         "train.optimizer", ("'adam' is not one of sgd, adamw",)),
    Case("warmup_not_below_epochs_is_rejected",
         sweep_yaml(train="{epochs: 2, warmup_epochs: 2}"),
         "train.warmup_epochs", ("warmup_epochs 2.0 must be < epochs 2",)),
    # --- search
    Case("unknown_scheduler_is_rejected",
         sweep_yaml(search="{scheduler: hyperband}"),
         "search.scheduler", ("'hyperband' is not one of fifo, asha",)),
    Case("grace_period_above_epochs_is_rejected",
         sweep_yaml(search="{scheduler: asha, grace_period: 5}"),
         "search.grace_period", ("5 is more than train.epochs (3)",)),
    Case("zero_samples_is_rejected",
         sweep_yaml(search="{num_samples: 0}"),
         "search.num_samples", ("0 is not in [1, 10000]",)),
    Case("unknown_metric_is_rejected",
         sweep_yaml(search="{metric: accuracy}"),
         "search.metric", ("'accuracy' is not one of train_loss, train_acc, val_loss, val_acc",)),
    # --- resources
    Case("use_gpu_as_text_is_rejected",
         sweep_yaml(resources="{use_gpu: 'yes'}"),
         "resources.use_gpu", ("'yes' is not a bool",)),
    Case("unknown_placement_strategy_is_rejected",
         sweep_yaml(resources="{placement_strategy: DIAGONAL}"),
         "resources.placement_strategy", ("'DIAGONAL' is not one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD",)),
    Case("zero_workers_is_rejected",
         sweep_yaml(resources="{num_workers: 0}"),
         "resources.num_workers", ("0 must be >= 1",)),
    Case("more_workers_than_this_machine_can_ever_hold_is_rejected_before_ray_starts",
         sweep_yaml(resources="{num_workers: 64, cpus_per_worker: 1}",  # batch 16: each worker's 20 images hold one
                    train="{epochs: 3, batch_size: 16, lr: 0.1, warmup_epochs: 0.5}"),
         "resources.num_workers", ("64 workers x 1 CPU", f"but this machine has {local_cpus():g}"),
         subprocess=True),
    # --- dataset
    Case("missing_imagefolder_root_is_rejected",
         sweep_yaml(dataset="{name: imagefolder, root: ./no-such-folder}"),
         "dataset.root", ("no-such-folder does not exist",)),
    Case("cifar10_root_without_batches_is_rejected",
         sweep_yaml(dataset="{name: cifar10, root: .}"),
         "dataset.root", ("no CIFAR-10 python batches under", "cifar-10-batches-py", "dataset.download: true")),
    Case("cifar10_without_root_is_rejected",
         sweep_yaml(dataset="{name: cifar10}"),
         "dataset.root", ("required for cifar10",)),
    Case("val_fraction_above_half_is_rejected",
         sweep_yaml(dataset="{name: digits, val_fraction: 0.9}"),
         "dataset.val_fraction", ("0.9 is not in (0, 0.5]",)),
    Case("unknown_dataset_is_rejected",
         sweep_yaml(dataset="{name: imagenet}"),
         "dataset.name", ("'imagenet' is not one of cifar10, cifar100, imagefolder, digits, synthetic",)),
    # --- the file as a whole
    Case("unknown_top_level_key_is_rejected_with_the_known_keys",
         sweep_yaml(trian="{epochs: 3}"),
         "trian", ("unknown key; allowed: name, dataset, train",)),
    Case("missing_name_is_rejected",
         sweep_yaml(name=None),
         "name", ("None must be a non-empty string",)),
    Case("section_that_is_not_a_mapping_is_rejected",
         sweep_yaml(train="[3, 32]"),
         "train", ("[3, 32] is not a mapping",)),
    Case("malformed_yaml_names_the_line",
         sweep_yaml(models="[{arch: resnet18, knobs: {width: 0.125}"),  # unclosed [ and {
         None, ("malformed YAML: line 7",), subprocess=True),
    Case("empty_file_is_rejected",
         "", None, ("must be a mapping",)),
    Case("missing_file_is_rejected",
         None, None, ("no such file",)),
    Case("directory_instead_of_a_file_is_rejected",
         None, None, ("is a folder, not a regular file; allowed: a YAML file",), file_setup="directory"),
    Case("binary_file_is_rejected",
         None, None, ("is not UTF-8 text",), file_setup="binary"),
    # --- the tracking server, probed before Ray starts
    Case("unreachable_tracking_server_is_rejected_before_ray_starts",
         sweep_yaml(tracking=f"{{uri: 'http://127.0.0.1:{UNREACHABLE_PORT}'}}"),
         "tracking.uri", (f"http://127.0.0.1:{UNREACHABLE_PORT} is unreachable",), subprocess=True,
         uri=""),
]


# ---------------------------------------------------------------------------------------------
# Helpers


def _write_input(case: Case, folder: Path) -> None:
    target = folder / "bad.yaml"
    if case.file_setup == "directory":
        target.mkdir()
    elif case.file_setup == "binary":
        target.write_bytes(b"\xff\xfe\x00name: x\n")
    elif case.text is not None:
        target.write_text(case.text)


def _cli_args(case: Case, folder: Path) -> list[str]:
    uri = f"sqlite:///{folder}/mlflow.db" if case.uri is None else case.uri
    return ["sweep", "bad.yaml"] + (["--tracking-uri", uri] if uri else [])


def _refused(case: Case, folder: Path, capture=None) -> str:
    return refused(_cli_args(case, folder), folder, capture, starts=f"bad.yaml: {case.key}: " if case.key else "bad.yaml: ",
                   says=case.says)


# ---------------------------------------------------------------------------------------------
# The CLI on every bad input


def test_there_are_at_least_22_bad_inputs():
    assert len(CASES) >= 22
    assert len({c.id for c in CASES}) == len(CASES)
    # The real CLI as a process for a whole-file problem, the tracking probe and the capacity check
    # (the three found before Ray could start); the rest in-process: the same one line and exit 2.
    assert sum(c.subprocess for c in CASES) >= 3


@pytest.mark.parametrize("case", [c for c in CASES if c.subprocess], ids=str)
def test_cli_subprocess_rejects_bad_input_with_one_line_and_exit_2(case, tmp_path):
    _write_input(case, tmp_path)
    _refused(case, tmp_path)  # everything is found before Ray starts (the tracking probe, the capacity check)


@pytest.mark.parametrize("case", [c for c in CASES if not c.subprocess], ids=str)
def test_cli_rejects_bad_input_with_one_line_and_exit_2(case, tmp_path, capsys):
    _write_input(case, tmp_path)
    _refused(case, tmp_path, capsys)


def test_dry_run_of_a_good_file_exits_0_and_lists_the_trials(tmp_path):
    (tmp_path / "good.yaml").write_text(sweep_yaml(models="[{arch: resnet18, lr: {grid: [0.05, 0.1]}}, "
                                                          "{arch: shufflenet_v1, knobs: {groups: 3}}]"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run(ORCHESTRATE + ["sweep", "good.yaml", "--dry-run",
                                           "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "good.yaml: valid; 3 search trial(s)" in result.stdout
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    # columns: #, entry, arch, knobs, lr, seed, ...
    assert [(r[0], r[1], r[2]) for r in rows] == [("0", "0", "resnet18"), ("1", "0", "resnet18"),
                                                  ("2", "1", "shufflenet_v1")]
    assert {r[4] for r in rows[:2]} == {"0.05", "0.1"}
    assert "groups=3" in rows[2][3]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


# ---------------------------------------------------------------------------------------------
# config.parse directly (no file, no subprocess)


def parse(text: str) -> config.SweepSpec:
    return config.parse(yaml.safe_load(text), "x.yaml")


def test_parse_fills_defaults_for_a_minimal_file():
    spec = parse("name: ' minimal '\nmodels: [{arch: resnet18}]\n")
    assert spec.name == "minimal"
    assert spec.dataset == config.DataSpec()
    assert spec.train == config.TrainConfig()
    assert spec.resources == config.Resources()
    assert spec.search == config.Search()
    assert spec.failure == config.Failure()
    assert [(m.arch, m.knobs, m.overrides) for m in spec.models] == [("resnet18", {}, {})]
    assert spec.storage_path == os.path.join(os.getcwd(), "ray_results")
    assert spec.trial_count() == 1


def test_trial_count_is_grid_points_times_samples_and_random_dimensions_do_not_multiply():
    spec = parse(sweep_yaml(
        search="{num_samples: 2}",
        models="[{arch: resnet18, lr: {grid: [0.01, 0.1, 0.2]}, knobs: {width: {grid: [0.25, 0.5]}}}, "
               "{arch: resnet18, lr: {loguniform: [0.001, 0.1]}, batch_size: {choice: [32, 64]}}]"))
    assert spec.trial_count() == (3 * 2 + 1) * 2


def test_parse_makes_dataset_roots_absolute(tmp_path):
    write_cifar10(tmp_path)  # the batches are read and checked up front
    spec = parse(sweep_yaml(dataset=f"{{name: cifar10, root: '{tmp_path}/./'}}", train="{epochs: 3, batch_size: 4}"))
    assert spec.dataset.root == str(tmp_path)


def test_cli_overrides_win_over_the_file():
    raw = yaml.safe_load(sweep_yaml(tracking="{uri: 'http://a:5000'}", storage="/tmp/a"))
    spec = config.parse(raw, "x.yaml", {"tracking_uri": "sqlite:////tmp/b.db", "storage_path": "/tmp/b"})
    assert (spec.tracking_uri, spec.storage_path) == ("sqlite:////tmp/b.db", "/tmp/b")


@pytest.mark.parametrize("models, key, says", [
    ("[{arch: shufflenet_v1, knobs: {groups: 5}}]", "models[0].knobs.groups", "5 is not one of 1, 2, 3, 4, 8"),
    ("[{arch: resnet18}, {arch: vgg99}]", "models[1].arch", "'vgg99' is not one of"),
    ("[{arch: resnet18, lr: {loguniform: [-1, 0.1]}}]", "models[0].lr.loguniform", "low -1 must be > 0"),
    ("[{arch: resnet18, epochs: {uniform: [2, 5]}}]", "models[0].epochs.uniform", "must be an int"),
], ids=["shufflenet_groups_5", "second_model_unknown_arch", "loguniform_negative_low", "uniform_epochs"])
def test_parse_error_names_file_key_and_value(models, key, says):
    with pytest.raises(config.ConfigError) as info:
        parse(sweep_yaml(models=models))
    assert (info.value.file, info.value.key) == ("x.yaml", key)
    assert says in info.value.message
    assert str(info.value) == f"x.yaml: {key}: {info.value.message}"
    assert "\n" not in str(info.value)


def test_parse_accepts_a_shufflenet_width_grid_that_every_groups_value_divides():
    spec = parse(sweep_yaml(models="[{arch: shufflenet_v1, knobs: {groups: {grid: [3, 8]}, "
                                   "width: {grid: [0.25, 0.5, 1.0]}}}]"))
    assert spec.trial_count() == 6


def test_parse_accepts_warmup_at_epochs_with_a_constant_schedule():
    spec = parse(sweep_yaml(models="[{arch: resnet18, epochs: 1, schedule: constant}]"))
    assert spec.models[0].overrides["epochs"] == 1
    assert spec.trial({"arch": "resnet18", "epochs": 1, "schedule": "constant"}, "t").train.epochs == 1


# ---------------------------------------------------------------------------------------------
# The schema: every key accepted or rejected exactly as its dataclass field says


def _good_and_bad(cls, field):
    """(a value the field accepts that is not its default, a value of the wrong type) for a field."""
    from orchestrator import schema

    typ, optional = schema.field_types(cls)[field.name]
    choices = field.metadata.get("choices")
    if choices:
        good = next(c for c in choices if c != field.default)
    elif typ is bool:
        good = not field.default
    elif typ is str:
        good = "some/where"
    elif typ is dict and field.name == "constraints":  # search.constraints
        good = {"param_count": {"max": 1000000.0}}
    elif typ is dict:  # search.objectives
        good = {"val_acc": "max", "flops": "min"}
    else:
        base = field.default if field.default not in (None, 0, 0.0) else 1
        good = typ(base * 2) if field.name not in ("val_fraction", "label_smoothing", "gpus_per_worker") else typ(0.25)
    return good, ("text" if typ is not str else 3)


SECTION_FIELDS = [(section, cls, f) for section, cls in
                  [("dataset", config.DataSpec), ("train", config.TrainConfig), ("resources", config.Resources),
                   ("search", config.Search), ("failure", config.Failure)]
                  for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("section, cls, field", SECTION_FIELDS, ids=[f"{s}.{f.name}" for s, _, f in SECTION_FIELDS])
def test_every_schema_field_is_a_sweep_file_key_with_its_type_and_default(section, cls, field):
    from orchestrator import schema

    assert field.default is not dataclasses.MISSING  # every setting has its default in the field
    good, bad = _good_and_bad(cls, field)
    base = {"name": "schema", "models": [{"arch": "resnet18"}],  # batch_size 1: even subset 2 leaves a batch
            "train": {"epochs": 10, "batch_size": 1}, "search": {"scheduler": "fifo"}}
    ok = dict(base, **{section: {**base.get(section, {}), field.name: good}})
    if (section, field.name) == ("dataset", "name") and good in ("cifar10", "cifar100", "imagefolder"):
        good = "synthetic"
        ok = dict(base, dataset={"name": good})
    if section == "dataset" and field.name == "root":
        ok = dict(base, dataset={"name": "digits", "root": "/tmp"})
        good = "/tmp"
    if section == "resources" and field.name == "use_gpu":
        ok = dict(base, resources={"use_gpu": True, "gpus_per_worker": 1})
    if section == "search" and field.name == "select":  # it picks among the objectives' Pareto set
        ok = dict(base, search={"scheduler": "fifo", "select": good, "objectives": {"val_acc": "max", "flops": "min"}})
    try:
        spec = config.parse(ok, "x.yaml")
    except config.ConfigError as e:  # only cross-field rules may refuse a single good value
        pytest.fail(f"{section}.{field.name}: {good!r} refused: {e}")
    assert getattr(getattr(spec, section), field.name) == good
    with pytest.raises(config.ConfigError) as info:
        config.parse(dict(base, **{section: {field.name: bad}}), "x.yaml")
    assert info.value.key == f"{section}.{field.name}"
    assert schema.check_field(cls, field.name, bad) == info.value.message
    # ... and a train field is also a model entry override and an `orchestrate train` option
    if cls is config.TrainConfig:
        spec = config.parse(dict(base, models=[{"arch": "resnet18", field.name: good}]), "x.yaml")
        assert getattr(spec.trial(spec.models[0].point_space(), "t").train, field.name) == good


def test_every_train_and_dataset_field_is_an_orchestrate_train_option():
    parser = cli.build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    options = {o for a in train._actions for o in a.option_strings}
    for cls in (config.TrainConfig, config.DataSpec):
        for f in dataclasses.fields(cls):
            assert cli._option(cls, f.name) in options, f.name


def test_the_train_command_applies_the_schema_rules(capsys):
    assert cli.main(["train", "--arch", "resnet18", "--epochs", "2", "--warmup-epochs", "3"]) == 2
    assert "--warmup-epochs: warmup_epochs 3.0 must be < epochs 2" in capsys.readouterr().err
    assert cli.main(["train", "--arch", "resnet18", "--subset", "1"]) == 2
    assert "--subset: 1 must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize("value, ok", [(0.25, True), (1, True), (2, True), (0.5, True), (0, False),
                                       (-1, False), (1.5, False)])
def test_gpus_per_worker_is_a_share_of_one_gpu_or_whole_gpus(value, ok):
    raw = {"name": "g", "models": [{"arch": "resnet18"}], "resources": {"use_gpu": True, "gpus_per_worker": value}}
    if ok:
        assert config.parse(raw, "x.yaml").resources.gpus_per_worker == value
    else:
        with pytest.raises(config.ConfigError, match="resources.gpus_per_worker: .* must be in \\[0.01, 1\\]"):
            config.parse(raw, "x.yaml")


@pytest.mark.parametrize("make_root, says", [
    (lambda p: (p / "x.zip").write_text("not a zip") and p / "x.zip", "is neither a directory nor a .zip file"),
    (lambda p: (p / "imgs" / "cat").mkdir(parents=True) or p / "imgs", "has no train/<class>/ folders"),
    (lambda p: (p / "imgs" / "train" / "cat").mkdir(parents=True) or p / "imgs", "train/cat/ holds no .jpg/.png"),
], ids=["text_file_named_zip", "folder_without_train", "class_folder_without_images"])
def test_a_wrong_image_folder_root_is_one_line_and_exit_2_before_ray_starts(make_root, says, tmp_path, capsys):
    root = make_root(tmp_path)
    (tmp_path / "bad.yaml").write_text(sweep_yaml(dataset=f"{{name: imagefolder, root: '{root}'}}"))
    _refused(Case("x", None, "dataset.root", (says, str(root))), tmp_path, capsys)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "experiments").glob("*.yaml")))
def test_every_shipped_sweep_file_is_valid(name, tmp_path):
    # Parsed as shipped but for the data (cifar10's batches are not here): every key and knob is
    # checked against the schema and the registry, and a model file it names is found beside it.
    raw = yaml.safe_load((REPO / "experiments" / name).read_text())
    raw["dataset"] = {"name": "synthetic", "synthetic_size": 4096, **{k: v for k, v in raw["dataset"].items()
                                                                      if k == "image_size"}}
    spec = config.parse(raw, str(REPO / "experiments" / name), {"tracking_uri": f"sqlite:///{tmp_path}/m.db", "storage_path": str(tmp_path)})
    assert spec.trial_count() >= len(spec.models)
