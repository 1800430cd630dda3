"""`pipeline`: baseline, then each lane of a lanes file through quantize -> evaluate, then rank and
promote; all under one parent run, so the MLflow UI shows one pipeline as one tree.

Re-running resumes: a lane already done with the same model, parameters, calibration data and
evaluation settings is reused (unless `force`), and so is the baseline. A lane that crashes leaves
its run FAILED and the other lanes go on.
"""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from exatrack import ExatrackError, compress, evaluate, recipes, serving, tracking
from exatrack.rank import REGISTERED_MODEL, markdown, rank

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    lanes: dict  # lane -> "done" | "reused" | "failed: <reason>"
    board: object
    submission: Path | None


def load_lanes(path: str, only: str | None) -> dict[str, dict]:
    file = Path(path)
    if not file.exists():
        raise ExatrackError(f"lanes file {file} does not exist; pass e.g. --lanes recipes/lanes.yaml")
    try:
        lanes = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("lanes")
    except yaml.YAMLError as err:
        raise ExatrackError(f"lanes file {file} is not valid YAML ({getattr(err, 'problem', err)})")
    if not isinstance(lanes, dict) or not all(isinstance(v, dict) and "recipe" in v for v in lanes.values()):
        raise ExatrackError(f"lanes file {file} needs 'lanes:' mapping each lane name to {{recipe: ..., params...}}")
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in lanes]
        if unknown:
            raise ExatrackError(f"lane '{unknown[0]}' is not in {file}; its lanes are {', '.join(lanes)}")
        lanes = {n: lanes[n] for n in wanted}
    return lanes


def key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_done(client, experiment_id: str, tag: str, value: str):
    """A finished, evaluated run of this experiment carrying tag=value (the newest)."""
    runs = client.search_runs([experiment_id], f"attributes.status = 'FINISHED' and tags.`{tag}` = '{value}'",
                              max_results=50, order_by=["attributes.start_time DESC"])
    return next((r for r in runs if "perf" in r.data.metrics), None)


def adopt(client, run, parent_id: str) -> None:
    """A reused run joins this pipeline's tree."""
    client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)


def run_lane(name: str, spec: dict, model: str, calib: str | None, settings, lane_key: str, parent_id: str) -> str:
    """Refuse a lane this machine cannot serve before compressing anything, then quantize and evaluate."""
    serving.check_requirements(recipes.load(spec["recipe"]).requires, f"lane {name} (recipe {spec['recipe']})")
    params = {k: str(v) for k, v in spec.items() if k != "recipe"}
    tags = {"exatrack.lane": name, "exatrack.lane_key": lane_key}
    run_id = compress.quantize(model, spec["recipe"], params, calib, parent_run_id=parent_id, tags=tags)
    return evaluate.evaluate(f"runs:/{run_id}/{compress.CHECKPOINT}", settings, parent_run_id=parent_id)


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
        eval_key = evaluate.eval_key(model, settings)
        experiment = parent.info.experiment_id
        base = None if force else find_done(client, experiment, "exatrack.base_key", eval_key)
        if base:
            adopt(client, base, parent_id)
        else:
            evaluate.evaluate(model, settings, baseline=True, parent_run_id=parent_id)
        for name, spec in lanes.items():
            lane_key = key(model, spec, calib, eval_key)
            done = None if force else find_done(client, experiment, "exatrack.lane_key", lane_key)
            if done:
                adopt(client, done, parent_id)
                outcome[name] = "reused"
                continue
            try:
                run_lane(name, spec, model, calib, settings, lane_key, parent_id)
                outcome[name] = "done"
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
