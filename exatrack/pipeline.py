"""`pipeline`: baseline, then each lane of a lanes file through its steps and `evaluate`, then rank
and promote; all under one parent run, so the MLflow UI shows one pipeline as one tree.

A lane is one quantize step (`{recipe: w8a8, damp: 0.02}`) or a chain of steps, each taking the
checkpoint of the one before: `{steps: [{prune: {drop: 2}}, {distill: {epochs: 1}}, {quantize: {recipe: w8a8}}]}`.

Re-running resumes: a step already done with the same model, earlier steps, parameters and
calibration data is reused (unless `force`), so lanes sharing a prefix (prune -> distill -> w8a8 and
prune -> distill -> w4a16) prune and distil once; a lane already evaluated with the same settings is
reused whole, and so is the baseline. A lane that crashes leaves its run FAILED and the others go on.
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from exatrack import ExatrackError, compress, distill, evaluate, prune, recipes, serving, sft, tracking
from exatrack.rank import REGISTERED_MODEL, markdown, rank

log = logging.getLogger(__name__)
STEP_KEY = "exatrack.step_key"


def quantize(model: str, params: dict, **where) -> str:
    params = dict(params)
    return compress.quantize(model, params.pop("recipe"), params, **where)


# What a lane's step may be: each takes a model reference and its parameters, and returns the run
# whose `checkpoint` the next step (or `evaluate`) takes.
STEPS = {"quantize": quantize, "prune": prune.prune, "distill": distill.distill, "sft": sft.sft}


@dataclass
class Outcome:
    lanes: dict  # lane -> "done" | "reused" | "failed: <reason>"
    board: object
    submission: Path | None


def load_lanes(path: str, only: str | None) -> dict[str, list[tuple[str, dict]]]:
    """Each lane as its list of (step, parameters)."""
    file = Path(path)
    if not file.exists():
        raise ExatrackError(f"lanes file {file} does not exist; pass e.g. --lanes recipes/lanes.yaml")
    try:
        lanes = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("lanes")
    except yaml.YAMLError as err:
        raise ExatrackError(f"lanes file {file} is not valid YAML ({getattr(err, 'problem', err)})")
    if not isinstance(lanes, dict):
        raise ExatrackError(f"lanes file {file} needs 'lanes:' mapping each lane name to {{recipe: ..., params...}} "
                            "or {steps: [{step: {params...}}, ...]}")
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in lanes]
        if unknown:
            raise ExatrackError(f"lane '{unknown[0]}' is not in {file}; its lanes are {', '.join(lanes)}")
        lanes = {n: lanes[n] for n in wanted}
    return {name: steps_of(name, spec, file) for name, spec in lanes.items()}


def steps_of(name: str, spec, file: Path) -> list[tuple[str, dict]]:
    if isinstance(spec, dict) and "recipe" in spec:
        return [("quantize", spec)]
    chain = spec.get("steps") if isinstance(spec, dict) else None
    if not isinstance(chain, list) or not chain or not all(isinstance(s, dict) and len(s) == 1 for s in chain):
        raise ExatrackError(f"lane {name} in {file} needs 'recipe:' or 'steps:', a list of {{step: {{params}}}}")
    steps = [(step, params or {}) for s in chain for step, params in s.items()]
    for step, params in steps:
        if step not in STEPS:
            raise ExatrackError(f"lane {name} in {file} has an unknown step '{step}'; steps are {', '.join(STEPS)}")
        if step == "quantize" and "recipe" not in params:
            raise ExatrackError(f"lane {name} in {file}: its quantize step needs a recipe, e.g. {{quantize: {{recipe: w8a8}}}}")
    return steps


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_of(run_id: str) -> str:
    return f"runs:/{run_id}/{compress.CHECKPOINT}"


def find_base(client, experiment_id: str, eval_key: str):
    """The newest finished baseline of this experiment evaluated with these settings."""
    runs = client.search_runs([experiment_id], f"attributes.status = 'FINISHED' and tags.`{evaluate.EVAL_KEY}` = "
                              f"'{eval_key}' and tags.`exatrack.base` = 'true'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def find_step(client, experiment_id: str, step_key: str, settings=None, under: str | None = None):
    """The newest finished run of this step (of this pipeline only, when `under` names it); for a lane's
    last step, one not evaluated under other settings."""
    query = f"attributes.status = 'FINISHED' and tags.`{STEP_KEY}` = '{step_key}'"
    if under:
        query += f" and tags.`mlflow.parentRunId` = '{under}'"
    runs = client.search_runs([experiment_id], query, max_results=50, order_by=["attributes.start_time DESC"])
    for run in runs:
        evaluated = run.data.tags.get(evaluate.EVAL_KEY)
        if settings is None or evaluated in (None, evaluate.eval_key(checkpoint_of(run.info.run_id), settings)):
            return run
    return None


def adopt(client, run, parent_id: str) -> None:
    """A reused run joins this pipeline's tree."""
    client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)


def run_lane(client, experiment_id: str, name: str, steps: list, model: str, calib: str | None, settings,
             parent_id: str, force: bool) -> str:
    """Refuse a lane this machine cannot serve before anything runs, then its steps, then evaluate."""
    for recipe in (recipes.load(params["recipe"]) for step, params in steps if step == "quantize"):
        recipe.check_packages()
        serving.check_requirements(recipe.requires, f"lane {name} (recipe {recipe.name})")
    current, reused = model, True
    for i, (step, params) in enumerate(steps):
        step_key = key(model, steps[:i + 1], calib)
        last = i == len(steps) - 1
        # forced: redo what earlier pipelines did, but still share a prefix between this one's lanes
        run = find_step(client, experiment_id, step_key, settings if last else None, parent_id if force else None)
        if run:
            adopt(client, run, parent_id)
            run_id = run.info.run_id
        else:
            reused = False
            tags = {"exatrack.lane": name, STEP_KEY: step_key}
            run_id = STEPS[step](current, params, calib=calib, parent_run_id=parent_id, tags=tags)
        current = checkpoint_of(run_id)
    client.set_tag(run_id, "exatrack.lane", name)  # the lane ranked by this run, whichever lane made it
    if reused and client.get_run(run_id).data.tags.get(evaluate.EVAL_KEY) == evaluate.eval_key(current, settings):
        return "reused"
    evaluate.evaluate(current, settings, parent_run_id=parent_id)
    return "done"


def pipeline(model: str, lanes_file: str, settings, only: str | None = None, calib: str | None = None,
             force: bool = False, model_name: str = REGISTERED_MODEL, out: str = "submit.zip",
             verify: str = "files") -> Outcome:
    import mlflow
    from mlflow import MlflowClient

    from exatrack.package import promote

    client = MlflowClient()
    lanes = load_lanes(lanes_file, only)
    outcome = {}
    with tracking.run("pipeline", run_name=f"pipeline {Path(lanes_file).stem}") as parent:
        parent_id = parent.info.run_id
        mlflow.log_params({"model": model, "lanes": lanes_file, "only": only or "all", "force": force,
                           **{f"eval.{k}": v for k, v in asdict(settings).items()}})
        experiment = parent.info.experiment_id
        base = None if force else find_base(client, experiment, evaluate.eval_key(model, settings))
        if base:
            adopt(client, base, parent_id)
        else:
            evaluate.evaluate(model, settings, baseline=True, parent_run_id=parent_id)
        for name, steps in lanes.items():
            try:
                outcome[name] = run_lane(client, experiment, name, steps, model, calib, settings, parent_id, force)
            except Exception as err:  # one lane's crash must not stop the others
                outcome[name] = f"failed: {str(getattr(err, 'message', err)).splitlines()[0][:300]}"
                log.warning("lane %s %s", name, outcome[name])
        mlflow.set_tags({f"lane.{n}": s[:250] for n, s in outcome.items()})
        board = rank(model_name, parent_run_id=parent_id)
        submission = None
        if board.champion:
            submission = promote(model_name=model_name, out=out, verify=verify, parent_run_id=parent_id)
        mlflow.log_text(markdown(board), "leaderboard.md")
    return Outcome(outcome, board, submission)
