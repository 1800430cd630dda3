"""`quantize`: one llmcompressor oneshot pass, tracked as one MLflow run.

The run holds everything needed to judge and reproduce the checkpoint: parameters, the rendered
recipe, the checkpoint folder as vLLM loads it, its size, wall time, and a quality proxy measured
against the source model on fixed held-out text (mean KL of the next-token distributions and top-1
agreement), which is cheap and catches a broken recipe before any benchmark runs.
"""

import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from exatrack import calibration, models, recipes, tracking

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"


def quantize(model: str, recipe: str, params: dict, calib: str | None = None, parent_run_id: str | None = None,
             tags: dict | None = None) -> str:
    """Compress `model` with `recipe`; returns the run id. `params` are the recipe's and calibration's values."""
    import mlflow

    run_name = (tags or {}).get("exatrack.lane", recipe)
    with tracking.run("quantize", run_name=run_name, parent_run_id=parent_run_id, tags=tags) as active:
        chosen = recipes.load(recipe)
        values = chosen.resolve_params(params)
        calib = calibration.choose(calib, model)
        tracking.log_new_params({"model": model, "recipe": chosen.name, "calib": calib if chosen.calibrate else "none", **values})
        rendered = chosen.render(values)
        chosen.check_packages()
        if "compute_capability" in chosen.requires:
            mlflow.set_tag("exatrack.requires.compute_capability", str(chosen.requires["compute_capability"]))
        if set(values.get("ignore") or []) - {"lm_head"}:
            log.warning("ignore=%s keeps more than lm_head in bf16: mixed precision can cost speed in vLLM "
                        "(measure it with `exatrack speed`)", ",".join(values["ignore"]))
            mlflow.set_tag("exatrack.mixed_precision", "true")
        mlflow.log_text(yaml.safe_dump(rendered, sort_keys=False), "recipe.yaml")
        source = models.resolve(model)

        def write(folder: Path) -> None:
            started = time.perf_counter()
            compress(source, rendered, folder, calib if chosen.calibrate else None, values)
            mlflow.log_metric("compress_time_s", time.perf_counter() - started)

        log_checkpoint(model, source, write)
        return active.info.run_id


@contextmanager
def step(kind: str, model: str, specs: dict, params: dict, calib: str | None, parent_run_id: str | None,
         tags: dict | None):
    """What prune, distill and sft open with: their run (named for its lane in a pipeline), their
    parameters checked against `specs`, and the calibration text chosen; all logged. Yields the
    run, the values and the calibration source."""
    with tracking.run(kind, run_name=(tags or {}).get("exatrack.lane", kind), parent_run_id=parent_run_id,
                      tags=tags) as active:
        values = recipes.resolve_values(specs, params, kind, f"see `exatrack {kind} --help`")
        calib = calibration.choose(calib, model)
        tracking.log_new_params({"model": model, "calib": calib, **values})
        yield active, values, calib


def log_checkpoint(model: str, source: Path, write, reference: Path | None = None) -> None:
    """Write a checkpoint with `write(folder)` and log it with its size and quality proxy (against
    `reference`, else `source`). Every step that makes a checkpoint (quantize, prune, distill, sft)
    leaves this same record, and names the uncompressed model it derives from, so that `rank` scores
    the end of a chain prune -> distill -> quantize against that model's base."""
    import mlflow

    mlflow.set_tag(models.SOURCE_MODEL, models.source_model(model))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / CHECKPOINT
        write(checkpoint)
        mlflow.log_metrics(size_metrics(source, checkpoint))
        mlflow.log_metrics(quality_proxy(reference or source, checkpoint))
        tracking.log_folder(checkpoint, CHECKPOINT)


def save_bf16(model, tokenizer, folder: Path) -> None:
    """A plain checkpoint in the source's dtype, for the steps that train or cut in float32."""
    import torch

    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def compress(source: Path, recipe: dict, out: Path, calib: str | None, values: dict) -> None:
    """Calibrate in float32 on CPU (bf16 matmuls are ~4x slower there), save in bf16 like the source."""
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    on_gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16 if on_gpu else torch.float32)
    dataset = None
    if calib:
        dataset = calibration.tokenized_dataset(calib, tokenizer, values["num_samples"], values["max_seq_len"], values["seed"])
    oneshot(
        model=model,
        tokenizer=tokenizer,
        recipe=yaml.safe_dump(recipe),
        dataset=dataset,
        num_calibration_samples=len(dataset) if dataset is not None else values.get("num_samples", 1),
        max_seq_length=values.get("max_seq_len", 2048),
    )
    model.to(torch.bfloat16)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def size_metrics(source: Path, checkpoint: Path) -> dict:
    size, base = folder_bytes(checkpoint), folder_bytes(source)
    return {"size_mb": size / 2**20, "size_ratio": size / base}


def quality_proxy(source: Path, checkpoint: Path, max_tokens: int = 256) -> dict:
    """KL(source || compressed) per token, averaged, and how often both pick the same next token."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    candidate = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    kl_sum, agree, count = 0.0, 0, 0
    with torch.inference_mode():
        for text in calibration.heldout_texts(tokenizer):
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, truncation=True, max_length=max_tokens).input_ids
            ref_logp = reference(ids).logits.float().log_softmax(-1)[0]
            cand_logp = candidate(ids).logits.float().log_softmax(-1)[0]
            kl_sum += (ref_logp.exp() * (ref_logp - cand_logp)).sum(-1).sum().item()
            agree += (ref_logp.argmax(-1) == cand_logp.argmax(-1)).sum().item()
            count += ids.shape[1]
    return {"proxy_kl": kl_sum / count, "proxy_top1_agreement": agree / count, "proxy_tokens": count}
