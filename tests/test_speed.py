"""Paired speed: the statistics on synthetic timings, and tiny W8A8 against tiny bf16 in vLLM."""

import random

import mlflow
import pytest

from exatrack import compress
from exatrack.speed import bootstrap_interval, speed, summarize


def synthetic_rounds(slowdown: float, rounds: int = 12, seed: int = 0) -> list[dict]:
    """Both models see the same drifting machine (up to 2x slower over time) plus 2% independent noise."""
    rng = random.Random(seed)
    out = []
    for k in range(rounds):
        drift = 1 + k / rounds + rng.uniform(-0.2, 0.2)
        out.append({w: {"base": {"seconds": base * drift * rng.gauss(1, 0.02), "tokens": 100},
                        "candidate": {"seconds": base * slowdown * drift * rng.gauss(1, 0.02), "tokens": 100}}
                    for w, base in (("batch", 1.0), ("single", 3.0))})
    return out


def test_a_known_ten_percent_slowdown_is_recovered_despite_drift():
    summary = summarize(synthetic_rounds(1.10), "candidate", "base")
    for name in ("batch", "single", "overall"):
        s = summary[name]
        assert 1.0 < s["low"] <= 1.10 <= s["high"], (name, s)  # contains the truth, excludes "no change"


def test_unpaired_numbers_from_different_moments_would_not_recover_it():
    rounds = synthetic_rounds(1.10)
    early_base, late_candidate = rounds[0]["batch"]["base"]["seconds"], rounds[-1]["batch"]["candidate"]["seconds"]
    assert late_candidate / early_base > 1.5  # what drift does to a naive comparison


def test_bootstrap_interval_contains_the_median_and_narrows_with_agreement():
    wide = bootstrap_interval([0.8, 1.2, 0.9, 1.1, 1.0, 0.7, 1.3])
    narrow = bootstrap_interval([0.99, 1.01, 1.0, 1.0, 0.995, 1.005, 1.0])
    assert wide[0] <= 1.0 <= wide[1] and narrow[1] - narrow[0] < wide[1] - wide[0]


@pytest.mark.vllm
def test_tiny_w8a8_against_tiny_bf16_in_one_serving_session(tiny_model):
    run_id = compress.quantize("tiny", "w8a8", {"num_samples": "8", "max_seq_len": "64"})
    speed(f"runs:/{run_id}/checkpoint", "tiny", workloads="quick", rounds=3, eager=True)
    metrics = mlflow.get_run(run_id).data.metrics
    for prefix in ("speed", "speed.mcqa_batch", "speed.longrag_batch", "speed.single_stream"):
        low, ratio, high = metrics[f"{prefix}.ratio_low"], metrics[f"{prefix}.ratio"], metrics[f"{prefix}.ratio_high"]
        assert 0 < low <= ratio <= high, prefix
    assert metrics["speed_norm_paired"] == pytest.approx(1 - metrics["speed.ratio"])
    assert metrics["speed.mcqa_batch.tokens_per_s"] > 0
