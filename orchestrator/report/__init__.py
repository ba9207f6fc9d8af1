"""The sweep report: one self-contained HTML page that answers "which architecture should I ship".

    model    pure: the Pareto frontier, the plain answers, the page's content as typed records
             (`ReportData`), unit-tested without a store;
    queries  `collect(client, experiment, parent_run_id)` reads one sweep (or every sweep of an
             experiment) from MLflow into a ReportData; `publish` is what a sweep does when it
             ends (the page as the parent run's `report.html`, Tag.PARETO on the frontier runs);
    figures  matplotlib (Agg) SVGs inlined as data: images;
    page     `render(data)` -> HTML through a Jinja2 template with autoescape; `write` saves it.

`orchestrate report` only reads the store. (`orchestrator/tables.py` is the other output: the
trial table and leaderboard as text/CSV/JSON/markdown, and each run's own plots.)
"""

from orchestrator.report.model import (Answer, EntryView, Frontier, Provenance, ReportData, TrialPoint, answers,
                                       frontiers, labels_of, pareto_front)
from orchestrator.report.page import render, write
from orchestrator.report.queries import REPORT_FILE, collect, publish

__all__ = ["REPORT_FILE", "Answer", "EntryView", "Frontier", "Provenance", "ReportData", "TrialPoint", "answers",
           "collect", "frontiers", "labels_of", "pareto_front", "publish", "render", "write"]
