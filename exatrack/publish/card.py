"""A registered version's model card: what a teammate opening the Model Registry needs to know without
opening a run. What the model is (its lineage: the source model and each step's recipe and
parameters), how it scored and against what (its board row with intervals, the fingerprint it was
measured under), where it loses quality (recovery per benchmark, generated tokens against the base's),
whether the grader's stack reads it as exatrack measured it, and any official score recorded.

Everything is read back from the runs and the version's tags, so the card can be written again
whenever one of them changes (a re-ranking, a promotion's grader check).
"""

from exatrack.evaluate.benchmarks import REGISTRY

SECTIONS = ("Model", "Lineage", "Score", "Recovery per benchmark", "Measured under", "Grader check", "Official score")
STEP_PARAMS_SKIPPED = ("model",)  # the previous step, shown as the line above


def lineage(client, run_id: str) -> list[str]:
    """The steps that made the checkpoint, oldest first: each run's kind, recipe and parameters,
    followed back through the `model` parameter of runs that started from another run's checkpoint."""
    steps, seen = [], set()
    while run_id and run_id not in seen:
        seen.add(run_id)
        run = client.get_run(run_id)
        params, tags = run.data.params, run.data.tags
        what = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in STEP_PARAMS_SKIPPED)
        steps.append(f"{tags.get('exatrack.kind', 'run')} (run {run_id}){': ' + what if what else ''}")
        parent = params.get("model", "")
        if not parent.startswith("runs:/"):
            steps.append(f"source model: {parent or tags.get('exatrack.source_model', 'unknown')}")
            break
        run_id = parent[len("runs:/"):].split("/", 1)[0]
    return steps[::-1]


def interval(metrics: dict, key: str, digits: int = 4) -> str:
    if key not in metrics:
        return "not ranked"
    low, high = metrics.get(f"{key}_low"), metrics.get(f"{key}_high")
    spread = f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else ""
    return f"{metrics[key]:.{digits}f}{spread}"


def recovery_lines(metrics: dict) -> list[str]:
    lines = []
    for name in REGISTRY:
        ratio, tokens = f"{name}.recovery", metrics.get(f"{name}.token_ratio")
        if ratio in metrics or tokens is not None:
            score = interval(metrics, ratio) if ratio in metrics else "not scored"
            lines.append(f"- {REGISTRY[name].title}: {score} of the base's score; "
                         f"{'%.2fx' % tokens if tokens is not None else 'unknown'} the base's generated tokens")
    return lines or ["- not ranked yet"]


def card(client, model_name: str, version) -> str:
    """The card of one registered version, in markdown (MLflow shows a version's description so)."""
    tags = version.tags or {}
    evaluation = client.get_run(tags["evaluation_run"]) if tags.get("evaluation_run") else None
    metrics = evaluation.data.metrics if evaluation else {}
    eval_tags = evaluation.data.tags if evaluation else {}
    checkpoint_metrics = client.get_run(version.run_id).data.metrics
    official = checkpoint_metrics.get("official_score", metrics.get("official_score"))
    sections = {
        "Model": [f"{model_name} version {version.version}: the checkpoint of run {version.run_id}"
                  + (f", lane {eval_tags['exatrack.lane']}" if eval_tags.get("exatrack.lane") else "")],
        "Lineage": [f"{i}. {step}" for i, step in enumerate(lineage(client, version.run_id), start=1)],
        "Score": [f"- score {interval(metrics, 'score')} (95% CI), rank {int(metrics['rank']) if 'rank' in metrics else '-'}",
                  f"- PerfNorm {interval(metrics, 'perf_norm')}, SpeedNorm {interval(metrics, 'speed_norm')}",
                  f"- Perf {metrics.get('perf', float('nan')):.4f} on {eval_tags.get('exatrack.score_benchmarks', '-')}; "
                  f"{metrics.get('bench_sec_per_token', float('nan')):.3e} s per generated token",
                  f"- tied with the leader: {tags.get('tied_with') or 'no lane'}"],
        "Recovery per benchmark": recovery_lines(metrics),
        "Measured under": [f"- fingerprint {tags.get('fingerprint', '-')}, evaluation run {tags.get('evaluation_run', '-')}",
                           f"- {eval_tags.get('exatrack.device', '-')}; {eval_tags.get('exatrack.serving_stack', '-')}"],
        "Grader check": [f"- {tags.get('grader_check', 'not checked yet (exatrack promote checks it)')}"],
        "Official score": [f"- {official:.4f}" if official is not None else "- none recorded (exatrack record-official)"],
    }
    return "\n".join(f"### {title}\n" + "\n".join(sections[title]) + "\n" for title in SECTIONS)


def write(client, model_name: str, version_number: str) -> str:
    """The version's description set to its card, as it stands now; returns the card."""
    version = client.get_model_version(model_name, version_number)
    text = card(client, model_name, version)
    client.update_model_version(model_name, version_number, description=text)
    return text


def of(model_name: str, which: str) -> str:
    """The card of the version `which` names (a number or an alias), as it stands now."""
    from mlflow import MlflowClient

    client = MlflowClient()
    version = (client.get_model_version(model_name, which) if which.isdigit()
               else client.get_model_version_by_alias(model_name, which))
    return card(client, model_name, version)
