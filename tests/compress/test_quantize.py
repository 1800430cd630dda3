"""Every recipe quantizes the tiny model on CPU into a checkpoint transformers reloads."""

import json

import mlflow
import pytest

from exatrack.compress import checkpoint, quantize
from exatrack.models import models

# recipe -> (checkpoint format, weight bits, weight type, input activations dynamic?)
EXPECTED = {
    "w8a8": ("int-quantized", 8, "int", True),
    "w4a16": ("pack-quantized", 4, "int", None),
    "w8a16": ("pack-quantized", 8, "int", None),
    "fp8_dynamic": ("float-quantized", 8, "float", True),
    "fp8_static": ("float-quantized", 8, "float", False),
    "rtn_w8a8": ("int-quantized", 8, "int", True),
    "rtn_w8a16": ("pack-quantized", 8, "int", None),
    "rtn_w4a16": ("pack-quantized", 4, "int", None),
}
SMALL = {"num_samples": "16", "max_seq_len": "128"}


@pytest.fixture(scope="module")
def runs(quantized):
    return {name: quantized[name] for name in EXPECTED}


@pytest.mark.parametrize("name", EXPECTED)
def test_checkpoint_declares_its_quantization(runs, name):
    run = runs[name]
    assert run.info.status == "FINISHED"
    folder = models.resolve(f"runs:/{run.info.run_id}/{checkpoint.CHECKPOINT}").folder
    config = json.loads((folder / "config.json").read_text())["quantization_config"]
    group = config["config_groups"]["group_0"]
    fmt, bits, kind, dynamic = EXPECTED[name]
    assert config["quant_method"] == "compressed-tensors"
    assert (config["format"], group["weights"]["num_bits"], group["weights"]["type"]) == (fmt, bits, kind)
    assert (group["input_activations"] or {}).get("dynamic") == dynamic
    assert config["ignore"] == ["lm_head"]
    for needed in ("model.safetensors", "tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (folder / needed).exists(), needed


@pytest.mark.parametrize("name", EXPECTED)
def test_checkpoint_reloads_with_transformers_and_predicts(runs, name, tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.resolve(f"runs:/{runs[name].info.run_id}/{checkpoint.CHECKPOINT}").folder
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = tokenizer("한국의 수도는 서울입니다.", return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()


def test_run_records_parameters_recipe_size_and_quality_proxy(runs):
    run = runs["w8a8"]
    assert run.data.params["recipe"] == "w8a8"
    assert run.data.params["damp"] == "0.01" and run.data.params["num_samples"] == "16"
    assert run.data.params["calib"] == "sample"
    recipe = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/recipe.yaml")
    assert "dampening_frac: 0.01" in recipe
    metrics = run.data.metrics
    assert 0 < metrics["size_ratio"] < 1
    assert metrics["proxy_kl"] > 0 and 0 < metrics["proxy_top1_agreement"] <= 1
    parts = [metrics[f"time_{part}_s"] for part in ("load", "calibrate", "solve", "save")]
    assert all(t >= 0 for t in parts) and metrics["time_solve_s"] > 0 and sum(parts) <= metrics["compress_time_s"]
    assert runs["fp8_dynamic"].data.params["calib"] == "none"


def test_run_says_which_gptq_path_and_cache_placement_made_the_checkpoint(runs):
    run = runs["w8a8"]
    assert run.data.params["gptq_path"] == "fast"
    assert (run.data.tags["exatrack.gptq_path"], run.data.tags["exatrack.calibration_cache"]) == ("fast", "cpu")
    assert "exatrack.gptq_path" not in runs["fp8_dynamic"].data.tags  # data-free: nothing calibrated


def test_quality_proxy_orders_the_schemes_as_measured_on_tiny(runs):
    """Measured on tiny: 8-bit weights alone < 8-bit weights and activations < 4-bit weights."""
    kl = {name: run.data.metrics["proxy_kl"] for name, run in runs.items()}
    assert kl["w8a16"] < kl["w8a8"] < kl["w4a16"]


def test_gptq_damp_reaches_the_recipe_llmcompressor_ran(tiny_model):
    run_id = quantize.quantize("tiny", "w8a8", {**SMALL, "damp": "0.05"})
    assert "dampening_frac: 0.05" in mlflow.artifacts.load_text(f"runs:/{run_id}/recipe.yaml")
    assert mlflow.get_run(run_id).data.params["damp"] == "0.05"
