"""Issue 23, items 4 and 5: a device-hour budget (`search.budget`) that stops launching trials,
and `orchestrate sweep FILE --extend` on a finished sweep, with real Ray and MLflow (sqlite)."""

from __future__ import annotations

import glob
import json
import os
import pickle
import time

import pytest

from orchestrator import config, search, spend, sweep
from orchestrator.runs import Tag, decode_sweep
from support import refused, run_cli, trials

SWEEP = """\
name: {name}
dataset: {{name: digits}}
train: {{epochs: 1, batch_size: 64, benchmark_inference: false, seed: 0}}
resources: {{num_workers: 1, cpus_per_worker: 1}}
search: {{scheduler: fifo, algorithm: tpe, max_concurrent_trials: 1, {search}}}
models:
  - {{arch: resnet18, knobs: {{width: 0.125}}, lr: {{loguniform: [0.01, 0.1]}}}}
"""


def write(folder, name: str, search_keys: str, **swap: str):
    text = SWEEP.format(name=name, search=search_keys)
    for old, new in swap.items():
        text = text.replace(old, new)
    (folder / "sweep.yaml").write_text(text)
    return folder / "sweep.yaml"


def sweep_cli(folder, ray_tmpdir, *extra):
    return run_cli(["sweep", "sweep.yaml", "-q", "--tracking-uri", f"sqlite:///{folder}/mlflow.db",
                    "--storage", str(folder / "rr"), *extra], cwd=folder, env={"RAY_TMPDIR": ray_tmpdir})


def swept(folder, ray_tmpdir, name: str, search_keys: str):
    """A sweep of `name` run to its end: (its output, an MLflow client, its trial runs by name)."""
    write(folder, name, search_keys)
    out = sweep_cli(folder, ray_tmpdir)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return (out, *trials(f"sqlite:///{folder}/mlflow.db", name))


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_budget_of_zero_or_less_is_refused_before_ray(tmp_path, capsys, value):
    write(tmp_path, "b", f"trials_per_model: 2, budget: {{device_hours: {value}}}")
    line = refused(["sweep", "sweep.yaml"], tmp_path, capsys)  # no store, no storage, no Ray
    assert line == f"sweep.yaml: search.budget.device_hours: {value} must be > 0"


@pytest.mark.parametrize("value, message", [
    (float("inf"), "inf is not a finite number"), (float("nan"), "nan is not a finite number"),
    ("lots", "'lots' is not a float"), (None, "missing; give a number > 0 (e.g. {device_hours: 20})")])
def test_a_budget_that_is_not_a_positive_number_is_refused(value, message):
    raw = {"name": "b", "models": [{"arch": "resnet18"}], "search": {"budget": {"device_hours": value}}}
    with pytest.raises(config.ConfigError) as e:
        config.parse(raw, "b.yaml")
    assert str(e.value) == f"b.yaml: search.budget.device_hours: {message}"
    with pytest.raises(config.ConfigError, match=r"^b.yaml: search.budget: 5 is not a mapping; allowed keys: "
                                                 r"device_hours$"):
        config.parse({**raw, "search": {"budget": 5}}, "b.yaml")


def test_a_running_trial_counts_toward_the_budget_until_now(tmp_path):
    """The searcher's rule: wall x devices (2 CPUs here), a running trial's wall up to now."""
    spec = config.load(str(write(tmp_path, "b", "trials_per_model: 6, budget: {device_hours: 0.5}",
                                 **{"cpus_per_worker: 1": "cpus_per_worker: 2"})))
    searcher = search.EntrySearch(spec)
    assert searcher.suggest("a") is not None
    searcher.outcomes["a"].started = time.time() - 600  # running for 10 minutes: 2 x 1/6 h
    assert searcher.suggest("b") is not None
    searcher.outcomes["a"].started = time.time() - 1200  # 20 minutes: 2 x 1/3 h > 0.5 h
    assert searcher.suggest("c") == search.Searcher.FINISHED and searcher.budget_reached
    (row,) = searcher.spend()
    assert (row.started, row.planned, row.not_started) == (2, 6, 4)
    assert row.device_hours == pytest.approx(2 * 1200 / 3600, rel=0.01)


def test_no_trial_is_suggested_while_the_hold_says_so(tmp_path, monkeypatch):
    """search.EntrySearch.HOLD (the sweep sets ray_train.record_behind): Tune asks again later."""
    searcher = search.EntrySearch(config.load(str(write(tmp_path, "b", "trials_per_model: 2"))))
    monkeypatch.setattr(search.EntrySearch, "HOLD", lambda: True)
    assert searcher.suggest("a") is None and not searcher.outcomes
    monkeypatch.setattr(search.EntrySearch, "HOLD", lambda: False)
    assert searcher.suggest("a") is not None and list(searcher.outcomes) == ["a"]


def test_extend_without_a_finished_sweep_is_refused(tmp_path):
    spec = config.load(str(write(tmp_path, "none", "trials_per_model: 2")),
                       {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "storage_path": str(tmp_path / "rr")})
    with pytest.raises(config.ConfigError, match=r"^.*sweep.yaml: --extend: no earlier run of 'none' under "):
        sweep.extended(spec)
    assert sorted(os.listdir(tmp_path)) == ["sweep.yaml"]


@pytest.mark.ray
@pytest.mark.slow
def test_the_device_hour_budget_stops_launching(tmp_path, ray_tmpdir):
    # One trial at a time, and a budget (0.072 s of one CPU) that any 1-epoch trial spends: the
    # first trial starts (nothing spent yet), no other does. A budget that lets a few start would
    # depend on the machine's speed (CI's ran all 6 in 0.003 device-hours); the accounting itself is
    # test_a_running_trial_counts_toward_the_budget_until_now's.
    out, client, runs = swept(tmp_path, ray_tmpdir, "budget", "trials_per_model: 6, budget: {device_hours: 0.00002}")
    started = len(runs)
    assert started == 1
    (parent,) = {r.data.tags[Tag.PARENT] for r in runs.values()}
    recorded = spend.read(client, parent)
    assert recorded.limit == 0.00002 and recorded.reached and recorded.device_hours >= 0.00002
    assert [(e["started"], e["planned"], e["not_started"]) for e in recorded.entries] == [(started, 6, 6 - started)]
    assert client.get_run(parent).data.metrics[spend.METRIC] == pytest.approx(recorded.device_hours)
    assert f"the budget stopped new trials: {6 - started} trial(s) never started" in out.stdout
    assert "models[0] resnet18: " in out.stdout and f"{started} of 6 trial(s) started" in out.stdout
    report = client.download_artifacts(parent, "report.html", str(tmp_path))
    page = open(report, encoding="utf-8").read()
    assert 'id="budget-table"' in page and f"{6 - started} trial(s) never started" in page


def _history(client, run_id):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, "val_acc"), key=lambda m: m.step)]


@pytest.mark.ray
@pytest.mark.slow
def test_extend_adds_trials_and_seeds_without_retraining(tmp_path, ray_tmpdir):
    _, client, before = swept(tmp_path, ray_tmpdir, "ext", "trials_per_model: 2, seeds: 1")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert len(before) == 3
    old = {r.info.run_id: (_history(client, r.info.run_id), r.info.end_time) for r in before.values()}
    (parent,) = {r.data.tags[Tag.PARENT] for r in before.values()}
    folders = sorted(os.listdir(tmp_path / "rr"))

    # Not an extension: another recipe, another model list, another algorithm; or nothing more.
    write(tmp_path, "ext", "trials_per_model: 3, seeds: 2", **{"epochs: 1": "epochs: 2"})
    out = sweep_cli(tmp_path, ray_tmpdir, "--extend")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == ("sweep.yaml: train.epochs: 1 -> 2: --extend adds trials, seeds or device-hours to "
                                  "the same sweep; a change here is another sweep (give it another name)")
    for swap, key in [({"width: 0.125": "width: 0.25"}, "models"), ({"algorithm: tpe": "algorithm: random"},
                                                                       "search.algorithm")]:
        spec = config.load(str(write(tmp_path, "ext", "trials_per_model: 3", **swap)),
                           {"tracking_uri": uri, "storage_path": str(tmp_path / "rr")})
        with pytest.raises(config.ConfigError) as e:
            sweep.extended(spec)
        assert e.value.key == key
    spec = config.load(str(write(tmp_path, "ext", "trials_per_model: 2, seeds: 1")),
                       {"tracking_uri": uri, "storage_path": str(tmp_path / "rr")})
    with pytest.raises(config.ConfigError, match="asks for no more than the sweep ran"):
        sweep.extended(spec)
    assert sorted(os.listdir(tmp_path / "rr")) == folders and len(trials(uri, "ext")[1]) == 3  # nothing written

    # More trials per entry and more seeds: one more search trial, one more seed run of the same configuration.
    write(tmp_path, "ext", "trials_per_model: 3, seeds: 2")
    out = sweep_cli(tmp_path, ray_tmpdir, "--extend")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client, after = trials(uri, "ext")
    # five runs, distinct by name (arch, knobs, lr, seed): no configuration trained twice with one seed
    assert len(after) == 5 and {r.data.tags[Tag.PARENT] for r in after.values()} == {parent}
    assert len(client.search_runs([client.get_experiment_by_name("ext").experiment_id],
                                  f"tags.`{Tag.ROLE}` = 'sweep'")) == 1
    for run_id, (history, ended) in old.items():  # kept, not retrained
        assert (_history(client, run_id), client.get_run(run_id).info.end_time) == (history, ended)
    new = [r for r in after.values() if r.info.run_id not in old]
    phases = sorted(json.loads(r.data.tags[Tag.TRIAL])["phase"] for r in new)
    assert phases == ["search", "seeds"]
    seeds = [r for r in after.values() if json.loads(r.data.tags[Tag.TRIAL])["phase"] == "seeds"]
    assert len({r.info.run_name.rsplit("-seed", 1)[0] for r in seeds}) == 1  # the same configuration
    parent_run = client.get_run(parent)
    assert parent_run.data.tags[Tag.EXTENDED].startswith(folders[0])
    recorded = decode_sweep(parent_run).search  # the parent's record is the extended file's
    assert (recorded.trials_per_model, recorded.seeds) == (3, 2)
    # The summary, the spend and the report cover the whole sweep, old trials and new.
    assert [(e["started"], e["planned"]) for e in spend.read(client, parent).entries] == [(5, 5)]
    page = open(client.download_artifacts(parent, "report.html", str(tmp_path)), encoding="utf-8").read()
    assert "<td>3 + 2 seeds</td>" in page
    assert len([line for line in out.stdout.splitlines() if line.startswith("resnet18-")]) == 5
    # TPE went on from its study: the extension's saved study holds the old trials and the new one.
    (extension,) = set(os.listdir(tmp_path / "rr")) - set(folders)
    state = max(glob.glob(str(tmp_path / "rr" / extension / "searcher-state-*.pkl")))
    with open(state, "rb") as f:  # our own Tune state, written by this test's sweep
        saved = pickle.load(f)
    assert len(saved["samplers"][0].searcher._ot_study.trials) == 3
