"""Where GPTQ's time goes at real size, and what the fast paths save (issues 12, 25). Runs in the
llmcompressor env on the GPU; the full-size EXAONE-4.0-1.2B shape with random weights and random-token
calibration (GPTQ's cost does not depend on the values), or any model folder (--source) and
exatrack's calibration text (--calib) where quality is to be judged too.

  breakdown  one oneshot with timers (CUDA-synchronised) around llmcompressor's parts: the forward of
             each layer, fetching/storing the cached intermediates, the Hessian products, the solve
  profile    torch.profiler over a few samples: tables by self CPU and by CUDA time, and a chrome trace
  time       oneshot per variant, each in its own process, side by side in one call: seconds, peak
             GPU memory, where the cached inputs stayed, the sdpa calls; the quantized weights saved
             for `compare` and the checkpoint for `quality`
  compare    the variants' weights against the reference variant's: equal int8 values, largest
             difference in steps
  quality    the variants' checkpoints through exatrack's proxy against the source model (KL and top-1
             agreement, 95% intervals over the held-out texts) and paired to the reference variant's;
             on the CPU, in float32, as `quantize` logs it. Random weights make a poor judge: give a real
             --source and --calib

Variants: `default` is llmcompressor's defaults; `shared` swaps in exatrack.compress.gptq's shared-input
Hessians; `gpu` keeps the cached intermediates on the GPU (sequential_offload_device); `prefetch` is
llmcompressor's sequential_prefetch; `exact` and `fast` are `quantize`'s gptq_path=exact and =fast,
the same call (compress/gptq.py); `fast_split` the fast path with half the samples' cached inputs in
pinned CPU memory (the placement under a memory cap, forced); `fast_b4`/`fast_b16` the fast path with batches of 4/16.
--cap-gib 16 caps this process's GPU memory (torch.cuda.set_per_process_memory_fraction) to emulate a
16 GB card; exatrack's placement of the cached inputs sees the cap.
"""

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
GPU_CACHE = {"sequential_offload_device": "cuda:0"}
VARIANTS = {  # name -> (exatrack's gptq_path, None: llmcompressor's GPTQModifier; oneshot options, None: exatrack's)
    "default": (None, {}),
    "shared": ("exact", {}),
    "gpu": (None, GPU_CACHE),
    "prefetch": (None, {"sequential_prefetch": True}),
    "exact": ("exact", None),
    "fast": ("fast", None),
    "fast_split": ("fast", None),  # half the samples' inputs on the GPU, half in pinned CPU memory
    "fast_b4": ("fast", {**GPU_CACHE, "batch_size": 4}),
    "fast_b16": ("fast", {**GPU_CACHE, "batch_size": 16}),
}


def setup(args):
    """The bf16 model with the real config, once per machine."""
    import torch

    from benchmarks.real_size import real_config, save_bf16

    if not (Path(args.out) / "bf16" / "config.json").exists():
        save_bf16(real_config(Path(args.config)), Path(args.config), Path(args.out) / "bf16")
    torch.cuda.empty_cache()


def source(args) -> Path:
    return Path(args.source) if args.source else Path(args.out) / "bf16"


def calibration(samples: int, seq_len: int, vocab: int):
    import torch
    from datasets import Dataset

    ids = torch.randint(1000, vocab, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})


def calibration_data(args, tokenizer, vocab: int):
    """Random tokens, or exatrack's calibration text as `quantize --calib` takes it."""
    if args.calib == "random":
        return calibration(args.samples, args.seq_len, vocab)
    from exatrack.compress import calibration as text

    return text.tokenized_dataset(args.calib, tokenizer, args.samples, args.seq_len, seed=0)


def run_oneshot(args, variant: str):
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exatrack.compress import gptq

    path, options = VARIANTS[variant]
    model = AutoModelForCausalLM.from_pretrained(source(args), dtype="auto", device_map="cuda")
    data = calibration_data(args, AutoTokenizer.from_pretrained(source(args)), model.config.vocab_size)
    samples = len(data)
    modifiers = [GPTQModifier(targets="Linear", scheme=args.scheme, ignore=["lm_head"])]
    modifiers = gptq.speed_up(modifiers, path) if path else modifiers
    resident = gptq.resident_samples(model, samples, args.seq_len, path or "exact")
    resident = samples // 2 if variant == "fast_split" else resident
    attention = gptq.attention(path) if path else contextlib.nullcontext({})
    cache = gptq.cached_inputs(model, samples, resident) if options is None else contextlib.nullcontext((options, None))
    torch.manual_seed(0)  # llmcompressor shuffles the calibration samples with torch's global generator
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    started = time.perf_counter()
    with attention as sdpa_calls, cache as (options, placement):
        oneshot(model=model, dataset=data, recipe=modifiers, num_calibration_samples=samples,
                max_seq_length=args.seq_len, **options)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return model, {"variant": variant, "scheme": args.scheme, "samples": samples, "seq_len": args.seq_len,
                   "seconds": seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "cap_gib": args.cap_gib,
                   "options": options, "cache": placement or llmcompressor_placement(options), "gptq_path": path,
                   "sdpa_calls": dict(sdpa_calls), "calib": args.calib, "device": torch.cuda.get_device_name(),
                   "pinned_peak_gib": torch.cuda.host_memory_stats().get("allocated_bytes.peak", 0) / 2**30}


def llmcompressor_placement(options: dict) -> str:
    if "sequential_offload_device" in options:
        return "gpu"
    return "cpu-prefetch" if options.get("sequential_prefetch") else "cpu"


def saved(args, variant: str) -> Path:
    return Path(args.out) / f"{args.scheme}-{args.samples}-{variant}"


def time_one(args):
    """One variant in this process; its quantized weights saved for `compare`, its checkpoint for `quality`."""
    from safetensors.torch import save_file

    model, result = run_oneshot(args, args.variant)
    weights = {name: p.detach().contiguous() for name, p in model.state_dict().items()
               if name.endswith(("weight", "weight_scale")) and "layers." in name}
    save_file(weights, str(saved(args, args.variant).with_suffix(".safetensors")))
    model.save_pretrained(saved(args, args.variant), save_compressed=True)
    print("RESULT " + json.dumps(result), flush=True)


def time_variants(args):
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "time-one", "--variant", variant, "--out", args.out, "--samples",
               str(args.samples), "--seq-len", str(args.seq_len), "--scheme", args.scheme, "--source", str(source(args)),
               "--calib", args.calib, "--cap-gib", str(args.cap_gib or 0)]
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

    reference = load_file(str(saved(args, args.reference).with_suffix(".safetensors")))
    report = {}
    for variant in args.variants.split(","):
        other = load_file(str(saved(args, variant).with_suffix(".safetensors")))
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


def quality(args):
    """exatrack's proxy for each variant's checkpoint, and its paired difference to the reference's."""
    from exatrack.compress import proxy

    variants = list(dict.fromkeys([args.reference, *args.variants.split(",")]))
    report = proxy.side_by_side(source(args), {v: saved(args, v) for v in variants}, base=args.reference)
    print(json.dumps(report, indent=1))
    Path(args.json).write_text(json.dumps(report, indent=1))


def cap_memory(gib: float) -> None:
    """A smaller card's memory, before anything allocates, so that every variant plans under it."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total))


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
    parser.add_argument("step", choices=["setup", "breakdown", "profile", "time", "time-one", "compare", "quality"])
    parser.add_argument("--config", default=".gpu/exaone")
    parser.add_argument("--out", default="/tmp/gs")
    parser.add_argument("--source", default=None, help="model folder to quantize (default: --out/bf16, made by setup)")
    parser.add_argument("--calib", default="random", help="random tokens, or a calibration source as quantize --calib")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--scheme", default="W8A8")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--variants", default="default,exact,fast")
    parser.add_argument("--reference", default="default", help="compare, quality: the variant the others are held against")
    parser.add_argument("--cap-gib", type=float, default=0, help="cap this process's GPU memory, e.g. 16 (0: none)")
    parser.add_argument("--json", default="/tmp/gs/result.json")
    args = parser.parse_args()
    if args.cap_gib and args.step != "quality":
        cap_memory(args.cap_gib)
    {"setup": setup, "breakdown": breakdown, "profile": profile, "time": time_variants, "time-one": time_one,
     "compare": compare, "quality": quality}[args.step](args)


if __name__ == "__main__":
    main()
