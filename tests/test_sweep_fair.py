"""A fair comparison end to end: one real sweep (Ray Tune, real MLflow) with a budget per model
entry, ASHA per entry, and each entry's best configuration re-trained with fresh seeds; then the
per-architecture leaderboard checked against a hand computation from the child runs. How the
searcher and the scheduler decide is tested without a cluster in test_search.py; a TPE sweep
resumed after a killed driver is in test_resilience.py."""

from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy import stats

from orchestrator.runs import Tag
from support import run_cli


def by_phase(sweep, phase):
    from orchestrator import runs

    return [r for r in sweep.trials() if runs.decode(r).phase == phase]


def test_each_entry_gets_its_budget_then_its_best_configuration_again_with_fresh_seeds(fair_sweep):
    from orchestrator import runs

    search, seeds = by_phase(fair_sweep, "search"), by_phase(fair_sweep, "seeds")
    assert sorted(runs.decode(r).entry for r in search) == [0, 0, 1, 1]
    assert sorted(runs.decode(r).entry for r in seeds) == [0, 0, 1, 1]
    for entry in (0, 1):
        mine = [runs.decode(r) for r in seeds if runs.decode(r).entry == entry]
        assert len({t.train.lr for t in mine}) == 1  # one configuration ...
        assert len({t.train.seed for t in mine}) == 2  # ... two seeds
        best = [runs.decode(r) for r in search if runs.decode(r).entry == entry
                and runs.decode(r).train.lr == mine[0].train.lr]
        assert best and best[0].train.seed not in {t.train.seed for t in mine}  # fresh ones
    for run in seeds:  # never stopped early: the full budget
        assert run.data.tags[Tag.STATUS] == "completed" and run.data.tags[Tag.EPOCHS_COMPLETED] == "2"
    assert "Per model entry" in fair_sweep.result.stdout


def test_repeats_of_one_point_train_with_different_seeds_and_give_different_curves(fair_sweep):
    client = fair_sweep.client()
    seeds = [r for r in by_phase(fair_sweep, "seeds") if r.data.tags[Tag.ARCH] == "vgg11"]
    curves = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, "train_loss"), key=lambda m: m.step)]
              for r in seeds]
    assert seeds[0].data.params["seed"] != seeds[1].data.params["seed"]
    assert curves[0] != curves[1]


def test_compare_by_arch_equals_a_hand_computation_from_the_child_runs(fair_sweep):
    out = run_cli(["compare", "e2e-fair", "--by", "arch", "--format", "json", "--tracking-uri", fair_sweep.uri],
                  cwd=fair_sweep.folder)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["arch"]: row for row in json.loads(out.stdout)}
    assert set(rows) == {"vgg11", "alexnet"}
    for arch, row in rows.items():
        mine = [r for r in fair_sweep.trials() if r.data.tags[Tag.ARCH] == arch]
        scores = [r.data.metrics["model_val_acc"] for r in by_phase(fair_sweep, "seeds") if r.data.tags[Tag.ARCH] == arch]
        mean, sd = statistics.fmean(scores), statistics.stdev(scores)
        # Student's t on the logits, mapped back (clipped 1e-3 inside [0, 1] first)
        logits = [math.log(p / (1 - p)) for p in (min(max(v, 1e-3), 1 - 1e-3) for v in scores)]
        centre = statistics.fmean(logits)
        half = stats.t.ppf(0.975, len(scores) - 1) * statistics.stdev(logits) / len(scores) ** 0.5
        expit = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        assert row["n"] == 2 and row["mean"] == pytest.approx(mean) and row["std"] == pytest.approx(sd)
        assert (row["ci95_low"], row["ci95_high"]) == (pytest.approx(expit(centre - half)),
                                                       pytest.approx(expit(centre + half)))
        assert 0 <= row["ci95_low"] <= row["ci95_high"] <= 1
        assert row["trials"] == len(mine) == 4
        hours = sum(float(r.data.tags[Tag.TRAIN_SECONDS]) for r in mine) / 3600
        assert row["device_hours"] == pytest.approx(hours, rel=1e-3)
        assert row["latency_ms"] > 0 and row["params"] == int(mine[0].data.params["param_count"])
    leader = max(rows.values(), key=lambda r: r["mean"])
    assert leader["rank"] == "leader"
    other = min(rows.values(), key=lambda r: r["mean"])
    overlap = other["ci95_high"] >= leader["ci95_low"] and other["ci95_low"] <= leader["ci95_high"]
    assert other["rank"] == ("tied" if overlap else "")
    if not overlap:  # only a tied entry says what separating it would cost
        assert other["seeds_to_separate"] is None and other["separate_device_hours"] is None
