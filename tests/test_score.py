"""The challenge's score arithmetic, exactly as DESIGN defines it."""

import pytest

from exatrack.score import Measured, Unscorable, challenge_score


def measured(spt=0.01, judges=None, **scores):
    return Measured(scores, spt, judges or {})


def test_formula_on_known_numbers():
    base = measured(spt=0.010, kmmlu_pro=0.40, ko_longrag=0.60)
    run = measured(spt=0.008, kmmlu_pro=0.38, ko_longrag=0.57)
    s = challenge_score(run, base)
    assert s.perf == pytest.approx(0.475) and s.base_perf == pytest.approx(0.5)
    assert s.perf_norm == pytest.approx(0.95)
    assert s.speed_norm == pytest.approx(0.2)
    assert s.score == pytest.approx(0.5 * 0.95 + 0.5 * 0.2)


def test_the_base_against_itself_scores_one_half():
    base = measured(kmmlu_pro=0.4)
    assert challenge_score(base, base).score == pytest.approx(0.5)


def test_score_is_clamped_at_zero_for_a_much_slower_model():
    base = measured(spt=0.01, kmmlu_pro=0.4)
    slow = measured(spt=0.05, kmmlu_pro=0.4)  # SpeedNorm = -4, 0.5 * 1 + 0.5 * -4 < 0
    s = challenge_score(slow, base)
    assert s.speed_norm == pytest.approx(-4) and s.score == 0.0


def test_a_benchmark_missing_on_one_side_is_left_out_of_both():
    base = measured(kmmlu_pro=0.4, komt_bench=0.9, judges={"komt_bench": "gpt-4o"})
    run = measured(kmmlu_pro=0.2)  # no judge on this run
    s = challenge_score(run, base)
    assert s.benchmarks == ("kmmlu_pro",) and s.perf_norm == pytest.approx(0.5)


def test_a_benchmark_judged_by_different_judges_is_left_out():
    base = measured(kmmlu_pro=0.4, komt_bench=0.9, judges={"komt_bench": "gpt-4o"})
    run = measured(kmmlu_pro=0.4, komt_bench=0.3, judges={"komt_bench": "local-judge"})
    assert challenge_score(run, base).benchmarks == ("kmmlu_pro",)


@pytest.mark.parametrize(
    "run, base, says",
    [
        (measured(kmmlu_pro=0.4), measured(ko_longrag=0.5), "no benchmark was scored on both"),
        (measured(kmmlu_pro=0.4), measured(kmmlu_pro=0.0), "PerfNorm is undefined"),
        (measured(spt=0.0, kmmlu_pro=0.4), measured(kmmlu_pro=0.4), "no generation time"),
    ],
)
def test_unscorable_pairs_say_why(run, base, says):
    with pytest.raises(Unscorable, match=says):
        challenge_score(run, base)
