"""Issue 24: deciding between lanes, not only against the base. Two lanes of one session are compared
by the interval of their paired difference; lanes of two sessions fall back to overlapping intervals,
and say so; each lane's recovery per benchmark and its token ratio are on the board."""

import random
from types import SimpleNamespace

import pytest

from exatrack.core import stats
from exatrack.score import leaderboard, render
from exatrack.score.score import Measured, combine, paired_difference, paired_score, recovery

ROWS, UNITS = 300, 16


def session(seed: int = 0):
    """A base and two lanes that answered the same 300 rows and were timed on the same 16 units. The
    rows and units vary a lot (hard rows, a slow machine), shared by all three; lane B is lane A wrong on
    8 more rows, so every draw puts A ahead, while each lane's own interval is wide."""
    rng = random.Random(seed)
    base_items = [float(rng.random() < 0.6) for _ in range(ROWS)]
    a_items = [1.0 - x if rng.random() < 0.1 else x for x in base_items]
    right = [i for i, x in enumerate(a_items) if x == 1.0]
    b_items = list(a_items)
    for i in rng.sample(right, 8):
        b_items[i] = 0.0
    slow = [1 + 2 * rng.random() for _ in range(UNITS)]  # the machine's moments, shared by the three
    def chunks(per_token, noise):
        return [{"seconds": [per_token * 100 * s * (1 + noise * rng.random())], "tokens": 100} for s in slow]
    def lane(items, per_token, tokens):
        scores = {"kmmlu_redux": sum(items) / ROWS}
        return Measured(scores, 0.0, {}, {"kmmlu_redux": items}, {"kmmlu_redux": chunks(per_token, 0.05)},
                        {"kmmlu_redux": tokens})
    base = lane(base_items, 0.010, 30_000)
    first, second = lane(a_items, 0.008, 30_000), lane(b_items, 0.008, 362_000)  # B rambles
    for m in (base, first, second):  # the challenge's sec/token is what the chunks say
        object.__setattr__(m, "sec_per_token", sum(c["seconds"][0] for c in m.chunks["kmmlu_redux"]) / (100 * UNITS))
    return base, first, second


def test_two_lanes_tied_by_their_intervals_are_ranked_apart_by_their_paired_difference():
    base, first, second = session()
    a, b = paired_score(first, base), paired_score(second, base)
    assert a.score > b.score and b.score_ci.high >= a.score_ci.low  # the old rule: tied
    d = paired_difference(b, a)
    assert d.score_ci.high < 0 and d.score == pytest.approx(b.score - a.score)  # the paired one: B behind A
    # a direct computation: the same draws (same seeds, same sizes) for both lanes, differenced
    items, units = {"kmmlu_redux": ROWS}, {"kmmlu_redux": UNITS}
    direct = []
    for item_picks, unit_picks in zip(stats.resamples(items, stats.DRAWS, 0), stats.resamples(units, stats.DRAWS, 1)):
        score = lambda lane: combine(stats.perf_norm(lane.items, base.items, item_picks),  # noqa: E731
                                     1 - stats.speed_ratio(lane.chunks, base.chunks, unit_picks))
        direct.append(score(second) - score(first))
    assert (d.score_ci.low, d.score_ci.high) == pytest.approx(stats.percentile_interval(direct))


def entry(name, measured, base_run_id, base):
    run = SimpleNamespace(data=SimpleNamespace(tags={"exatrack.lane": name}, metrics={}), info=SimpleNamespace(run_id=name))
    return leaderboard.Entry(run, base_run_id, paired_score(measured, base), recovery=recovery(measured, base))


def test_the_board_pairs_lanes_of_the_leaders_session_and_falls_back_for_another_session_saying_so():
    base, first, second = session()
    # c: lane B's very numbers, but timed in another session (beside another run of the base)
    board = leaderboard.Board("f", "s", [entry("a", first, "s1", base), entry("b", second, "s1", base),
                                         entry("c", second, "s2", base)])
    leaderboard.mark_ties(board)
    by_name = {e.name: e for e in board.entries}
    assert board.leader.name == "a"
    assert by_name["b"].to_leader is not None and not by_name["b"].tied  # paired: behind the leader
    assert by_name["c"].to_leader is None and by_name["c"].tied  # nothing shared to pair on: overlap, tied
    table = render.markdown(board)
    assert render.OTHER_SESSION in table and "Δ to leader" in table
    row_b = next(line for line in table.splitlines() if line.startswith("| 2 | b |") or line.startswith("| 3 | b |"))
    assert f"{by_name['b'].to_leader.score:+.4f} [" in row_b


def test_recovery_per_benchmark_holds_the_score_ratio_with_its_interval_and_the_token_ratio():
    base, first, second = session()
    r = recovery(second, base)["kmmlu_redux"]
    assert r.ratio == pytest.approx(sum(second.items["kmmlu_redux"]) / sum(base.items["kmmlu_redux"]))
    assert r.ci.low <= r.ratio <= r.ci.high
    assert r.token_ratio == pytest.approx(362_000 / 30_000)  # rambling shows
    board = leaderboard.Board("f", "s", [entry("b", second, "s1", base)])
    csv = render.to_csv(board)
    assert "kmmlu_redux.recovery" in csv.splitlines()[0] and "12.07" in csv
    assert "recovery per benchmark" in render.markdown(board) and "(12.07x)" in render.markdown(board)
