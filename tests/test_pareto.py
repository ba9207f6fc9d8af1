"""Several objectives without a cluster: the Pareto set, the `search.select` rules and the
hypervolume (orchestrator/pareto.py) against hand computations; `search.objectives` and its
refusals (one line, exit 2, before Ray); the comparison table's `pareto` column in every format;
the per-entry searcher with a multi-objective Optuna study, driven the way Tune drives it. A whole
sweep through them is in test_sweep_objectives.py."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import yaml

from orchestrator import config, pareto, runs, search, tables
from orchestrator.runs import Result, Status
from orchestrator.schema import Search
from support import refused

# (val_acc: max, infer_latency_b1_ms: min)
DIRS = ("max", "min")
A, B, C, D, E, F, G = (0.95, 2.0), (0.90, 1.0), (0.85, 1.5), (0.95, 3.0), (0.80, 0.5), (0.90, 1.0), (None, 0.1)
POINTS = [A, B, C, D, E, F, G]


def test_the_front_is_every_point_no_other_dominates_equal_points_together_unknown_ones_left_out():
    # C is dominated by B (less accurate, slower), D by A (as accurate, slower); F equals B: neither
    # dominates the other; G has no accuracy.
    assert pareto.front(POINTS, DIRS) == [0, 1, 4, 5]
    assert pareto.dominates(B, C, DIRS) and pareto.dominates(A, D, DIRS)
    assert not pareto.dominates(B, F, DIRS) and not pareto.dominates(A, B, DIRS)
    assert pareto.front([(0.9, math.nan), (0.8, 1.0)], DIRS) == [1]  # a NaN takes no part
    assert pareto.front([], DIRS) == [] and pareto.select([G], DIRS, "first") is None


def test_first_picks_the_front_point_best_on_the_first_objective_ties_on_the_next():
    assert pareto.select(POINTS, DIRS, "first") == 0  # A: 0.95 (D is as accurate but dominated)
    # Equal accuracy on the front is impossible unless equal in everything else too: then the earlier.
    assert pareto.select([B, F], DIRS, "first") == 0
    three = [(0.9, 1.0, 5.0), (0.9, 2.0, 1.0), (0.8, 0.5, 0.5)]  # ties on accuracy: both on the front
    assert pareto.front(three, ("max", "min", "min")) == [0, 1, 2]
    assert pareto.select(three, ("max", "min", "min"), "first") == 0  # the faster of the two


def test_knee_picks_the_front_point_nearest_the_ideal_once_each_objective_is_scaled_over_the_front():
    # Front A, B, E, F. Accuracy over it: 0.80 (worst) .. 0.95 (best); latency 0.5 (best) .. 2.0.
    # Scaled distances to the ideal: A sqrt(0^2 + 1^2) = 1; B sqrt((0.05/0.15)^2 + (0.5/1.5)^2) = 0.471;
    # E sqrt(1^2 + 0^2) = 1; F as B (the earlier, B, wins the tie).
    assert pareto.select(POINTS, DIRS, "knee") == 1
    # The far corner of a bent front loses to its knee, whatever the units: latency in seconds.
    bent = [(0.99, 10.0), (0.97, 1.0), (0.50, 0.9)]
    assert pareto.select(bent, DIRS, "knee") == 1
    assert pareto.select([(a, s / 1000) for a, s in bent], DIRS, "knee") == 1
    with pytest.raises(ValueError, match="unknown rule"):
        pareto.select(POINTS, DIRS, "middle")


def test_hypervolume_equals_a_hand_computation_and_optunas():
    # Reference (accuracy 0, latency 10). Slabs along accuracy: 0.90-0.95 x (10 - 2) = 0.4;
    # 0.80-0.90 x (10 - 1) = 0.9; 0-0.80 x (10 - 0.5) = 7.6: 8.9. C and D add nothing, nor G.
    assert pareto.hypervolume(POINTS, DIRS, (0.0, 10.0)) == pytest.approx(8.9)
    assert pareto.hypervolume([(0.9, 11.0)], DIRS, (0.0, 10.0)) == 0.0  # beyond the reference
    from optuna._hypervolume import compute_hypervolume  # the library's (WFG), for minimised values

    rng = np.random.default_rng(0)
    for dims in (2, 3):
        pts = rng.uniform(0, 1, size=(12, dims))
        dirs = ("max",) + ("min",) * (dims - 1)
        ref = (0.0,) + (1.0,) * (dims - 1)
        losses = np.array([(-p[0], *p[1:]) for p in pts])
        expected = compute_hypervolume(losses, np.array([-ref[0], *ref[1:]]))
        assert pareto.hypervolume([tuple(p) for p in pts], dirs, ref) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# search.objectives in a sweep file


def spec_of(search_section: str, train: str = "{epochs: 2, batch_size: 32}",
            models: str = "[{arch: resnet18, knobs: {width: 0.125}, lr: {loguniform: [0.01, 0.1]}}]"):
    return config.parse(yaml.safe_load(f"""
name: mo
dataset: {{name: digits}}
train: {train}
search: {search_section}
models: {models}
"""), "mo.yaml")


def test_the_first_objective_is_the_metric_and_objectives_mean_no_early_stopping():
    s = spec_of("{objectives: {val_acc: max, infer_latency_b1_ms: min}, algorithm: tpe}").search
    assert (s.metric, s.mode, s.scheduler, s.select) == ("val_acc", "max", "fifo", "first")
    assert s.directions() == ("max", "min") and s.objective_names() == ("val_acc", "infer_latency_b1_ms")
    s = spec_of("{objectives: {val_loss: min, flops: min, infer_imgs_per_s: max}, metric: val_loss, mode: min, "
                "scheduler: fifo, select: knee}").search
    assert (s.metric, s.mode, s.select) == ("val_loss", "min", "knee")
    assert spec_of("{}").search.objectives is None  # without: as before
    assert spec_of("{}").search.scheduler == "asha"


BAD = [  # (search section or (search, train), the key, fragments of the line)
    ("{objectives: {val_acc: max}}", "search.objectives", ("1 objective(s) (val_acc)", "give 2 or 3")),
    ("{objectives: {val_acc: max, flops: min, param_count: min, infer_peak_mem_mb: min}}", "search.objectives",
     ("4 objective(s)", "give 2 or 3")),
    ("{objectives: {val_acc: max, latency: min}}", "search.objectives",
     ("latency is not a metric", "allowed: train_loss", "infer_latency_b1_ms")),
    ("{objectives: {val_acc: max, flops: up}}", "search.objectives", ("flops: 'up' is not one of max, min",)),
    ("{objectives: {val_acc: max, flops: .inf}}", "search.objectives", ("flops: inf is not one of max, min",)),
    ("{objectives: {flops: min, val_acc: max}}", "search.objectives",
     ("the first objective flops is not a training metric",)),
    ("{objectives: [val_acc, flops]}", "search.objectives", ("['val_acc', 'flops'] is not a dict",)),
    ("{objectives: {val_acc: max, flops: min}, metric: val_loss}", "search.metric",
     ("the first objective (val_acc: max) is the metric", "leave search.metric and search.mode out")),
    ("{objectives: {val_acc: max, flops: min}, mode: min}", "search.mode", ("val_acc/min",)),
    ("{objectives: {val_acc: max, flops: min}, scheduler: asha}", "search.scheduler", ("use fifo",)),
    ("{select: knee}", "search.select", ("knee picks among the Pareto set", "not given")),
    ("{objectives: {val_acc: max, flops: min}, select: middle}", "search.select", ("'middle' is not one of first, knee",)),
    (("{objectives: {val_acc: max, infer_latency_b1_ms: min}}", "{epochs: 2, benchmark_inference: false}"),
     "train.benchmark_inference", ("has infer_latency_b1_ms", "set it true or drop that objective")),
]


@pytest.mark.parametrize("section, key, says", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_bad_objectives_are_one_line_and_exit_2_before_ray(section, key, says, tmp_path, capsys):
    search_section, train = section if isinstance(section, tuple) else (section, "{epochs: 2, batch_size: 32}")
    (tmp_path / "bad.yaml").write_text(f"name: mo\ndataset: {{name: digits}}\ntrain: {train}\n"
                                       f"search: {search_section}\nmodels: [{{arch: resnet18, knobs: {{width: 0.125}}}}]\n")
    refused(["sweep", "bad.yaml", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"], tmp_path, capsys,
            starts=f"bad.yaml: {key}: ", says=says)


def test_an_objective_written_twice_is_refused_as_the_file_is_read(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("name: mo\ndataset: {name: digits}\n"
                                       "search:\n  objectives:\n    val_acc: max\n    val_acc: min\n"
                                       "models: [{arch: resnet18}]\n")
    refused(["sweep", "bad.yaml", "--dry-run"], tmp_path, capsys, starts="bad.yaml: line 6, column 5: duplicate key 'val_acc'")


# ---------------------------------------------------------------------------------------------
# The comparison table


def result(name, acc, latency, status=Status.COMPLETED, params=1000):
    return Result(name=name, arch="resnet18", knobs="", lr=0.1, params=params, flops=None, metric="val_acc", score=acc,
                  val_acc=acc, val_loss=None, epoch=2, epochs=2, epochs_planned=2, imgs_per_s=None,
                  latency_ms=latency, infer_imgs_per_s=None, device_hours=0.0, status=status, run_id=name, error=None,
                  model_id="m", seed=0, entry=0, phase="search",
                  objectives=(("val_acc", acc), ("infer_latency_b1_ms", latency), ("infer_peak_mem_mb", 3.0)))


def test_compare_marks_the_pareto_set_in_every_format_and_the_selected_trial():
    rs = [result(n, *p) for n, p in zip("ABCDEF", POINTS[:6])] + [result("H", 0.99, 0.1, Status.FAILED)]
    objectives = {"val_acc": "max", "infer_latency_b1_ms": "min", "infer_peak_mem_mb": "min"}
    first, knee = (Search(scheduler="fifo", objectives=objectives, select=rule) for rule in ("first", "knee"))
    marked = runs.mark_pareto(runs.rank(rs, "max"), first)
    on = {r.name for r in marked if r.pareto}
    assert on == {"A", "B", "E", "F"}  # peak memory is equal everywhere; the failed H has no model
    assert [r.name for r in marked if r.selected] == ["A"]
    assert [r.name for r in runs.mark_pareto(rs, knee) if r.selected] == ["B"]

    rows = json.loads(tables.render(marked, "json"))
    assert {r["name"]: r["pareto"] for r in rows} == {r.name: r.pareto for r in marked}
    assert rows[0]["objectives"] == {"val_acc": 0.95, "infer_latency_b1_ms": 2.0, "infer_peak_mem_mb": 3.0}
    assert [r["name"] for r in rows if r["selected"]] == ["A"]
    table = list(csv.DictReader(io.StringIO(tables.render(marked, "csv"))))
    assert {r["name"]: r["pareto"] for r in table} == {r.name: str(r.pareto) for r in marked}
    assert table[0]["infer_peak_mem_mb"] == "3.0"  # an objective no column showed gets one
    md = tables.render(marked, "markdown").splitlines()
    assert "| pareto |" in md[0] and sum("| yes |" in line for line in md) == 4
    text = tables.render(marked, "table").splitlines()
    assert "pareto" in text[0].split() and sum(" yes " in line for line in text) == 4
    # A sweep without objectives: the column is there, blank.
    plain = json.loads(tables.render([dataclasses.replace(result("A", 0.9, 1.0), objectives=())], "json"))
    assert plain[0]["pareto"] is None and "objectives" not in plain[0]


# ---------------------------------------------------------------------------------------------
# The searcher


def test_tpe_with_objectives_is_one_multi_objective_optuna_study_per_entry_fed_every_objective():
    spec = spec_of("{objectives: {val_acc: max, infer_latency_b1_ms: min}, algorithm: tpe, trials_per_model: 4, "
                   "seeds: 1, select: knee}")
    searcher = search.EntrySearch(spec)
    study = searcher.samplers[0].searcher._ot_study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    ids = [f"t{i}" for i in range(4)]
    cfgs = [searcher.suggest(t) for t in ids]
    # Hand-made outcomes: the latency comes with the first epoch only, as the engine reports it.
    scores = [(0.95, 2.0), (0.90, 1.0), (0.85, 1.5), (0.80, 0.5)]
    for t, (acc, lat) in zip(ids, scores):
        searcher.on_trial_result(t, {"epoch": 1, "val_acc": acc - 0.1, "infer_latency_b1_ms": lat})
        searcher.on_trial_result(t, {"epoch": 2, "val_acc": acc})
        searcher.on_trial_complete(t, {"epoch": 2, "val_acc": acc})
    assert [tuple(t.values) for t in study.trials] == scores
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert {t.number for t in study.best_trials} == {0, 1, 3}  # Optuna's Pareto set: ours too
    assert pareto.front(scores, ("max", "min")) == [0, 1, 3]
    seed_cfg = searcher.suggest("s0")
    # The seed run re-trains the knee: scaled distances 1 (0.95, 2.0), 0.471 (0.90, 1.0), 1 (0.80, 0.5).
    assert seed_cfg["phase"] == "seeds" and seed_cfg["model"]["lr"] == cfgs[1]["model"]["lr"]


# ---------------------------------------------------------------------------------------------
# The report


def test_the_report_draws_the_pareto_set_and_names_its_trials_and_the_selected_one_escaped():
    from orchestrator import report
    from orchestrator.report.model import ObjectivePoint
    from test_sweep_report import HOSTILE, hostile_report

    names = ["A", "B", "C", HOSTILE]
    values = [(0.95, 2.0), (0.90, 1.0), (0.85, 1.5), (0.80, 0.5)]
    on = pareto.front(values, DIRS)
    chosen = pareto.select(values, DIRS, "knee")
    trials = tuple(ObjectivePoint(n, f"r{i}", v, i in on, i == chosen) for i, (n, v) in enumerate(zip(names, values)))
    data = dataclasses.replace(hostile_report(), objectives=(("val_acc", "max"), ("infer_latency_b1_ms", "min")),
                               select="knee", trials=trials)
    page = report.render(data)
    section = page.split('<section id="objectives">', 1)[1].split("</section>", 1)[0]
    assert '<figure id="pareto-front"><img src="data:image/svg+xml;base64,' in section
    members = section.split('id="pareto-members">', 1)[1].split("</span>.", 1)[0]
    assert "(3 of 4 trials with a model)" in members
    assert [m.split("</span>")[0] for m in members.split('<span class="member">')[1:]] == \
           ["A", "B", "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"]
    assert "search.select knee: B</span>" in section
    assert "<script" not in page.lower()
    # Without objectives there is no such section.
    assert 'id="objectives"' not in report.render(hostile_report())


def test_the_objectives_benchmark_scores_searches_from_a_table(tmp_path, capsys):
    """benchmarks/objectives_search.py on a hand-made table (no training): every search of every
    algorithm runs its budget, and its hypervolume share is at most the table's own."""
    from benchmarks import objectives_search

    lines = [{"latency": True, "arch": "vgg11", "width": w, "infer_latency_b1_ms": 9.0, "measurements": [9.0, lat]}
             for w, lat in ((0.125, 1.0), (0.25, 2.0))]
    lines += [{"table": True, "arch": "vgg11", "width": w, "lr": lr, "val_acc": acc, "infer_latency_b1_ms": 9.0,
               "param_count": 1, "seconds": 0.0}
              for w, accs in ((0.125, (0.5, 0.7)), (0.25, (0.6, 0.9))) for lr, acc in zip((0.002, 0.008), accs)]
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert objectives_search.main(["--table", str(table), "--archs", "vgg11", "--widths", "0.125,0.25", "--budget",
                                   "3", "--seeds", "2", "--extra-seeds", "1", "--results", str(tmp_path)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    searches = [r for r in out if r.get("search")]
    assert [(r["algorithm"], r["seed"]) for r in searches] == [(a, s) for s in range(3) for a in ("tpe", "random")]
    assert all(r["trials"] == 3 and 0 < r["hv_share"] <= 1 + 1e-12 for r in searches)
    summary = out[-1]
    # Latencies are each model's least measurement: (0.7, 1.0) and (0.9, 2.0) make the front. Reference
    # (0, 2.2): 0.9 x (2.2 - 2.0) + 0.7 x (2.0 - 1.0) = 0.88.
    assert summary["summary"] and summary["table_hv"] == pytest.approx(0.88)
    assert summary["tpe"]["all_seeds"]["n"] == 3 and summary["random"]["first_seeds"]["n"] == 2
