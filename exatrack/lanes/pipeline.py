"""`pipeline`: every lane of a lanes file through its steps, then the base and every lane's checkpoint
evaluated side by side in one paired serving session, then rank and promote; all under one parent
run, so the MLflow UI shows one pipeline as one tree.

A lane is one quantize step (`{recipe: w8a8, damp: 0.02}`) or a chain of steps, each taking the
checkpoint of the one before: `{steps: [{prune: {drop: 2}}, {distill: {epochs: 1}}, {quantize: {recipe: w8a8}}]}`.

The whole lanes file (steps, recipes, parameters and their ranges, what this machine can serve) is
checked before any work. Re-running resumes: a step already done with the same inputs (model,
earlier steps, parameters, calibration data) is reused unless `force`, so lanes sharing a prefix
prune and distil once; a lane already evaluated with the same settings keeps its evaluation. A lane
that crashes leaves its run FAILED and the others go on; the pipeline then exits non-zero.
"""

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from exatrack.compress import checkpoint, recipes
from exatrack.core import console, tracking
from exatrack.core.basics import ExatrackError, redact
from exatrack.evaluate import session as evaluate
from exatrack.lanes.steps import STEPS, failure, find_finished, make_step, step_key
from exatrack.models import models
from exatrack.publish.rank import log_board, rank
from exatrack.score import leaderboard

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    lanes: dict  # lane -> "done" | "reused" | "failed: <reason>"
    board: object
    submission: Path | None

    @property
    def failed(self) -> list[str]:
        return [name for name, status in self.lanes.items() if status.startswith("failed")]


def load_lanes(path: str, only: str | None) -> dict[str, list[tuple[str, dict]]]:
    """Each lane as its list of (step, parameters), every step's parameters checked."""
    file = Path(path)
    shipped = recipes.PROJECT_RECIPES / file.name  # a lanes file shipped with the package, e.g. recipes/lanes.yaml
    if not file.exists() and file.parent in (Path("."), Path("recipes")) and shipped.exists():
        file = shipped
    if not file.exists():
        raise ExatrackError(f"lanes file {file} does not exist; pass e.g. --lanes recipes/lanes.yaml")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ExatrackError(f"lanes file {file} is not valid YAML ({getattr(err, 'problem', err)}); fix the file")
    if not isinstance(data, dict) or not isinstance(data.get("lanes"), dict):
        raise ExatrackError(f"lanes file {file} needs 'lanes:' mapping each lane name to {{recipe: ..., params...}} "
                            "or {steps: [{step: {params...}}, ...]}")
    if extra := sorted(set(data) - {"lanes"}):
        raise ExatrackError(f"lanes file {file} has {', '.join(extra)} beside 'lanes:', the only key it reads; "
                            "put every lane under 'lanes:'")
    lanes = data["lanes"]
    if not lanes:
        raise ExatrackError(f"lanes file {file} has no lane under 'lanes:'; add one, e.g. w8a8: {{recipe: w8a8}}")
    for name in lanes:  # a lane's name is a tag every search of its runs filters on
        if not isinstance(name, str) or not name.strip() or ("'" in name and '"' in name):
            raise ExatrackError(f"lane name {name!r} in {file} cannot name runs (an empty name, not text, or both quote "
                                "characters, which MLflow's search cannot match); rename it, e.g. w8a8-d0.01")
    if only:
        wanted = [n.strip() for n in only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in lanes]
        if unknown:
            raise ExatrackError(f"lane '{unknown[0]}' is not in {file}; its lanes are {', '.join(lanes)}")
        lanes = {n: lanes[n] for n in wanted}
    return {name: steps_of(name, spec, file) for name, spec in lanes.items()}


def steps_of(name: str, spec, file: Path) -> list[tuple[str, dict]]:
    if isinstance(spec, dict) and "recipe" in spec:
        steps = [("quantize", spec)]
    else:
        chain = spec.get("steps") if isinstance(spec, dict) else None
        if isinstance(chain, list) and set(spec) != {"steps"}:
            raise ExatrackError(f"lane {name} in {file} has {', '.join(sorted(set(spec) - {'steps'}))} beside 'steps:'; "
                                "put every parameter inside its step, e.g. steps: [{quantize: {recipe: w8a8, damp: 0.02}}]")
        if not isinstance(chain, list) or not chain or not all(isinstance(s, dict) and len(s) == 1 for s in chain):
            raise ExatrackError(f"lane {name} in {file} needs 'recipe:' or 'steps:', a list of {{step: {{params}}}}")
        steps = [(step, params or {}) for s in chain for step, params in s.items()]
    for step, params in steps:
        if step not in STEPS:
            raise ExatrackError(f"lane {name} in {file} has an unknown step '{step}'; steps are {', '.join(STEPS)}")
        if step == "quantize" and "recipe" not in params:
            raise ExatrackError(f"lane {name} in {file}: its quantize step needs a recipe, e.g. {{quantize: {{recipe: w8a8}}}}")
        try:
            STEPS[step][1](params)
        except ExatrackError as err:
            raise ExatrackError(f"lane {name} in {file}, step {step}: {err.message}")
    return steps


def make_lane(client, experiment_id: str, name: str, steps: list, base: str, calib: str | None, parent_id: str,
              force: bool) -> tuple[str, bool]:
    """Run (or reuse) the lane's steps; returns the last step's run id and whether all were reused."""
    current, reused, run_id = base, True, None
    for i, (step, params) in enumerate(steps):
        run_id, was_reused = make_step(client, experiment_id, name, step, params, current,
                                       step_key(base, steps, i, calib), calib, parent_id, force)
        reused, current = reused and was_reused, checkpoint.uri(run_id)
    return run_id, reused


def make_lanes_in_turn(lanes: dict, base: str, calib: str | None, parent_id: str, experiment_id: str,
                       force: bool) -> tuple[dict, dict]:
    """Every lane in this process, one after another: lane -> final checkpoint, lane -> status."""
    import mlflow
    from mlflow import MlflowClient

    client, status, finals, started = MlflowClient(), {}, {}, time.monotonic()
    for i, (name, steps) in enumerate(lanes.items(), start=1):
        progress = f"lane {i}/{len(lanes)}: {name} ({' -> '.join(step for step, _ in steps)}){eta(started, i - 1, len(lanes))}"
        console.say(progress)
        mlflow.set_tag("exatrack.progress", progress)
        try:
            run_id, reused = make_lane(client, experiment_id, name, steps, base, calib, parent_id, force)
            finals[name], status[name] = checkpoint.uri(run_id), "reused" if reused else "done"
        except Exception as err:  # one lane's crash must not stop the others
            status[name] = failure(err)
            log.warning("lane %s %s", name, status[name])
    return finals, status


def pipeline(model: str, lanes_file: str, settings, only: str | None = None, calib: str | None = None,
             force: bool = False, model_name: str | None = None, out: str = "submit.zip",
             verify: str = "files", workers: int = 0, ray_address: str | None = None,
             grader_check: bool = True) -> Outcome:
    """`workers` (or `ray_address`) fans the lanes' steps out over Ray (ray_lanes.py); else in turn."""
    import mlflow
    from mlflow import MlflowClient

    from exatrack.publish.package import promote

    client = MlflowClient()
    lanes = load_lanes(lanes_file, only)
    settings.check()
    fan_out = workers > 1 or ray_address is not None
    if fan_out:
        from exatrack.lanes import ray_lanes

        ray_lanes.check(ray_address)
    with tracking.run("pipeline", run_name=f"pipeline {Path(lanes_file).stem}") as parent:
        parent_id, experiment = parent.info.run_id, parent.info.experiment_id
        mlflow.log_params({"model": model, "lanes": lanes_file, "only": only or "all", "force": force,
                           "grader_check": grader_check,
                           "workers": workers if fan_out else 1, "ray_address": ray_address or "none",
                           **{f"eval.{k}": v for k, v in asdict(settings).items()}})
        base = models.resolve(model)
        settings.check_models([base])  # the lanes derive from it: their context is its
        evaluate.load_rows(settings, [base])  # a bad row found after the lanes were made would waste them
        if fan_out:
            finals, status = ray_lanes.make_lanes(lanes, model, calib, parent_id, experiment, force, workers, ray_address)
        else:
            finals, status = make_lanes_in_turn(lanes, model, calib, parent_id, experiment, force)
        if grader_check and finals:
            check_for_grader(finals, status, base)
        to_evaluate = {}
        for name, ref in finals.items():
            done = None if force else find_finished(client, experiment, evaluate.INPUTS, evaluate.inputs_hash(ref, settings))
            if done is None or status[name] == "done":
                to_evaluate[name] = ref
                status[name] = "done"
            else:
                client.set_tag(done.info.run_id, "exatrack.lane", name)
        if to_evaluate:
            mlflow.set_tag("exatrack.progress", f"evaluating {len(to_evaluate)} lanes beside the base")
            candidates = [models.resolve(ref) for ref in to_evaluate.values()]
            evaluated = evaluate.evaluate(base, candidates, settings, parent_id,
                                          lanes={ref: name for name, ref in to_evaluate.items()})
            for name, ref in to_evaluate.items():
                if ref in evaluated.failed:
                    status[name] = f"failed: {redact(evaluated.failed[ref])[:300]}"
        mlflow.set_tags({f"lane.{n}": s[:250] for n, s in status.items()} | {"exatrack.progress": "ranking"})
        scope = scope_of(client, experiment, base, settings)
        board = rank(model_name, parent_run_id=parent_id, **scope) if scope else leaderboard.Board("", base.source, [])
        ours = set(finals.values())
        submission = None
        if board.champion and board.leader.checkpoint_run and checkpoint.uri(board.leader.checkpoint_run) in ours:
            submission = promote(model_name=board.registered_model, out=out, verify=verify, parent_run_id=parent_id,
                                 grader_check=grader_check)
        log_board(board)
    return Outcome(status, board, submission)


def check_for_grader(finals: dict, status: dict, base) -> None:
    """Every lane's checkpoint read by the grader's stack (its files: config, quantization schemes,
    tokenizer) before any engine starts: a lane the grader would read as another model fails now, not
    after its evaluation. `promote` checks the package again, logits included."""
    import mlflow
    from mlflow import MlflowClient

    from exatrack.publish import grader

    client, lanes = MlflowClient(), {name: models.resolve(ref) for name, ref in finals.items()}
    stack, reports = grader.check([m.folder for m in lanes.values()], [base.folder] * len(lanes), logits=False)
    for (name, model), report in zip(lanes.items(), reports):
        client.set_tag(model.run_id, "exatrack.grader_check", "passed" if report.passed else f"refused: {report.problems[0]}"[:5000])
        if not report.passed:
            status[name] = f"failed: the grader's stack (vLLM {stack['vllm']}) reads it as another model: {report.problems[0]}"
            finals.pop(name)
    passed = sum(r.passed for r in reports)
    console.say(f"grader check: {passed} of {len(reports)} lane checkpoints read alike by vLLM {stack['vllm']}, "
                f"transformers {stack['transformers']}, compressed-tensors {stack['compressed-tensors']}")
    mlflow.set_tag("exatrack.grader_check", f"{passed}/{len(reports)} lanes passed")


def eta(started: float, done: int, total: int) -> str:
    if not done:
        return ""
    left = (time.monotonic() - started) / done * (total - done)
    return f", about {left / 60:.0f} min of lanes left"


def scope_of(client, experiment: str, base, settings) -> dict | None:
    """This pipeline's board: the fingerprint of its base's newest evaluation, and its source model;
    None when the base was never evaluated with these settings (no lane got that far)."""
    run = find_finished(client, experiment, evaluate.INPUTS, evaluate.inputs_hash(base.ref, settings))
    return None if run is None else {"fingerprint": run.data.tags[evaluate.FINGERPRINT], "source": base.source}
