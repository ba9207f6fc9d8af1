"""The summary's MLflow UI link (runs.compare_url): the compare-runs page of a sweep's trials, on
the tracking server itself or on `orchestrate ui`'s default address, never with credentials. (The
page it opens is checked in headless Chromium by test_ui.py.)"""

import json
from urllib.parse import parse_qs, urlsplit

from orchestrator import runs


def _query(url):
    return {k: json.loads(v[0]) for k, v in parse_qs(urlsplit(url).fragment.split("?", 1)[1]).items()}


def test_a_local_store_links_to_orchestrate_uis_default_address():
    url = runs.compare_url("sqlite:///mlflow.db", "7", ["a", "b"])
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?")
    assert _query(url) == {"runs": ["a", "b"], "experiments": ["7"]}


def test_a_tracking_server_links_to_its_own_ui_without_credentials():
    url = runs.compare_url("http://me:s3cret@mlflow.internal:8080/", "1", ["a"])
    assert url.startswith("http://mlflow.internal:8080/#/compare-runs?") and "s3cret" not in url and "@" not in url


def test_at_most_the_best_hundred_runs_are_in_one_link():
    ids = [f"run{i}" for i in range(250)]
    assert _query(runs.compare_url("sqlite:///x.db", "1", ids))["runs"] == ids[:runs.COMPARE_MAX_RUNS]
