"""Runs inside the serving environment: imports only vLLM and the standard library.

    python worker.py REQUEST.json RESPONSE.json

Loads one checkpoint once, then runs every conversation of the request batched, turn by turn (a
conversation's next user turn is sent with the model's previous answers), with the chat template and
the requested thinking mode. Generation time is measured from vLLM's own per-request timestamps
(first scheduled to last token), so model load, chat rendering and tokenization are not counted.
"""

import json
import platform
import subprocess
import sys
import time


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


def generation_span(outputs) -> float | None:
    """Seconds from the first request scheduled to the last token, from the engine's clock."""
    stats = [o.metrics for o in outputs if getattr(o, "metrics", None) is not None]
    if len(stats) != len(outputs) or not all(getattr(s, "last_token_ts", 0) for s in stats):
        return None
    return max(s.last_token_ts for s in stats) - min(s.scheduled_ts for s in stats)


def run_turns(llm, conversations, sampling, chat_kwargs):
    """One batched llm.chat call per turn index; returns answers, token counts and generation seconds."""
    from vllm import SamplingParams

    answers = [[] for _ in conversations]
    tokens = [[] for _ in conversations]
    gen_time, timing = 0.0, "engine"
    for turn in range(max(len(c["turns"]) for c in conversations)):
        active = [i for i, c in enumerate(conversations) if turn < len(c["turns"])]
        messages = []
        for i in active:
            history = []
            for t in range(turn):
                history += [{"role": "user", "content": conversations[i]["turns"][t]}, {"role": "assistant", "content": answers[i][t]}]
            messages.append(history + [{"role": "user", "content": conversations[i]["turns"][turn]}])
        params = [SamplingParams(**{**sampling, **conversations[i].get("sampling", {})}) for i in active]
        started = time.perf_counter()
        outputs = llm.chat(messages, params, use_tqdm=True, chat_template_kwargs=chat_kwargs)
        wall = time.perf_counter() - started
        span = generation_span(outputs)
        if span is None:
            timing = "wall"
        gen_time += wall if span is None else span
        for i, out in zip(active, outputs):
            answers[i].append(out.outputs[0].text)
            tokens[i].append(len(out.outputs[0].token_ids))
    return answers, tokens, gen_time, timing


def synthetic_prompts(count: int, length: int, token_range: list, seed: int) -> list:
    """Fixed random token ids: the same prompts for every model, no tokenizer in the timing."""
    import random

    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(*token_range) for _ in range(length)]} for _ in range(count)]


def timed_generate(llm, prompts, output_tokens: int) -> tuple[float, int]:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=output_tokens, ignore_eos=True)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - started
    span = generation_span(outputs)
    return (wall if span is None else span), sum(len(o.outputs[0].token_ids) for o in outputs)


def load_engines(models: list[dict]) -> dict:
    from vllm import LLM

    return {m["name"]: LLM(model=m["path"], disable_log_stats=False, **m["engine"]) for m in models}


def speed_rounds(engines: dict, workload_specs: list[dict], token_range: list, rounds: int) -> list[dict]:
    """Each round runs every workload on every engine, in an order rotated per round, so drift over
    time hits all models alike."""
    names = list(engines)
    workloads = {w["name"]: synthetic_prompts(w["prompts"], w["prompt_tokens"], token_range, i)
                 for i, w in enumerate(workload_specs)}
    output_tokens = {w["name"]: w["output_tokens"] for w in workload_specs}
    for llm in engines.values():  # warm-up: the first batches pay for lazy initialisation
        for prompts in workloads.values():
            timed_generate(llm, prompts[:2], 4)
    results = []
    for k in range(rounds):
        order = names[k % len(names):] + names[:k % len(names)]
        result = {w: {} for w in workloads}
        for w, prompts in workloads.items():
            for name in order:
                seconds, tokens = timed_generate(engines[name], prompts, output_tokens[w])
                result[w][name] = {"seconds": seconds, "tokens": tokens}
        results.append(result)
        print(f"speed round {k + 1}/{rounds} done", file=sys.stderr, flush=True)
    return results


def measure_speed(request: dict) -> dict:
    """All checkpoints loaded side by side in one session, then paired rounds."""
    engines = load_engines(request["models"])
    return {"rounds": speed_rounds(engines, request["workloads"], request["token_range"], request["rounds"])}


def main(request_path: str, response_path: str) -> None:
    import vllm
    from vllm import LLM

    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    if request.get("mode") == "speed":
        response = {"vllm_version": vllm.__version__, "device": device_name(), **measure_speed(request)}
        with open(response_path, "w", encoding="utf-8") as f:
            json.dump(response, f)
        return
    started = time.perf_counter()
    llm = LLM(model=request["model"], disable_log_stats=False, **request["engine"])
    load_time = time.perf_counter() - started
    config = llm.llm_engine.vllm_config
    response = {
        "vllm_version": vllm.__version__,
        "device": device_name(),
        "load_time_s": load_time,
        "kv_cache_dtype": str(config.cache_config.cache_dtype),
        "max_model_len": config.model_config.max_model_len,
        "benchmarks": {},
    }
    chat_kwargs = {"enable_thinking": bool(request["thinking"])}
    for name, conversations in request["benchmarks"].items():
        answers, tokens, gen_time, timing = run_turns(llm, conversations, request["sampling"], chat_kwargs)
        response["benchmarks"][name] = {
            "answers": answers,
            "tokens": tokens,
            "gen_time_s": gen_time,
            "gen_tokens": sum(map(sum, tokens)),
            "timing": timing,
        }
    with open(response_path, "w", encoding="utf-8") as f:
        json.dump(response, f, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
