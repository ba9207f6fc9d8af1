"""The sweep's live trial view, rendered from a fixed state: a table redrawn in place on a
terminal, one appended line per event otherwise. No Ray run needed."""

from __future__ import annotations

import io

from orchestrator.live import LiveView, TrialRow, ViewState, header, line, table


def fixed_state(now: float) -> ViewState:
    state = ViewState(total=4, concurrency=2, started=now - 75)
    state.rows["a"] = TrialRow("resnet18-width0.125-lr0.1", epochs=3, status="done", epoch=3, val_acc=0.8958,
                               best_val_acc=0.9013, imgs_per_s=1123.4, started=now - 70, ended=now - 40,
                               epoch_s=[4.0, 4.0, 4.0])
    state.rows["b"] = TrialRow("shufflenet_v1-groups3-width0.25-lr0.003", epochs=5, status="running", epoch=2,
                               val_acc=0.71, best_val_acc=0.71, imgs_per_s=300.0, started=now - 30, epoch_s=[6.0, 6.0])
    return state


def test_the_header_counts_done_running_and_not_yet_created_trials_with_an_eta():
    now = 1_000_000.0
    state = fixed_state(now)
    # left: 3 epochs of b, and 2 trials Tune has not created yet at the mean of 4 epochs -> 11
    # epochs x 4.8 s mean / 2 at a time = 26.4 s
    assert header(state, now) == "trials: 1 done, 1 running, 2 pending  |  elapsed 1m15s  |  ETA ~26s"


def test_the_terminal_table_has_a_row_per_trial_with_knobs_lr_epoch_of_total_and_accuracy():
    from rich.console import Console

    now = 1_000_000.0
    console = Console(file=io.StringIO(), width=160, record=True)
    console.print(table(fixed_state(now), now))
    text = console.export_text()
    assert "trials: 1 done, 1 running, 2 pending" in text
    for fragment in ("trial", "status", "epoch", "val_acc", "best", "img/s", "elapsed"):
        assert fragment in text
    row = next(ln for ln in text.splitlines() if "shufflenet_v1-groups3-width0.25-lr0.003" in ln)
    assert all(f in row for f in ("running", "2/5", "0.7100", "300", "30s")), row
    row = next(ln for ln in text.splitlines() if "resnet18-width0.125-lr0.1" in ln)
    assert all(f in row for f in ("done", "3/3", "0.8958", "0.9013", "1123", "30s")), row


def test_without_a_terminal_each_event_is_one_plain_line():
    now = 1_000_000.0
    state = fixed_state(now)
    text = line(state, state.rows["b"], "", now)
    assert text == ("[ 1m15s] shufflenet_v1-groups3-width0.25-lr0.003  epoch 2/5  val_acc 0.7100  best 0.7100  "
                    "300 img/s  (1 done, 1 running, 2 pending; ETA ~26s)")
    assert "\x1b" not in text


class FakeTrial:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_the_callback_appends_lines_when_stdout_is_not_a_terminal():
    out = io.StringIO()
    view = LiveView(lambda t: (f"net-lr{t.trial_id}", 2), total=1, concurrency=1, stream=out)
    assert view.tty is False
    trial = FakeTrial("0.1")
    view.on_trial_start(0, [], trial)
    view.on_trial_result(0, [], trial, {"epoch": 1, "val_acc": 0.5, "best_val_acc": 0.5, "imgs_per_s": 10.0,
                                        "epoch_s": 1.0})
    view.on_trial_result(0, [], trial, {"epoch": 2, "val_acc": 0.75, "best_val_acc": 0.75, "imgs_per_s": 10.0,
                                        "epoch_s": 1.0})
    view.on_trial_complete(0, [], trial)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and "net-lr0.1  started" in lines[0] and "net-lr0.1  done  epoch 2/2" in lines[3]
    assert "(1 done, 0 running, 0 pending" in lines[3]
