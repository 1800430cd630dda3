"""Where GPTQ's time goes at real size, and what the fast path saves (issue 12). Runs in the
llmcompressor env on the GPU; the full-size EXAONE-4.0-1.2B shape with random weights and random-token
calibration (GPTQ's cost does not depend on the values).

  breakdown  one oneshot with timers (CUDA-synchronised) around llmcompressor's parts: the forward of
             each layer, fetching/storing the cached intermediates, the Hessian products, the solve
  profile    torch.profiler over a few samples: tables by self CPU and by CUDA time, and a chrome trace
  time       oneshot per variant, each in its own process, side by side in one call: seconds, peak
             GPU memory, and the quantized weights saved for `compare`
  compare    the variants' weights against the default's: equal int8 values, largest difference in steps

Variants: `default` is llmcompressor's defaults; `shared` swaps in exatrack.compress.gptq's shared-input
Hessians; `gpu` keeps the cached intermediates on the GPU (sequential_offload_device); `fast` is both.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GPU_CACHE = {"sequential_offload_device": "cuda:0"}
VARIANTS = {  # name -> (exatrack's shared-input Hessians?, oneshot options); "fast" is what `quantize` runs
    "default": (False, {}),
    "shared": (True, {}),
    "gpu": (False, GPU_CACHE),
    "prefetch": (False, {"sequential_prefetch": True}),
    "fast": (True, None),
    "fast_b4": (True, {**GPU_CACHE, "batch_size": 4}),
    "fast_b16": (True, {**GPU_CACHE, "batch_size": 16}),
}


def setup(args):
    """The bf16 model with the real config, once per machine."""
    import torch

    from benchmarks.real_size import real_config, save_bf16

    if not (Path(args.out) / "bf16" / "config.json").exists():
        save_bf16(real_config(Path(args.config)), Path(args.config), Path(args.out) / "bf16")
    torch.cuda.empty_cache()


def calibration(samples: int, seq_len: int, vocab: int):
    import torch
    from datasets import Dataset

    ids = torch.randint(1000, vocab, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def run_oneshot(args, variant: str):
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from transformers import AutoModelForCausalLM

    from exatrack.compress import gptq

    shared, options = VARIANTS[variant]
    model = AutoModelForCausalLM.from_pretrained(Path(args.out) / "bf16", dtype="auto", device_map="cuda")
    data = calibration(args.samples, args.seq_len, model.config.vocab_size)
    modifiers = [GPTQModifier(targets="Linear", scheme=args.scheme, ignore=["lm_head"])]
    modifiers = gptq.speed_up(modifiers) if shared else modifiers
    options = gptq.calibration_options(model, args.samples, args.seq_len) if options is None else options
    torch.manual_seed(0)  # llmcompressor shuffles the calibration samples with torch's global generator
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    started = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=modifiers, num_calibration_samples=args.samples,
            max_seq_length=args.seq_len, **options)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return model, {"variant": variant, "scheme": args.scheme, "samples": args.samples, "seq_len": args.seq_len,
                   "seconds": seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "options": options,
                   "shared_hessians": shared, "attention": model.config._attn_implementation, "device": torch.cuda.get_device_name()}


def time_one(args):
    """One variant in this process; its quantized weights saved for `compare`."""
    import torch
    from safetensors.torch import save_file

    model, result = run_oneshot(args, args.variant)
    weights = {name: p.detach().contiguous() for name, p in model.state_dict().items()
               if name.endswith(("weight", "weight_scale")) and "layers." in name}
    save_file(weights, str(Path(args.out) / f"{args.scheme}-{args.samples}-{args.variant}.safetensors"))
    print("RESULT " + json.dumps(result), flush=True)


def time_variants(args):
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "time-one", "--variant", variant, "--out", args.out, "--samples",
               str(args.samples), "--seq-len", str(args.seq_len), "--scheme", args.scheme]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        result = json.loads(lines[-1][7:]) if lines else {"variant": variant, "error": out.stderr[-2000:]}
        print(json.dumps(result), flush=True)
        results.append(result)
        Path(args.json).write_text(json.dumps(results, indent=1))


def compare(args):
    """Each variant's quantized weights against the default's, in quantization steps."""
    import torch
    from safetensors.torch import load_file

    out = Path(args.out)
    reference = load_file(str(out / f"{args.scheme}-{args.samples}-{args.reference}.safetensors"))
    report = {}
    for variant in args.variants.split(","):
        other = load_file(str(out / f"{args.scheme}-{args.samples}-{variant}.safetensors"))
        equal = total = 0
        worst = 0.0
        for name, weight in reference.items():
            if not name.endswith(".weight") or name + "_scale" not in reference:
                continue
            scale = reference[name + "_scale"].float()
            scale = scale.repeat_interleave(weight.shape[1] // scale.shape[1], dim=1)  # groups -> columns
            steps = ((other[name].float() - weight.float()) / scale).abs()
            equal += int((steps < 0.5).sum())
            total += steps.numel()
            worst = max(worst, float(steps.max()))
        report[variant] = {"equal_fraction": equal / total, "max_steps": worst, "values": total,
                           "scales_equal": all(torch.equal(reference[k], other[k]) for k in reference if k.endswith("_scale"))}
    print(json.dumps(report))
    Path(args.json).write_text(json.dumps(report, indent=1))


def breakdown(args):
    """Synchronised timers around llmcompressor's parts; the sum against the whole shows what is left."""
    import torch
    from llmcompressor.modifiers.gptq import base
    from llmcompressor.pipelines import cache
    from llmcompressor.pipelines.sequential import helpers

    totals: dict[str, float] = {}

    def timed(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            torch.cuda.synchronize()
            started = time.perf_counter()
            value = original(*a, **k)
            torch.cuda.synchronize()
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - started
            return value

        setattr(owner, name, wrapper)

    timed(cache.IntermediatesCache, "fetch", "fetch intermediates (onload)")
    timed(cache.IntermediatesCache, "update", "store intermediates (offload)")
    timed(base, "accumulate_hessian", "hessian products")
    timed(base, "quantize_weight", "gptq solve")
    timed(helpers.Subgraph, "forward", "layer forward incl. hooks")
    _, result = run_oneshot(args, args.variant)
    totals["hessian products (inside forward)"] = totals.pop("hessian products")
    result["parts_s"] = totals
    result["per_sample_layer_ms"] = {k: 1000 * v / (args.samples * 30) for k, v in totals.items()}
    print(json.dumps(result, indent=1))
    Path(args.json).write_text(json.dumps(result, indent=1))


def profile(args):
    import gzip
    import shutil

    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _, result = run_oneshot(args, args.variant)
    averages = prof.key_averages()
    out = Path(args.json)
    out.write_text(json.dumps(result) + "\n\nby self CPU time\n" + averages.table(sort_by="self_cpu_time_total", row_limit=40)
                   + "\n\nby CUDA time\n" + averages.table(sort_by="self_cuda_time_total", row_limit=30))
    if args.samples > 4:  # a chrome trace of more samples is too large to commit
        return
    trace = Path(args.out) / "trace.json"
    prof.export_chrome_trace(str(trace))
    with open(trace, "rb") as raw, gzip.open(str(out.with_suffix(".trace.json.gz")), "wb") as packed:
        shutil.copyfileobj(raw, packed)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["setup", "breakdown", "profile", "time", "time-one", "compare"])
    parser.add_argument("--config", default=".gpu/exaone")
    parser.add_argument("--out", default="/tmp/gs")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--scheme", default="W8A8")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--variants", default="default,shared,gpu,fast")
    parser.add_argument("--reference", default="default", help="compare: the variant the others are held against")
    parser.add_argument("--json", default="/tmp/gs/result.json")
    args = parser.parse_args()
    {"setup": setup, "breakdown": breakdown, "profile": profile, "time": time_variants, "time-one": time_one,
     "compare": compare}[args.step](args)


if __name__ == "__main__":
    main()
