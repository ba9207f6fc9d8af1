"""The sweep report: one self-contained HTML page that answers "which architecture should I ship".

    data    pure: the Pareto frontier (`pareto_front`), the plain answers (`answers`), the page's
            content as typed records (`ReportData`), unit-tested without a store;
    store   `collect(client, experiment, parent_run_id)` reads one sweep (or every sweep of an
            experiment) from MLflow into a ReportData, through runs.py's queries;
    page    `render(data)` -> HTML: figures drawn with matplotlib (Agg) as SVG and inlined as
            data: images, CSS in the page, no script, no font, nothing fetched when it is viewed
            (its Content-Security-Policy forbids it too). Every value from the store is escaped:
            run names, knobs and the sweep file are user data.

`publish` is what a sweep does when it ends: the page as the parent run's `report.html`, and the
tag Tag.PARETO=true on the runs the frontiers name, so the MLflow UI can filter them
(`tags.orchestrate.pareto = 'true'`). `orchestrate report` only reads the store.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime
import html
import io
import math
import os
import tempfile
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from orchestrator import reports, runs
from orchestrator.runs import Result, Standing, Tag
from orchestrator.schema import PHASE_SEEDS, better, mask, show

if TYPE_CHECKING:  # the callers hand in their client
    from mlflow import MlflowClient

REPORT_FILE = "report.html"  # the parent run's artefact

# "Fastest at >= 99% of the best accuracy", "smallest at >= 98%": how close to the best mean an
# entry must come to be named, as a share of the best (for a loss: within 1 - share above it).
NEAR_BEST_FOR_LATENCY = 0.99
NEAR_BEST_FOR_SIZE = 0.98

# The costs a frontier is drawn against: the Standing attribute, its axis label, its unit in prose.
COSTS = (("latency_ms", "batch-1 inference latency (ms)", "latency"),
         ("params", "parameters", "params"),
         ("flops", "FLOPs (one image at the sweep's size)", "FLOPs"))

SWEEP_FILE_CHARS = 200_000  # a longer sweep file is shown cut
DATE_FORMAT = "%Y-%m-%d %H:%M UTC"


# ---------------------------------------------------------------------------------------------
# Pure parts


def pareto_front(points: Sequence[tuple[float | None, float | None]], mode: str) -> list[int]:
    """Indices of the (cost, metric) points no other point dominates, cheapest first. Lower cost is
    better; a higher metric with mode `max`, a lower one with `min`. A point is dominated by one
    that is no worse in both and better in one, so equal points are all on the front. Points with
    a None are left out."""
    known = [i for i, (c, m) in enumerate(points) if c is not None and m is not None]
    sign = 1.0 if mode == "max" else -1.0
    front = []
    for i in known:
        ci, mi = points[i][0], sign * points[i][1]
        dominated = any(points[j][0] <= ci and sign * points[j][1] >= mi
                        and (points[j][0] < ci or sign * points[j][1] > mi) for j in known if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -sign * points[i][1], i))


@dataclasses.dataclass(frozen=True)
class Answer:
    """One plain-language answer: the question, the entry it names (an index into the page's
    entries, None when no entry qualifies) and the sentence with its numbers."""

    question: str
    entry: int | None
    text: str


def near_best(best: float, share: float, mode: str) -> float:
    """The value an entry's mean must reach to count as `share` of the best: share x best for a
    `max` metric; for a `min` one (a loss), at most (1 - share) above it."""
    return best * share if mode == "max" else best * (2.0 - share)


def describe_mean(s: Standing) -> str:
    """`0.912 ± 0.004, 95% interval 0.903-0.921, n=3`, or the one run's value."""
    if s.std is None:
        return f"{s.mean:.3f}, one run"
    text = f"{s.mean:.3f} ± {s.std:.3f}"
    if s.low is not None:
        text += f", 95% interval {s.low:.3f}-{s.high:.3f}"
    return text + f", n={s.n}"


def _share(share: float, mode: str, metric: str, level: float) -> str:
    if mode == "max":
        return f"at >= {share:.0%} of the best {metric} (>= {level:.3f})"
    return f"within {1 - share:.0%} of the best {metric} (<= {level:.3f})"


def answers(standings: Sequence[Standing], labels: Sequence[str], metric: str, mode: str) -> list[Answer]:
    """The page's plain answers, from the leaderboard (best first, as runs.leaderboard orders it):
    the best entry; the fastest at batch 1 among those near the best (NEAR_BEST_FOR_LATENCY); the
    smallest by parameters among those near the best (NEAR_BEST_FOR_SIZE); and which entries the
    seeds cannot tell apart from the best."""
    if not standings:
        return []
    best_i = 0
    best = standings[0]
    headline = f"most accurate ({metric})" if mode == "max" else f"lowest {metric}"
    out = [Answer(headline, best_i, f"{labels[best_i]} ({describe_mean(best)})")]
    for share, cost, question, unit in (
            (NEAR_BEST_FOR_LATENCY, "latency_ms", "fastest (batch-1 latency)", lambda v: f"{v:.2f} ms"),
            (NEAR_BEST_FOR_SIZE, "params", "smallest (params)", lambda v: f"{v / 1e6:.2f} M params")):
        level = near_best(best.mean, share, mode)
        question = f"{question} {_share(share, mode, metric, level)}"
        near = [i for i, s in enumerate(standings) if not better(level, s.mean, mode)]
        measured = [i for i in near if getattr(standings[i], cost) is not None]
        if not measured:
            out.append(Answer(question, None, f"no entry that reaches it has a measured {cost.split('_')[0]} "
                                              f"({len(near)} reach it)"))
            continue
        pick = min(measured, key=lambda i: (getattr(standings[i], cost), -standings[i].mean if mode == "max"
                                            else standings[i].mean, i))
        s = standings[pick]
        text = f"{labels[pick]} ({unit(getattr(s, cost))}; {metric} {s.mean:.3f})"
        if pick == best_i:
            text += ", the most accurate entry itself" if mode == "max" else ", the best entry itself"
        out.append(Answer(question, pick, text))
    question = "statistically tied with the best (95% intervals overlap)"
    if best.low is None:
        out.append(Answer(question, None, "not measured: the best entry has no seed runs (search.seeds >= 2 "
                                          "gives each entry an interval)"))
        return out
    others = range(1, len(standings))
    text = ", ".join(labels[i] for i in others if standings[i].tied) or "none"
    unjudged = [labels[i] for i in others if standings[i].low is None]
    if unjudged:
        text += f"; not measured for {', '.join(unjudged)} (fewer than 2 seed runs)"
    out.append(Answer(question, None, text))
    return out


@dataclasses.dataclass(frozen=True)
class TrialPoint:
    """One trial of an entry, for the lr / width response figures."""

    lr: float | None
    width: float | None
    score: float


@dataclasses.dataclass(frozen=True)
class EntryView:
    """One leaderboard row and what the figures need of its entry."""

    standing: Standing
    label: str  # its arch, with its entry index when the arch is in several entries
    family: str
    curve: tuple[tuple[int, float], ...]  # the metric per epoch of its best-ranked run with a model
    trials: tuple[TrialPoint, ...]
    search_trials: int
    seed_trials: int
    failed_trials: int


@dataclasses.dataclass(frozen=True)
class Frontier:
    cost: str  # a COSTS attribute of Standing
    members: tuple[int, ...]  # indices into the entries, cheapest first
    unmeasured: tuple[int, ...]  # entries without this cost (not drawn)


@dataclasses.dataclass(frozen=True)
class Provenance:
    sweeps: tuple[str, ...]  # "sweep-20261202-101010 (run id)"
    sweep_file_name: str | None
    sweep_file_text: str | None  # passwords masked
    train: tuple[tuple[str, str], ...]  # the parent's train.* params
    search: tuple[tuple[str, str], ...]  # its search.* params
    dataset: str | None
    dataset_digests: tuple[str, ...]
    git_commits: tuple[str, ...]
    versions: tuple[tuple[str, str], ...]  # (library, the versions the trials ran with)
    devices: tuple[str, ...]
    infer_devices: tuple[str, ...]
    started: str | None
    ended: str | None
    image_sizes: tuple[str, ...] = ()  # dataset.image_size of the trials (one, unless sweeps differ)


@dataclasses.dataclass(frozen=True)
class ReportData:
    experiment: str
    scope: str  # which sweep(s), in words
    metric: str
    mode: str
    entries: tuple[EntryView, ...]  # best first
    frontiers: tuple[Frontier, ...]
    answers: tuple[Answer, ...]
    provenance: Provenance
    statuses: tuple[tuple[str, int], ...]  # (status, trials)
    generated: str

    @property
    def empty(self) -> bool:
        return not self.entries

    def frontier_runs(self) -> list[str]:
        """The best run of every entry on any of the frontiers (the union), once each."""
        on = sorted({i for f in self.frontiers for i in f.members})
        return [self.entries[i].standing.best_run_id for i in on]

    def message(self) -> str:
        """What an empty report says: which sweep, and what became of its trials."""
        counts = ", ".join(f"{n} {status or 'unknown'}" for status, n in self.statuses) or "none recorded"
        return (f"experiment {show(self.experiment)}, {self.scope}: no trial completed with a model "
                f"(trials: {counts}); nothing to report")


def frontiers(standings: Sequence[Standing], mode: str) -> tuple[Frontier, ...]:
    out = []
    for cost, _, _ in COSTS:
        points = [(getattr(s, cost), s.mean) for s in standings]
        out.append(Frontier(cost, tuple(pareto_front(points, mode)),
                            tuple(i for i, (c, _) in enumerate(points) if c is None)))
    return tuple(out)


def labels_of(standings: Sequence[Standing]) -> list[str]:
    """Each entry's arch; `arch [entry]` where the arch names several entries."""
    counts = collections.Counter(s.arch for s in standings)
    return [s.arch if counts[s.arch] == 1 else f"{s.arch} [{s.entry}]" for s in standings]


# ---------------------------------------------------------------------------------------------
# From a store


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "None") else None
    except ValueError:
        return None


def _date(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime(DATE_FORMAT)


def _distinct(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if v}))


def _sweep_file(client: MlflowClient, parent) -> tuple[str | None, str | None]:
    """The sweep file's name and its text as the parent run holds it (uploaded masked; masked
    again here, in case a store predates that)."""
    path = parent.data.tags.get(Tag.SWEEP_FILE)
    if not path:
        return None, None
    name = os.path.basename(path)
    with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as tmp:
        try:
            local = client.download_artifacts(parent.info.run_id, name, tmp)
            with open(local, encoding="utf-8", errors="replace") as f:
                text = f.read(SWEEP_FILE_CHARS + 1)
        except Exception:  # noqa: BLE001 - a missing or unreadable artefact: the page says so
            return name, None
    if len(text) > SWEEP_FILE_CHARS:
        text = text[:SWEEP_FILE_CHARS] + f"\n... (cut at {SWEEP_FILE_CHARS} characters)"
    return name, mask(text)


def collect(client: MlflowClient, experiment_id: str, parent_run_id: str | None,
            trial_runs: list | None = None) -> ReportData:
    """The page's data for one sweep (its parent run), or for every sweep of the experiment
    (`parent_run_id` None: one row per arch, as `compare --all-sweeps --by arch`). `trial_runs`:
    that scope's trial runs, where the caller has them already."""
    experiment = client.get_experiment(experiment_id).name
    if trial_runs is None:
        trial_runs = runs.trial_runs(client, experiment_id, parent_run_id)
    metric, mode = runs.selection(client, parent_run_id, trial_runs)
    by_id = {r.info.run_id: r for r in trial_runs}
    results = runs.rank((runs.result(r, metric) for r in trial_runs), mode)
    by_arch = parent_run_id is None
    standings = runs.leaderboard(results, mode, by_arch=by_arch)
    if parent_run_id:
        parents = [client.get_run(parent_run_id)]
        scope = f"sweep run {parents[0].info.run_name} ({parent_run_id})"
    else:
        parents = runs.sweep_runs(client, experiment_id)
        scope = f"all {len(parents)} sweep(s)"
    labels = labels_of(standings)
    groups: dict[Any, list[Result]] = {}
    for r in results:
        groups.setdefault(runs.entry_key(r, by_arch), []).append(r)
    entries = []
    for s, label in zip(standings, labels):
        rs = groups[s.entry]
        # One metric's history (step = epoch), not runs.history's every metric: a call per entry.
        curve = tuple(sorted((int(m.step), float(m.value)) for m in client.get_metric_history(s.best_run_id, metric)))
        points = tuple(TrialPoint(r.lr, _number(by_id[r.run_id].data.params.get("knobs.width")), r.score)
                       for r in rs if r.has_model and r.score is not None)
        family = by_id[s.best_run_id].data.tags.get(Tag.FAMILY, s.arch)
        entries.append(EntryView(
            s, label, family, curve, points,
            search_trials=sum(r.phase != PHASE_SEEDS for r in rs), seed_trials=sum(r.phase == PHASE_SEEDS for r in rs),
            failed_trials=sum(not r.has_model for r in rs)))
    statuses = collections.Counter(r.status for r in results)
    return ReportData(
        experiment=experiment, scope=scope, metric=metric, mode=mode, entries=tuple(entries),
        frontiers=frontiers(standings, mode), answers=tuple(answers(standings, labels, metric, mode)),
        provenance=read_provenance(client, parents, trial_runs), statuses=tuple(sorted(statuses.items())),
        generated=datetime.datetime.now(datetime.timezone.utc).strftime(DATE_FORMAT))


def read_provenance(client: MlflowClient, parents: list, trial_runs: list) -> Provenance:
    latest = parents[0] if parents else None  # newest first
    params = latest.data.params if latest else {}
    name, text = _sweep_file(client, latest) if latest else (None, None)

    def section(prefix: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted((k[len(prefix):], v) for k, v in params.items() if k.startswith(prefix)))

    child = [r.data.params for r in trial_runs]
    return Provenance(
        sweeps=tuple(f"{p.info.run_name} ({p.info.run_id})" for p in parents),
        sweep_file_name=name, sweep_file_text=text, train=section("train."), search=section("search."),
        dataset=params.get("dataset.name") or next((p["dataset.name"] for p in child if "dataset.name" in p), None),
        image_sizes=_distinct(p.get("dataset.image_size") for p in child),
        dataset_digests=_distinct(p.get("dataset_digest") for p in child),
        git_commits=_distinct([p.data.tags.get("mlflow.source.git.commit") for p in parents]
                              + [r.data.tags.get("mlflow.source.git.commit") for r in trial_runs]),
        versions=tuple((k.split("_")[0], ", ".join(_distinct(p.get(k) for p in child))) for k in runs.LIBRARY_VERSIONS
                       if any(p.get(k) for p in child)),
        devices=_distinct(p.get("device_name") for p in child),
        infer_devices=_distinct(p.get("infer_device") for p in child),
        started=_date(min((p.info.start_time for p in parents if p.info.start_time), default=None)),
        ended=_date(max((p.info.end_time for p in parents if p.info.end_time), default=None)))


def publish(client: MlflowClient, experiment_id: str, parent_run_id: str) -> ReportData:
    """At a sweep's end: the report as the parent run's `report.html` (a page saying so when no
    trial completed), and Tag.PARETO=true on the frontier runs (taken off runs of this sweep that
    a resumed sweep's frontier no longer names)."""
    trial_runs = runs.trial_runs(client, experiment_id, parent_run_id)
    data = collect(client, experiment_id, parent_run_id, trial_runs)
    # The sweep ends as its report is written (the parent run is marked finished just after).
    data = dataclasses.replace(data, provenance=dataclasses.replace(data.provenance, ended=data.generated))
    with tempfile.TemporaryDirectory(prefix="orchestrate-report-") as tmp:
        client.log_artifact(parent_run_id, write(data, os.path.join(tmp, REPORT_FILE)))
    on = set(data.frontier_runs())
    for run in trial_runs:
        if run.info.run_id in on:
            client.set_tag(run.info.run_id, Tag.PARETO, "true")
        elif run.data.tags.get(Tag.PARETO):
            client.delete_tag(run.info.run_id, Tag.PARETO)
    return data


# ---------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg; each an inline SVG image)

FRONT_COLOUR, OFF_COLOUR = "#1f5fbf", "#b0b0b0"
ACCURACIES = ("val_acc", "val_top5", "train_acc", "best_val_acc")  # metrics that live in [0, 1]


def _svg_uri(fig) -> str:
    plt = reports._pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # text as paths: no font needed to view it
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_if_wide(ax, values: Sequence[float]) -> None:
    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > 10:
        _log_axis(ax)


def _log_axis(ax) -> None:
    """A log x axis labelled 0.01, 0.02, 0.05, 0.1 ... (not 2x10^-2), without minor labels."""
    from matplotlib import ticker

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _metric_label(data: ReportData) -> str:
    return f"{data.metric} ({'higher' if data.mode == 'max' else 'lower'} is better)"


def plot_frontier(data: ReportData, frontier: Frontier) -> str:
    plt = reports._pyplot()
    cost, axis_label, _ = next(c for c in COSTS if c[0] == frontier.cost)
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    ax.margins(x=0.1, y=0.08)
    drawn = [i for i in range(len(data.entries)) if i not in frontier.unmeasured]
    scale = 1e6 if cost in ("params", "flops") else 1.0
    rightmost = max((getattr(data.entries[i].standing, cost) / scale for i in drawn), default=0.0)
    for i in drawn:
        s = data.entries[i].standing
        on = i in frontier.members
        x = getattr(s, cost) / scale
        yerr = [[s.mean - s.low], [s.high - s.mean]] if s.low is not None else None
        ax.errorbar(x, s.mean, yerr=yerr, fmt="o", color=FRONT_COLOUR if on else OFF_COLOUR, ecolor=(
            FRONT_COLOUR if on else OFF_COLOUR), elinewidth=1, capsize=3, markersize=6, zorder=3 if on else 2)
        right = x >= rightmost and len(drawn) > 1  # its label to the left, inside the axes
        ax.annotate(data.entries[i].label, (x, s.mean), xytext=(-5 if right else 5, 4), textcoords="offset points",
                    fontsize=8, ha="right" if right else "left", color="#222222" if on else "#888888")
    front = [data.entries[i].standing for i in frontier.members]
    if len(front) > 1:
        ax.step([getattr(s, cost) / scale for s in front], [s.mean for s in front], where="post",
                color=FRONT_COLOUR, linewidth=1.2, alpha=0.8, zorder=1, label="Pareto frontier")
        ax.legend(fontsize=8, loc="best")
    _log_if_wide(ax, [getattr(data.entries[i].standing, cost) / scale for i in drawn])
    unit = " (millions)" if scale != 1.0 else ""
    ax.set(xlabel=axis_label + unit, ylabel=_metric_label(data))
    if data.metric in ACCURACIES:  # a 95% interval of two seeds can reach past 0 or 1: the axis does not
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, -0.02), min(high, 1.02))
    ax.grid(alpha=0.3)
    _margins(fig)
    return _svg_uri(fig)


def _margins(fig) -> None:
    """Fixed margins in inches (tick labels, axis labels, a panel title): tight_layout would
    measure every text and double the drawing time."""
    width_in, height_in = fig.get_size_inches()
    rows = len({ax.get_subplotspec().rowspan.start for ax in fig.axes if ax.get_visible()}) or 1
    fig.subplots_adjust(left=0.75 / width_in, right=1 - 0.15 / width_in, bottom=0.55 / height_in,
                        top=1 - 0.3 / height_in, wspace=0.4, hspace=0.9 / (height_in / rows))


def _family_panels(data: ReportData, shown: Sequence[int], draw, xlabel: str, log_x: bool = False) -> str | None:
    """A figure with a panel per family holding any of the `shown` entries, `draw(ax, entry)`
    drawing each entry in its family's panel; None when no entry is shown."""
    families: dict[str, list[int]] = {}
    for i in shown:
        families.setdefault(data.entries[i].family, []).append(i)
    if not families:
        return None
    plt = reports._pyplot()
    cols = min(4, len(families))
    rows = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(families):]:
        ax.set_visible(False)
    for ax, (family, ix) in zip(flat, sorted(families.items())):
        for i in ix:
            draw(ax, data.entries[i])
        if log_x:
            _log_axis(ax)
        ax.set_title(family, fontsize=10)
        ax.set(xlabel=xlabel, ylabel=data.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _margins(fig)
    return _svg_uri(fig)


def plot_curves(data: ReportData) -> str | None:
    """Each entry's best run's metric per epoch, a panel per family."""
    def draw(ax, e: EntryView):
        ax.plot([p[0] for p in e.curve], [p[1] for p in e.curve], marker="o", markersize=3, label=e.label)

    return _family_panels(data, [i for i, e in enumerate(data.entries) if e.curve], draw, "epoch")


def plot_response(data: ReportData, knob: str) -> str | None:
    """Each entry's trials: the metric against lr (log axis), or against the width knob, for the
    entries whose trials tried more than one value; a panel per family. None when none did."""
    def value(t: TrialPoint):
        return t.lr if knob == "lr" else t.width

    def draw(ax, e: EntryView):
        shown = [t for t in e.trials if value(t) is not None]
        ax.scatter([value(t) for t in shown], [t.score for t in shown], s=18, label=e.label, alpha=0.85)

    varied = [i for i, e in enumerate(data.entries) if len({value(t) for t in e.trials if value(t) is not None}) > 1]
    return _family_panels(data, varied, draw, "learning rate" if knob == "lr" else "width", log_x=knob == "lr")


# ---------------------------------------------------------------------------------------------
# The page

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #e3e3e3;padding-bottom:4px}
.scope{color:#555;margin:0 0 18px}.note{color:#666;font-size:13px}
ul.answers{padding-left:20px}ul.answers li{margin:6px 0}.q{color:#555}
div.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:13px}th,td{padding:5px 7px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f3f5f8;position:sticky;top:0}td.t,th.t{text-align:left}td.wrap{white-space:normal;min-width:110px}tr.leader td{background:#eef5ff;font-weight:600}
.badge{display:inline-block;font-size:11px;padding:1px 6px;border-radius:9px;background:#dfe8f7;color:#1f4f99}
.badge.leader{background:#1f5fbf;color:#fff}
.figures{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:14px}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:13px;color:#444;margin-top:4px}
dl{display:grid;grid-template-columns:220px 1fr;gap:4px 14px;font-size:14px}dt{color:#555}dd{margin:0;word-break:break-all}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px;max-height:480px}
.empty{padding:20px;background:#fff6e5;border:1px solid #f0d9a8}
"""
# No script, nothing fetched: images are data: URIs, the style is in the page.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _page(title: str, body: str) -> str:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")


def _leaderboard(data: ReportData) -> str:
    on_front: dict[int, list[str]] = {}
    for f in data.frontiers:
        for i in f.members:
            on_front.setdefault(i, []).append(next(c[2] for c in COSTS if c[0] == f.cost))
    head = ("<tr><th class=t></th><th class=t>arch</th><th class=t>best configuration</th>"
            f"<th>{_e(data.metric)} mean ± std</th><th>95% interval</th><th>n</th><th>params</th><th>FLOPs</th>"
            "<th>latency (ms)</th><th>img/s</th><th>device-h</th><th>trials</th>"
            "<th class=t>frontier</th></tr>")
    rows = []
    for i, e in enumerate(data.entries):
        s = e.standing
        badge = ('<span class="badge leader">leader</span>' if s.leader else
                 '<span class="badge">tied</span>' if s.tied else "")
        mean = _num(s.mean, "{:.4f}") + (f" ± {s.std:.4f}" if s.std is not None else "")
        interval = f"{s.low:.4f} – {s.high:.4f}" if s.low is not None else "-"
        trials = f"{e.search_trials}" + (f" + {e.seed_trials} seeds" if e.seed_trials else "")
        rows.append(
            f'<tr class="entry{" leader" if s.leader else ""}"><td class=t>{badge}</td><td class=t>{_e(e.label)}</td>'
            f"<td class='t wrap'>{_e(s.config)}</td><td>{mean}</td><td>{interval}</td><td>{s.n}</td>"
            f'<td>{_num(s.params and s.params / 1e6, "{:.2f} M")}</td><td>{_num(s.flops and s.flops / 1e6, "{:.0f} M")}</td>'
            f'<td>{_num(s.latency_ms, "{:.2f}")}</td><td>{_num(s.infer_imgs_per_s, "{:,.0f}")}</td>'
            f'<td>{s.device_hours:.4f}</td><td>{_e(trials)}</td><td class="t wrap">{_e(", ".join(on_front.get(i, [])))}</td></tr>')
    return f'<div class=scroll><table id="leaderboard-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def _figure(uri: str | None, alt: str, caption: str, fig_id: str, instead: str = "") -> str:
    """An inline figure with its caption (HTML), or the note `instead` when there is none."""
    if uri is None:
        return f'<p class="note" id="{fig_id}">{instead}</p>'
    return (f'<figure id="{fig_id}"><img src="{uri}" alt="{_e(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _frontier_caption(data: ReportData, f: Frontier) -> str:
    names = ", ".join(f'<span class="member">{_e(data.entries[i].label)}</span>' for i in f.members) or "none"
    text = f'<span class="frontier" data-cost="{_e(f.cost)}">Pareto frontier (cheapest first): {names}</span>'
    if f.unmeasured:
        text += ". Not measured, not drawn: " + ", ".join(_e(data.entries[i].label) for i in f.unmeasured)
    return text


def _pairs(items: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{_e(k)}={_e(v)}" for k, v in items) or "-"


def _provenance(data: ReportData) -> str:
    p = data.provenance
    budget = "; ".join(f"{_e(e.label)}: {e.search_trials} search" + (f" + {e.seed_trials} seed" if e.seed_trials
                                                                        else "") + " trial(s)"
                       + (f" ({e.failed_trials} without a model)" if e.failed_trials else "") for e in data.entries)
    digests = ", ".join(_e(d) for d in p.dataset_digests) or "not recorded"
    if len(p.dataset_digests) > 1:
        digests += " <strong>(the trials saw different data)</strong>"
    rows = [("sweep(s)", ", ".join(_e(s) for s in p.sweeps) or "-"),
            ("sweep file" + (" (the latest sweep's)" if len(p.sweeps) > 1 else ""),
             _e(p.sweep_file_name or "not recorded")),
            ("train recipe", _pairs(p.train)),
            ("search", _pairs(p.search)),
            ("budget per entry", budget or "-"),
            ("dataset", _e(p.dataset or "not recorded")),
            # Runs from before dataset.image_size existed trained at 32x32.
            ("image size", ", ".join(f"{_e(s)}x{_e(s)}" for s in p.image_sizes) or "32x32"),
            ("dataset content digest", digests),
            ("git commit", ", ".join(_e(c) for c in p.git_commits) or "not recorded (sweep file not in a git checkout)"),
            ("library versions", _pairs(p.versions)),
            ("training device", ", ".join(_e(d) for d in p.devices) or "not recorded"),
            ("inference measured on", ", ".join(_e(d) for d in p.infer_devices) or "not recorded"),
            ("sweep started / ended", f"{_e(p.started or '-')} / {_e(p.ended or 'not finished')}"),
            ("report generated", _e(data.generated))]
    body = "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"
    if p.sweep_file_text is not None:
        body += (f"<details open><summary>{_e(p.sweep_file_name)} (passwords masked)</summary>"
                 f"<pre>{_e(p.sweep_file_text)}</pre></details>")
    return body


def render(data: ReportData) -> str:
    """The whole page. Every value that came from the store goes through html.escape."""
    title = f"Sweep report: {data.experiment}"
    head = f"<h1>Which architecture to ship? {_e(data.experiment)}</h1><p class=scope>{_e(data.scope)}</p>"
    if data.empty:
        return _page(title, head + f'<p class="empty" id="empty">{_e(data.message())}.</p>'
                     + '<h2>Provenance</h2>' + _provenance(data))
    direction = "higher" if data.mode == "max" else "lower"
    answers = "".join(f'<li><span class=q>{_e(a.question)}:</span> <strong>{_e(a.text)}</strong></li>'
                      for a in data.answers)
    seeds_note = ("mean ± sample std over the best configuration's seed runs, 95% Student-t interval of the mean; "
                  if any(e.standing.n > 1 for e in data.entries) else
                  "one run per entry (no seed runs: set search.seeds >= 2 for a spread and an interval); ")
    figures = "".join(
        _figure(plot_frontier(data, f), f"{data.metric} vs {label}", _frontier_caption(data, f), f"frontier-{f.cost}")
        for f, (_, label, _) in zip(data.frontiers, COSTS))
    curves = _figure(plot_curves(data), "validation curves",
                     f"{_e(data.metric)} per epoch of each entry's best run, a panel per family", "curves",
                     "No per-epoch metrics recorded.")
    single = [f"{_e(e.label)} ({e.trials[0].lr:g})" for e in data.entries
              if len({t.lr for t in e.trials}) == 1 and e.trials[0].lr is not None]
    lr = _figure(plot_response(data, "lr"), "learning-rate response",
                 f"{_e(data.metric)} of each trial with a model against its learning rate, a panel per family"
                 + (f". Trained at one learning rate, not drawn: {', '.join(single)}" if single else ""),
                 "response-lr", "No entry tried more than one learning rate"
                 + (f": {', '.join(single)}." if single else "."))
    width = _figure(plot_response(data, "width"), "width response",
                    f"{_e(data.metric)} of each trial with a model against its width knob, a panel per family",
                    "response-width", "No entry varied its width knob.")
    body = (
        head
        + f'<section id="answers"><h2>Answers</h2><ul class="answers">{answers}</ul>'
        + f'<p class="note">By {_e(data.metric)} ({direction} is better) over each entry\'s best configuration. '
          f"Near-best thresholds: {NEAR_BEST_FOR_LATENCY:.0%} (latency) and {NEAR_BEST_FOR_SIZE:.0%} (size) "
          f"of the best mean. Latency: median at batch 1 on the trial's own device.</p></section>"
        + '<section id="leaderboard"><h2>Leaderboard</h2>' + _leaderboard(data)
        + f'<p class="note">One row per model entry, best first: {seeds_note}leader and the entries whose interval '
          f"overlaps it marked. Latency: batch 1, median; img/s: inference throughput at a large batch; both of the "
          f"deployed model on the trial's own device. Device-hours over all the entry's trials; frontier: the Pareto "
          f"frontiers (below) the entry is on.</p></section>"
        + f'<section id="frontiers"><h2>{_e(data.metric)} vs cost</h2><p class="note">One point per entry '
          f"(its leaderboard mean; bars: 95% interval where there are seeds). Blue: on the Pareto frontier ({direction} "
          f"{_e(data.metric)} and lower cost); grey: dominated. The runs of the frontier entries (their best runs, "
          f"on any of the three) carry the MLflow tag {_e(Tag.PARETO)}=true.</p>"
          f'<div class="figures">{figures}</div></section>'
        + f'<section id="curves-section"><h2>Validation curves</h2>{curves}</section>'
        + f'<section id="response"><h2>Learning rate and width</h2>{lr}{width}</section>'
        + '<section id="provenance"><h2>Provenance</h2>' + _provenance(data) + "</section>")
    return _page(title, body)


def write(data: ReportData, path: str) -> str:
    """The page at `path`, written whole or not at all; its absolute path."""
    path = os.path.abspath(path)
    page = render(data)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
