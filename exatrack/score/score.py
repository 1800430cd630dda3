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

from exatrack.core import stats


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
    tokens: dict[str, float] = field(default_factory=dict)  # benchmark -> tokens generated in one pass


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
    # (PerfNorm, SpeedNorm) of each bootstrap draw: another lane of the same session, drawn alike,
    # is compared with this one draw by draw (paired_difference)
    draws: tuple = field(default=(), repr=False, compare=False)


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
    speed_norm = paired_speed_norm(candidate, base, point, estimator)
    pairs = tuple(norm_draws(candidate, base, point, estimator, draws, seed))
    perf_draws, speed_draws = zip(*pairs)
    score_draws = [combine(p, s) for p, s in pairs if not math.isnan(p)]
    return replace(
        point, speed_norm=speed_norm, score=combine(point.perf_norm, speed_norm),
        perf_norm_ci=Interval(*stats.percentile_interval([p for p in perf_draws if not math.isnan(p)])),
        speed_norm_ci=Interval(*stats.percentile_interval(speed_draws)),
        score_ci=Interval(*stats.percentile_interval(score_draws)), draws=pairs,
    )


def session_sizes(candidate: Measured, base: Measured, point: Score) -> tuple[dict, dict]:
    """How many rows and timed units each benchmark has on both sides: what the bootstrap resamples."""
    names = point.benchmarks
    if any(len(candidate.items.get(n, [])) != len(base.items.get(n, [])) or not base.items.get(n) for n in names):
        raise Unscorable("the run and its base did not answer the same rows")
    timed = [n for n in base.chunks if n in candidate.chunks and len(candidate.chunks[n]) == len(base.chunks[n])]
    if not timed or len(timed) != len(base.chunks):
        raise Unscorable("the run was not timed in the same serving session as its base")
    return {n: len(base.items[n]) for n in names}, {n: len(base.chunks[n]) for n in timed}


def paired_speed_norm(candidate: Measured, base: Measured, point: Score, estimator: str) -> float:
    """SpeedNorm from the session's timed units, each unit's least disturbed repeat."""
    return 1 - stats.speed_ratio(candidate.chunks, base.chunks, stats.identity(session_sizes(candidate, base, point)[1]),
                                 estimator)


def norm_draws(candidate: Measured, base: Measured, point: Score, estimator: str, draws: int, seed: int):
    """(PerfNorm, SpeedNorm) of each bootstrap draw. The draws depend only on the session's sizes and
    the seed, so two candidates of one session are resampled on the same rows and units, draw by draw."""
    items, chunks = session_sizes(candidate, base, point)
    for item_picks, chunk_picks in zip(stats.resamples(items, draws, seed), stats.resamples(chunks, draws, seed + 1)):
        yield (stats.perf_norm(candidate.items, base.items, item_picks),
               1 - stats.speed_ratio(candidate.chunks, base.chunks, chunk_picks, estimator))


@dataclass(frozen=True)
class Difference:
    """One lane minus another, both scored against the base of their shared session."""

    score: float
    perf_norm: float
    speed_norm: float
    score_ci: Interval
    perf_norm_ci: Interval
    speed_norm_ci: Interval


def paired_difference(first: Score, second: Score) -> Difference:
    """`first` minus `second`, two lanes scored against the base of their shared session, with the
    interval of the difference itself: both answered the same rows and were timed on the same units,
    and paired_score draws the same indices for every candidate of a session, so their draws pair up
    one by one and what they share (a hard row, a slow minute) cancels. Two overlapping intervals can
    hide a difference that this one resolves."""
    if first.benchmarks != second.benchmarks or len(first.draws) != len(second.draws) or not first.draws:
        raise Unscorable(f"the two lanes were not scored alike ({', '.join(first.benchmarks)} against "
                         f"{', '.join(second.benchmarks)})")
    pairs = [(pa - pb, sa - sb, combine(pa, sa) - combine(pb, sb))
             for (pa, sa), (pb, sb) in zip(first.draws, second.draws) if not (math.isnan(pa) or math.isnan(pb))]
    perf, speed, score = (Interval(*stats.percentile_interval([p[k] for p in pairs])) for k in range(3))
    return Difference(first.score - second.score, first.perf_norm - second.perf_norm,
                      first.speed_norm - second.speed_norm, score, perf, speed)


@dataclass(frozen=True)
class Recovery:
    """A lane on one benchmark, against the base of its session: where a lane loses quality (a local
    score hides a benchmark it lost), and whether it rambles (its tokens against the base's)."""

    ratio: float | None  # the lane's score over the base's; None where the benchmark was not scored
    ci: Interval | None
    token_ratio: float | None  # generated tokens over the base's, per pass


def recovery(candidate: Measured, base: Measured, draws: int = stats.DRAWS, seed: int = 0) -> dict[str, Recovery]:
    """Per benchmark either side generated on: the score ratio with its paired interval (the same rows
    resampled on both sides) and the generated-token ratio."""
    out = {}
    for name in sorted(set(candidate.tokens) | set(candidate.items)):
        tokens = candidate.tokens.get(name), base.tokens.get(name)
        token_ratio = tokens[0] / tokens[1] if tokens[0] is not None and tokens[1] else None
        ratio = ci = None
        if name in candidate.scores and name in base.scores and len(candidate.items.get(name, [])) == len(base.items.get(name, [])):
            one = {name: candidate.items[name]}, {name: base.items[name]}
            ratio = stats.perf_norm(*one, stats.identity({name: len(base.items[name])}))
            ratio_draws = [r for picks in stats.resamples({name: len(base.items[name])}, draws, seed)
                           if not math.isnan(r := stats.perf_norm(*one, picks))]
            ratio = None if math.isnan(ratio) else ratio
            ci = Interval(*stats.percentile_interval(ratio_draws)) if ratio is not None and ratio_draws else None
        out[name] = Recovery(ratio, ci, token_ratio)
    return out
