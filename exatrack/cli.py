"""The `exatrack` command line. Each command is mirrored one to one by an MLproject entry point with the
same parameter names; heavy libraries (torch, llmcompressor, vLLM) are imported inside the commands.
"""

import signal
import threading

import click

from exatrack.compress import distill as distill_step
from exatrack.compress import prune as prune_step
from exatrack.compress import recipes as recipe_registry
from exatrack.compress import sft as sft_step
from exatrack.core.console import echo
from exatrack.models.models import DEFAULT_MODEL
from exatrack.publish.registry import REGISTERED_MODEL

MODEL_HELP = "hub id, folder, tiny, smollm2, runs:/... or models:/..."
REGISTRY_HELP = (f"registry name (default: {REGISTERED_MODEL} for EXAONE-4 lanes, which must begin with EXAONE; "
                 "<source>-exatrack for another family's)")
GRADER_CHECK_HELP = "read the package with the grader's stack first and refuse what it reads differently"
GPTQ_PATH = recipe_registry.CALIBRATION_PARAMS["gptq_path"]
CALIB_HELP = "text to use: hub id, jsonl/json/parquet file, sample, or auto (sample for tiny and smollm2, else MANTA-1M)"


def option(name: str, **kwargs):
    """--with-dashes, also spelled --with_underscores like the MLproject parameter; '' means 'not given'.
    A boolean works as a flag (`--eager`) and takes a value too (`--eager false`, as MLproject passes it)."""
    spellings = {f"--{name.replace('_', '-')}", f"--{name}"}
    if kwargs.get("type") is bool:
        kwargs.update(is_flag=False, flag_value=True)
    return click.option(*sorted(spellings), name, callback=lambda ctx, param, value: None if value == "" else value, **kwargs)


def interrupted(signum, frame):
    """SIGTERM (a scheduler's, `kill`'s) ends a command as Ctrl-C does: its runs KILLED, its children
    stopped, its temp folder removed, instead of the runs left RUNNING until the next command."""
    raise KeyboardInterrupt


class Command(click.Command):
    """Sets up what a command's work needs when it runs, after its options parsed, so that `--help`
    touches nothing: its own temp folder, its log (console.py), and the tracking store (made ready, the
    runs of killed commands ended) for every command but those that use none."""

    WITHOUT_STORE = ("recipes", "serving-env", "grader-env", "tiny")

    def invoke(self, ctx):
        import os

        from exatrack.core import console, tracking
        from exatrack.core.processes import own_temp_folder

        if self.name == "recipes":  # it only reads the package's files
            return super().invoke(ctx)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, interrupted)
        console.start(own_temp_folder(), verbose=os.environ.get("EXATRACK_VERBOSE", "") not in ("", "0", "false"))
        try:
            if self.name not in self.WITHOUT_STORE:
                tracking.store_ready()
                tracking.end_stale_runs()
            return super().invoke(ctx)
        finally:
            console.stop()


@click.group()
@click.version_option(package_name="exatrack")
@click.option("--experiment", default=None, help="MLflow experiment for the runs (default: MLFLOW_EXPERIMENT_NAME, else exatrack)")
@click.option("--verbose", is_flag=True, help="stream vLLM's, MLflow's and the other libraries' logs to the terminal "
              "(otherwise in each run's logs/ artifacts); also EXATRACK_VERBOSE=1")
def main(experiment, verbose):
    """An MLflow-tracked lab for compressing EXAONE-4.0-1.2B for serving in vLLM."""
    import os

    from exatrack.core import tracking

    tracking.redact_logs()
    if experiment:
        os.environ["MLFLOW_EXPERIMENT_NAME"] = experiment
    if verbose:
        os.environ["EXATRACK_VERBOSE"] = "1"  # the command's own processes (the serving worker, Ray tasks) see it too


main.command_class = Command


@main.command()
@option("out", default=None, help="also copy the tiny model to this folder")
def tiny(out):
    """Build (or reuse) the built-in tiny EXAONE-4 model and print its folder."""
    import shutil

    from exatrack.models.tiny import tiny_path

    path = tiny_path()
    if out:
        shutil.copytree(path, out, dirs_exist_ok=True)
        path = out
    echo(path)


@main.command("recipes")
def list_recipes():
    """List the compression recipes and their parameters."""
    for name, path in recipe_registry.available().items():
        recipe = recipe_registry.load(str(path))
        echo(f"{name:<18} {recipe.description}")
        specs = {**recipe.params, **(recipe_registry.CALIBRATION_PARAMS if recipe.calibrate else {})}
        for param, spec in specs.items():
            echo(f"{'':<20}{param}={spec.get('default')}  {spec.get('help', '')}")


@main.command()
@option("model", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)
@option("recipe", default="w8a8", show_default=True, help="recipe name (see `exatrack recipes`) or YAML path")
@option("damp", default=None, help="GPTQ dampening fraction, in (0, 1)")
@option("actorder", default=None, help="GPTQ activation ordering")
@option("ignore", default=None, help="modules kept unquantized, comma-separated")
@option("num_samples", default="512", show_default=True, help="calibration samples")
@option("max_seq_len", default="2048", show_default=True, help="tokens per calibration sample")
@option("calib", default="auto", show_default=True, help=CALIB_HELP)
@option("seed", default="0", show_default=True, help="seed for choosing calibration samples")
@option("gptq_path", default=GPTQ_PATH["default"], show_default=True, help=GPTQ_PATH["help"])
@option("recipe_params", default=None, help="any other parameter of the recipe, e.g. smoothing=0.5,actorder=weight")
def quantize(model, recipe, calib, recipe_params, **params):
    """Compress a model with a recipe, tracked as one MLflow run."""
    for pair in filter(None, (recipe_params or "").split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise click.ClickException(f"--recipe_params '{pair}' is not name=value, e.g. smoothing=0.5")
        params[key.strip()] = value.strip()
    from exatrack.compress.checkpoint import uri
    from exatrack.compress.quantize import quantize as run_quantize

    run_id = run_quantize(model, recipe, params, calib)
    echo(f"quantize finished: run {run_id}, checkpoint {uri(run_id)}")


def step_options(specs: dict):
    """One option per parameter of a step, from the step's own spec: one place for defaults and help."""
    def decorate(command):
        for name, spec in reversed(specs.items()):
            command = option(name, default=spec["default"], type=type(spec["default"]), show_default=True,
                             help=spec["help"])(command)
        command = option("calib", default="auto", show_default=True, help=CALIB_HELP)(command)
        return option("model", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)(command)
    return decorate


@main.command()
@step_options(prune_step.PARAMS)
def prune(model, calib, **params):
    """Drop the least important layers (Block Influence) and optionally narrow the FFNs."""
    run_id = prune_step.prune(model, params, calib)
    echo(f"prune finished: run {run_id}, checkpoint runs:/{run_id}/checkpoint")


@main.command()
@step_options(distill_step.PARAMS)
def distill(model, calib, **params):
    """Train a student (e.g. a pruned model) on its teacher's next-token distributions."""
    run_id = distill_step.distill(model, params, calib)
    echo(f"distill finished: run {run_id}, checkpoint runs:/{run_id}/checkpoint")


@main.command()
@step_options(sft_step.PARAMS)
def sft(model, calib, **params):
    """LoRA fine-tuning on chat data, merged back into a plain checkpoint."""
    run_id = sft_step.sft(model, params, calib)
    echo(f"sft finished: run {run_id}, checkpoint runs:/{run_id}/checkpoint")


def evaluation_options(command):
    """One option per field of evaluate.Settings, shared by `evaluate` and `pipeline`."""
    from exatrack.evaluate.session import ALL

    for decorator in reversed([
        option("benchmarks", default=ALL, show_default=True, help="comma-separated benchmark names"),
        option("data", default="hub", show_default=True, help="hub or sample, then name=path overrides, e.g. hub,kmmlu_redux=redux.jsonl"),
        option("limit", default=0, type=int, show_default=True, help="rows per benchmark (a fixed subset); 0 = all"),
        option("max_tokens", default=16384, type=int, show_default=True, help="generation budget per answer"),
        option("thinking", default=False, type=bool, show_default=True, help="EXAONE reasoning mode (enable_thinking)"),
        option("greedy", default=True, type=bool, show_default=True, help="greedy decoding as the grader; false: MT-Bench temperatures for KoMT"),
        option("max_model_len", default=0, type=int, show_default=True, help="vLLM context length; 0 = the model's"),
        option("eager", default=False, type=bool, show_default=True, help="vLLM enforce_eager: faster start, slower decode"),
        option("kv_cache_dtype", default="auto", show_default=True, help="vLLM KV cache dtype, e.g. fp8"),
        option("pattern", default="whole", show_default=True, type=click.Choice(["whole", "chunks"]),
               help="how each benchmark reaches the engine: whole, as the grader sends it, or in --chunks chunks"),
        option("passes", default=3, type=int, show_default=True,
               help="whole: timed passes of each benchmark, every pass on every model in turn (the paired units)"),
        option("chunks", default=16, type=int, show_default=True, help="chunks: chunks per benchmark, each run on every model in turn"),
        option("repeats", default=1, type=int, show_default=True, help="timed runs per unit and model in a row; the fastest counts"),
        option("group", default=6, type=int, show_default=True, help="models loaded side by side per session, the base included"),
    ]):
        command = decorator(command)
    return command


@main.command()
@option("model", default=None, help="the candidates, comma-separated (runs:/<id>/checkpoint, ...); none: the base alone")
@option("base", default=None, help="the base; default: the model the candidates derive from")
@evaluation_options
def evaluate(model, base, **settings):
    """Evaluate candidates and their base side by side in vLLM on the Korean benchmarks."""
    from exatrack.evaluate.session import Settings
    from exatrack.evaluate.session import evaluate as run_evaluate
    from exatrack.models import models

    chosen = Settings(**settings)
    chosen.check()
    candidates = [models.resolve(ref.strip()) for ref in (model or "").split(",") if ref.strip()]
    sources = {m.source for m in candidates}
    if base is None and len(sources) > 1:
        raise click.ClickException(f"the candidates derive from different models ({', '.join(sorted(sources))}); "
                                   "pass --base, or evaluate each family on its own")
    base_model = models.resolve(base or (sources.pop() if sources else DEFAULT_MODEL))
    candidates = [m for m in candidates if m.ref != base_model.ref]
    done = run_evaluate(base_model, candidates, chosen)
    echo(f"base {base_model.ref}: evaluation run {done.base}")
    for ref, run_id in done.runs.items():
        echo(f"{ref}: evaluation run {run_id}")
    for ref, why in done.failed.items():
        echo(f"{ref}: not evaluated ({why})")
    if done.failed:
        raise SystemExit(1)


@main.command()
@option("registered_model", default=None, help=REGISTRY_HELP)
@option("fingerprint", default=None, help="the evaluation fingerprint to rank; default: that of the newest base")
@option("source", default=None, help="the source model to rank; default: that of the newest base")
@option("estimator", default="sum", show_default=True, type=click.Choice(["sum", "median"]),
        help="speed: total time over total tokens, or the median per-chunk ratio")
def rank(registered_model, fingerprint, source, estimator):
    """Score every evaluation against its session's base, with intervals; point `champion` at the leader."""
    from exatrack.publish.rank import rank as run_rank
    from exatrack.score.render import markdown

    board = run_rank(registered_model, fingerprint=fingerprint, source=source, estimator=estimator)
    echo(markdown(board))
    if board.champion:
        echo(f"champion: {board.registered_model} version {board.champion}")


@main.command()
@click.argument("run_id")
def rescore(run_id):
    """Score the session of evaluation run RUN_ID again from its kept answers, without generating again."""
    from exatrack.evaluate.rescore import rescore as run_rescore

    for rid, name in run_rescore(run_id).items():
        echo(f"{name}: rescored run {rid}")
    echo("exatrack rank scores the session's runs against their base again")


@main.command()
@option("fingerprint", default=None, help="the evaluation fingerprint; default: that of the newest base")
@option("source", default=None, help="the source model; default: that of the newest base")
@option("estimator", default="sum", show_default=True, type=click.Choice(["sum", "median"]), help="speed estimator")
def leaderboard(fingerprint, source, estimator):
    """Print the leaderboard with intervals; read-only: no run is logged, no alias moves."""
    from mlflow import MlflowClient

    from exatrack.core import tracking
    from exatrack.score import leaderboard as boards
    from exatrack.score.render import markdown

    echo(markdown(boards.for_scope(MlflowClient(), tracking.use_experiment(), fingerprint, source, estimator)))


@main.command("record-official")
@click.argument("run_id")
@option("score", type=float, required=True, help="the official challenge score of this run's submission")
def record_official(run_id, score):
    """Store an official challenge score on a run; `rank` fits an estimate once two runs have one."""
    from exatrack.publish.rank import record_official as record

    record(run_id, score)
    echo(f"official score {score} recorded on run {run_id}")


@main.command()
@option("version", default="champion", show_default=True, help="a version number or an alias")
@option("registered_model", default=REGISTERED_MODEL, show_default=True, help="registry name")
@option("out", default="submit.zip", show_default=True, help="where to write the submission zip")
@option("verify", default="files", show_default=True, type=click.Choice(["files", "vllm"]), help="vllm: also load and generate")
@option("grader_check", default=True, type=bool, show_default=True, help=GRADER_CHECK_HELP)
@click.option("--dry-run", "dry_run", is_flag=True, help="check and list what would be packaged; change nothing")
def promote(version, registered_model, out, verify, grader_check, dry_run):
    """Point `submission` at a version and build submit.zip with only what vLLM needs, once the grader's
    stack (vLLM 0.14.1) reads it as the model exatrack measured."""
    from exatrack.publish.package import promote as run_promote

    done = run_promote(version, registered_model, out, verify, dry_run=dry_run, grader_check=grader_check)
    if dry_run:
        from exatrack.publish import card

        echo(card.of(registered_model, version))
        echo("would package: " + ", ".join(p.name for p in done) + f" into {out}; nothing changed")
    else:
        echo(f"submission: {done}")


@main.command()
@option("model", default=DEFAULT_MODEL, show_default=True, help="the base model every lane starts from")
@evaluation_options
@option("lanes", default="recipes/lanes.yaml", show_default=True, help="lanes file: lane name -> recipe and parameters")
@option("only", default=None, help="comma-separated lanes to run (default: all)")
@option("calib", default="auto", show_default=True, help="calibration data for every lane")
@option("force", default=False, type=bool, show_default=True, help="redo lanes and evaluations even if done")
@option("registered_model", default=None, help=REGISTRY_HELP)
@option("out", default="submit.zip", show_default=True, help="where to write the submission zip")
@option("verify", default="files", show_default=True, type=click.Choice(["files", "vllm"]), help="vllm: also load the package")
@option("grader_check", default=True, type=bool, show_default=True, help=GRADER_CHECK_HELP)
@option("workers", default=1, show_default=True, type=click.IntRange(1, 1024),
        help="run lanes' steps on this many GPUs at once through a local Ray cluster (pip install 'exatrack[ray]')")
@option("ray_address", default=None, help="join this Ray cluster (e.g. ray://head:10001) instead; needs a tracking server")
def pipeline(model, lanes, only, calib, force, registered_model, out, verify, grader_check, workers, ray_address,
             **settings):
    """Every lane through its steps, then all evaluated beside the base in one session, rank, promote."""
    from exatrack.evaluate.session import Settings
    from exatrack.lanes.pipeline import pipeline as run_pipeline
    from exatrack.score.render import markdown

    done = run_pipeline(model, lanes, Settings(**settings), only, None if calib == "auto" else calib, force,
                        registered_model, out, verify, workers, ray_address, grader_check)
    for lane, status in done.lanes.items():
        echo(f"lane {lane}: {status}")
    echo(markdown(done.board))
    echo(f"submission: {done.submission}" if done.submission else "no submission from this pipeline")
    if done.failed:
        raise click.ClickException(f"{len(done.failed)} of {len(done.lanes)} lanes failed ({', '.join(done.failed)}); "
                                   "see their runs' exatrack.error tag, fix and run the pipeline again")


@main.command("serving-env")
@click.option("--build", is_flag=True, help="build it now if it is not built yet")
def serving_env(build):
    """Print the interpreter of the pinned vLLM serving environment (building it with --build)."""
    from exatrack.core import environments

    echo(f"spec: {environments.chosen('serving').spec}")
    echo(f"python: {environments.python('serving', build=build)}")


@main.command("grader-env")
@click.option("--build", is_flag=True, help="build it now if it is not built yet")
def grader_env(build):
    """Print the interpreter of the grader's stack (vLLM 0.14.1) that `promote` checks every package with."""
    from exatrack.core import environments

    echo(f"spec: {environments.chosen('grader').spec}")
    echo(f"python: {environments.python('grader', build=build)}")


if __name__ == "__main__":
    main()
