"""The challenge's score, exactly:

    Score     = max(0.5 * PerfNorm + 0.5 * SpeedNorm, 0)
    PerfNorm  = Perf_model / Perf_base
    SpeedNorm = 1 - (Time_model / Tokens_model) / (Time_base / Tokens_base)

Perf is the unweighted mean of the benchmark scores in [0, 1]. A benchmark that one side could not
score (KoMT-Bench without a judge, or judged by different judges) is left out of BOTH sides.
"""

from dataclasses import dataclass


class Unscorable(ValueError):
    """Why a pair of runs has no score; the message is shown to the user."""


@dataclass(frozen=True)
class Measured:
    scores: dict[str, float]  # benchmark -> primary score in [0, 1]
    sec_per_token: float
    judges: dict[str, str]  # benchmark -> who judged it, where a judge did


@dataclass(frozen=True)
class Score:
    benchmarks: tuple[str, ...]
    perf: float
    base_perf: float
    perf_norm: float
    speed_norm: float
    score: float


def common_benchmarks(candidate: Measured, base: Measured) -> tuple[str, ...]:
    return tuple(
        name for name in candidate.scores
        if name in base.scores and candidate.judges.get(name) == base.judges.get(name)
    )


def challenge_score(candidate: Measured, base: Measured) -> Score:
    names = common_benchmarks(candidate, base)
    if not names:
        raise Unscorable("no benchmark was scored on both the run and its base")
    perf = sum(candidate.scores[n] for n in names) / len(names)
    base_perf = sum(base.scores[n] for n in names) / len(names)
    if base_perf <= 0:
        raise Unscorable(f"the base's Perf on {', '.join(names)} is 0, so PerfNorm is undefined")
    if not (candidate.sec_per_token > 0 and base.sec_per_token > 0):
        raise Unscorable("no generation time was measured")
    perf_norm = perf / base_perf
    speed_norm = 1 - candidate.sec_per_token / base.sec_per_token
    return Score(names, perf, base_perf, perf_norm, speed_norm, max(0.5 * perf_norm + 0.5 * speed_norm, 0.0))
