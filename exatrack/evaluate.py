"""`evaluate` and `baseline`: measure a checkpoint the way the challenge does, in vLLM, on one run.

Logged: `<benchmark>.<metric>`, `perf` (the mean of the benchmarks that scored), `gen_time_s`,
`gen_tokens`, `bench_sec_per_token`, a predictions table per benchmark, and the evaluation
fingerprint: what must be equal for two runs' scores to be comparable (benchmarks and their rows,
generation settings, vLLM version, device). `rank` never scores a run against a base of another
fingerprint.
"""

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, replace

from exatrack import ExatrackError, models, serving, tracking
from exatrack.bench import REGISTRY, content_hash, subset

log = logging.getLogger(__name__)
ALL = "kmmlu_pro,kmmlu_redux,ko_longrag,komt_bench"
EVAL_KEY = "exatrack.eval_key"  # the tag naming what an evaluation measured with (see eval_key)


@dataclass(frozen=True)
class Settings:
    benchmarks: str = ALL
    data: str = "hub"  # hub | sample, then name=path overrides: "hub,kmmlu_redux=/data/redux.jsonl"
    limit: int = 0  # rows per benchmark, 0 = all
    max_tokens: int = 16384  # the challenge grader's budget
    thinking: bool = False  # EXAONE 4.0's reasoning mode (enable_thinking in the chat template)
    greedy: bool = True  # the grader decodes greedily; False uses MT-Bench's temperatures for KoMT
    max_model_len: int = 0  # 0 = the model's own
    eager: bool = False  # skip torch.compile/CUDA graphs: faster start, slower decode
    kv_cache_dtype: str = "auto"

    def names(self) -> list[str]:
        names = [n.strip() for n in self.benchmarks.split(",") if n.strip()]
        unknown = [n for n in names if n not in REGISTRY]
        if unknown or not names:
            raise ExatrackError(f"unknown benchmark '{(unknown or [''])[0]}'; choose from {', '.join(REGISTRY)}")
        return names

    def sources(self) -> dict[str, str]:
        default, overrides = "hub", {}
        for part in filter(None, (p.strip() for p in self.data.split(","))):
            name, _, path = part.partition("=")
            if path:
                if name not in REGISTRY:
                    raise ExatrackError(f"data override '{part}' names no benchmark; use one of {', '.join(REGISTRY)}")
                overrides[name] = path
            elif part in ("hub", "sample"):
                default = part
            else:
                raise ExatrackError(f"data='{part}' is neither hub, sample nor name=path")
        return {name: overrides.get(name, default) for name in REGISTRY}


def engine_args(settings: Settings) -> dict:
    args = {"seed": 0, "gpu_memory_utilization": serving.memory_share(), "enforce_eager": settings.eager}
    if settings.max_model_len:
        args["max_model_len"] = settings.max_model_len
    if settings.kv_cache_dtype != "auto":
        args["kv_cache_dtype"] = settings.kv_cache_dtype
    return args


def kv_cache_dtype_of(folder) -> str | None:
    """The KV cache dtype the checkpoint's quantization_config was calibrated for, if any."""
    config = json.loads((folder / "config.json").read_text())
    scheme = (config.get("quantization_config") or {}).get("kv_cache_scheme") or {}
    return "fp8" if scheme.get("type") == "float" and scheme.get("num_bits") == 8 else None


def required_by_run(model: str) -> dict:
    """Hardware the checkpoint's recipe needs, as its quantize run recorded it."""
    import mlflow

    run_id = models.run_id_of(model)
    if not run_id:
        return {}
    tags = mlflow.get_run(run_id).data.tags
    prefix = "exatrack.requires."
    return {k[len(prefix):]: v for k, v in tags.items() if k.startswith(prefix)}


def fingerprint(settings: Settings, rows: dict, response: dict) -> dict:
    return {
        "benchmarks": {name: {"rows": len(r), "content": content_hash(r)} for name, r in rows.items()},
        "generation": {"max_tokens": settings.max_tokens, "thinking": settings.thinking, "greedy": settings.greedy,
                       "max_model_len": response["max_model_len"], "eager": settings.eager, "chat_template": True},
        "vllm": response["vllm_version"],
        "device": response["device"],
    }


def fingerprint_id(print_: dict) -> str:
    return hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]


def eval_key(model: str, settings: Settings) -> str:
    """Identifies an evaluation before it runs (model, settings, machine, serving spec), for reuse."""
    from exatrack.worker import device_name  # standard library only: cheap here too

    serving_env = os.environ.get("EXATRACK_SERVING_PYTHON") or serving.spec()
    parts = [model, asdict(settings), device_name(), serving_env]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def evaluate(model: str, settings: Settings, baseline: bool = False, parent_run_id: str | None = None) -> str:
    """Evaluate `model`; log onto its own run when it is a run's checkpoint, else onto a new run."""
    run_id = None if baseline else models.run_id_of(model)
    with tracking.run("baseline" if baseline else "evaluate", run_id=run_id, run_name="baseline" if baseline else None,
                      parent_run_id=parent_run_id) as active:
        serving.check_requirements(required_by_run(model), model)
        names, sources = settings.names(), settings.sources()
        rows = {name: subset(REGISTRY[name].load(sources[name]), settings.limit) for name in names}
        folder = models.resolve(model)
        kv_needed = kv_cache_dtype_of(folder)
        if kv_needed and settings.kv_cache_dtype == "auto":
            settings = replace(settings, kv_cache_dtype=kv_needed)  # pass it explicitly: vLLM must use it
        request = {
            "engine": engine_args(settings),
            "thinking": settings.thinking,
            "sampling": {"temperature": 0.0, "max_tokens": settings.max_tokens},
            "benchmarks": {name: REGISTRY[name].conversations(r, settings.greedy) for name, r in rows.items()},
        }
        response = serving.generate(folder, request)
        check_kv_cache(settings, response)
        results = {name: REGISTRY[name].score(rows[name], response["benchmarks"][name]["answers"]) for name in names}
        print_ = fingerprint(settings, rows, response)
        log_evaluation(model, settings, baseline, sources, rows, response, results, print_)
        import mlflow

        mlflow.set_tag(EVAL_KEY, eval_key(model, settings))
        return active.info.run_id


def check_kv_cache(settings: Settings, response: dict) -> None:
    """The team's FP8-KV attempt silently ran with a bf16 cache: say so when vLLM used another dtype."""
    import mlflow

    asked, used = settings.kv_cache_dtype, response["kv_cache_dtype"]
    if asked != "auto" and not used.startswith(asked):
        log.warning("asked vLLM for a %s KV cache but it used %s", asked, used)
        mlflow.set_tag("exatrack.kv_cache_mismatch", f"asked {asked}, vLLM used {used}")


def log_evaluation(model, settings, baseline, sources, rows, response, results, print_) -> None:
    import mlflow

    generated = response["benchmarks"]
    scored = {name: r.metrics[REGISTRY[name].primary] for name, r in results.items() if r.metrics[REGISTRY[name].primary] is not None}
    gen_time = sum(g["gen_time_s"] for g in generated.values())
    gen_tokens = sum(g["gen_tokens"] for g in generated.values())
    metrics = {f"{name}.{key}": value for name, r in results.items() for key, value in r.metrics.items() if value is not None}
    metrics.update({f"{name}.gen_time_s": g["gen_time_s"] for name, g in generated.items()})
    metrics.update({f"{name}.gen_tokens": g["gen_tokens"] for name, g in generated.items()})
    metrics.update(gen_time_s=gen_time, gen_tokens=gen_tokens, load_time_s=response["load_time_s"])
    if gen_tokens:
        metrics["bench_sec_per_token"] = gen_time / gen_tokens
    if scored:
        metrics["perf"] = sum(scored.values()) / len(scored)
    mlflow.log_metrics(metrics)
    tags = {
        "exatrack.fingerprint": fingerprint_id(print_),
        "exatrack.vllm_version": response["vllm_version"],
        "exatrack.device": response["device"],
        "exatrack.kv_cache_dtype": response["kv_cache_dtype"],
        "exatrack.perf_benchmarks": ",".join(scored),
        "exatrack.timing": ",".join(sorted({g["timing"] for g in generated.values()})),
        "exatrack.evaluated_model": model,
        **{f"eval.{key}": str(value) for key, value in asdict(settings).items()},
        **{f"eval.source.{name}": sources[name] for name in rows},
        **{f"{name}.{key}": str(value) for name, r in results.items() for key, value in r.notes.items()},
    }
    if baseline:
        tags.update({"exatrack.base": "true", models.SOURCE_MODEL: model})
    mlflow.set_tags({k: tracking.redact(v) for k, v in tags.items()})
    mlflow.log_dict(print_, "fingerprint.json")
    for name, result in results.items():
        table = {key: [str(p.get(key)) if key in ("parsed", "gold", "id") else p.get(key) for p in result.predictions]
                 for key in result.predictions[0]}
        mlflow.log_table(table, artifact_file=f"predictions/{name}.json")
    skipped = [name for name in results if name not in scored]
    if skipped:
        log.warning("left out of perf (no score): %s", ", ".join(skipped))
