"""`orchestrate ui` end to end: the MLflow UI served on 127.0.0.1 for the real e2e sweep's store,
opened in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; Playwright's own
browsers are never downloaded), shows the experiment, both child runs of the sweep, a val_acc
chart, the registered best model with its alias, and the compare-runs page the sweep's summary
links to. Screenshots of each view are saved (see `_shot_dir`) as evidence."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support import REPO, chromium, free_port

# Generous for a loaded 2-core machine: `mlflow ui` imports for ~10-30 s there, and the first
# load of the UI's JS bundle takes ~5-30 s.
SERVER_START_S = 90
PAGE_S = 60
STEP_S = 30


def _shot_dir(tmp_path: Path) -> Path:
    """Screenshots go to $ORCHESTRATE_UI_SCREENSHOTS (for CI artefacts) or the test's tmp_path."""
    folder = Path(os.environ.get("ORCHESTRATE_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _proc_table() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, pgrp) of every process, from Linux /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
            table[int(entry)] = (fields[0], int(fields[1]), int(fields[2]))
    return table


def _process_groups(root: int) -> set[int]:
    """The process groups of `root` and all its descendants. `orchestrate ui` runs in the group
    start_new_session gave it, but starts `mlflow ui` in a new session of its own, whose group holds
    uvicorn's workers and MLflow's job consumers: every one of these groups must be ended."""
    table = _proc_table()
    tree, todo = {root}, [root]
    while todo:
        parent = todo.pop()
        for pid, (_, ppid, _) in table.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                todo.append(pid)
    groups = {table[pid][2] for pid in tree if pid in table} | {root}
    groups.discard(os.getpgrp())  # never our own (pytest's) group
    return groups


def _alive(groups: set[int]) -> set[int]:
    """Those of `groups` with a process still running (zombies waiting to be reaped do not count)."""
    return {pgrp for state, _, pgrp in _proc_table().values() if pgrp in groups and state != "Z"}


def _stop(proc: subprocess.Popen, groups: set[int]) -> set[int]:
    """End `orchestrate ui` and everything it started: SIGTERM to each process group, then SIGKILL
    to those still alive after a grace period. Returns the groups that survived even SIGKILL."""
    groups = groups | _process_groups(proc.pid)
    for group in groups:
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 20
    while _alive(groups) and time.monotonic() < deadline:
        if proc.poll() is None:
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.2)
    for group in _alive(groups):
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while _alive(groups) and time.monotonic() < deadline:
        time.sleep(0.2)  # SIGKILLed orphans are reaped by init
    return _alive(groups)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"`orchestrate ui` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"{url}/health not OK after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


@pytest.mark.browser
@pytest.mark.ray  # the ddp_sweep fixture runs a real Ray sweep
@pytest.mark.timeout(300, func_only=True)  # the test body only; the sweep fixture takes minutes on its own
def test_ui_shows_experiment_child_runs_val_acc_chart_and_the_registered_best_model(ddp_sweep, tmp_path):
    from playwright.sync_api import expect

    # What the UI must show, read from the store the real sweep wrote.
    client = ddp_sweep.client()
    experiment = client.get_experiment_by_name(ddp_sweep.experiment)
    trials = ddp_sweep.trials()
    assert len(trials) == 2, [t.info.run_name for t in trials]
    parents = {t.data.tags["mlflow.parentRunId"] for t in trials}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    trial = sorted(trials, key=lambda t: t.info.run_name)[0]
    val_acc_steps = client.get_metric_history(trial.info.run_id, "val_acc")
    assert len(val_acc_steps) >= 2, val_acc_steps  # a line, not a lone point
    shots = _shot_dir(tmp_path)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    t0 = time.monotonic()
    timings: list[str] = []

    def mark(what: str) -> None:
        timings.append(f"{what} {time.monotonic() - t0:.1f}s")

    wait = {"timeout": STEP_S * 1000}
    groups: set[int] = set()
    leftover: set[int] = set()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "ui", "--tracking-uri", ddp_sweep.uri, "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_healthy(url, proc, log)
        groups = _process_groups(proc.pid)  # now, while `mlflow ui` is still its child
        mark("healthy")
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(STEP_S * 1000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            try:
                # 1. The experiments list shows the sweep's experiment, linked to its page.
                page.goto(url + "/#/experiments", timeout=PAGE_S * 1000)
                link = page.locator(f'a[href*="experiments/{experiment.experiment_id}"]').filter(
                    has_text=ddp_sweep.experiment).first
                expect(link).to_be_visible(timeout=PAGE_S * 1000)  # the first load fetches the JS bundle
                mark("experiments list")
                _close_assistant(page)
                page.screenshot(path=shots / "1-experiments.png")

                # 2. Its training runs: the sweep's parent run, collapsed; expanding it shows both
                # child (trial) runs, each linked to its own run page.
                page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs")
                expect(page.get_by_role("link", name=ddp_sweep.experiment, exact=True).first).to_be_visible(**wait)
                parent_row = page.get_by_role("row").filter(has_text=parent.info.run_name)
                expect(parent_row.first).to_be_visible(**wait)
                _close_assistant(page)
                child_links = {t.info.run_name: page.locator(f'a[href$="/runs/{t.info.run_id}"]').first
                               for t in trials}
                if not child_links[trial.info.run_name].is_visible():
                    parent_row.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
                for name, child in child_links.items():
                    expect(child).to_be_visible(**wait)
                    expect(child).to_have_text(name, **wait)
                mark("runs table, children expanded")
                _widen_run_name_column(page)
                page.screenshot(path=shots / "2-runs.png")

                # 3. A child run's "Model metrics" tab: a chart card titled val_acc with a plotted
                # line, one marker per logged epoch, and this run in its legend.
                child_links[trial.info.run_name].click()
                expect(page.get_by_role("heading", name=trial.info.run_name, exact=True).first).to_be_visible(**wait)
                page.get_by_role("tab", name="Model metrics").first.click()
                # A dozen metrics: find the chart as a user would, by its name (charts further down
                # are only drawn when scrolled to).
                page.get_by_placeholder("Search metric charts").fill("val_acc")
                card = page.locator('[data-testid="experiment-view-compare-runs-card"]').filter(
                    has=page.locator('h4[title="val_acc"]'))
                expect(card).to_have_count(1, **wait)
                card.scroll_into_view_if_needed()
                expect(card.locator(".js-plotly-plot svg.main-svg").first).to_be_visible(**wait)
                line = card.locator(".scatterlayer .trace path.js-line").first
                expect(line).to_have_attribute("d", re.compile(r"^M[^L]+L"), **wait)  # at least one segment
                expect(card.locator(".scatterlayer .trace path.point")).to_have_count(len(val_acc_steps), **wait)
                expect(card.get_by_text(f"{trial.info.run_name} (val_acc)", exact=True)).to_be_visible(**wait)
                mark("val_acc chart")
                card.screenshot(path=shots / "3-val_acc-chart.png")
                page.screenshot(path=shots / "3-run-model-metrics.png")

                # 4. The Model Registry: the sweep's best model, version 1, carrying the alias `best`.
                version = client.get_model_version_by_alias(ddp_sweep.experiment, "best")
                page.goto(f"{url}/#/models/{ddp_sweep.experiment}")
                expect(page.get_by_text(ddp_sweep.experiment, exact=True).first).to_be_visible(**wait)
                row = page.get_by_role("row").filter(has_text=f"Version {version.version}")
                expect(row.first).to_be_visible(**wait)
                expect(row.first).to_contain_text(re.compile(r"@\s*best"), **wait)  # the alias chip
                mark("registered model with alias")
                page.screenshot(path=shots / "4-registered-model.png")

                # 5. The link the sweep's summary gives opens the comparison itself: MLflow's
                # compare-runs page of the sweep's trials (not the collapsed parent and an empty
                # chart view), their run names and val_acc side by side.
                link = re.search(r"Compare the trials there:\s+(\S+)", ddp_sweep.result.stdout)
                assert link, ddp_sweep.result.stdout[-2000:]
                assert link.group(1).startswith("http://127.0.0.1:5000/#/compare-runs?")  # `orchestrate ui`'s default
                page.goto(url + link.group(1)[len("http://127.0.0.1:5000"):])
                expect(page.get_by_text(f"Comparing {len(trials)} Runs from 1 Experiment").first).to_be_visible(**wait)
                for t in trials:
                    expect(page.get_by_text(t.info.run_name, exact=True).first).to_be_visible(**wait)
                expect(page.get_by_text("val_acc").first).to_be_visible(**wait)
                _close_assistant(page)
                mark("compare-runs page from the summary's link")
                page.screenshot(path=shots / "5-compare-runs.png")
                assert not errors, f"uncaught errors in the page: {errors}"
            except BaseException:
                try:
                    page.screenshot(path=shots / "failure.png")
                except Exception:  # noqa: BLE001 - keep the original failure
                    pass
                raise
    finally:
        leftover = _stop(proc, groups)
        print(f"screenshots in {shots}; timings: {', '.join(timings)}")
    assert not leftover, f"process groups {leftover} of `orchestrate ui` survived SIGKILL"


def _close_assistant(page) -> None:
    """Close the "MLflow Assistant" side panel (3.x) when it is open: it takes a third of the width.
    Cosmetic only (screenshots show more of the runs table)."""
    try:
        close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
        if close.count() and close.first.is_visible():
            close.first.click(timeout=5000)
    except Exception:  # noqa: BLE001 - only makes screenshots nicer
        pass


def _widen_run_name_column(page) -> None:
    """Autosize the (truncated) Run Name column so the screenshot shows full names. Cosmetic only."""
    try:
        header = page.locator('.ag-header-cell[col-id="attributes.`Run Name`"]')
        header.locator(".ag-header-cell-resize").first.dblclick(timeout=5000)
    except Exception:  # noqa: BLE001
        pass
