"""The challenge's score arithmetic, exactly as DESIGN defines it."""

import random

import pytest

from exatrack.score.score import Measured, Unscorable, challenge_score, paired_score


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


def test_a_benchmark_neither_side_could_score_is_left_out_of_both():
    base = measured(kmmlu_pro=0.4)  # no judge configured anywhere: KoMT-Bench has no score on either side
    run = measured(kmmlu_pro=0.2)
    s = challenge_score(run, base)
    assert s.benchmarks == ("kmmlu_pro",) and s.perf_norm == pytest.approx(0.5)


def test_a_run_lacking_a_benchmark_its_base_has_is_unscored_never_scored_on_fewer():
    base = measured(kmmlu_pro=0.4, komt_bench=0.9, judges={"komt_bench": "gpt-4o"})
    run = measured(kmmlu_pro=0.2)  # the judge failed on this run only
    with pytest.raises(Unscorable, match="komt_bench has a score on the base but not on the run"):
        challenge_score(run, base)
    with pytest.raises(Unscorable, match="komt_bench has a score on the run but not on the base"):
        challenge_score(base, run)


def test_a_benchmark_judged_by_different_judges_is_unscored():
    base = measured(kmmlu_pro=0.4, komt_bench=0.9, judges={"komt_bench": "gpt-4o"})
    run = measured(kmmlu_pro=0.4, komt_bench=0.3, judges={"komt_bench": "local-judge"})
    with pytest.raises(Unscorable, match="komt_bench was judged by local-judge on the run and gpt-4o on the base"):
        challenge_score(run, base)


@pytest.mark.parametrize(
    "run, base, says",
    [
        (measured(), measured(), "no benchmark was scored"),
        (measured(kmmlu_pro=0.4), measured(kmmlu_pro=0.0), "PerfNorm is undefined"),
        (measured(spt=0.0, kmmlu_pro=0.4), measured(kmmlu_pro=0.4), "no generation time"),
    ],
)
def test_unscorable_pairs_say_why(run, base, says):
    with pytest.raises(Unscorable, match=says):
        challenge_score(run, base)


# --- intervals ---------------------------------------------------------------------------------

def paired(seed: int, n_items: int = 40, n_chunks: int = 30, slowdown: float = 1.0, wrong: float = 0.0):
    """A candidate and its base that answered the same rows and ran the same chunks side by side."""
    rng = random.Random(seed)
    base_items = [float(rng.random() < 0.6) for _ in range(n_items)]
    items = [0.0 if rng.random() < wrong else v for v in base_items]
    base_chunks, chunks = [], []
    for _ in range(n_chunks):
        moment = 1 + rng.expovariate(5)  # a slow moment of the machine slows both sides of the chunk
        tokens = rng.randrange(50, 150)
        base_chunks.append({"seconds": [0.01 * tokens * moment * (1 + rng.expovariate(20))], "tokens": tokens})
        chunks.append({"seconds": [0.01 * slowdown * tokens * moment * (1 + rng.expovariate(20))], "tokens": tokens})
    candidate = Measured({"kmmlu_pro": sum(items) / n_items}, sum(c["seconds"][0] for c in chunks) / sum(c["tokens"] for c in chunks),
                         {}, {"kmmlu_pro": items}, {"kmmlu_pro": chunks})
    base = Measured({"kmmlu_pro": sum(base_items) / n_items},
                    sum(c["seconds"][0] for c in base_chunks) / sum(c["tokens"] for c in base_chunks), {},
                    {"kmmlu_pro": base_items}, {"kmmlu_pro": base_chunks})
    return candidate, base


def test_the_paired_point_estimate_is_the_challenge_formula():
    candidate, base = paired(0, slowdown=0.8, wrong=0.1)
    assert paired_score(candidate, base).score == pytest.approx(challenge_score(candidate, base).score)


def test_intervals_match_scipy_bootstrap_on_fixed_data():
    """The same statistic, resampled by scipy (percentile method, paired): the endpoints agree to
    within the Monte-Carlo error of 20,000 draws."""
    scipy_stats = pytest.importorskip("scipy.stats")
    import numpy as np

    candidate, base = paired(1, slowdown=0.9, wrong=0.15)
    ours = paired_score(candidate, base, draws=20_000)
    c_items, b_items = np.array(candidate.items["kmmlu_pro"]), np.array(base.items["kmmlu_pro"])
    reference = scipy_stats.bootstrap((c_items, b_items), lambda c, b, axis=-1: c.mean(axis) / b.mean(axis), paired=True,
                                      vectorized=True, n_resamples=20_000, method="percentile", random_state=0).confidence_interval
    assert ours.perf_norm_ci.low == pytest.approx(reference.low, abs=0.01)
    assert ours.perf_norm_ci.high == pytest.approx(reference.high, abs=0.01)
    c_time = np.array([c["seconds"][0] for c in candidate.chunks["kmmlu_pro"]])
    b_time = np.array([c["seconds"][0] for c in base.chunks["kmmlu_pro"]])
    c_tok = np.array([c["tokens"] for c in candidate.chunks["kmmlu_pro"]], dtype=float)
    b_tok = np.array([c["tokens"] for c in base.chunks["kmmlu_pro"]], dtype=float)
    speed = scipy_stats.bootstrap((c_time, c_tok, b_time, b_tok),
                                  lambda ct, cn, bt, bn, axis=-1: 1 - (ct.sum(axis) / cn.sum(axis)) / (bt.sum(axis) / bn.sum(axis)),
                                  paired=True, vectorized=True, n_resamples=20_000, method="percentile",
                                  random_state=0).confidence_interval
    assert ours.speed_norm_ci.low == pytest.approx(speed.low, abs=0.005)
    assert ours.speed_norm_ci.high == pytest.approx(speed.high, abs=0.005)


def test_an_a_a_pair_gives_intervals_around_the_base_and_a_real_difference_is_separated():
    same = paired_score(*paired(2))
    assert 0.0 in same.speed_norm_ci and 1.0 in same.perf_norm_ci and 0.5 in same.score_ci
    faster = paired_score(*paired(2, slowdown=0.7))
    assert faster.speed_norm_ci.low > 0.2  # 30% less time per token, told apart from the noise


def test_a_pair_from_different_sessions_or_rows_is_unscorable():
    candidate, base = paired(3)
    fewer = Measured(candidate.scores, candidate.sec_per_token, {}, {"kmmlu_pro": candidate.items["kmmlu_pro"][:-1]},
                     candidate.chunks)
    with pytest.raises(Unscorable, match="did not answer the same rows"):
        paired_score(fewer, base)
    elsewhere = Measured(candidate.scores, candidate.sec_per_token, {}, candidate.items,
                         {"kmmlu_pro": candidate.chunks["kmmlu_pro"][:-2]})
    with pytest.raises(Unscorable, match="not timed in the same serving session"):
        paired_score(elsewhere, base)
