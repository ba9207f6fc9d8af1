"""Several objectives end to end: one real multi-objective TPE sweep (Ray Tune, Optuna through
OptunaSearch, a real sqlite MLflow store) over accuracy and batch-1 latency, then `compare
--format json`'s Pareto marks, the registered @best (search.select: knee) and the report's Pareto
section, each checked against a hand computation from the child runs. The pure parts (the front,
the rules, the refusals, the searcher's study) are in test_pareto.py."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import tempfile
import textwrap

import pytest

from orchestrator.runs import Tag
from support import Sweep, processes_mentioning, run_cli

pytestmark = pytest.mark.ray

SWEEP = textwrap.dedent("""\
    name: e2e-objectives
    dataset: {name: digits}
    train: {epochs: 1, batch_size: 32, optimizer: adamw, lr: 0.003, weight_decay: 0.05, data_path: device,
            inference_batch_size: 32}
    resources: {num_workers: 1, cpus_per_worker: 1}
    search: {algorithm: tpe, trials_per_model: 3, seed: 3, select: knee,
             objectives: {val_acc: max, infer_latency_b1_ms: min}}
    models:
      - {arch: resnet18, knobs: {width: {choice: [0.125, 0.5]}}, lr: {loguniform: [0.001, 0.01]}}
      - {arch: vgg11, knobs: {width: {choice: [0.125, 0.25]}}, lr: {loguniform: [0.0005, 0.005]}}
    """)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("objectives")
    (folder / "sweep.yaml").write_text(SWEEP)
    uri = f"sqlite:///{folder}/mlflow.db"
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")  # a private Ray cluster (short: socket paths)
    try:
        result = run_cli(["sweep", "sweep.yaml", "--tracking-uri", uri], cwd=folder, env={"RAY_TMPDIR": ray_tmp})
    finally:
        for line in processes_mentioning(ray_tmp):  # whatever the sweep's Ray left behind
            try:
                os.kill(int(line.split(":")[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return Sweep(folder, result, uri, "e2e-objectives")


def by_hand(sweep):
    """{run_id: (val_acc at the logged model, batch-1 latency)} of the trials with a model, the
    Pareto set over them and the knee, computed here from the runs alone."""
    points = {r.info.run_id: (r.data.metrics["model_val_acc"], r.data.metrics["infer_latency_b1_ms"])
              for r in sweep.trials() if r.data.tags[Tag.STATUS] in ("completed", "early-stopped")}
    front = {a for a, (acc, lat) in points.items()
             if not any(acc2 >= acc and lat2 <= lat and (acc2 > acc or lat2 < lat) for acc2, lat2 in points.values())}
    # knee: each objective scaled to [0, 1] over the front (0 = its best value there), nearest (0, 0)
    accs, lats = [points[a][0] for a in front], [points[a][1] for a in front]

    def scaled(v, best, worst):
        return (v - best) / (worst - best) if worst != best else 0.0

    knee = min(front, key=lambda a: (math.hypot(scaled(points[a][0], max(accs), min(accs)),
                                                scaled(points[a][1], min(lats), max(lats))), -points[a][0]))
    return points, front, knee


def test_compare_json_marks_the_pareto_set_exactly_as_a_hand_computation_from_the_runs(sweep):
    points, front, _ = by_hand(sweep)
    assert len(points) == 6 and front  # every trial trained to its model (no early stopping)
    out = run_cli(["compare", "e2e-objectives", "--format", "json", "--tracking-uri", sweep.uri], cwd=sweep.folder)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {row["run_id"]: row for row in json.loads(out.stdout)}
    assert set(rows) == set(points)
    assert {run for run, row in rows.items() if row["pareto"]} == front
    for run, (acc, latency) in points.items():
        assert rows[run]["objectives"] == {"val_acc": acc, "infer_latency_b1_ms": latency}
    # The table says it too, and how it ranks.
    table = run_cli(["compare", "e2e-objectives", "--tracking-uri", sweep.uri], cwd=sweep.folder).stdout
    assert table.splitlines()[1].startswith("pareto: on the Pareto set over val_acc, infer_latency_b1_ms (")
    assert "pareto" in table.splitlines()[2].split()
    assert sum(" yes " in line for line in table.splitlines()) == len(front)


def test_the_registered_best_is_the_knee_of_the_pareto_set_and_the_report_draws_it(sweep, tmp_path):
    _, front, knee = by_hand(sweep)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep.uri)
    version = client.get_model_version_by_alias("e2e-objectives", "best")
    assert version.run_id == knee
    rows = json.loads(run_cli(["compare", "e2e-objectives", "--format", "json", "--tracking-uri", sweep.uri],
                              cwd=sweep.folder).stdout)
    assert [r["run_id"] for r in rows if r["selected"]] == [knee]

    out = run_cli(["report", "e2e-objectives", "--tracking-uri", sweep.uri, "--out", str(tmp_path / "r.html")],
                  cwd=sweep.folder)
    assert out.returncode == 0, out.stderr[-2000:]
    page = (tmp_path / "r.html").read_text()
    section = page.split('<section id="objectives">', 1)[1].split("</section>", 1)[0]
    assert '<figure id="pareto-front"><img src="data:image/svg+xml;base64,' in section
    names = {r.info.run_id: r.info.run_name for r in sweep.trials()}
    members = section.split('id="pareto-members">', 1)[1].split("</span>.", 1)[0]
    assert sorted(m.split("</span>")[0] for m in members.split('<span class="member">')[1:]) == \
           sorted(names[r] for r in front)
    assert f"search.select knee: {names[knee]}</span>" in section
