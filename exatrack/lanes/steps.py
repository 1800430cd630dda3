"""One step of a lane, as both ways of running lanes take it: in turn (pipeline.py) and fanned out over
Ray (ray_lanes.py). A step is found again by the hash of its inputs, so resume, --force and lineage
do not depend on how the lanes ran; both import it from here, and neither imports the other for it.
"""

from exatrack.compress import checkpoint, distill, prune, quantize, recipes, sft
from exatrack.core import console, tracking
from exatrack.core.basics import digest, redact
from exatrack.evaluate import serving

STEP_INPUTS = "exatrack.step_inputs"  # tag: the hash of a step's inputs, to find it again


def run_quantize(ref: str, params: dict, **where) -> str:
    params = dict(params)
    return quantize.quantize(ref, params.pop("recipe"), params, **where)


def check_quantize(params: dict) -> None:
    params = dict(params)
    recipe = recipes.load(params.pop("recipe"))
    values = recipe.resolve_params(params)
    recipe.check_packages()
    recipe.check_modifiers(values)
    serving.check_requirements(recipe.requires, f"recipe {recipe.name}")


def checker(name: str, specs: dict):
    return lambda params: recipes.resolve_values(specs, params, name, f"see `exatrack {name} --help`")


# What a lane's step may be: (run it: model reference and parameters -> the run whose checkpoint the
# next step takes; check its parameters without running anything).
STEPS = {
    "quantize": (run_quantize, check_quantize),
    "prune": (prune.prune, checker("prune", prune.PARAMS)),
    "distill": (distill.distill, checker("distill", distill.PARAMS)),
    "sft": (sft.sft, checker("sft", sft.PARAMS)),
}


def find_finished(client, experiment_id: str, tag: str, value: str, under: str | None = None):
    """The newest finished run with this tag (of this pipeline only, when `under` names it)."""
    query = f"attributes.status = 'FINISHED' and tags.`{tag}` = {tracking.quoted(value)}"
    if under:
        query += f" and tags.`mlflow.parentRunId` = {tracking.quoted(under)}"
    runs = client.search_runs([experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def step_key(base: str, steps: list, i: int, calib: str | None) -> str:
    """What identifies step i of a lane: the base, the steps up to it and the calibration data; lanes
    sharing a prefix share its keys, so the prefix runs once."""
    return digest([base, steps[:i + 1], calib])


def make_step(client, experiment_id: str, lane: str, step: str, params: dict, current: str, key: str,
              calib: str | None, parent_id: str, force: bool) -> tuple[str, bool]:
    """Run (or reuse) one step on the checkpoint `current`; returns its run id and whether it was reused."""
    # forced: redo what earlier pipelines did, but still share a prefix between this one's lanes
    run = find_finished(client, experiment_id, STEP_INPUTS, key, parent_id if force else None)
    if run and not checkpoint.kept(client, run.info.run_id):
        console.say(f"lane {lane}: the {step} step's run {run.info.run_id} has lost its checkpoint; making it again")
        run = None
    if run:
        client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)  # a reused run joins this tree
        return run.info.run_id, True
    return STEPS[step][0](current, params, calib=calib, parent_run_id=parent_id,
                          tags={"exatrack.lane": lane, STEP_INPUTS: key}), False


def failure(err: BaseException) -> str:
    return f"failed: {redact(str(getattr(err, 'message', err))).splitlines()[0][:300]}"
