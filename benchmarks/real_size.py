"""Real-size speed of compressed EXAONE-4.0-1.2B variants, measured paired against bf16 on one GPU.

Random weights with the real config: speed does not depend on the weights' values, and no hub is
needed. Steps (each one command; docs/benchmarks.md shows the calls on the lent H100):

  build    (llmcompressor env) bf16, W8A8-INT8, FP8-dynamic, W4A16 and a 24-of-30-layer variant
  gptq     (llmcompressor env) time GPTQ W8A8 of the full-size model with N samples of 2048 tokens
  speed    (vLLM env) all variants side by side in one session, paired rounds against bf16 (KV-FP8 is
           the bf16 checkpoint served with an FP8 KV cache), repeated to show the ratios repeat
  evalpass (vLLM env) one evaluation pass at the benchmarks' real volumes, synthetic prompts of
           realistic lengths and a fixed output budget
  train    (llmcompressor env + peft) exatrack's own prune -> distill (online, top-64) and LoRA sft
           of the full-size shape on random-token text: seconds, training tokens/s, peak GPU memory
  report   (here) the markdown table from the JSON the other steps wrote
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
    spec = importlib.util.spec_from_file_location(name, REPO / "exatrack" / f"{name}.py")
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


def speed(args):
    worker, stats = load_module("worker"), load_module("speed")
    out = Path(args.out)
    names = ["bf16", *VARIANTS, f"layers{KEEP_LAYERS}"]
    engine = {"seed": 0, "gpu_memory_utilization": args.memory, "max_model_len": 3300}
    models = [{"name": n, "path": str(out / n), "engine": engine} for n in names]
    models.append({"name": "kv_fp8", "path": str(out / "bf16"), "engine": {**engine, "kv_cache_dtype": "fp8"}})
    started = time.perf_counter()
    engines = worker.load_engines(models)
    load_s = time.perf_counter() - started
    result = {"device": worker.device_name(), "vllm": __import__("vllm").__version__, "rounds": args.rounds,
              "workloads": stats.WORKLOADS[args.workloads], "load_s": load_s, "repeats": []}
    # The same engines, independent sets of rounds: do the ratios repeat within their intervals?
    for _ in range(args.repeats):
        rounds = worker.speed_rounds(engines, stats.WORKLOADS[args.workloads], [1000, 102400], args.rounds)
        result["repeats"].append({name: stats.summarize(rounds, name, "bf16") for name in names[1:] + ["kv_fp8"]})
        result["seconds"] = time.perf_counter() - started
        Path(args.json).write_text(json.dumps(result))  # after each repeat: a cut-off call keeps what it has
    print(json.dumps({k: v for k, v in result.items() if k != "repeats"}))


def evalpass(args):
    """One pass at the real volumes: 2,822 + 2,587 MCQA prompts, 600 long-context prompts, 160 KoMT turns."""
    from vllm import LLM, SamplingParams

    worker = load_module("worker")
    volumes = [("kmmlu_mcqa", 2822 + 2587, 350, args.mcqa_tokens), ("ko_longrag", 600, 3000, 64),
               ("komt_turns", 160, 250, 512)]
    started = time.perf_counter()
    llm = LLM(model=str(Path(args.out) / args.variant), seed=0, gpu_memory_utilization=0.85, max_model_len=4096,
              disable_log_stats=False)
    load = time.perf_counter() - started
    result = {"variant": args.variant, "device": worker.device_name(), "load_s": load, "parts": {}}
    for i, (name, count, prompt_tokens, output_tokens) in enumerate(volumes):
        prompts = worker.synthetic_prompts(count, prompt_tokens, [1000, 102400], seed=i)
        params = SamplingParams(temperature=0, max_tokens=output_tokens, ignore_eos=True)
        t = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        result["parts"][name] = {"prompts": count, "prompt_tokens": prompt_tokens, "output_tokens": output_tokens,
                                 "wall_s": time.perf_counter() - t, "gen_s": worker.generation_span(outputs),
                                 "tokens": sum(len(o.outputs[0].token_ids) for o in outputs)}
    result["total_wall_s"] = time.perf_counter() - started
    Path(args.json).write_text(json.dumps(result))
    print(json.dumps(result))


def train(args):
    """Each part a fresh run of the real step, timed; results are written after every part."""
    import os

    import torch

    out = Path(args.out)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out}/mlflow.db")
    sys.path.insert(0, str(REPO))
    import mlflow

    from exatrack import distill, prune, sft

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
    speed_runs = [json.loads(Path(p).read_text()) for p in args.speed]
    lines = []
    for run in speed_runs:
        lines += [f"GPU: {run['device']}, vLLM {run['vllm']}, {run['rounds']} rounds x {len(run['repeats'])} repeats "
                  f"in one session ({run['seconds']:.0f} s)", "",
                  "| variant | workload | " + " | ".join(f"repeat {i + 1}: ratio [95% CI]" for i in range(len(run["repeats"]))) + " |",
                  "|---|---|" + "---|" * len(run["repeats"])]
        for variant in run["repeats"][0]:
            for workload in run["repeats"][0][variant]:
                cells = [f"{r[variant][workload]['ratio']:.3f} [{r[variant][workload]['low']:.3f}, {r[variant][workload]['high']:.3f}]"
                         for r in run["repeats"]]
                lines.append(f"| {variant} | {workload} | " + " | ".join(cells) + " |")
        lines.append("")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    for name, func in (("build", build), ("gptq", gptq), ("speed", speed), ("evalpass", evalpass), ("train", train),
                       ("report", report)):
        step = steps.add_parser(name)
        step.set_defaults(func=func)
        step.add_argument("--out", default="/tmp/real_size")
        step.add_argument("--json", default="result.json")
    steps.choices["build"].add_argument("--config", required=True, help="folder with the real config and tokenizer")
    steps.choices["gptq"].add_argument("--samples", type=int, default=512)
    steps.choices["gptq"].add_argument("--seq-len", type=int, default=2048)
    steps.choices["speed"].add_argument("--rounds", type=int, default=8)
    steps.choices["speed"].add_argument("--repeats", type=int, default=2)
    steps.choices["speed"].add_argument("--memory", type=float, default=0.12, help="GPU memory share per engine")
    steps.choices["speed"].add_argument("--workloads", default="full", choices=["full", "quick"])
    steps.choices["evalpass"].add_argument("--variant", default="bf16")
    steps.choices["evalpass"].add_argument("--mcqa-tokens", type=int, default=256)
    steps.choices["train"].add_argument("--config", required=True, help="folder with the real config and tokenizer")
    steps.choices["train"].add_argument("--parts", default="prune,distill_online,distill_top64,sft")
    steps.choices["train"].add_argument("--samples", type=int, default=256, help="records of random-token text")
    steps.choices["train"].add_argument("--seq-len", type=int, default=2048)
    steps.choices["train"].add_argument("--batch", type=int, default=4)
    steps.choices["report"].add_argument("speed", nargs="+", help="speed step JSON files")
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
