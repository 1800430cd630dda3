"""exatrack's fast GPTQ path writes the checkpoint llmcompressor's defaults write, bit for bit."""

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from exatrack.compress import calibration, gptq, quantize, recipes

SHAPE = {"num_samples": 8, "max_seq_len": 64, "seed": 0}


def default_path(source, tokenizer, recipe: dict, out, data, values: dict) -> None:
    """llmcompressor as its README calls it: the YAML recipe, default pipeline options."""
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    torch.manual_seed(values["seed"])
    oneshot(model=model, tokenizer=tokenizer, recipe=yaml.safe_dump(recipe), dataset=data,
            num_calibration_samples=len(data), max_seq_length=values["max_seq_len"])
    model.to(torch.bfloat16)
    model.save_pretrained(out, save_compressed=True)


@pytest.mark.parametrize("name", ["w8a8", "w4a16", "w8a16"])
def test_fast_path_checkpoint_equals_the_default_paths(name, tiny_model, tmp_path):
    recipe = recipes.load(name)
    values = recipe.resolve_params(SHAPE)
    rendered = recipe.render(values)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = calibration.tokenized_dataset("sample", tokenizer, values["num_samples"], values["max_seq_len"], values["seed"])
    split = quantize.compress(tiny_model, tokenizer, rendered, tmp_path / "fast", data, values)
    default_path(tiny_model, tokenizer, rendered, tmp_path / "default", data, values)
    fast, default = (load_file(str(tmp_path / kind / "model.safetensors")) for kind in ("fast", "default"))
    assert fast.keys() == default.keys()
    assert [key for key in fast if not torch.equal(fast[key], default[key])] == []
    assert set(split) == {"load", "calibrate", "solve", "save"} and split["solve"] > 0


def test_only_gptq_is_swapped_and_keeps_its_configuration():
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    plain = QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC")
    configured = GPTQModifier(targets="Linear", scheme="W4A16", dampening_frac=0.05, actorder="weight", ignore=["lm_head"])
    swapped, kept = gptq.speed_up([configured, plain])
    assert kept is plain and type(swapped) is gptq.SharedInputGPTQModifier
    assert (swapped.dampening_frac, swapped.actorder, swapped.scheme, swapped.ignore) == (0.05, "weight", "W4A16", ["lm_head"])
