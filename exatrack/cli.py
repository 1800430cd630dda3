"""The `exatrack` command line. Each command is mirrored one to one by an MLproject entry point with the
same parameter names; heavy libraries (torch, llmcompressor, vLLM) are imported inside the commands.
"""

import click

from exatrack import recipes as recipe_registry
from exatrack.models import DEFAULT_MODEL



def option(name: str, **kwargs):
    """--with-dashes, also spelled --with_underscores like the MLproject parameter; '' means 'not given'."""
    spellings = {f"--{name.replace('_', '-')}", f"--{name}"}
    return click.option(*sorted(spellings), name, callback=lambda ctx, param, value: None if value == "" else value, **kwargs)


@click.group()
@click.version_option(package_name="exatrack")
def main():
    """An MLflow-tracked lab for compressing EXAONE-4.0-1.2B for serving in vLLM."""


@main.command()
@option("out", default=None, help="also copy the tiny model to this folder")
def tiny(out):
    """Build (or reuse) the built-in tiny EXAONE-4 model and print its folder."""
    import shutil

    from exatrack.tiny import tiny_path

    path = tiny_path()
    if out:
        shutil.copytree(path, out, dirs_exist_ok=True)
        path = out
    click.echo(path)


@main.command("recipes")
def list_recipes():
    """List the compression recipes and their parameters."""
    for name, path in recipe_registry.available().items():
        recipe = recipe_registry.load(str(path))
        click.echo(f"{name:<12} {recipe.description}")
        specs = {**recipe.params, **(recipe_registry.CALIBRATION_PARAMS if recipe.calibrate else {})}
        for param, spec in specs.items():
            click.echo(f"{'':<14}{param}={spec.get('default')}  {spec.get('help', '')}")


@main.command()
@option("model", default=DEFAULT_MODEL, show_default=True, help="hub id, folder, tiny, runs:/... or models:/...")
@option("recipe", default="w8a8", show_default=True, help="recipe name (see `exatrack recipes`) or YAML path")
@option("damp", default=None, help="GPTQ dampening fraction, in (0, 1)")
@option("actorder", default=None, help="GPTQ activation ordering")
@option("ignore", default=None, help="modules kept unquantized, comma-separated")
@option("num_samples", default="512", show_default=True, help="calibration samples")
@option("max_seq_len", default="2048", show_default=True, help="tokens per calibration sample")
@option("calib", default="auto", show_default=True, help="calibration data: hub id, jsonl/json/parquet file, sample, or auto (sample for tiny, else MANTA-1M)")
@option("seed", default="0", show_default=True, help="seed for choosing calibration samples")
def quantize(model, recipe, calib, **params):
    """Compress a model with a recipe, tracked as one MLflow run."""
    from exatrack.compress import CHECKPOINT, quantize as run_quantize

    run_id = run_quantize(model, recipe, params, calib)
    click.echo(f"quantize finished: run {run_id}, checkpoint runs:/{run_id}/{CHECKPOINT}")


if __name__ == "__main__":
    main()
