"""The sweep report (orchestrator/report/): the Pareto frontier and the plain answers as
pure functions, the page's escaping, the page a sweep without a completed trial gets, and one real
sweep reported by `orchestrate report` and opened in headless Chromium with the network blocked."""

from __future__ import annotations

import dataclasses
import re

import pytest

from orchestrator import cli, report, runs
from orchestrator.runs import Standing, Tag
from orchestrator.report import Answer, pareto_front
from support import chromium, run_cli


def standing(arch: str, mean: float, **kw) -> Standing:
    values = dict(entry=0, arch=arch, config=f"{arch}-lr0.1", metric="val_acc", mean=mean, std=None, low=None,
                  high=None, n=1, params=1_000_000, flops=10_000_000, latency_ms=1.0, infer_imgs_per_s=1000.0,
                  device_hours=0.01, trials=1, best_run_id="r0")
    return Standing(**{**values, **kw})


# ---------------------------------------------------------------------------------------------
# The Pareto frontier


def test_pareto_front_of_a_max_metric_keeps_points_no_cheaper_point_beats_cheapest_first():
    points = [(1.0, 0.50), (2.0, 0.70), (3.0, 0.60), (0.5, 0.40), (2.5, 0.90)]
    assert pareto_front(points, "max") == [3, 0, 1, 4]  # (3.0, 0.60) costs more than (2.0, 0.70) for less


def test_pareto_front_of_a_min_metric_wants_lower_values():
    points = [(1.0, 0.50), (2.0, 0.30), (3.0, 0.40), (0.5, 0.90)]  # a loss: lower is better
    assert pareto_front(points, "min") == [3, 0, 1]


def test_pareto_front_keeps_equal_points_and_drops_a_tie_that_is_worse_on_the_other_axis():
    points = [(1.0, 0.8), (1.0, 0.8), (1.0, 0.7), (2.0, 0.8)]
    assert pareto_front(points, "max") == [0, 1]  # same cost lower metric, same metric higher cost: dominated


def test_pareto_front_of_one_point_is_that_point_and_unmeasured_points_are_left_out():
    assert pareto_front([(3.0, 0.5)], "max") == [0]
    assert pareto_front([(None, 0.9), (2.0, 0.5), (1.0, None)], "max") == [1]
    assert pareto_front([], "min") == []


# ---------------------------------------------------------------------------------------------
# The answers


def test_answers_name_the_best_the_fastest_within_99_percent_and_the_smallest_within_98_percent():
    board = [standing("resnet18", 0.900, std=0.004, low=0.89, high=0.91, n=3, latency_ms=4.0, params=11e6,
                      leader=True, tied=True),
             standing("vgg11", 0.895, latency_ms=1.5, params=9e6),  # >= 0.891: may be the fastest
             standing("mobilenet_v2", 0.885, latency_ms=3.0, params=2.2e6),  # >= 0.882 only: may be the smallest
             standing("alexnet", 0.800, latency_ms=0.3, params=0.5e6)]  # fastest and smallest, too inaccurate
    labels = [s.arch for s in board]
    best, fastest, smallest, tied = report.answers(board, labels, "val_acc", "max")
    assert best == Answer("most accurate (val_acc)", 0, "resnet18 (0.900 ± 0.004, 95% interval 0.890-0.910, n=3)")
    assert fastest.question == "fastest (batch-1 latency) at >= 99% of the best val_acc (>= 0.891)"
    assert (fastest.entry, fastest.text) == (1, "vgg11 (1.50 ms; val_acc 0.895)")
    assert smallest.question == "smallest (params) at >= 98% of the best val_acc (>= 0.882)"
    assert (smallest.entry, smallest.text) == (2, "mobilenet_v2 (2.20 M params; val_acc 0.885)")
    assert tied.text == "none; not measured for vgg11, mobilenet_v2, alexnet (fewer than 2 seed runs)"


def test_answers_for_a_loss_say_lowest_and_within_a_share_above_the_best():
    board = [standing("resnet18", 0.300, metric="val_loss", latency_ms=4.0, leader=True, tied=True),
             standing("vgg11", 0.302, metric="val_loss", latency_ms=1.0),  # <= 0.303: within 1%
             standing("alexnet", 0.400, metric="val_loss", latency_ms=0.2, params=1)]
    best, fastest, smallest, tied = report.answers(board, [s.arch for s in board], "val_loss", "min")
    assert best.question == "lowest val_loss" and best.text == "resnet18 (0.300, one run)"
    assert fastest.question == "fastest (batch-1 latency) within 1% of the best val_loss (<= 0.303)"
    assert fastest.text == "vgg11 (1.00 ms; val_loss 0.302)"
    assert smallest.question == "smallest (params) within 2% of the best val_loss (<= 0.306)"
    assert smallest.entry == 0 and smallest.text.endswith(", the best entry itself")  # same params: the better
    assert tied.text.startswith("not measured: the best entry has no seed runs")


def test_when_no_entry_near_the_best_has_a_measured_latency_the_answer_says_so():
    board = [standing("resnet18", 0.90, latency_ms=None, leader=True, tied=True, low=0.88, high=0.92, std=0.01, n=2),
             standing("vgg11", 0.70, latency_ms=0.5, low=0.69, high=0.71, std=0.01, n=2, tied=False)]
    _, fastest, smallest, tied = report.answers(board, ["resnet18", "vgg11"], "val_acc", "max")
    assert fastest.entry is None
    assert fastest.text == "no entry that reaches it has a measured latency (1 reach it)"
    assert smallest.text.endswith("the most accurate entry itself")
    assert tied.text == "none"


def test_an_entrys_label_is_its_arch_unless_the_arch_is_in_several_entries():
    board = [standing("resnet18", 0.9, entry=0), standing("resnet18", 0.8, entry=2), standing("vgg11", 0.7, entry=1)]
    assert report.labels_of(board) == ["resnet18 [0]", "resnet18 [2]", "vgg11"]


# ---------------------------------------------------------------------------------------------
# The page


HOSTILE = "<script>alert('x')</script>"


def hostile_report() -> report.ReportData:
    board = [standing(HOSTILE, 0.9, config='cfg"><img src=x onerror=alert(1)>', std=0.01, low=0.88, high=0.92,
                      n=2, leader=True, tied=True),
             standing("vgg11", 0.8, latency_ms=0.5, params=2e5)]
    labels = report.labels_of(board)
    entries = tuple(report.EntryView(
        s, label, family=f"{HOSTILE} family",
        curve=((1, 0.5), (2, s.mean)), trials=(report.TrialPoint(0.05, 0.5, s.mean - 0.1),
                                              report.TrialPoint(0.1, 1.0, s.mean)),
        search_trials=2, seed_trials=0, failed_trials=0) for s, label in zip(board, labels))
    provenance = report.Provenance(
        sweeps=(f"sweep-1 {HOSTILE}",), sweep_file_name=f"{HOSTILE}.yaml",
        sweep_file_text=f"name: x\n</pre>{HOSTILE}\ntracking: {{uri: http://me:***@host}}\n",
        train=(("lr", HOSTILE),), search=(("metric", "val_acc"),), dataset=HOSTILE, dataset_digests=("abc",),
        git_commits=(), versions=(("torch", "2.14.1"),), devices=(HOSTILE,), infer_devices=(), started=None, ended=None)
    return report.ReportData(
        experiment=HOSTILE, scope="sweep run x", metric="val_acc", mode="max", entries=entries,
        frontiers=report.frontiers(board, "max"),
        answers=tuple(report.answers(board, labels, "val_acc", "max")), provenance=provenance,
        statuses=(("completed", 4),), generated="now")


def test_names_configs_and_the_sweep_file_from_the_store_cannot_inject_markup_into_the_page():
    page = report.render(hostile_report())
    assert "<script" not in page.lower() and "<img src=x" not in page  # no markup but the page's own
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page  # markupsafe's escapes
    assert "&lt;/pre&gt;" in page
    assert "script-src" not in page and "default-src 'none'" in page  # the CSP forbids scripts and fetches
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch


def test_a_report_without_a_completed_trial_is_a_small_page_that_says_so():
    data = dataclasses.replace(hostile_report(), entries=(), frontiers=(), answers=(),
                               statuses=(("failed", 2),))
    page = report.render(data)
    assert "no trial completed with a model (trials: 2 failed); nothing to report" in page
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>") and "<img" not in page


def test_a_sweep_whose_only_trial_failed_logs_a_report_saying_so_and_the_command_exits_2(tmp_path, capsys):
    """Through tracking's real records (as test_record_replay.py drives them), no Ray."""
    from orchestrator import config, tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    file = tmp_path / "failing.yaml"
    file.write_text("name: failing\ndataset: {name: digits}\nmodels:\n  - {arch: vgg11, knobs: {width: 0.125}}\n")
    spec = config.load(str(file), {"tracking_uri": uri, "storage_path": str(tmp_path / "storage")})
    sweep = tracking.SweepRecord.start(uri, spec.name, str(file), str(tmp_path / "storage"), {"search": {}})
    record = sweep.open_trial(spec.trial({"arch": "vgg11", "knobs": {"width": 0.125}, "lr": 0.1}, "t1"))
    record.finish(failed=True, error="loss is nan")
    results, version = sweep.finish()
    assert [r.status for r in results] == ["failed"] and version is None

    (tmp_path / "logged").mkdir()
    logged = sweep.client.download_artifacts(sweep.parent_run_id, report.REPORT_FILE, str(tmp_path / "logged"))
    page = open(logged, encoding="utf-8").read()
    assert "no trial completed with a model (trials: 1 failed)" in page and "<table" not in page
    assert not any(r.data.tags.get(Tag.PARETO) for r in sweep.client.search_runs([sweep.experiment_id]))

    out = tmp_path / "report.html"
    assert cli.main(["report", "failing", "--tracking-uri", uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after MLflow's own log lines
    assert err.startswith("report: experiment 'failing', sweep run sweep-")
    assert "no trial completed with a model (trials: 1 failed); nothing to report" in err
    assert not out.exists()  # nothing half-written
    assert cli.main(["report", "failing", "--tracking-uri", uri, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"report: --out: {str(tmp_path)!r} is a folder; "
                                                         "give a file in it, e.g. report.html")


# ---------------------------------------------------------------------------------------------
# End to end: a real sweep, `orchestrate report`, the page in a browser with the network blocked

def frontier_from_store(client, experiment_id, parent):
    """What the page must name, worked out here from the runs: the leaderboard, each cost's
    Pareto frontier as labels, the best run (with a model) of every entry on any frontier, and the
    ranked results it was worked out from."""
    results = runs.results(client, experiment_id, parent)
    mode = runs.selection(client, parent)[1]
    board = runs.leaderboard(results, mode)
    labels = report.labels_of(board)
    fronts = {cost: [labels[i] for i in pareto_front([(getattr(s, cost), s.mean) for s in board], mode)]
              for cost in ("latency_ms", "params", "flops")}
    on = {board[i].entry for cost in fronts for i, s in enumerate(board) if labels[i] in fronts[cost]}
    best = {}
    for r in results:  # best first
        if r.entry in on and r.has_model and r.entry not in best:
            best[r.entry] = r.run_id
    return board, fronts, set(best.values()), results


@pytest.mark.browser
@pytest.mark.ray
@pytest.mark.timeout(300, func_only=True)
def test_report_of_a_real_sweep_renders_offline_with_its_leaderboard_frontiers_and_tags(fair_sweep, tmp_path):
    client = fair_sweep.client()
    experiment = client.get_experiment_by_name(fair_sweep.experiment)
    parent = runs.sweep_runs(client, experiment.experiment_id)[0].info.run_id
    board, fronts, frontier_runs, results = frontier_from_store(client, experiment.experiment_id, parent)
    assert len(board) == 2 and all(s.n == 2 for s in board)  # one row per entry, each over its 2 seed runs

    # The sweep logged its report and tagged the frontier's runs.
    assert report.REPORT_FILE in {a.path for a in client.list_artifacts(parent)}
    tagged = {r.info.run_id for r in fair_sweep.trials() if r.data.tags.get(Tag.PARETO) == "true"}
    assert tagged == frontier_runs
    found = client.search_runs([experiment.experiment_id], f"tags.{Tag.PARETO} = 'true'")
    assert {r.info.run_id for r in found} == frontier_runs  # the MLflow UI's filter finds them

    lrs = {}
    for r in results:
        if r.has_model:
            lrs.setdefault(r.entry, set()).add(r.lr)
    tried_two_lrs = any(len(v) > 1 for v in lrs.values())  # the search drew two lrs per entry, unless a trial failed

    out = tmp_path / "report.html"
    result = run_cli(["report", fair_sweep.experiment, "--tracking-uri", fair_sweep.uri, "--out", str(out)],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(out)

    requests: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda r: requests.append(r.url))

        def offline(route):
            if route.request.url.startswith(("file://", "data:")):
                route.continue_()
            else:
                route.abort()
        page.route("**/*", offline)
        page.goto(out.as_uri(), wait_until="load")
        figures = page.locator("figure img")
        assert figures.count() == 4 + tried_two_lrs  # 3 frontiers, the curves, the lr response
        for i in range(figures.count()):
            img = figures.nth(i)
            box = img.bounding_box()
            assert img.evaluate("e => e.complete && e.naturalWidth") > 0 and box["width"] > 100 and box["height"] > 100
        rows = page.locator("#leaderboard-table tbody tr")
        assert rows.count() == len(board)
        assert rows.locator("td:nth-child(2)").all_inner_texts() == report.labels_of(board)
        for cost, names in fronts.items():
            assert page.locator(f'.frontier[data-cost="{cost}"] .member').all_inner_texts() == names, cost
        assert "most accurate (val_acc):" in page.locator("#answers").inner_text()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
