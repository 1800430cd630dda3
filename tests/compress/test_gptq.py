"""exatrack's GPTQ paths: `exact` writes the checkpoint llmcompressor's defaults write, bit for bit;
`fast` one of the same quality by the proxy, with sdpa attention actually running in calibration."""

import contextlib

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from exatrack.compress import calibration, gptq, quantize, recipes

SHAPE = {"num_samples": 8, "max_seq_len": 64, "seed": 0, "gptq_path": "exact"}


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
def test_exact_path_checkpoint_equals_the_default_paths(name, tiny_model, tmp_path):
    recipe = recipes.load(name)
    values = recipe.resolve_params(SHAPE)
    rendered = recipe.render(values)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = calibration.tokenized_dataset("sample", tokenizer, values["num_samples"], values["max_seq_len"], values["seed"])
    split, how = quantize.compress(tiny_model, tokenizer, rendered, tmp_path / "exact", data, values)
    default_path(tiny_model, tokenizer, rendered, tmp_path / "default", data, values)
    exact, default = (load_file(str(tmp_path / kind / "model.safetensors")) for kind in ("exact", "default"))
    assert exact.keys() == default.keys()
    assert [key for key in exact if not torch.equal(exact[key], default[key])] == []
    assert set(split) == {"load", "calibrate", "solve", "save"} and split["solve"] > 0
    assert how == {"exatrack.gptq_path": "exact", "exatrack.calibration_cache": "cpu"}


def test_only_gptq_is_swapped_and_keeps_its_configuration():
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    plain = QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC")
    configured = GPTQModifier(targets="Linear", scheme="W4A16", dampening_frac=0.05, actorder="weight", ignore=["lm_head"])
    swapped, kept = gptq.speed_up([configured, plain], "exact")
    assert kept is plain and type(swapped) is gptq.SharedInputGPTQModifier
    assert (swapped.dampening_frac, swapped.actorder, swapped.scheme, swapped.ignore) == (0.05, "weight", "W4A16", ["lm_head"])
    assert not swapped._bf16_products and gptq.speed_up([configured], "fast")[0]._bf16_products


@pytest.mark.parametrize("name", ["w8a8", "w4a16"])
def test_fast_path_checkpoint_is_as_good_as_the_exact_paths_with_sdpa_in_calibration(name, tiny_model, tmp_path,
                                                                                      monkeypatch):
    """The proxy over the held-out texts, paired (fast minus exact on the same texts): a tie, and at most
    a tenth of what quantizing costs; the fast path's KL inside the exact path's interval. On this CPU
    the paths differ by sdpa alone (the float32 model keeps fp32 Hessian products), which the call
    count proves ran: every decoder layer, twice per sample (calibrate, then propagate)."""
    from exatrack.compress import proxy

    counts = []

    @contextlib.contextmanager
    def counted():
        with sdpa_for_eager() as calls:
            counts.append(calls)
            yield calls

    sdpa_for_eager = gptq.sdpa_for_eager
    monkeypatch.setattr(gptq, "sdpa_for_eager", counted)
    recipe = recipes.load(name)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for path in ("fast", "exact"):
        values = recipe.resolve_params({**SHAPE, "gptq_path": path})
        data = calibration.tokenized_dataset("sample", tokenizer, values["num_samples"], values["max_seq_len"], values["seed"])
        _, how = quantize.compress(tiny_model, tokenizer, recipe.render(values), tmp_path / path, data, values)
        assert how["exatrack.gptq_path"] == path
    layers = 4
    assert len(counts) == 1 and counts[0] == {"causal": 2 * layers * SHAPE["num_samples"]}
    report = proxy.side_by_side(tiny_model, {path: tmp_path / path for path in ("fast", "exact")}, base="exact",
                                max_tokens=128)
    fast, exact = report["fast"], report["exact"]
    assert exact["proxy_kl_low"] <= fast["proxy_kl"] <= exact["proxy_kl_high"]
    assert fast["proxy_kl_delta_low"] <= 0 <= fast["proxy_kl_delta_high"] < 0.1 * exact["proxy_kl"]
    assert fast["proxy_top1_agreement_delta_high"] >= 0
    assert exact["proxy_kl_delta"] == 0 and exact["proxy_kl"] > 0


def eager_and_sdpa(mask):
    """Tiny's attention shape through transformers' eager attention and through the swapped entry."""
    from transformers.models.exaone4.modeling_exaone4 import eager_attention_forward
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    module = torch.nn.Module()
    module.num_key_value_groups, module.training, module.is_causal = 2, False, True
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 16, 8, generator=generator)
    key, value = (torch.randn(2, 2, 16, 8, generator=generator) for _ in range(2))
    expected, _ = eager_attention_forward(module, query, key, value, mask, scaling=8**-0.5)
    got, _ = ALL_ATTENTION_FUNCTIONS.get_interface("eager", eager_attention_forward)(module, query, key, value, mask,
                                                                                     scaling=8**-0.5)
    return expected, got


def test_sdpa_drops_only_the_plain_causal_mask_and_the_registry_is_restored_after_an_error():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    causal = torch.full((16, 16), torch.finfo(torch.float32).min).triu(1).expand(2, 1, 16, 16)
    padded = causal.clone()
    padded[1, :, :, :3] = torch.finfo(torch.float32).min  # the second sample left-padded by 3 tokens
    padded[1, :, :3, 0] = 0  # its padding rows attend to something, as transformers' masks keep them finite
    with pytest.raises(RuntimeError), gptq.sdpa_for_eager() as calls:
        for mask in (causal, padded):
            expected, got = eager_and_sdpa(mask)
            torch.testing.assert_close(got, expected)
        assert calls == {"causal": 1, "masked": 1}
        raise RuntimeError("calibration failed")
    assert "eager" not in ALL_ATTENTION_FUNCTIONS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.mm's fp32 output from bf16 inputs runs on CUDA only")
def test_bf16_products_are_llmcompressors_hessian_within_bf16_rounding():
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian

    linear = torch.nn.Linear(256, 128, device="cuda", dtype=torch.bfloat16)
    inp = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16)
    fp32, fp32_samples = accumulate_hessian(inp, linear, make_empty_hessian(linear), torch.zeros((), device="cuda"))
    bf16, bf16_samples = gptq.bf16_hessian(inp, make_empty_hessian(linear))
    assert bf16.dtype == torch.float32 and float(bf16_samples) == float(fp32_samples) == 4
    torch.testing.assert_close(bf16, fp32, rtol=1e-3, atol=1e-2)
