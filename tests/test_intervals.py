"""The leaderboard's intervals stay inside the metric's range, and say what more seeds would buy:
runs.interval and runs.seeds_to_separate against hand computations (scipy's t quantile, the
logit and log by hand), and on a leaderboard of hand-made results."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from orchestrator import runs
from orchestrator.runs import Status


def logit(p):
    return math.log(p / (1 - p))


def expit(x):
    return 1 / (1 + math.exp(-x))


def test_accuracy_interval_is_t_on_the_logit_scale_and_stays_below_one():
    values = [0.95, 0.97, 0.99]
    mean, std, low, high = runs.interval(values, "val_acc")
    # by hand: t(0.975, 2) = 4.303 on the logits, mapped back
    z = [logit(v) for v in values]
    zbar = sum(z) / 3
    sz = math.sqrt(sum((x - zbar) ** 2 for x in z) / 2)
    half = stats.t.ppf(0.975, 2) * sz / math.sqrt(3)
    assert mean == pytest.approx(0.97) and std == pytest.approx(0.02)
    assert (low, high) == pytest.approx((expit(zbar - half), expit(zbar + half)))
    assert 0 < low < mean < high < 1
    # the plain t interval this replaces reaches past 1 on the same runs
    assert 0.97 + stats.t.ppf(0.975, 2) * 0.02 / math.sqrt(3) > 1


def test_the_compare_fair_leader_of_the_issue_gets_an_interval_inside_the_range():
    # 0.9630 with a plain t interval of 0.9231-1.0028 (n = 3) in issue 23
    values = [0.9444, 0.9653, 0.9792]
    _, _, low, high = runs.interval(values, "val_acc")
    assert 0.85 < low < 0.9444 and 0.9792 < high < 1.0


def test_all_seeds_at_one_give_a_point_inside_the_range():
    mean, std, low, high = runs.interval([1.0, 1.0, 1.0], "val_acc")
    assert mean == 1.0 and std == 0.0 and low == high == pytest.approx(1 - runs.EDGE)


def test_loss_interval_is_on_the_log_scale_and_stays_positive():
    values = [0.05, 0.2, 0.6]
    _, _, low, high = runs.interval(values, "val_loss")
    logs = [math.log(v) for v in values]
    m = sum(logs) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in logs) / 2)
    half = stats.t.ppf(0.975, 2) * s / math.sqrt(3)
    assert (low, high) == pytest.approx((math.exp(m - half), math.exp(m + half)))
    assert low > 0


def test_one_run_has_no_interval():
    assert runs.interval([0.9], "val_acc") == (0.9, None, None, None)


def test_seeds_to_separate_is_the_first_n_where_the_intervals_part():
    a, b = [0.95, 0.96, 0.97], [0.93, 0.945, 0.95]
    n = runs.seeds_to_separate(a, b, "val_acc")
    za, zb = [logit(v) for v in a], [logit(v) for v in b]

    def sd(z):
        m = sum(z) / len(z)
        return math.sqrt(sum((x - m) ** 2 for x in z) / (len(z) - 1))

    gap = abs(sum(za) / 3 - sum(zb) / 3)
    halves = [stats.t.ppf(0.975, k - 1) * (sd(za) + sd(zb)) / math.sqrt(k) for k in range(2, 200)]
    expected = next(k for k, h in zip(range(2, 200), halves) if h < gap)
    assert n == expected and n > 3  # they overlap at 3 seeds, as the leaderboard says


def test_equal_means_are_never_separated():
    assert runs.seeds_to_separate([0.9, 0.92], [0.92, 0.9], "val_acc") is None
    assert runs.seeds_to_separate([0.9], [0.8, 0.85], "val_acc") is None


def _result(arch: str, entry: int, score: float, seed: int, phase: str = "seeds", hours: float = 0.01):
    return runs.Result(name=f"{arch}-lr0.1-seed{seed}", arch=arch, knobs="", lr=0.1, params=None, flops=None,
                       metric="val_acc", score=score, val_acc=score, val_loss=None, epoch=3, epochs=3,
                       epochs_planned=3, imgs_per_s=None, latency_ms=None, infer_imgs_per_s=None,
                       device_hours=hours, status=Status.COMPLETED, run_id=f"{arch}{seed}", error=None,
                       model_id="m", seed=seed, entry=entry, phase=phase)


def test_leaderboard_marks_a_tied_entry_with_the_seeds_and_hours_that_would_separate_it():
    results = ([_result("a", 0, s, i, hours=0.02) for i, s in enumerate([0.95, 0.96, 0.97])]
               + [_result("b", 1, s, i, hours=0.01) for i, s in enumerate([0.93, 0.945, 0.95])]
               + [_result("c", 2, s, i) for i, s in enumerate([0.50, 0.51, 0.52])])
    board = runs.leaderboard(results, "max")
    assert [s.arch for s in board] == ["a", "b", "c"]
    leader, tied, apart = board
    assert leader.leader and leader.seeds_to_separate is None
    need = runs.seeds_to_separate([0.95, 0.96, 0.97], [0.93, 0.945, 0.95], "val_acc")
    assert tied.tied and tied.seeds_to_separate == need
    assert tied.separate_device_hours == pytest.approx((need - 3) * 0.02 + (need - 3) * 0.01)
    assert not apart.tied and apart.seeds_to_separate is None
    for s in board:
        assert 0 <= s.low <= s.high <= 1
