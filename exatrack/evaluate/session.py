"""`evaluate`: measure a base and its candidates the way the challenge does, in vLLM, in ONE paired
serving session (worker.py), and log each model's evaluation as a run of its own.

An evaluation run is nested under the run that made the checkpoint (the lane's run), so a crash or a
typo during evaluation never touches that run: it stays FINISHED and reusable. MLflow's nested runs
were chosen over MLflow 3's logged models: the checkpoint is a plain artifact folder that vLLM
loads, not a flavour `log_model` writes, and the run tree is what the UI shows at a glance.

Logged on every evaluation run: `<benchmark>.<metric>`, `perf`, `gen_time_s`, `gen_tokens`,
`bench_sec_per_token`, a predictions table per benchmark, `paired.json` (per-row scores and per-chunk
times, what score.py's intervals resample), the fingerprint (what must be equal for two runs' scores
to be comparable) and the session id (which runs were timed side by side).
"""

import logging
import os
import statistics
import uuid
from dataclasses import asdict, dataclass

from exatrack.core import stats, tracking
from exatrack.core.basics import ExatrackError, digest, redact
from exatrack.evaluate import serving
from exatrack.evaluate.benchmarks import REGISTRY, Result, content_hash, subset
from exatrack.models import models
from exatrack.models.models import Model

log = logging.getLogger(__name__)
ALL = "kmmlu_pro,kmmlu_redux,ko_longrag,komt_bench"
PATTERNS = ("whole", "chunks")
INPUTS = "exatrack.eval_inputs"  # tag: the hash of what an evaluation was asked to do, to find it again
PROMPT_MARGIN = 256  # tokens a chat template may add around a turn, for the cheap pre-filter only
FINGERPRINT = "exatrack.fingerprint"  # tag: the hash of the conditions two scores must share to compare
SESSION = "exatrack.session"  # tag: the serving session an evaluation was timed in, beside its base
BASE = "exatrack.base"


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
    pattern: str = "whole"  # how requests reach the engine: whole benchmarks as the grader sends them, or chunks
    passes: int = 3  # whole: timed passes of every benchmark, each run on every model in turn (the paired units)
    chunks: int = 16  # chunks: each benchmark cut into this many, each run on every model in turn
    repeats: int = 1  # timed runs of each unit per model in a row; the fastest counts (jitter only adds time)
    group: int = 6  # models loaded side by side in one session (the base included); more go in further sessions

    def check(self) -> None:
        """Everything that needs no model: refused before any engine starts."""
        for name in self.names():
            REGISTRY[name].check()
        self.sources()
        for name, low in (("limit", 0), ("max_tokens", 1), ("max_model_len", 0), ("passes", 1), ("chunks", 1),
                          ("repeats", 1), ("group", 2)):
            if getattr(self, name) < low:
                raise ExatrackError(f"{name}={getattr(self, name)} is out of range; it must be at least {low}")
        if self.pattern not in PATTERNS:
            raise ExatrackError(f"pattern={self.pattern} is not one of {', '.join(PATTERNS)}")
        if self.kv_cache_dtype not in serving.GRADER_KV_CACHE_DTYPES:
            raise ExatrackError(f"kv_cache_dtype={self.kv_cache_dtype} is not one the grader's vLLM 0.14.1 takes; "
                                f"use one of {', '.join(serving.GRADER_KV_CACHE_DTYPES)}")

    def check_models(self, models: list[Model]) -> None:
        """What each model's own config bounds, before any engine starts."""
        for model in models:
            longest = model.config().get("max_position_embeddings")
            if self.max_model_len and longest and self.max_model_len > longest:
                raise ExatrackError(f"max_model_len={self.max_model_len} is past {model.ref}'s {longest} tokens "
                                    f"(max_position_embeddings); use at most {longest}, or 0 for the model's own")

    def check_prompts(self, rows: dict, models: list[Model]) -> None:
        """Every first turn fits each engine's context, rendered as the worker sends it (the model's
        chat template, encoded without special tokens added): vLLM refuses a longer prompt in the
        middle of a session, after the engines loaded and other benchmarks generated. Only turns
        with more UTF-8 bytes than the context holds tokens (less a margin) can be too long, so
        those alone are tokenized."""
        for model in models:
            limit = self.max_model_len or model.config().get("max_position_embeddings")
            suspects = [(name, row, c["turns"][0]) for name, r in rows.items()
                        for row, c in zip(r, REGISTRY[name].conversations(r, self.greedy))
                        if limit and len(c["turns"][0].encode()) + PROMPT_MARGIN > limit]
            if not suspects:
                continue
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model.folder)
            for name, row, turn in suspects:
                text = tokenizer.apply_chat_template([{"role": "user", "content": turn}], tokenize=False,
                                                     add_generation_prompt=True, enable_thinking=self.thinking)
                if (n := len(tokenizer(text, add_special_tokens=False)["input_ids"])) > limit:
                    raise ExatrackError(
                        f"a {REGISTRY[name].title} question ({str(row.get('id', row.get('question', '')))[:40]!r}) is "
                        f"{n:,} tokens in {model.ref}'s chat template, past the {limit:,} its engine holds "
                        f"(max_model_len); raise --max_model_len, or evaluate rows that fit")

    def timing(self) -> dict:
        """What the timed quantity is: part of the fingerprint, since the batches a benchmark is sent in
        change the time per token (16 chunks of KoMT-Bench ran 10x slower per token than one batch)."""
        if self.pattern == "whole":
            return {"pattern": "whole", "passes": self.passes, "repeats": self.repeats}
        return {"pattern": "chunks", "chunks": self.chunks, "repeats": self.repeats}

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


def inputs_hash(ref: str, settings: Settings) -> str:
    """What an evaluation is asked to do (model, settings, machine, serving spec): a finished
    evaluation with the same hash is reused instead of run again."""
    from exatrack.evaluate.worker import device_name  # standard library only: cheap here too

    serving_env = os.environ.get("EXATRACK_SERVING_PYTHON") or serving.spec()
    return digest([ref, asdict(settings), device_name(), serving_env])


def fingerprint(settings: Settings, rows: dict, response: dict, max_model_len: int) -> dict:
    return {
        "benchmarks": {name: {"rows": len(r), "content": content_hash(r), "version": REGISTRY[name].version,
                              **REGISTRY[name].conditions()} for name, r in rows.items()},
        "generation": {"max_tokens": settings.max_tokens, "thinking": settings.thinking, "greedy": settings.greedy,
                       "max_model_len": max_model_len, "eager": settings.eager, "chat_template": True},
        "timing": settings.timing(),
        "vllm": response["vllm_version"],
        "stack": response["stack"],  # transformers and compressed-tensors read the checkpoint too
        "device": response["device"],
    }


def fingerprint_id(conditions: dict) -> str:
    return digest(conditions)


def kv_cache_dtype(settings: Settings, model: Model) -> str | None:
    """The KV cache dtype asked for, else the one the checkpoint was calibrated for; None: vLLM's own."""
    return settings.kv_cache_dtype if settings.kv_cache_dtype != "auto" else model.kv_cache_dtype


def engine_args(settings: Settings, model: Model, memory: dict) -> dict:
    args = {"seed": 0, "enforce_eager": settings.eager, **memory}
    if settings.max_model_len:
        args["max_model_len"] = settings.max_model_len
    if kv_cache := kv_cache_dtype(settings, model):
        args["kv_cache_dtype"] = kv_cache  # passed explicitly: vLLM must use what the checkpoint was calibrated for
    return args


@dataclass
class Evaluated:
    """What `evaluate` hands on: each model's evaluation run, by reference."""

    base: str  # the base's evaluation run id
    runs: dict  # candidate ref -> its evaluation run id
    failed: dict  # candidate ref -> why it could not be evaluated


def evaluate(base: Model, candidates: list[Model], settings: Settings, parent_run_id: str | None = None,
             lanes: dict | None = None) -> Evaluated:
    """The base and the candidates in sessions of models side by side, the base in each."""
    settings.check()
    settings.check_models([base, *candidates])
    for model in candidates:
        serving.check_requirements(model.requires, model.ref)
    rows, sources = load_rows(settings, [base, *candidates]), settings.sources()
    sizing = Sizing.of([base, *candidates], settings, rows)
    done = Evaluated("", {}, {})
    for group in sizing.sessions(base, candidates, settings.group):
        session = Session(base, group, settings, rows, sources, parent_run_id, lanes or {}, sizing)
        base_run, runs, failed = session.run()
        done.base = done.base or base_run
        done.runs.update(runs)
        done.failed.update(failed)
    return done


@dataclass(frozen=True)
class Sizing:
    """What each engine must hold for its batches to be the grader's: the KV cache the grader's one
    engine fills for the largest benchmark sent whole (or all its cache holds, if less), and the GPU
    memory that takes beside the weights. Engines side by side share one GPU; one with less cache than
    that runs smaller batches than the grader's, and per-token speed depends on the batch."""

    kv_tokens: dict  # model ref -> tokens its engine must hold (None: not known)
    needs: dict  # model ref -> bytes of GPU memory for that (None: not known, or no GPU)
    gpu: int | None  # this GPU's memory in bytes; None without one

    @classmethod
    def of(cls, models: list[Model], settings: Settings, rows: dict) -> "Sizing":
        benchmarks = {name: {"conversations": REGISTRY[name].conversations(r, settings.greedy)} for name, r in rows.items()}
        count = serving.token_counter(models[0].folder)
        wanted = count and serving.kv_tokens_needed(benchmarks, count, {"max_tokens": settings.max_tokens},
                                                    serving.GRADER_ENGINE["max_num_seqs"])
        kv_tokens, needs, gpu = {}, {}, serving.gpu_bytes()
        for m in models:
            dtype = kv_cache_dtype(settings, m)
            holds = serving.grader_kv_tokens(m.folder, dtype)
            kv_tokens[m.ref] = min(wanted, holds) if wanted and holds is not None else wanted
            needs[m.ref] = serving.engine_bytes(m.folder, dtype, kv_tokens[m.ref]) if gpu and kv_tokens[m.ref] else None
        return cls(kv_tokens, needs, gpu)

    def shares(self, models: list[Model]) -> list[float | None]:
        return [self.needs[m.ref] / self.gpu if self.gpu and self.needs[m.ref] else None for m in models]

    def fits(self, models: list[Model]) -> bool:
        shares = self.shares(models)
        return None in shares or sum(shares) <= serving.SIDE_BY_SIDE_SHARE

    def sessions(self, base: Model, candidates: list[Model], most: int) -> list[list[Model]]:
        """The candidates in turn, a new session whenever `most` models or this GPU would be passed.
        Where even the base and one candidate cannot both hold the grader's batches, it is said in one
        line and they share the GPU as they can."""
        groups = [[]]
        for model in candidates:
            if groups[-1] and (len(groups[-1]) + 1 == most or not self.fits([base, *groups[-1], model])):
                groups.append([])
            groups[-1].append(model)
        if starved := next((g for g in groups if g and not self.fits([base, g[0]])), None):
            log.warning("this GPU's %.0f GiB cannot hold the base and %s side by side with the grader's batches "
                        "(%.1f GiB of weights and KV cache): their speed is measured on smaller batches than the "
                        "grader's; evaluate on a larger GPU for a faithful speed", self.gpu / 2**30, starved[0].ref,
                        (self.needs[base.ref] + self.needs[starved[0].ref]) / 2**30)
        return groups


def load_rows(settings: Settings, models: list[Model]) -> dict[str, list[dict]]:
    """Every benchmark's rows, checked value by value, and every first turn against each model's
    context: all of it before any engine starts (`pipeline` asks before its lanes are made)."""
    sources = settings.sources()
    rows = {name: subset(REGISTRY[name].load(sources[name]), settings.limit) for name in settings.names()}
    settings.check_prompts(rows, models)
    return rows


class Session:
    """One serving session: its runs opened first (so a crash marks them FAILED), then the worker."""

    def __init__(self, base, candidates, settings, rows, sources, parent_run_id, lanes, sizing):
        self.models = {"base": base, **{f"candidate{i}": m for i, m in enumerate(candidates)}}
        self.settings, self.rows, self.sources = settings, rows, sources
        self.parent_run_id, self.lanes, self.sizing = parent_run_id, lanes, sizing
        self.id = uuid.uuid4().hex[:12]

    def request(self) -> dict:
        memory = serving.engine_memory(self.sizing.shares(list(self.models.values())))
        benchmarks = {}
        for name, rows in self.rows.items():
            conversations = REGISTRY[name].conversations(rows, self.settings.greedy)
            size = len(conversations) if self.settings.pattern == "whole" else -(-len(conversations) // self.settings.chunks)
            benchmarks[name] = {"conversations": conversations, "chunk_size": max(1, size)}
        return {
            "models": [{"name": key, "path": str(m.folder), "engine": engine_args(self.settings, m, share),
                        "kv_tokens_needed": self.sizing.kv_tokens[m.ref]}
                       for (key, m), share in zip(self.models.items(), memory)],
            "thinking": self.settings.thinking,
            "sampling": {"temperature": 0.0, "max_tokens": self.settings.max_tokens},
            "passes": self.settings.passes if self.settings.pattern == "whole" else 1,
            "repeats": self.settings.repeats,
            "benchmarks": benchmarks,
        }

    def run(self) -> tuple[str, dict, dict]:
        """Every run of the session keeps the engines' log (logs/serving.log), the failed ones too."""
        import tempfile
        from pathlib import Path

        from mlflow import MlflowClient

        client = MlflowClient()
        opened = {key: self.open_run(client, key, model) for key, model in self.models.items()}
        pending = dict(opened)  # runs not ended yet: a crash anywhere below ends them FAILED
        labels = {key: "base" if key == "base" else self.lanes.get(m.ref, m.ref) for key, m in self.models.items()}
        with tempfile.TemporaryDirectory() as tmp:
            log = Path(tmp) / "serving.log"
            try:
                try:
                    response = serving.run_session(self.request(), " and ".join(m.ref for m in self.models.values()),
                                                   log=log, labels=labels)
                finally:
                    if log.exists():
                        for run_id in opened.values():
                            client.log_artifact(run_id, str(log), "logs")
                keep_answers(client, opened, response, self)
                if error := response["models"]["base"].get("error"):
                    raise ExatrackError(f"vLLM could not serve the base {self.models['base'].ref}: {error}")
                failed = {}
                for key, model in self.models.items():
                    if error := response["models"][key].get("error"):
                        failed[model.ref] = error
                        end_failed(client, pending.pop(key), error)
                        continue
                    with tracking.run("evaluation", run_id=pending.pop(key)):
                        log_evaluation(key, self, response)
            except BaseException as err:
                message = str(getattr(err, "message", err))
                for run_id in pending.values():
                    end_failed(client, run_id, message, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
                if isinstance(err, ExatrackError) and log.exists():
                    where = tracking.artifact_location(opened["base"], "logs/serving.log")
                    raise ExatrackError(f"{message}; the engines' full log: {where}")
                raise
        runs = {m.ref: opened[k] for k, m in self.models.items() if k != "base" and m.ref not in failed}
        return opened["base"], runs, failed

    def open_run(self, client, key: str, model: Model) -> str:
        parent = model.run_id or self.parent_run_id
        lane = self.lanes.get(model.ref)
        # Every run of a session is on the board of its base: the model it was measured against.
        tags = {"exatrack.kind": "evaluation", SESSION: self.id, "exatrack.evaluated_model": model.ref,
                models.SOURCE_MODEL: self.models["base"].source, INPUTS: inputs_hash(model.ref, self.settings),
                models.MODEL_TYPE: model.config().get("model_type", ""),
                "mlflow.note.content": description(model, key == "base", lane), **tracking.owner_tags()}
        if parent:
            tags["mlflow.parentRunId"] = parent
        if model.run_id:
            tags["exatrack.checkpoint_run"] = model.run_id
        if lane:
            tags["exatrack.lane"] = lane
        if key == "base":
            tags[BASE] = "true"
        if commit := tracking.git_commit():
            tags["mlflow.source.git.commit"] = commit
        name = f"eval {'base' if key == 'base' else lane or model.ref}"
        return client.create_run(tracking.use_experiment(), run_name=name, tags=tags).info.run_id


def scored_or_failed(name: str, rows: list[dict], answers: list) -> Result:
    """A benchmark whose scoring fails is left out of Perf (as an unjudged KoMT-Bench is), with the
    reason; the session and the other benchmarks go on, and its answers are in answers.json."""
    try:
        return REGISTRY[name].score(rows, answers)
    except Exception as err:
        why = f"{type(err).__name__}: {str(err)[:300]}"
        log.warning("%s could not be scored (%s): left out of perf; its answers are in answers.json", name, why)
        predictions = [{"id": i, "prompt": "", "output": outputs[0] if outputs else "", "parsed": None, "gold": None,
                        "score": None} for i, outputs in enumerate(answers)]
        return Result({REGISTRY[name].primary: None, "n": len(rows)}, predictions, {"score_error": why})


def keep_answers(client, opened: dict, response: dict, session: "Session") -> None:
    """Every model's answers and timings, as the engine returned them, on its run before anything is
    scored (answers.json), with what they were generated under (generation.json): a scoring failure
    (a judge, a bad row) then loses no generation, and `exatrack rescore` scores them again."""
    for key, run_id in opened.items():
        generated = {name: bench[key] for name, bench in response["benchmarks"].items() if key in bench}
        if generated:
            client.log_dict(run_id, generated, "answers.json")
            client.log_dict(run_id, generation(key, session, response), "generation.json")


def generation(key: str, session: "Session", response: dict) -> dict:
    """What one model's answers were generated under: the settings, the rows (their sources and content
    hashes) and the serving stack, everything its scores and fingerprint are made of beside the answers."""
    return {"settings": asdict(session.settings), "sources": {name: session.sources[name] for name in session.rows},
            "content": {name: content_hash(rows) for name, rows in session.rows.items()},
            "engine": response["models"][key], "base_max_model_len": response["models"]["base"].get("max_model_len"),
            **{k: response[k] for k in ("vllm_version", "stack", "device")}}


def end_failed(client, run_id: str, why: str, status: str = "FAILED") -> None:
    client.set_tag(run_id, "exatrack.error", redact(why)[:5000])
    if status == "KILLED":
        client.set_tag(run_id, tracking.ENDED, tracking.INTERRUPTED)
    client.set_terminated(run_id, status)


def description(model: Model, is_base: bool, lane: str | None) -> str:
    what = "the base (uncompressed) model" if is_base else f"lane {lane}" if lane else model.ref
    return (f"Evaluation of {what} ({model.ref}) in vLLM, timed side by side with its base in one serving "
            "session; `rank` adds perf_norm, speed_norm and score with 95% intervals.")


def log_evaluation(key: str, session: Session, response: dict) -> None:
    used = response["models"][key]
    check_kv_cache(kv_cache_dtype(session.settings, session.models[key]), used["kv_cache_dtype"])
    generated = {name: bench[key] for name, bench in response["benchmarks"].items()}
    log_scores(session.settings, session.rows, generated, generation(key, session, response))


def log_scores(settings: Settings, rows: dict, generated: dict, kept: dict) -> None:
    """One model's scores, speed and fingerprint from its answers (`generated`, as answers.json keeps
    them) and what they were generated under (`kept`, as generation.json keeps it), on the active run:
    what `evaluate` logs after its session and `rescore` logs again."""
    import mlflow

    answers = {name: g["answers"] for name, g in generated.items()}
    results = {name: scored_or_failed(name, rows[name], answers[name]) for name in rows}
    used = kept["engine"]
    conditions = fingerprint(settings, rows, kept, kept["base_max_model_len"])
    mlflow.log_metrics(evaluation_metrics(results, generated, used["load_time_s"]))
    mlflow.log_metrics({k: used[k] for k in ("kv_cache_tokens", "kv_tokens_needed") if used.get(k) is not None})
    scored = [n for n, r in results.items() if r.metrics[REGISTRY[n].primary] is not None]
    tags = {
        FINGERPRINT: fingerprint_id(conditions),
        "exatrack.vllm_version": kept["vllm_version"],
        "exatrack.serving_stack": ", ".join(f"{k} {v}" for k, v in kept["stack"].items()),
        "exatrack.device": kept["device"],
        "exatrack.kv_cache_dtype": used["kv_cache_dtype"],
        "exatrack.kv_starved": str(bool(used.get("starved"))).lower(),
        "exatrack.perf_benchmarks": ",".join(scored),
        "exatrack.timing": ",".join(sorted({g["clock"] for g in generated.values()})),
        **{f"eval.{k}": str(v) for k, v in asdict(settings).items()},
        **{f"eval.source.{name}": kept["sources"][name] for name in rows},
        **{f"{name}.{k}": str(v) for name, r in results.items() for k, v in r.notes.items()},
    }
    mlflow.set_tags({k: redact(v) for k, v in tags.items()})
    mlflow.log_dict(conditions, "fingerprint.json")
    for name, benchmark_rows in rows.items():
        tracking.log_dataset(name, REGISTRY[name].location(kept["sources"][name]), benchmark_rows, "evaluation",
                             REGISTRY[name].split)
    mlflow.log_dict({"items": {name: REGISTRY[name].item_scores(r) for name, r in results.items()},
                     "chunks": {name: g["chunks"] for name, g in generated.items()}}, "paired.json")
    for name, result in results.items():
        table = {k: [str(p.get(k)) if k in ("parsed", "gold", "id") else p.get(k) for p in result.predictions]
                 for k in result.predictions[0]}
        tracking.log_table(table, f"predictions/{name}.json")
    skipped = [name for name in results if name not in scored]
    if skipped:
        log.warning("left out of perf (no score): %s", ", ".join(skipped))


def evaluation_metrics(results: dict, generated: dict, load_time_s: float) -> dict:
    """The challenge's quantities, for one pass over each benchmark: its generation time is its units'
    times summed, over the passes, divided by their number; with repeats, a unit's time is its fastest
    run, the one host jitter disturbed least (the generations are the same)."""
    passes = {name: 1 + max(c.get("pass", 0) for c in g["chunks"]) for name, g in generated.items()}
    seconds = {name: sum(stats.chunk_time(c) for c in g["chunks"]) / passes[name] for name, g in generated.items()}
    tokens = {name: sum(c["tokens"] for c in g["chunks"]) / passes[name] for name, g in generated.items()}
    metrics = {f"{name}.{k}": v for name, r in results.items() for k, v in r.metrics.items() if v is not None}
    metrics.update({f"{name}.gen_time_s": s for name, s in seconds.items()})
    metrics.update({f"{name}.gen_tokens": t for name, t in tokens.items()})
    metrics.update(gen_time_s=sum(seconds.values()), gen_tokens=sum(tokens.values()), load_time_s=load_time_s)
    if metrics["gen_tokens"]:
        metrics["bench_sec_per_token"] = metrics["gen_time_s"] / metrics["gen_tokens"]
    scored = [r.metrics[REGISTRY[n].primary] for n, r in results.items() if r.metrics[REGISTRY[n].primary] is not None]
    if scored:
        metrics["perf"] = sum(scored) / len(scored)
    for name, result in results.items():
        if (error := standard_error(REGISTRY[name].item_scores(result))) is not None:
            metrics[f"{name}.{REGISTRY[name].primary}_stderr"] = error
    return metrics


def standard_error(items: list) -> float | None:
    """Of the mean of the scored items, as lm-evaluation-harness reports beside each metric."""
    scored = [v for v in items if v is not None]
    return statistics.stdev(scored) / len(scored) ** 0.5 if len(scored) > 1 else None


def check_kv_cache(asked: str | None, used: str) -> None:
    """The team's FP8-KV attempt silently ran with a bf16 cache: say so when vLLM used another dtype."""
    import mlflow

    if asked and not used.startswith(asked):
        log.warning("asked vLLM for a %s KV cache but it used %s", asked, used)
        mlflow.set_tag("exatrack.kv_cache_mismatch", f"asked {asked}, vLLM used {used}")
