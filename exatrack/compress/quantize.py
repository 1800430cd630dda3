"""`quantize`: one llmcompressor oneshot pass, tracked as one MLflow run.

The run holds everything needed to judge and reproduce the checkpoint: parameters, the rendered
recipe, the checkpoint folder as vLLM loads it, its size, wall time, and the quality proxy against
the source model (proxy.py), which is cheap and catches a broken recipe before any benchmark runs.
"""

import logging
import time
from pathlib import Path

import yaml

from exatrack.compress import calibration, checkpoint, recipes
from exatrack.core import tracking
from exatrack.core.basics import ExatrackError
from exatrack.models import models

log = logging.getLogger(__name__)


def quantize(ref: str, recipe: str, params: dict, calib: str | None = None, parent_run_id: str | None = None,
             tags: dict | None = None) -> str:
    """Compress `ref` with `recipe`; returns the run id. `params` are the recipe's and calibration's values.
    Everything that needs no model (recipe, modifiers, ignored modules, calibration text) is checked
    before the model loads."""
    import mlflow
    from transformers import AutoTokenizer

    run_name = (tags or {}).get("exatrack.lane", recipe)
    with tracking.run("quantize", run_name=run_name, parent_run_id=parent_run_id, tags=tags) as active:
        chosen = recipes.load(recipe)
        values = chosen.resolve_params(params)
        tracking.log_new_params({"model": ref, "recipe": chosen.name, **values})
        chosen.check_packages()
        model = models.resolve(ref)
        calib = calibration.choose(calib, model) if chosen.calibrate else None
        tracking.log_new_params({"calib": calib or "none"})
        check_against_model(model, chosen.check_modifiers(values), values.get("ignore") or [])
        rendered = chosen.render(values)
        tokenizer = AutoTokenizer.from_pretrained(model.folder)
        dataset = None
        if calib:
            dataset = calibration.tokenized_dataset(calib, tokenizer, values["num_samples"], values["max_seq_len"],
                                                    values["seed"])
        if "compute_capability" in chosen.requires:
            mlflow.set_tag(models.REQUIRES + "compute_capability", str(chosen.requires["compute_capability"]))
        if set(values.get("ignore") or []) - {"lm_head"}:
            log.warning("ignore=%s keeps more than lm_head in bf16: mixed precision can cost speed in vLLM",
                        ",".join(values["ignore"]))
            mlflow.set_tag("exatrack.mixed_precision", "true")
        mlflow.log_text(yaml.safe_dump(rendered, sort_keys=False), "recipe.yaml")

        def write(folder: Path) -> None:
            started = time.perf_counter()
            split, how = compress(model.folder, tokenizer, rendered, folder, dataset, values)
            mlflow.log_metrics({"compress_time_s": time.perf_counter() - started,
                                **{f"time_{part}_s": seconds for part, seconds in split.items()}})
            mlflow.set_tags(how)

        checkpoint.log_checkpoint(model, write)
        return active.info.run_id


def check_against_model(model: models.Model, modifiers: list, ignore: list[str]) -> None:
    """What llmcompressor would trip over only once the weights loaded, tried with its own matching on
    the model's modules built on the meta device (no weights are read): an `ignore` entry that matches
    no module (it keeps nothing in bf16, silently), and a group size that does not divide a Linear's
    input width (llmcompressor raises with a page of layer names)."""
    import torch
    from compressed_tensors.quantization import apply_quantization_config
    from compressed_tensors.utils.match import is_match
    from llmcompressor.modifiers.quantization.group_size_validation import get_layers_indivisible_by_group_size
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model.folder))
    modules = list(net.named_modules())
    for entry in ignore:
        if not any(is_match(name, module, entry) for name, module in modules):
            raise ExatrackError(f"ignore={entry} matches no module of {model.ref}; name modules as llmcompressor does, "
                                "e.g. lm_head, re:.*layers.0.mlp.* or a class such as Linear")
    for modifier in modifiers:
        if not hasattr(modifier, "resolved_config") or modifier.bypass_divisibility_checks:
            continue
        apply_quantization_config(net, modifier.resolved_config)
        if bad := get_layers_indivisible_by_group_size(net, modifier.resolved_targets, modifier.ignore):
            name, columns, group = bad[0]
            fits = next((g for g in (64, 32) if all(c % g == 0 for _, c, _ in bad)), None)
            fix = f"pass --recipe_params group_size={fits}" if fits else "pick another recipe"
            raise ExatrackError(f"group_size={group} does not divide the input width of {len(bad)} Linears of {model.ref} "
                                f"({name}: {columns}); {fix}, or ignore those Linears")


def compress(source: Path, tokenizer, recipe: dict, out: Path, dataset, values: dict) -> tuple[dict[str, float], dict]:
    """Calibrate in float32 on CPU (bf16 matmuls are ~4x slower there) or in bf16 on the GPU, through
    exatrack.compress.gptq's `gptq_path`; save in bf16 like the source. Returns the wall time split in
    seconds and the tags saying how it calibrated (for the caller's run: Ray lanes and tests have none)."""
    import torch
    from llmcompressor import oneshot
    from llmcompressor.recipe import Recipe
    from transformers import AutoModelForCausalLM

    from exatrack.compress import gptq

    on_gpu = torch.cuda.is_available()
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if on_gpu else torch.float32,
                                                 device_map="cuda" if on_gpu else None)
    seq_len = values.get("max_seq_len", 2048)
    samples = len(dataset) if dataset is not None else values.get("num_samples", 1)
    path = values.get("gptq_path", "exact")  # data-free recipes have no calibration to speed up
    modifiers = gptq.speed_up(Recipe.create_instance(yaml.safe_dump(recipe)).modifiers, path)
    resident = gptq.resident_samples(model, samples, seq_len, path)
    if dataset is not None:
        gptq.check_cpu_memory(model, [len(ids) for ids in dataset["input_ids"]], path, resident)
    loaded = time.perf_counter()
    torch.manual_seed(values.get("seed", 0))  # llmcompressor shuffles the calibration samples with it
    with gptq.attention(path), gptq.cached_inputs(model, samples, resident) as (options, cache):
        oneshot(model=model, tokenizer=tokenizer, recipe=modifiers, dataset=dataset, num_calibration_samples=samples,
                max_seq_length=seq_len, **options)
    calibrated = time.perf_counter()
    model.to(torch.bfloat16)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    solve = sum(m.solve_seconds for m in modifiers if isinstance(m, gptq.SharedInputGPTQModifier))
    split = {"load": loaded - started, "calibrate": calibrated - loaded - solve, "solve": solve,
             "save": time.perf_counter() - calibrated}
    how = {"exatrack.gptq_path": path, "exatrack.calibration_cache": cache} if dataset is not None else {}
    return split, how
