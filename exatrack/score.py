"""The challenge's score, exactly, and its 95% interval:

    Score     = max(0.5 * PerfNorm + 0.5 * SpeedNorm, 0)
    PerfNorm  = Perf_model / Perf_base
    SpeedNorm = 1 - (Time_model / Tokens_model) / (Time_base / Tokens_base)

Perf is the unweighted mean of the benchmark scores in [0, 1]. A benchmark that neither side could
score (KoMT-Bench without a judge) is left out of BOTH sides; one that only one side scored, or that
two judges scored, leaves the pair unscored.

The interval comes from what the paired evaluation session recorded: the per-item scores of both
sides (PerfNorm) and the per-chunk times of both sides (SpeedNorm), resampled together (stats.py).
"""

import math
from dataclasses import dataclass, field, replace

from exatrack import stats


class Unscorable(ValueError):
    """Why a pair of runs has no score; the message is shown to the user."""


@dataclass(frozen=True)
class Measured:
    """One evaluation as the score needs it."""

    scores: dict[str, float]  # benchmark -> primary score in [0, 1]
    sec_per_token: float
    judges: dict[str, str]  # benchmark -> who judged it, where a judge did
    items: dict[str, list] = field(default_factory=dict)  # benchmark -> per-row score (None: not scored)
    chunks: dict[str, list] = field(default_factory=dict)  # benchmark -> per-chunk {"seconds": [...], "tokens": n}


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class Score:
    benchmarks: tuple[str, ...]
    perf: float
    base_perf: float
    perf_norm: float
    speed_norm: float
    score: float
    perf_norm_ci: Interval | None = None
    speed_norm_ci: Interval | None = None
    score_ci: Interval | None = None


def common_benchmarks(candidate: Measured, base: Measured) -> tuple[str, ...]:
    """The benchmarks both sides scored, alike. One side lacking a benchmark the other has (its judge
    failed, say) makes the pair unscored: never a score on fewer benchmarks beside runs scored on all."""
    for name in sorted(set(candidate.scores) ^ set(base.scores)):
        has, lacks = ("run", "base") if name in candidate.scores else ("base", "run")
        raise Unscorable(f"{name} has a score on the {has} but not on the {lacks}: evaluate both with the same judge")
    for name in sorted(candidate.scores):
        if candidate.judges.get(name) != base.judges.get(name):
            raise Unscorable(f"{name} was judged by {candidate.judges.get(name)} on the run and {base.judges.get(name)} "
                             "on the base: evaluate both with the same judge")
    return tuple(candidate.scores)


def combine(perf_norm: float, speed_norm: float) -> float:
    return max(0.5 * perf_norm + 0.5 * speed_norm, 0.0)


def challenge_score(candidate: Measured, base: Measured) -> Score:
    names = common_benchmarks(candidate, base)
    if not names:
        raise Unscorable("no benchmark was scored")
    perf = sum(candidate.scores[n] for n in names) / len(names)
    base_perf = sum(base.scores[n] for n in names) / len(names)
    if base_perf <= 0:
        raise Unscorable(f"the base's Perf on {', '.join(names)} is 0, so PerfNorm is undefined")
    if not (candidate.sec_per_token > 0 and base.sec_per_token > 0):
        raise Unscorable("no generation time was measured")
    perf_norm = perf / base_perf
    speed_norm = 1 - candidate.sec_per_token / base.sec_per_token
    return Score(names, perf, base_perf, perf_norm, speed_norm, combine(perf_norm, speed_norm))


def paired_score(candidate: Measured, base: Measured, estimator: str = "sum", draws: int = stats.DRAWS,
                 seed: int = 0) -> Score:
    """The score from one paired session, with bootstrap intervals on PerfNorm, SpeedNorm and the score.

    SpeedNorm's point value uses each chunk's least disturbed repeat (with one repeat, exactly the
    challenge's total time over total tokens)."""
    point = challenge_score(candidate, base)
    names = point.benchmarks
    if any(len(candidate.items.get(n, [])) != len(base.items.get(n, [])) or not base.items.get(n) for n in names):
        raise Unscorable("the run and its base did not answer the same rows")
    timed = [n for n in base.chunks if n in candidate.chunks and len(candidate.chunks[n]) == len(base.chunks[n])]
    if not timed or len(timed) != len(base.chunks):
        raise Unscorable("the run was not timed in the same serving session as its base")
    items = {n: len(base.items[n]) for n in names}
    chunks = {n: len(base.chunks[n]) for n in timed}
    speed_norm = 1 - stats.speed_ratio(candidate.chunks, base.chunks, stats.identity(chunks), estimator)
    perf_draws, speed_draws = [], []
    for item_picks, chunk_picks in zip(stats.resamples(items, draws, seed), stats.resamples(chunks, draws, seed + 1)):
        perf_draws.append(stats.perf_norm(candidate.items, base.items, item_picks))
        speed_draws.append(1 - stats.speed_ratio(candidate.chunks, base.chunks, chunk_picks, estimator))
    score_draws = [combine(p, s) for p, s in zip(perf_draws, speed_draws) if not math.isnan(p)]
    return replace(
        point, speed_norm=speed_norm, score=combine(point.perf_norm, speed_norm),
        perf_norm_ci=Interval(*stats.percentile_interval([p for p in perf_draws if not math.isnan(p)])),
        speed_norm_ci=Interval(*stats.percentile_interval(speed_draws)),
        score_ci=Interval(*stats.percentile_interval(score_draws)),
    )
