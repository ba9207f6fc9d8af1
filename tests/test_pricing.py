"""Pricing a configuration before it trains (issue 23, items 1 and 3): the pure parts (constraints,
the cost cache, the deployment target), the sweep file's refusals, TPE learning the infeasible
region, and a real sweep (Ray, a sqlite MLflow store) where a slow family is priced over a latency
budget and never trains while a fast one trains, priced once and reused by a repeat and a second
sweep."""

from __future__ import annotations

import json
import os
import textwrap
import threading

import pytest

from orchestrator import cli, pricing, runs, schema
from orchestrator.schema import Deploy

# ---------------------------------------------------------------------------------------------
# Constraints


def test_violations_and_slack_of_max_and_min_bounds():
    costs = {"infer_latency_b1_ms": 4.0, "param_count": 1000.0, "infer_imgs_per_s": 50.0}
    constraints = {"infer_latency_b1_ms": {"max": 2.0}, "param_count": {"min": 10.0, "max": 2000.0},
                   "infer_imgs_per_s": {"min": 100.0}, "flops": {"max": 1.0}}  # flops not priced: breaks nothing
    assert pricing.violations(costs, constraints) == ["infer_latency_b1_ms 4 > max 2", "infer_imgs_per_s 50 < min 100"]
    assert pricing.slack(costs, constraints) == pytest.approx({
        "infer_latency_b1_ms.max": 1.0, "param_count.max": -0.5, "param_count.min": -99.0, "infer_imgs_per_s.min": 0.5})
    assert pricing.violations(costs, None) == [] and pricing.slack(costs, {}) == {}


def test_the_worst_value_of_a_metric_is_its_bound_or_the_largest_float():
    import sys

    assert schema.worst("val_acc", "max") == 0.0
    assert schema.worst("val_loss", "min") == sys.float_info.max
    assert schema.worst("val_loss", "max") == 0.0


def _result(name, arch, status, score=None, entry=0, latency=None):
    return runs.Result(name=name, arch=arch, knobs="", lr=0.1, params=10, flops=20, metric="val_acc", score=score,
                       val_acc=score, val_loss=None, epoch=1 if score else None, epochs=1 if score else None,
                       epochs_planned=1, imgs_per_s=None, latency_ms=latency, infer_imgs_per_s=None,
                       device_hours=0.01 if score else 0.0, status=status, run_id=name, error=None, model_id=None,
                       seed=0, entry=entry, phase="search")


def test_leaderboard_counts_infeasible_trials_and_never_leads_with_them():
    done, infeasible = runs.Status.COMPLETED, runs.Status.INFEASIBLE
    results = [_result("a1", "vgg11", done, 0.9), _result("a2", "vgg11", infeasible, latency=9.0),
               _result("b1", "resnest50", infeasible, entry=1, latency=12.0),
               _result("b2", "resnest50", infeasible, entry=1, latency=12.0)]
    board = runs.leaderboard(results, "max")
    assert [(s.arch, s.leader, s.infeasible, s.mean) for s in board] == [("vgg11", True, 1, 0.9),
                                                                          ("resnest50", False, 2, None)]
    assert runs.leaderboard(results[2:], "max")[0].leader is False  # all infeasible: no leader at all
    assert runs.rank(results, "max")[0].name == "a1"


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_writes_whole_files_atomically_and_reads_them_back(tmp_path):
    cache = pricing.Cache(str(tmp_path))
    assert cache.get("k") is None
    entry = {"costs": {"param_count": 3}, "params": {"infer_runtime": "torch"}}
    # Eight writers of the same key at once, each with its own content: the file is always one of
    # them, whole, and no temporary file is left beside it.
    writers = [threading.Thread(target=cache.put, args=("k", {**entry, "writer": i})) for i in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    got = cache.get("k")
    assert got["costs"] == {"param_count": 3} and got["writer"] in range(8)
    assert os.listdir(tmp_path / pricing.CACHE_DIR) == ["k.json"]
    (tmp_path / pricing.CACHE_DIR / "k.json").write_text('{"costs": {"param_')  # cut short
    assert cache.get("k") is None  # measured again, then rewritten


def test_a_price_is_measured_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    measured = []
    real = pricing.measure
    monkeypatch.setattr(pricing, "measure", lambda *a, **k: measured.append(a) or real(*a, **k))
    cache = pricing.Cache(str(tmp_path))
    first = pricing.price("vgg11", {"width": 0.125}, 32, 10, Deploy(), cache=cache, inference_batch_size=8)
    again = pricing.price("vgg11", {"width": 0.125}, 32, 10, Deploy(), cache=cache, inference_batch_size=8)
    assert len(measured) == 1 and not first.cached and again.cached and again.seconds == 0.0
    assert again.costs == first.costs and set(schema.COST_METRICS) <= set(first.costs)
    assert again.params["pricing_cached"] == "true" and first.params["pricing_cached"] == "false"
    # Another definition is another key: classes, image size, knobs, the deployment target.
    keys = {pricing.key_of(pricing.definition("vgg11", {"width": w}, size, classes, d, "fp32", (1, 8)))
            for w, size, classes, d in [(0.125, 32, 10, Deploy()), (0.25, 32, 10, Deploy()), (0.125, 32, 7, Deploy()),
                                        (0.125, 32, 10, Deploy(threads=2)),
                                        (0.125, 32, 10, Deploy(runtime="onnxruntime"))]}
    assert len(keys) == 5
    # Knobs left at their defaults and the same knobs spelled out are one definition.
    assert (pricing.definition("resnet18", {}, 32, 10, Deploy(), "fp32", (1, 8))
            == pricing.definition("resnet18", dict(__import__("archs").validate("resnet18", {})), 32, 10, Deploy(),
                                  "fp32", (1, 8)))


def test_untimed_pricing_counts_params_and_flops_only():
    price = pricing.price("resnet18", {"width": 0.125}, 32, 10, Deploy(), timed=False)
    assert set(price.costs) == {"param_count", "flops"} and price.costs["param_count"] > 0


def test_onnxruntime_target_is_priced_as_orchestrate_export_measures_it():
    price = pricing.price("vgg11", {"width": 0.125}, 32, 10, Deploy(runtime="onnxruntime", threads=1),
                          inference_batch_size=8)
    assert price.params["infer_runtime"] == "onnxruntime" and price.params["infer_num_threads"] == "1"
    assert price.costs["infer_latency_b1_ms"] > 0 and price.costs["infer_imgs_per_s"] > 0


# ---------------------------------------------------------------------------------------------
# TPE learns the infeasible region


def _tpe_feasible_share(constrained: bool, seed: int = 0) -> tuple[float, object]:
    """One entry's study over lr in [1e-4, 1]; every lr above 0.01 is priced over a constraint,
    and (to tell the constraint's effect apart from the value's) its reported value is its lr, so
    the value alone pulls TPE into the infeasible region. The share of feasible draws after the
    random start-up trials, and the study."""
    from orchestrator import search

    leaves = {"lr": {"loguniform": [1e-4, 1.0]}}
    sampler = search._TpeSampler(leaves, "val_acc", "max", seed=seed, budget=40)
    later = []
    for i in range(40):
        lr = sampler.sample(f"t{i}", leaves)["lr"]
        sampler.complete(f"t{i}", {"val_acc": lr}, False,
                         pricing.slack({"lr": lr}, {"lr": {"max": 0.01}}) if constrained else None)
        if i >= 10:
            later.append(lr <= 0.01)
    return sum(later) / len(later), sampler.searcher._ot_study


def test_tpe_learns_the_infeasible_region_from_the_constraints():
    constrained, study = _tpe_feasible_share(True)
    unconstrained, _ = _tpe_feasible_share(False)
    assert all(t.constraints for t in study.trials)  # set on every Optuna trial before it was told
    assert unconstrained <= 0.2 and constrained >= 0.4, (unconstrained, constrained)


def test_entry_search_hands_each_trials_priced_costs_to_its_tpe_study():
    """What Tune tells the searcher (a trial's first result carries its price; an infeasible one's
    completion says so) reaches the entry's Optuna study as constraints, and an infeasible trial
    is never the entry's best (its value is the metric's worst, not a score)."""
    from orchestrator import config, search

    spec = config.parse({"name": "tpe-priced", "dataset": {"name": "digits"}, "train": {"epochs": 1},
                         "search": {"algorithm": "tpe", "trials_per_model": 3, "scheduler": "fifo",
                                    "constraints": {"infer_latency_b1_ms": {"max": 2.0}}},
                         "models": [{"arch": "vgg11", "knobs": {"width": 0.125}, "lr": {"loguniform": [0.001, 0.1]}}]})
    searcher = search.EntrySearch(spec)
    for i, latency in enumerate((1.0, 3.0)):
        searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", {"infer_latency_b1_ms": latency, "param_count": 5, "epoch": 1,
                                           "val_acc": 0.5} if latency < 2 else
                                 {"infer_latency_b1_ms": latency, runs.INFEASIBLE: "x", "val_acc": 0.0})
    searcher.on_trial_complete("t0", {"val_acc": 0.5, "epoch": 1})
    searcher.on_trial_complete("t1", {"val_acc": 0.0, runs.INFEASIBLE: "infer_latency_b1_ms 3 > max 2",
                                      "infer_latency_b1_ms": 3.0})
    study = searcher.samplers[0].searcher._ot_study
    assert [t.constraints for t in study.trials] == [{"infer_latency_b1_ms.max": -0.5},
                                                     {"infer_latency_b1_ms.max": 0.5}]
    assert searcher.outcomes["t1"].infeasible and searcher.outcomes["t1"].value is None
    assert searcher._best(0).point == searcher.outcomes["t0"].point


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming the file, the key, the value and what is allowed; exit 2


GOOD = {
    "name": "pricing-refusals",
    "dataset": "{name: digits}",
    "train": "{epochs: 1, batch_size: 32}",
    "resources": "{num_workers: 1, cpus_per_worker: 1}",
    "search": "{scheduler: fifo}",
    "models": "[{arch: vgg11, knobs: {width: 0.125}}]",
}

REFUSED = [
    ("unknown-metric", {"search": "{constraints: {latency_ms: {max: 2}}}"}, "search.constraints.latency_ms",
     ("unknown cost", "infer_latency_b1_ms")),
    ("max-inf", {"search": "{constraints: {infer_latency_b1_ms: {max: .inf}}}"},
     "search.constraints.infer_latency_b1_ms.max", ("inf", "finite number")),
    ("min-nan", {"search": "{constraints: {infer_imgs_per_s: {min: .nan}}}"},
     "search.constraints.infer_imgs_per_s.min", ("nan", "finite number")),
    ("no-bound", {"search": "{constraints: {flops: {}}}"}, "search.constraints.flops", ("{}", "{max: X}")),
    ("not-a-mapping", {"search": "{constraints: {flops: 5}}"}, "search.constraints.flops", ("5", "{min: X}")),
    ("not-a-number", {"search": "{constraints: {param_count: {max: small}}}"},
     "search.constraints.param_count.max", ("'small'", "finite number")),
    ("bool", {"search": "{constraints: {param_count: {max: true}}}"},
     "search.constraints.param_count.max", ("True", "finite number")),
    ("unknown-bound", {"search": "{constraints: {param_count: {maximum: 5}}}"},
     "search.constraints.param_count.maximum", ("unknown key", "max, min")),
    ("min-above-max", {"search": "{constraints: {param_count: {min: 5, max: 2}}}"},
     "search.constraints.param_count", ("min 5", "max 2")),
    ("constraints-list", {"search": "{constraints: [flops]}"}, "search.constraints", ("['flops']", "dict")),
    ("timed-untimed", {"train": "{epochs: 1, batch_size: 32, benchmark_inference: false}",
                       "search": "{constraints: {infer_latency_b1_ms: {max: 2}}}"},
     "search.constraints.infer_latency_b1_ms", ("benchmark_inference", "param_count, flops")),
    ("deploy-runtime", {"deploy": "{runtime: tensorrt}"}, "deploy.runtime", ("'tensorrt'", "torch, onnxruntime")),
    ("deploy-threads", {"deploy": "{threads: 0}"}, "deploy.threads", ("0", "[1, 1024]")),
    ("deploy-ort-cuda", {"deploy": "{runtime: onnxruntime, device: cuda}"}, "deploy.device", ("cuda", "cpu")),
    ("deploy-cuda-no-gpu", {"deploy": "{device: cuda}"}, "deploy.device", ("cuda", "use_gpu")),
    ("deploy-unknown", {"deploy": "{runtim: torch}"}, "deploy.runtim", ("unknown key", "runtime, device, threads")),
]


@pytest.mark.parametrize("sections,key,says", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_bad_constraints_and_deploy_are_refused_in_one_line(sections, key, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("".join(f"{k}: {v}\n" for k, v in {**GOOD, **sections}.items()))
    code = cli.main(["sweep", "bad.yaml", "--dry-run", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bad.yaml: {key}: "), err
    for fragment in says:
        assert fragment in lines[0], (fragment, lines[0])
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


def test_a_good_constraint_and_deploy_section_parse(tmp_path):
    from orchestrator import config

    text = "".join(f"{k}: {v}\n" for k, v in {**GOOD, "search": "{constraints: {infer_latency_b1_ms: {max: 2}, "
                                                                  "param_count: {min: 1, max: 1000000}}}",
                                                "deploy": "{runtime: onnxruntime, threads: 2}"}.items())
    (tmp_path / "good.yaml").write_text(text)
    spec = config.load(str(tmp_path / "good.yaml"))
    trial = spec.trial({"arch": "vgg11", "knobs": {"width": 0.125}}, "t")
    assert trial.deploy == Deploy(runtime="onnxruntime", threads=2) and spec.num_classes == 10
    assert trial.search.constraints == {"infer_latency_b1_ms": {"max": 2}, "param_count": {"min": 1, "max": 1000000}}
    assert runs.trial_from_dict(json.loads(json.dumps(runs.trial_to_dict(trial)))) == trial
    old = runs.trial_to_dict(trial)
    del old["deploy"]  # a run recorded before `deploy:` existed
    assert runs.trial_from_dict(old).deploy == Deploy()


# ---------------------------------------------------------------------------------------------
# A real sweep under a latency budget

# vgg11 at width 0.125 runs a batch of one in ~0.4 ms on this VM's CPU, resnest50 at width 0.125 in
# ~5 ms (benchmarks/RESULTS.md): ~13x apart on a quiet machine. On a loaded one a latency is not a
# number a test can bound (at a load average of 30 on 2 cores a trial priced vgg11 at 81 ms while
# this process, a minute before, had it at ~1 ms), so the test prices both models here first, into
# the sweep's own cost cache, and sets the budget at their geometric mean: the trials read those
# prices (the cache's point: one measurement per model, whatever trial or sweep asks), and every
# decision follows from numbers measured side by side.
BUDGET_SWEEP = textwrap.dedent("""\
    name: priced
    dataset: {name: digits}
    train: {epochs: 1, batch_size: 32, lr: 0.003, optimizer: adamw, warmup_epochs: 0.5, data_path: device,
            inference_batch_size: 32}
    resources: {num_workers: 1, cpus_per_worker: 1}
    search: {scheduler: fifo, max_concurrent_trials: 1, constraints: {infer_latency_b1_ms: {max: BUDGET}}}
    models:
      - {arch: vgg11, knobs: {width: 0.125}, lr: {grid: [0.003, 0.002]}}
      - {arch: resnest50, knobs: {width: 0.125}}
    """)


@pytest.mark.ray
@pytest.mark.slow
def test_latency_budget_prices_the_slow_family_out_before_it_trains(tmp_path, ray_tmpdir):
    import mlflow

    from support import run_cli

    cache = pricing.Cache(str(tmp_path / "ray_results"))  # the sweep's storage: its default, beside the file
    fast, slow = (pricing.price(arch, {"width": 0.125}, 32, 10, Deploy(), inference_batch_size=32,
                                cache=cache).costs["infer_latency_b1_ms"] for arch in ("vgg11", "resnest50"))
    budget = round((fast * slow) ** 0.5, 3)
    (tmp_path / "sweep.yaml").write_text(BUDGET_SWEEP.replace("BUDGET", str(budget)))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {"RAY_TMPDIR": ray_tmpdir}
    first = run_cli(["sweep", "sweep.yaml", "-q", "--tracking-uri", uri], cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 of 3 trial(s) infeasible" in first.stdout and "infer_latency_b1_ms" in first.stdout
    folder = tmp_path / "ray_results" / pricing.CACHE_DIR
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    assert len(stamps) == 2, stamps  # one price per model definition, none written again

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("priced")

    def trial_runs():
        parent = runs.sweep_runs(client, exp.experiment_id)[0].info.run_id
        return runs.trial_runs(client, exp.experiment_id, parent)

    def check(found, cached: set[str]):
        by_arch: dict[str, list] = {}
        for r in found:
            by_arch.setdefault(r.data.tags["arch"], []).append(r)
        (slow,) = by_arch["resnest50"]
        assert slow.data.tags[runs.Tag.STATUS] == runs.Status.INFEASIBLE
        assert slow.data.metrics["infer_latency_b1_ms"] > budget and "infer_latency_b1_ms" in slow.data.tags[runs.Tag.ERROR]
        assert set(schema.COST_METRICS) <= set(slow.data.metrics) | set(slow.data.params)
        assert client.get_metric_history(slow.info.run_id, "val_acc") == []  # no epoch trained
        assert runs.result(slow, "val_acc").device_hours == 0.0
        assert slow.data.params["pricing_cached"] in cached
        for fast in by_arch["vgg11"]:
            assert fast.data.tags[runs.Tag.STATUS] == runs.Status.COMPLETED
            assert fast.data.metrics["infer_latency_b1_ms"] <= budget and "val_acc" in fast.data.metrics
        return sorted(r.data.params["pricing_cached"] for r in by_arch["vgg11"])

    assert check(trial_runs(), {"true"}) == ["true", "true"]  # every trial read its price from the cache

    compare = run_cli(["compare", "priced", "--tracking-uri", uri, "--format", "json"], cwd=tmp_path)
    rows = json.loads(compare.stdout)
    assert [r["status"] for r in rows].count("infeasible") == 1 and rows[0]["arch"] == "vgg11"
    board = run_cli(["compare", "priced", "--tracking-uri", uri, "--by", "arch", "--format", "json"], cwd=tmp_path)
    standings = {s["arch"]: s for s in json.loads(board.stdout)}
    assert standings["resnest50"]["infeasible"] == 1 and standings["resnest50"]["rank"] == ""
    assert standings["resnest50"]["mean"] is None and standings["vgg11"]["rank"] == "leader"

    report = run_cli(["report", "priced", "--tracking-uri", uri, "--out", "report.html"], cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report.html").read_text()
    assert "resnest50: 1 trial(s), all infeasible" in page  # the entry's budget line

    # A second sweep on the same storage measures nothing: every price comes from the cache.
    again = run_cli(["sweep", "sweep.yaml", "-q", "--tracking-uri", uri], cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == stamps
    assert check(trial_runs(), {"true"}) == ["true", "true"]
