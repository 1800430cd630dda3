"""`speed`: a candidate's generation speed relative to its base, measured so that it can be trusted.

Measured speed drifts between processes and over time on shared machines (the same bf16 model ran a
batch 77% slower in one H100 call than in another), so unpaired single numbers rank noise. Here both
checkpoints are loaded side by side in ONE serving session and run the same fixed-token workloads in
rotating order for K rounds. The result is the median over rounds of the candidate/base ratio of
time per token, with a bootstrap 95% interval, per workload and overall.

The statistics import nothing but the standard library, so benchmarks/real_size.py can use them in
a bare vLLM environment.
"""

import json
import random
import statistics

# Fixed token counts (ignore EOS) mirroring the benchmark mix. "quick" keeps CPU runs short.
WORKLOADS = {
    "full": [
        {"name": "mcqa_batch", "prompts": 64, "prompt_tokens": 256, "output_tokens": 128},
        {"name": "longrag_batch", "prompts": 8, "prompt_tokens": 3072, "output_tokens": 64},
        {"name": "single_stream", "prompts": 1, "prompt_tokens": 128, "output_tokens": 256},
    ],
    "quick": [
        {"name": "mcqa_batch", "prompts": 16, "prompt_tokens": 128, "output_tokens": 32},
        {"name": "longrag_batch", "prompts": 2, "prompt_tokens": 1024, "output_tokens": 16},
        {"name": "single_stream", "prompts": 1, "prompt_tokens": 64, "output_tokens": 64},
    ],
}


def bootstrap_interval(values: list[float], level: float = 0.95, samples: int = 2000, seed: int = 0) -> tuple:
    """Percentile interval of the median, resampling rounds with replacement."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(samples))
    tail = (1 - level) / 2
    return medians[int(tail * samples)], medians[min(samples - 1, int((1 - tail) * samples))]


def summarize(rounds: list[dict], candidate: str, base: str) -> dict:
    """Per workload and overall: median candidate/base time-per-token ratio and its interval."""
    def per_token(entry):
        return entry["seconds"] / entry["tokens"]

    ratios = {w: [per_token(r[w][candidate]) / per_token(r[w][base]) for r in rounds] for w in rounds[0]}
    ratios["overall"] = [sum(r[w][candidate]["seconds"] for w in r) / sum(r[w][base]["seconds"] for w in r)
                         for r in rounds]
    summary = {}
    for name, values in ratios.items():
        low, high = bootstrap_interval(values)
        summary[name] = {"ratio": statistics.median(values), "low": low, "high": high, "rounds": values}
    for w in rounds[0]:
        summary[w]["tokens_per_s"] = statistics.median(1 / per_token(r[w][candidate]) for r in rounds)
        summary[w]["base_tokens_per_s"] = statistics.median(1 / per_token(r[w][base]) for r in rounds)
    return summary


def token_range(folder) -> list[int]:
    """Ordinary tokens: past the special tokens at the start of the vocabulary."""
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    return [min(1000, vocab // 4), vocab]


def request(named: dict, workloads: list[dict], rounds: int, eager: bool) -> dict:
    from exatrack import serving

    longest = max(w["prompt_tokens"] + w["output_tokens"] for w in workloads) + 16
    share = serving.memory_share() / len(named)
    engine = {"seed": 0, "gpu_memory_utilization": share, "enforce_eager": eager, "max_model_len": longest}
    return {"mode": "speed", "rounds": rounds, "workloads": workloads,
            "token_range": token_range(next(iter(named.values()))),
            "models": [{"name": name, "path": str(path), "engine": engine} for name, path in named.items()]}


def plot(summary: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, s) in enumerate(summary.items()):
        ax.scatter([i] * len(s["rounds"]), s["rounds"], alpha=0.4, s=14)
        ax.errorbar(i, s["ratio"], yerr=[[s["ratio"] - s["low"]], [s["high"] - s["ratio"]]], fmt="o", color="k", capsize=6)
    ax.axhline(1, color="grey", lw=0.5)
    ax.set_xticks(range(len(summary)), list(summary))
    ax.set_ylabel("candidate / base time per token")
    ax.set_title("paired speed: rounds, median and bootstrap 95% interval")
    fig.tight_layout()
    return fig


def speed(model: str, base: str, workloads: str = "full", rounds: int = 10, eager: bool = False) -> str:
    import mlflow

    from exatrack import ExatrackError, models, serving, tracking

    if workloads not in WORKLOADS:
        raise ExatrackError(f"workloads={workloads} is not one of {', '.join(WORKLOADS)}")
    if rounds < 3:
        raise ExatrackError(f"rounds={rounds} is too few for an interval; use at least 3 (10 is a good default)")
    with tracking.run("speed", run_id=models.run_id_of(model)) as active:
        named = {"candidate": models.resolve(model), "base": models.resolve(base)}
        response = serving.call_worker(request(named, WORKLOADS[workloads], rounds, eager), f"{model} and {base}")
        summary = summarize(response["rounds"], "candidate", "base")
        metrics = {}
        for name, s in summary.items():
            prefix = "speed" if name == "overall" else f"speed.{name}"
            metrics.update({f"{prefix}.ratio": s["ratio"], f"{prefix}.ratio_low": s["low"], f"{prefix}.ratio_high": s["high"]})
            if "tokens_per_s" in s:
                metrics.update({f"{prefix}.tokens_per_s": s["tokens_per_s"], f"{prefix}.base_tokens_per_s": s["base_tokens_per_s"]})
        metrics["speed_norm_paired"] = 1 - summary["overall"]["ratio"]
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"speed.base_model": base, "speed.device": response["device"],
                         "speed.vllm_version": response["vllm_version"], "speed.workloads": workloads,
                         "speed.rounds": str(rounds)})
        mlflow.log_dict({"workloads": WORKLOADS[workloads], "rounds": rounds, "eager": eager}, "speed/workloads.json")
        mlflow.log_dict(response["rounds"], "speed/rounds.json")
        tracking.log_figure(plot(summary), "speed/ratios.png")
        return active.info.run_id
