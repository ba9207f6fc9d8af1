"""The record at scale (issue 24, item 1): `orchestrate compare`, `compare --by arch` and `report`
over an experiment of 1,000 and of 6,000 trial runs, on sqlite and on PostgreSQL, before and after.

    python -m benchmarks.record_at_scale --before DIR [--runs 1000,6000] [--stores sqlite,postgres]
        [--repeats 2] [--commands compare,by-arch,report]

`--before DIR`: a checkout of the older code (e.g. `git worktree add --detach DIR b0dba76`); each
command runs as `python -m orchestrator ...` with PYTHONPATH pointing at DIR ("before") or at this
repository ("after"), the same interpreter and libraries. Side by side in one run: for every store,
size and command, before then after, `--repeats` times (A B A B ...), wall seconds of the whole
command (the interpreter's start and imports included, as a user waits for it), and the rows it
printed (`compare --format json`: trials listed; `--by arch`: the sum of each entry's trials).

The stores: one sqlite file and one PostgreSQL 15 database (tests/stores.py: a server of its own on
127.0.0.1, as the postgres user when run as root), each with one experiment per size
(`scale-1000`, `scale-6000`), filled through MlflowClient as a sweep's recorder leaves them (no
training): a parent run (search.* params, the sweep file as its artefact) and N completed trial
runs spread over three model entries, each with its encoded params and tags, every EPOCH_METRICS
key at epochs 1 and 2 and the model_* metrics. `populate` is also what tests/test_scale.py could use.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEP = """\
name: scale
dataset: {name: digits}
train: {epochs: 2}
search: {scheduler: fifo}
models:
  - {arch: resnet18, knobs: {width: 0.125}}
  - {arch: vgg11, knobs: {width: 0.125}}
  - {arch: mobilenet_v2, knobs: {width: 0.25}}
"""


def populate(uri: str, experiment: str, count: int, folder: str, histories: bool = True, workers: int = 1,
             fields: dict[str, list[str]] | None = None) -> dict[str, tuple[float, str]]:
    """`count` completed trial runs of one sweep in a new experiment `experiment` of the store
    `uri`; the best (score, run id) per arch. `histories`: every epoch metric at epochs 1 and 2
    (what a real trial logs), else only the model_* metrics. `workers`: runs made at once (threads;
    1 for sqlite, which takes one writer at a time). `fields`: the Trial record written with only
    these fields (`record_fields`: what an older version wrote, which it and this one both read)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from orchestrator import config, runs
    from orchestrator.runs import ROLE_SWEEP, Status, Tag
    from orchestrator.schema import EPOCH_METRICS

    sweep_file = os.path.join(folder, f"{experiment}.yaml")
    with open(sweep_file, "w") as f:
        f.write(SWEEP.replace("name: scale", f"name: {experiment}"))
    spec = config.load(sweep_file, {"tracking_uri": uri, "storage_path": os.path.join(folder, "storage")})
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(experiment, artifact_location=f"file://{folder}/artifacts-{experiment}")
    parent = client.create_run(experiment_id, run_name="sweep", tags={Tag.ROLE: ROLE_SWEEP, Tag.SWEEP_FILE: sweep_file})
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[Param("search.metric", "val_acc"), Param("search.mode", "max")])
    client.log_artifact(parent_id, sweep_file)
    now = int(time.time() * 1000)

    def one(i: int) -> tuple[str, float, str]:
        entry = i % len(spec.models)
        model = spec.models[entry]
        trial = spec.trial({"arch": model.arch, "knobs": model.knobs, "lr": 0.01 + i * 1e-6}, f"t{i:05d}", entry=entry)
        params, tags = runs.encode(trial, dict(trial.knobs), model.arch)
        if fields:
            record = json.loads(tags[Tag.TRIAL])
            record = {k: {f: x for f, x in v.items() if f in fields[k]} if k in fields else v
                      for k, v in record.items() if k in fields[""]}
            tags[Tag.TRIAL] = json.dumps(record, separators=(",", ":"))
        score = (i * 7919 % count) / count  # a permutation of 0..1: every run's score distinct
        run_id = client.create_run(experiment_id, run_name=trial.name, tags={
            **tags, Tag.PARENT: parent_id, Tag.STATUS: Status.COMPLETED, Tag.BEST_EPOCH: "2",
            Tag.EPOCHS_COMPLETED: "2", Tag.TRAIN_SECONDS: "3.5", Tag.LOGGED_MODEL_ID: f"m-{i}"}).info.run_id
        metrics = [Metric(runs.model_metric("val_acc"), score, now, 2), Metric(runs.model_metric("val_loss"), 1 - score, now, 2)]
        if histories:
            metrics += [Metric(k, score * epoch / 2 if k == "val_acc" else 0.5, now, epoch)
                        for epoch in (1, 2) for k in EPOCH_METRICS]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in
                                                          {**params, "param_count": "150000", "flops": "5000000"}.items()])
        return trial.arch, score, run_id

    best: dict[str, tuple[float, str]] = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for arch, score, run_id in pool.map(one, range(count)):
            if score > best.get(arch, (-1.0, ""))[0]:
                best[arch] = (score, run_id)
    return best


def record_fields(code: str) -> dict[str, list[str]]:
    """The Trial record's fields as the code in `code` knows them: "" the Trial's, then each section's."""
    script = ("import dataclasses, json; from orchestrator import runs, schema; print(json.dumps({'': "
              "[f.name for f in dataclasses.fields(schema.Trial)], **{k: [f.name for f in dataclasses.fields(c)] "
              "for k, c in runs.SECTIONS.items()}}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=code, env={**os.environ, "PYTHONPATH": code},
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


COMMANDS = {
    "compare": lambda exp, uri, folder: ["compare", exp, "--tracking-uri", uri, "--format", "json"],
    "by-arch": lambda exp, uri, folder: ["compare", exp, "--tracking-uri", uri, "--by", "arch", "--format", "json"],
    "report": lambda exp, uri, folder: ["report", exp, "--tracking-uri", uri, "--out", os.path.join(folder, "report.html")],
}


def time_command(code: str, args: list[str]) -> tuple[float, int | None, str]:
    """(wall seconds, rows shown, stderr's tail) of `python -m orchestrator ARGS` with `code` first on the path."""
    env = {**os.environ, "PYTHONPATH": code}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=code, env=env, capture_output=True,
                          text=True, check=False)
    wall = time.perf_counter() - start
    rows = None
    if done.returncode == 0 and "--format" in args:
        data = json.loads(done.stdout)
        rows = sum(r["trials"] for r in data) if "--by" in args else len(data)
    elif done.returncode == 0:
        with open(args[-1], encoding="utf-8") as f:  # the report: each entry's trials column
            rows = sum(int(n) for n in re.findall(r"<td>(\d+)</td><td class=\"t wrap\">", f.read())) or None
    return wall, rows, "" if done.returncode == 0 else done.stderr[-500:]


@contextlib.contextmanager
def store(kind: str, folder: str):
    if kind == "sqlite":
        yield f"sqlite:///{folder}/mlflow.db"
        return
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from stores import postgres

    with postgres() as pg:
        yield pg.create_database("scale")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="a checkout of the code to compare with")
    p.add_argument("--runs", default="1000,6000")
    p.add_argument("--stores", default="sqlite,postgres")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--commands", default=",".join(COMMANDS))
    p.add_argument("--store", help="an existing store whose experiments scale-N (written as the older version "
                                   "writes them) are timed as they are: nothing is made (--stores is its kind)")
    args = p.parse_args()
    sizes = [int(n) for n in args.runs.split(",")]
    codes = {"before": os.path.abspath(args.before), "after": REPO}
    # The runs are written as the older version wrote them (its Trial fields; this version reads
    # those records too): a store both versions read.
    fields = record_fields(codes["before"])
    print(json.dumps({"load": os.getloadavg(), "before": codes["before"], "after": REPO,
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}), flush=True)
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix=f"scale-{kind}-") as folder, \
                (contextlib.nullcontext(args.store) if args.store else store(kind, folder)) as uri:
            for n in sizes:
                if not args.store:
                    started = time.perf_counter()
                    best = populate(uri, f"scale-{n}", n, folder, workers=1 if kind == "sqlite" else 4, fields=fields)
                    print(json.dumps({"store": kind, "runs": n, "populate_s": round(time.perf_counter() - started, 1),
                                      "best": {a: s for a, (s, _) in best.items()}}), flush=True)
                for command in args.commands.split(","):
                    for repeat in range(args.repeats):
                        for side in ("before", "after"):
                            wall, rows, err = time_command(codes[side], COMMANDS[command](f"scale-{n}", uri, folder))
                            print(json.dumps({"store": kind, "runs": n, "command": command, "side": side,
                                              "repeat": repeat, "wall_s": round(wall, 2), "rows": rows,
                                              "load": round(os.getloadavg()[0], 2), **({"error": err} if err else {})}),
                                  flush=True)


if __name__ == "__main__":
    main()
