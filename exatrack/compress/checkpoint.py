"""What every step that makes a checkpoint (quantize, prune, distill, sft) shares: its run, opened with
checked parameters and the calibration text chosen, and the checkpoint it leaves with the same record
(size, quality proxy against the model it came from, and its lineage).
"""

import tempfile
from contextlib import contextmanager
from pathlib import Path

from exatrack.compress import calibration, proxy, recipes
from exatrack.core import tracking
from exatrack.models import compat, models
from exatrack.models.models import Model

CHECKPOINT = "checkpoint"
PROXY_TEXTS = "proxy.json"  # the quality proxy per held-out text: (KL summed, top-1 agreements, tokens)


def uri(run_id: str) -> str:
    """How the next step (or `evaluate`) names a run's checkpoint."""
    return f"runs:/{run_id}/{CHECKPOINT}"


def kept(client, run_id: str) -> bool:
    """Whether the run still holds its checkpoint: a store's artifacts can be deleted under its runs."""
    return any(f.path == f"{CHECKPOINT}/config.json" for f in client.list_artifacts(run_id, CHECKPOINT))


@contextmanager
def step(kind: str, ref: str, specs: dict, params: dict, calib: str | None, parent_run_id: str | None,
         tags: dict | None):
    """A step's run (named for its lane in a pipeline), its parameters checked against `specs`, the
    model resolved once and the calibration text chosen; all logged. Yields (run, model, values, calib)."""
    with tracking.run(kind, run_name=(tags or {}).get("exatrack.lane", kind), parent_run_id=parent_run_id,
                      tags=tags) as active:
        values = recipes.resolve_values(specs, params, kind, f"see `exatrack {kind} --help`")
        model = models.resolve(ref)
        calib = calibration.choose(calib, model)
        tracking.log_new_params({"model": ref, "calib": calib, **values})
        yield active, model, values, calib


def log_checkpoint(model: Model, write, reference: Path | None = None) -> None:
    """Write a checkpoint with `write(folder)` and log it with its size and quality proxy (against
    `reference`, else the model it came from). The run names the uncompressed model the checkpoint
    derives from, so that `rank` scores the end of a chain prune -> distill -> quantize against
    that model's base."""
    import mlflow

    mlflow.set_tag(models.SOURCE_MODEL, model.source)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / CHECKPOINT
        write(folder)
        if rewritten := compat.for_both_stacks(folder, model.folder):  # the grader's stack reads what ours does
            mlflow.set_tag("exatrack.rewritten_for_grader", "; ".join(rewritten)[:5000])
        mlflow.log_metrics(size_metrics(model.folder, folder))
        [texts] = proxy.measure(reference or model.folder, folder)
        mlflow.log_metrics(proxy.summarize(texts))
        mlflow.log_dict({"reference": str(reference or model.source), "texts": texts}, PROXY_TEXTS)
        tracking.log_folder(folder, CHECKPOINT)
    import torch

    if torch.cuda.is_available():
        mlflow.log_metric("peak_gpu_memory_gib", torch.cuda.max_memory_allocated() / 2**30)


def save_bf16(model, tokenizer, folder: Path) -> None:
    """A plain checkpoint in the source's dtype, for the steps that train or cut in float32."""
    import torch

    model.to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def size_metrics(source: Path, checkpoint: Path) -> dict:
    size, base = folder_bytes(checkpoint), folder_bytes(source)
    return {"size_mb": size / 2**20, "size_ratio": size / base}
