"""Issue 13 on a 2-GPU box: the same GPTQ W8A8 lanes of the full-size EXAONE-4.0-1.2B shape (a damp
sweep, random weights, random-token calibration) fanned out through Ray with one GPU per task, on a
local cluster of 1 GPU and then of 2 GPUs, in one call. Each task is exatrack's own compression step
(`quantize.compress`: the recipe as data, the GPTQ fast path, the checkpoint saved); what is left out
is MLflow logging, which the CPU tests cover (tests/lanes/test_ray_lanes.py).

  python3 benchmarks/ray_gptq_lanes.py --config .gpu/exaone --out /tmp/gs --json $OUT/ray-lanes.json
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def lane(source: str, damp: float, samples: int, seq_len: int, out: str) -> dict:
    """One lane, in a Ray worker that sees one GPU."""
    import socket

    import ray
    import torch
    from transformers import AutoTokenizer

    from benchmarks.gptq_speed import calibration
    from exatrack.compress import quantize, recipes

    started = time.perf_counter()
    recipe = recipes.load("w8a8")
    values = recipe.resolve_params({"damp": damp, "num_samples": samples, "max_seq_len": seq_len})
    tokenizer = AutoTokenizer.from_pretrained(source)
    split, how = quantize.compress(Path(source), tokenizer, recipe.render(values), Path(out),
                                   calibration(samples, seq_len, tokenizer.vocab_size), values)
    return {"damp": damp, "seconds": time.perf_counter() - started, "split": split, **how, "host": socket.gethostname(),
            "gpu_ids": ray.get_gpu_ids(), "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def sweep(gpus: int, args) -> dict:
    import ray

    ray.init(num_gpus=gpus, num_cpus=8, include_dashboard=False, log_to_driver=False, _temp_dir="/tmp/ray",
             runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}})
    task = ray.remote(num_gpus=1, max_retries=0)(lane)
    started = time.perf_counter()
    lanes = ray.get([task.remote(str(Path(args.out) / "bf16"), damp, args.samples, 2048,
                                 str(Path(args.out) / f"lanes{gpus}" / f"d{damp}")) for damp in args.damps])
    seconds = time.perf_counter() - started
    ray.shutdown()
    return {"gpus": gpus, "seconds": seconds, "lanes": lanes}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=".gpu/exaone")
    parser.add_argument("--out", default="/tmp/gs")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--damps", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1])
    parser.add_argument("--json", default="/tmp/gs/ray-lanes.json")
    args = parser.parse_args()
    from benchmarks.real_size import real_config, save_bf16

    if not (Path(args.out) / "bf16" / "config.json").exists():
        save_bf16(real_config(Path(args.config)), Path(args.config), Path(args.out) / "bf16")
    result = {"what": f"{len(args.damps)} GPTQ W8A8 lanes x {args.samples} samples x 2048 tokens, full-size shape, "
                      "through Ray with one GPU per task", "runs": []}
    for gpus in (1, 2):
        result["runs"].append(sweep(gpus, args))
        print(json.dumps(result["runs"][-1]), flush=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    one, two = (r["seconds"] for r in result["runs"])
    result["two_over_one"] = two / one
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({"one_gpu_s": one, "two_gpus_s": two, "two_over_one": two / one}))


if __name__ == "__main__":
    main()
