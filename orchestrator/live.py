"""The sweep's live trial view: one row per trial (name with its knobs and lr, status, epoch of
total, last and best val accuracy, img/s, elapsed), under a header of trials done / running /
pending and an ETA. On a terminal it is redrawn in place (rich's Live); when stdout is not a
terminal (CI, a log file, `| tee`) each event is one appended line instead.

The state is plain data (`TrialRow`, `ViewState`) fed by a Ray Tune callback, so rendering is
tested from a fixed state without Ray."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, TextIO

import ray.tune


@dataclasses.dataclass
class TrialRow:
    name: str  # <arch>-<knobs>-lr<lr>: the MLflow child run's name
    epochs: int
    status: str = "pending"  # pending | running | done | stopped | failed | infeasible
    epoch: int = 0
    val_acc: float | None = None
    best_val_acc: float | None = None
    imgs_per_s: float | None = None
    started: float | None = None  # time.time()
    ended: float | None = None
    epoch_s: list[float] = dataclasses.field(default_factory=list)

    def elapsed(self, now: float) -> float:
        return 0.0 if self.started is None else (self.ended or now) - self.started


@dataclasses.dataclass
class ViewState:
    rows: dict[str, TrialRow] = dataclasses.field(default_factory=dict)  # by trial id, in start order
    total: int = 0  # trials in the sweep (Tune creates them lazily, as slots free up)
    concurrency: int = 1
    started: float = dataclasses.field(default_factory=time.time)

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "running": 0, "pending": 0}
        for row in self.rows.values():
            key = "done" if row.status in ("done", "stopped", "failed", "infeasible") else row.status
            counts[key] = counts.get(key, 0) + 1
        counts["pending"] += max(0, self.total - len(self.rows))
        return counts

    def eta_s(self) -> float | None:
        """Remaining epochs x the mean epoch time so far / trials at a time; None before any epoch."""
        times = [t for row in self.rows.values() for t in row.epoch_s]
        if not times:
            return None
        left = sum(max(0, r.epochs - r.epoch) for r in self.rows.values() if r.status in ("pending", "running"))
        if self.total > len(self.rows) and self.rows:  # trials Tune has not created yet: average length
            left += (self.total - len(self.rows)) * sum(r.epochs for r in self.rows.values()) / len(self.rows)
        return left * (sum(times) / len(times)) / max(1, self.concurrency)


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _acc(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def header(state: ViewState, now: float) -> str:
    c = state.counts()
    return (f"trials: {c['done']} done, {c['running']} running, {c['pending']} pending  |  "
            f"elapsed {_seconds(now - state.started)}  |  ETA ~{_seconds(state.eta_s())}")


def table(state: ViewState, now: float):
    """The rich Table drawn on a terminal."""
    from rich.table import Table

    t = Table(title=header(state, now), title_justify="left", expand=False)
    for column, justify in (("trial", "left"), ("status", "left"), ("epoch", "right"), ("val_acc", "right"),
                            ("best", "right"), ("img/s", "right"), ("elapsed", "right")):
        t.add_column(column, justify=justify, no_wrap=column == "trial")
    for row in state.rows.values():
        t.add_row(row.name, row.status, f"{row.epoch}/{row.epochs}", _acc(row.val_acc), _acc(row.best_val_acc),
                  "-" if row.imgs_per_s is None else f"{row.imgs_per_s:.0f}", _seconds(row.elapsed(now)))
    return t


def screen(state: ViewState, now: float, notice: str | None = None):
    """What a terminal shows: the table, and under it `notice` (the tracking store unreachable)."""
    if notice is None:
        return table(state, now)
    from rich.console import Group
    from rich.text import Text

    return Group(table(state, now), Text(notice, style="bold yellow"))


def line(state: ViewState, row: TrialRow, event: str, now: float) -> str:
    """One appended line for a non-terminal: the event, the trial and its numbers so far."""
    c = state.counts()
    numbers = ""
    if row.epoch:
        numbers = (f"  epoch {row.epoch}/{row.epochs}  val_acc {_acc(row.val_acc)}  best {_acc(row.best_val_acc)}"
                   f"  {row.imgs_per_s or 0:.0f} img/s")
    parts = [f"[{_seconds(now - state.started):>6}] {row.name}", event, numbers.strip(),
             f"({c['done']} done, {c['running']} running, {c['pending']} pending; ETA ~{_seconds(state.eta_s())})"]
    return "  ".join(p for p in parts if p)


class LiveView(ray.tune.Callback):
    """Feeds ViewState from Tune's trial events and draws it. `describe(tune_trial)` gives a
    trial's display name and epoch count (from the sweep's Trial record)."""

    # Without a terminal, a notice that lasts is printed again this often (seconds).
    NOTICE_EVERY_S = 60.0

    def __init__(self, describe, total: int, concurrency: int, stream: TextIO | None = None, tty: bool | None = None,
                 notice: Callable[[], str | None] | None = None):
        """`notice()`: a line to show while it is not None (the tracking store unreachable, for how
        long), polled at each step of Tune's loop; on a terminal it is drawn under the table and
        goes when it is None again, else it is printed when it starts, every NOTICE_EVERY_S, and
        its end is said once."""
        self.describe, self.stream, self.notice = describe, stream or sys.stdout, notice
        self.tty = self.stream.isatty() if tty is None else tty
        self.state = ViewState(total=total, concurrency=concurrency)
        self._live = None
        self._shown: tuple[str | None, float] = (None, 0.0)  # the notice last shown, and when

    def __getstate__(self):  # pickled with Tune's experiment state: the drawing is not
        return {**self.__dict__, "_live": None, "stream": None}

    def __setstate__(self, state):
        self.__dict__.update(state, stream=sys.stdout)

    def _row(self, trial) -> TrialRow:
        if trial.trial_id not in self.state.rows:
            name, epochs = self.describe(trial)
            self.state.rows[trial.trial_id] = TrialRow(name, epochs)
        return self.state.rows[trial.trial_id]

    def _draw(self, now: float) -> None:
        if self._live is None:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(screen(self.state, now, self._shown[0]), console=Console(file=self.stream),
                              refresh_per_second=2, transient=False)
            self._live.start()
        self._live.update(screen(self.state, now, self._shown[0]))

    def _show(self, row: TrialRow, event: str) -> None:
        now = time.time()
        if self.tty:
            self._draw(now)
        else:
            print(line(self.state, row, event, now), file=self.stream, flush=True)

    def on_step_end(self, iteration, trials, **info):
        text = self.notice() if self.notice else None
        shown, at = self._shown
        if text == shown:
            return
        now = time.time()
        if self.tty:
            self._shown = (text, now)
            if self._live is not None or text:
                self._draw(now)
        elif text is None:
            self._shown = (None, now)
            print(f"[{_seconds(now - self.state.started):>6}] the tracking store answers again", file=self.stream,
                  flush=True)
        elif shown is None or now - at >= self.NOTICE_EVERY_S:
            self._shown = (text, now)
            print(f"[{_seconds(now - self.state.started):>6}] {text}", file=self.stream, flush=True)

    def on_trial_add(self, iteration, trials, trial, **info):
        self._row(trial)

    def on_trial_start(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.status, row.started = "running", row.started or time.time()
        self._show(row, "started")

    def on_trial_result(self, iteration, trials, trial, result: dict[str, Any], **info):
        row = self._row(trial)
        if result.get("infeasible"):  # runs.INFEASIBLE: priced over search.constraints, never trains
            row.status = "infeasible"
            return
        if "epoch" not in result:
            return
        if int(result["epoch"]) > row.epoch:
            row.epoch_s.append(float(result.get("epoch_s", 0.0)))
        row.status, row.epoch = "running", int(result["epoch"])
        row.val_acc, row.best_val_acc = result.get("val_acc"), result.get("best_val_acc")
        row.imgs_per_s = result.get("imgs_per_s")
        self._show(row, "")

    def on_trial_complete(self, iteration, trials, trial, **info):
        row = self._row(trial)
        if row.status != "infeasible":
            row.status = "done" if row.epoch >= row.epochs else "stopped"
        row.ended = time.time()
        self._show(row, row.status)

    def on_trial_error(self, iteration, trials, trial, **info):
        row = self._row(trial)
        row.status, row.ended = "failed", time.time()
        self._show(row, "failed")

    def on_experiment_end(self, trials, **info):
        if self._live is not None:
            self._live.update(table(self.state, time.time()))
            self._live.stop()
            self._live = None
