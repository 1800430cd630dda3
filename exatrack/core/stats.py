"""Paired statistics for comparing a candidate with its base: stratified bootstrap intervals on
PerfNorm (items), SpeedNorm (chunks of one serving session) and the score.

Candidate and base answered the same rows and ran the same chunks side by side, so every draw
resamples the SAME indices on both sides: what they share (hard rows, a slow minute of the machine)
cancels. Resampling stays within each benchmark (stratum), so every draw keeps the benchmark mix.

Standard library only: benchmarks/real_size.py uses it in a bare vLLM environment.
"""

import random
import statistics

LEVEL = 0.95
DRAWS = 2000


def percentile_interval(draws: list[float], level: float = LEVEL) -> tuple[float, float]:
    ordered = sorted(draws)
    tail = (1 - level) / 2
    return ordered[int(tail * (len(ordered) - 1))], ordered[round((1 - tail) * (len(ordered) - 1))]


def resamples(sizes: dict[str, int], draws: int = DRAWS, seed: int = 0):
    """`draws` stratified resamples: each a dict stratum -> indices drawn with replacement."""
    rng = random.Random(seed)
    for _ in range(draws):
        yield {name: [rng.randrange(n) for _ in range(n)] for name, n in sizes.items()}


def identity(sizes: dict[str, int]) -> dict[str, list[int]]:
    return {name: list(range(n)) for name, n in sizes.items()}


# --- Perf -------------------------------------------------------------------------------------

def perf(items: dict[str, list], picks: dict[str, list[int]]) -> float:
    """Unweighted mean over benchmarks of the mean item score; None (e.g. an unparsable judgment)
    is left out of its benchmark's mean, as the benchmark's own metric does."""
    means = []
    for name, indices in picks.items():
        scored = [items[name][i] for i in indices if items[name][i] is not None]
        means.append(sum(scored) / len(scored) if scored else 0.0)
    return sum(means) / len(means)


def perf_norm(candidate: dict[str, list], base: dict[str, list], picks: dict[str, list[int]]) -> float:
    base_perf = perf(base, picks)
    return perf(candidate, picks) / base_perf if base_perf else float("nan")


# --- Speed ------------------------------------------------------------------------------------

def chunk_time(chunk: dict) -> float:
    """The least disturbed of a chunk's timed repeats: host jitter only ever adds time."""
    return min(chunk["seconds"])


def ratio_of_sums(candidate: list[dict], base: list[dict], picks: list[int]) -> tuple[float, float, float, float]:
    return (sum(chunk_time(candidate[i]) for i in picks), sum(candidate[i]["tokens"] for i in picks),
            sum(chunk_time(base[i]) for i in picks), sum(base[i]["tokens"] for i in picks))


def speed_ratio(candidate: dict[str, list], base: dict[str, list], picks: dict[str, list[int]],
                estimator: str = "sum") -> float:
    """Candidate/base time per generated token.

    sum:    the challenge's own quantity, total time over total tokens, over the picked chunks;
    median: the median over chunks of the per-chunk ratio (robust to a chunk hit by a spike)."""
    if estimator == "median":
        ratios = []
        for name, indices in picks.items():
            for i in indices:
                c, b = candidate[name][i], base[name][i]
                if c["tokens"] and b["tokens"]:
                    ratios.append((chunk_time(c) / c["tokens"]) / (chunk_time(b) / b["tokens"]))
        return statistics.median(ratios)
    totals = [ratio_of_sums(candidate[name], base[name], indices) for name, indices in picks.items()]
    c_time, c_tokens, b_time, b_tokens = (sum(t[k] for t in totals) for k in range(4))
    return (c_time / c_tokens) / (b_time / b_tokens)


ESTIMATORS = ("sum", "median")
