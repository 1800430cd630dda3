"""Recipes beyond plain quantization: SmoothQuant on EXAONE-4, FP8 KV cache, selective precision, and
recipes that need hardware this machine lacks."""

import json
import logging

import mlflow
import pytest

from exatrack.compress import quantize, recipes
from exatrack.core import environments
from exatrack.core.basics import ExatrackError
from exatrack.evaluate import serving
from exatrack.evaluate import session as evaluate
from exatrack.evaluate.session import Settings
from exatrack.lanes.pipeline import pipeline
from exatrack.models import models
from tests.fakes import RecordedSession

SMALL = {"num_samples": "8", "max_seq_len": "64"}
VALID = [[["re:.*down_proj$"], "re:.*up_proj$"]]
# Resolves without error on EXAONE-4, but post_attention_layernorm normalizes the attention OUTPUT:
# it does not feed q/k/v, so "balancing" q/k/v against it changes the function.
WRONG = [[["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"], "re:.*post_attention_layernorm$"]]


def smoothed_kl(tiny_model, mappings) -> float:
    """KL(original || smoothed) of next-token distributions, smoothing alone, all in float32."""
    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.transform import SmoothQuantModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exatrack.compress import calibration

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    data = calibration.tokenized_dataset("sample", tokenizer, 16, 64, 0)
    oneshot(model=model, tokenizer=tokenizer, dataset=data, recipe=SmoothQuantModifier(smoothing_strength=0.8, mappings=mappings),
            num_calibration_samples=16, max_seq_length=64)
    ids = tokenizer(calibration.heldout_texts(tokenizer)[0], return_tensors="pt").input_ids
    with torch.inference_mode():
        p, q = original(ids).logits.log_softmax(-1), model.eval()(ids).logits.log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_smoothing_alone_leaves_exaone4_unchanged_and_a_wrong_mapping_does_not(tiny_model):
    valid, wrong = smoothed_kl(tiny_model, VALID), smoothed_kl(tiny_model, WRONG)
    assert valid < 1e-6  # float32 rounding: smoothing is an exact re-parametrisation
    assert wrong > 1000 * max(valid, 1e-9)  # a silent change of the function, caught


def test_smoothquant_recipe_compresses_tiny_with_the_valid_mapping(tiny_model):
    run_id = quantize.quantize("tiny", "smoothquant_w8a8", {**SMALL, "smoothing": "0.5"})
    recipe = mlflow.artifacts.load_text(f"runs:/{run_id}/recipe.yaml")
    assert "re:.*up_proj$" in recipe and "smoothing_strength: 0.5" in recipe
    assert mlflow.get_run(run_id).data.metrics["proxy_kl"] > 0


def test_kv_fp8_checkpoint_is_served_with_an_explicit_fp8_cache_and_a_fallback_is_flagged(tiny_model, monkeypatch):
    run_id = quantize.quantize("tiny", "w8a8_kv_fp8", SMALL)
    config = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/checkpoint/config.json"))
    assert config["quantization_config"]["kv_cache_scheme"]["type"] == "float"
    fake = RecordedSession(kv_cache_used="auto")
    monkeypatch.setattr(serving, "run_session", fake)
    candidate = models.resolve(f"runs:/{run_id}/checkpoint")
    done = evaluate.evaluate(models.resolve("tiny"), [candidate], Settings(benchmarks="kmmlu_redux", data="sample", limit=2))
    engines = {m["name"]: m["engine"] for m in fake.requests[0]["models"]}
    assert engines["candidate0"]["kv_cache_dtype"] == "fp8" and "kv_cache_dtype" not in engines["base"]
    assert mlflow.get_run(done.runs[candidate.ref]).data.tags["exatrack.kv_cache_mismatch"] == "asked fp8, vLLM used auto"


def test_keeping_more_than_lm_head_in_bf16_warns_about_speed(tiny_model, caplog):
    with caplog.at_level(logging.WARNING):
        run_id = quantize.quantize("tiny", "w8a8", {**SMALL, "ignore": "lm_head,re:.*layers.0.mlp.down_proj$"})
    assert "mixed precision can cost speed in vLLM" in caplog.text
    assert mlflow.get_run(run_id).data.tags["exatrack.mixed_precision"] == "true"


@pytest.fixture
def gpu_only_recipe(tmp_path):
    path = tmp_path / "hopper_only.yaml"
    path.write_text("description: needs Hopper\nrequires: {compute_capability: 9.0}\n"
                    "params: {ignore: {default: [lm_head]}}\n"
                    "recipe: {quant_stage: {quant_modifiers: {QuantizationModifier:\n"
                    "  {targets: [Linear], scheme: FP8_DYNAMIC, ignore: '${ignore}'}}}}\n")
    return path


@pytest.mark.skipif(environments.has_gpu(), reason="checks the refusal on a machine without a GPU")
def test_a_recipe_needing_a_hopper_gpu_is_refused_before_any_engine_starts(tiny_model, gpu_only_recipe, tmp_path, monkeypatch):
    run_id = quantize.quantize("tiny", str(gpu_only_recipe), {})  # compressing is fine anywhere
    assert mlflow.get_run(run_id).data.tags["exatrack.requires.compute_capability"] == "9.0"
    monkeypatch.setattr(serving, "run_session", lambda *a, **k: pytest.fail("an engine was started"))
    candidate = models.resolve(f"runs:/{run_id}/checkpoint")
    with pytest.raises(ExatrackError, match="needs a GPU of compute capability 9.0\\+ .* this machine has no GPU"):
        evaluate.evaluate(models.resolve("tiny"), [candidate], Settings(benchmarks="kmmlu_redux", data="sample"))
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": {"hopper": {"recipe": str(gpu_only_recipe)}}}))
    mlflow.set_experiment("gated")
    with pytest.raises(ExatrackError, match="lane hopper .* step quantize: .*compute capability 9.0"):
        pipeline("tiny", str(lanes), Settings(benchmarks="kmmlu_redux", data="sample", limit=2), out=str(tmp_path / "z.zip"),
                 model_name="EXAONE-gated")
    assert not mlflow.search_runs(experiment_names=["gated"], output_format="list")  # refused before any run


def test_the_2_4_recipe_is_refused_where_its_format_can_be_neither_written_nor_served(tiny_model, monkeypatch):
    from importlib.metadata import version

    with pytest.raises(ExatrackError, match=f"recipe 'sparse24_fp8' needs compressed-tensors<=0.14.0 to write its "
                                            f"checkpoint and this environment has {version('compressed-tensors')}"):
        quantize.quantize("tiny", "sparse24_fp8", SMALL)
    failed = mlflow.search_runs(filter_string="params.recipe = 'sparse24_fp8'", output_format="list")[0]
    assert failed.info.status == "FAILED" and not mlflow.MlflowClient().list_artifacts(failed.info.run_id, "checkpoint")
    requires = recipes.load("sparse24_fp8").requires
    monkeypatch.setattr(serving, "compute_capability", lambda: 10.0)  # Blackwell: no 2:4 kernels
    with pytest.raises(ExatrackError, match="compute capability ==9.0 for vLLM's kernels and this GPU has 10.0"):
        serving.check_requirements(requires, "sparse24_fp8")
    monkeypatch.setattr(serving, "compute_capability", lambda: 9.0)
    serving.check_requirements(requires, "sparse24_fp8")  # Hopper passes
