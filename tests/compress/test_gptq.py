"""exatrack's GPTQ paths: `exact` writes the checkpoint llmcompressor's defaults write, bit for bit;
`fast` one of the same quality by the proxy, with sdpa attention actually running in calibration."""

import collections
import contextlib

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from exatrack.compress import calibration, gptq, quantize, recipes
from exatrack.core.basics import ExatrackError

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


@contextlib.contextmanager
def cached_masks(monkeypatch):
    """Yields a list that ends up holding, for each store into llmcompressor's layer-input cache, the
    number of seq x seq tensors in it (the causal masks handed on to the decoder layers)."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    stored = []
    update = IntermediatesCache.update

    def squares(value) -> int:
        if isinstance(value, torch.Tensor):
            return int(value.dim() == 4 and value.shape[-1] == value.shape[-2] > 1)
        if isinstance(value, dict):
            value = list(value.values())
        return sum(squares(v) for v in value) if isinstance(value, (list, tuple)) else 0

    def recorded(self, batch_index, values):
        stored.append(squares(values))
        return update(self, batch_index, values)

    with monkeypatch.context() as patch:
        patch.setattr(IntermediatesCache, "update", recorded)
        yield stored


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
    masks_cached = {}
    for path in ("fast", "exact"):
        values = recipe.resolve_params({**SHAPE, "gptq_path": path})
        data = calibration.tokenized_dataset("sample", tokenizer, values["num_samples"], values["max_seq_len"], values["seed"])
        with cached_masks(monkeypatch) as masks_cached[path]:
            _, how = quantize.compress(tiny_model, tokenizer, recipe.render(values), tmp_path / path, data, values)
        assert how["exatrack.gptq_path"] == path
    layers = 4
    assert len(counts) == 1 and counts[0] == {"causal": 2 * layers * SHAPE["num_samples"]}
    # The embedding subgraph's store of each sample hands the layers their masks; the fast path's has none.
    assert sum(masks_cached["fast"]) == 0 and len(masks_cached["fast"]) == len(masks_cached["exact"])
    assert sum(map(bool, masks_cached["exact"])) == SHAPE["num_samples"]
    report = proxy.side_by_side(tiny_model, {path: tmp_path / path for path in ("fast", "exact")}, base="exact",
                                max_tokens=128)
    fast, exact = report["fast"], report["exact"]
    assert exact["proxy_kl_low"] <= fast["proxy_kl"] <= exact["proxy_kl_high"]
    assert fast["proxy_kl_delta_low"] <= 0 <= fast["proxy_kl_delta_high"] < 0.1 * exact["proxy_kl"]
    assert fast["proxy_top1_agreement_delta_high"] >= 0
    assert exact["proxy_kl_delta"] == 0 and exact["proxy_kl"] > 0


def masks_and_attention(tiny_model, padding: int):
    """Tiny's causal mask for a batch of two 16-token samples, the second left-padded by `padding`,
    as the model builds it under its attention implementation, and the attention output through it."""
    from transformers import AutoConfig
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.exaone4.modeling_exaone4 import eager_attention_forward

    config = AutoConfig.from_pretrained(tiny_model)
    config._attn_implementation = "eager"  # what llmcompressor sets for calibration
    padding_mask = torch.ones(2, 16, dtype=torch.long)
    padding_mask[1, :padding] = 0
    mask = create_causal_mask(config=config, inputs_embeds=torch.zeros(2, 16, 8), attention_mask=padding_mask,
                              past_key_values=None, position_ids=torch.arange(16).expand(2, -1))
    module = torch.nn.Module()
    module.num_key_value_groups, module.training, module.is_causal = 2, False, True
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 16, 8, generator=generator)
    key, value = (torch.randn(2, 2, 16, 8, generator=generator) for _ in range(2))
    attend = ALL_ATTENTION_FUNCTIONS.get_interface("eager", eager_attention_forward)
    return mask, attend(module, query, key, value, mask, scaling=8**-0.5)[0]


@pytest.mark.parametrize("padding", [0, 3])
def test_sdpa_skips_only_a_plain_causal_mask_and_the_registries_are_restored_after_an_error(tiny_model, padding):
    """Inside, what the model builds and attends through is sdpa's: no mask at all for an unpadded batch
    (nothing seq x seq to cache), a boolean one for a padded batch; the output on every real token is
    eager's."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.masking_utils import eager_mask as eager_mask_builder
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager_mask, expected = masks_and_attention(tiny_model, padding)
    with pytest.raises(RuntimeError), gptq.sdpa_for_eager() as calls:
        mask, got = masks_and_attention(tiny_model, padding)
        assert (mask is None) == (padding == 0) and (padding == 0 or mask.dtype == torch.bool)
        assert calls == {"causal" if padding == 0 else "masked": 1}
        raise RuntimeError("calibration failed")
    real = torch.ones(2, 16, dtype=torch.bool)
    real[1, :padding] = False
    torch.testing.assert_close(got[real], expected[real])  # (batch, token, head, dim)
    assert eager_mask.dtype == torch.float32 and eager_mask.shape == (2, 1, 16, 16)
    assert "eager" not in ALL_ATTENTION_FUNCTIONS and ALL_MASK_ATTENTION_FUNCTIONS["eager"] is eager_mask_builder


@pytest.mark.parametrize("path", ["exact", "fast"])
def test_the_cpu_memory_counted_for_the_cache_covers_what_llmcompressor_holds_within_one_sample(path, tiny_model,
                                                                                                tmp_path, monkeypatch):
    """The count behind `check_cpu_memory`, against llmcompressor's own size of its cache (on every
    device) after every store of a real calibration: never under, and over by less than one sample.
    Counted with all samples moved, for the model as it calibrates (float32 on a CPU, bf16 on a GPU)."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    sizes, counted = [], []
    update, resident_samples = IntermediatesCache.update, gptq.resident_samples
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = calibration.tokenized_dataset("sample", tokenizer, SHAPE["num_samples"], SHAPE["max_seq_len"], SHAPE["seed"])
    lengths = [len(ids) for ids in data["input_ids"]]

    def recorded(self, index, values):
        update(self, index, values)
        sizes.append(sum(self.size().values()))

    def counting(model, samples, seq_len, path):
        counted.append((gptq.cpu_bytes(model, lengths, path, resident=0), gptq.sample_bytes(model, max(lengths), path),
                        gptq.cpu_bytes(model, lengths, path, resident=samples)))
        return resident_samples(model, samples, seq_len, path)

    monkeypatch.setattr(IntermediatesCache, "update", recorded)
    monkeypatch.setattr(gptq, "resident_samples", counting)
    values = recipes.load("w8a8").resolve_params({**SHAPE, "gptq_path": path})
    quantize.compress(tiny_model, tokenizer, recipes.load("w8a8").render(values), tmp_path, data, values)
    [(all_moved, one_sample, none_moved)] = counted
    assert len(set(lengths)) > 1 and max(sizes) <= all_moved < max(sizes) + one_sample and none_moved == 0


def test_a_cache_the_cpu_memory_cannot_hold_is_refused_before_calibrating(tiny_model, monkeypatch):
    import llmcompressor
    import mlflow
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: collections.namedtuple("Memory", "available")(1024))
    monkeypatch.setattr(gptq, "resident_samples", lambda *args: 0)  # a GPU box: as if its memory were full
    monkeypatch.setattr(llmcompressor, "oneshot", lambda *a, **k: pytest.fail("calibration started"))
    with pytest.raises(ExatrackError, match=r"^calibration's cached layer inputs need 0.0 GiB of CPU memory \(8 samples "
                                            r"of up to 64 tokens\) and 0.0 GiB is free; lower num_samples or max_seq_len$"):
        quantize.quantize("tiny", "w8a8", {"num_samples": "8", "max_seq_len": "64"})
    failed = mlflow.search_runs(filter_string="params.recipe = 'w8a8' and params.num_samples = '8'", output_format="list")[0]
    assert failed.info.status == "FAILED" and not mlflow.MlflowClient().list_artifacts(failed.info.run_id, "checkpoint")
    assert failed.data.tags["exatrack.error"].startswith("calibration's cached layer inputs need")


def test_the_split_cache_keeps_the_first_batches_in_place_and_moves_the_rest():
    """"meta" stands in for the CPU memory the GPU's batches move to: a batch past `resident` holds a
    moved copy, one before it the very tensor the layer gave."""
    cache = gptq.GpuFirstCache.empty(4, torch.device("meta"))
    cache.resident = 2
    outputs = [torch.randn(2, 3) for _ in range(4)]
    for index, output in enumerate(outputs):
        cache.update(index, {"hidden_states": output, "position_embeddings": (output, output)})
    held = [cache.batch_intermediates[index]["hidden_states"].value for index in range(4)]
    assert held[0] is outputs[0] and held[1] is outputs[1]
    assert [tensor.device.type for tensor in held] == ["cpu", "cpu", "meta", "meta"]
    pair = cache.batch_intermediates[3]["position_embeddings"].value
    assert [item.value.device.type for item in pair] == ["meta", "meta"]
    assert cache.fetch(1)["hidden_states"] is outputs[1]


def test_llmcompressors_pipeline_caches_through_the_split_cache_and_gets_it_back_after(tiny_model, tmp_path, monkeypatch):
    """What a memory-capped GPU runs, on the CPU: the sequential pipeline stores every batch through
    `GpuFirstCache`, on both sides of `resident`, and writes the same checkpoint (here every copy is a
    CPU tensor's own; the GPU's copies are checked by benchmarks/gptq_speed.py's `fast_split`)."""
    from llmcompressor.pipelines.cache import IntermediatesCache
    from llmcompressor.pipelines.sequential import pipeline

    stores = []  # for each store, whether its batch stays where the layer left it
    update = gptq.GpuFirstCache.update

    def recorded(self, index, values):
        stores.append(index < self.resident)
        update(self, index, values)

    monkeypatch.setattr(gptq.GpuFirstCache, "update", recorded)
    rendered = recipes.load("w8a8").render(recipes.load("w8a8").resolve_params(SHAPE))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = calibration.tokenized_dataset("sample", tokenizer, SHAPE["num_samples"], SHAPE["max_seq_len"], SHAPE["seed"])
    with gptq.gpu_first(SHAPE["num_samples"] // 2):
        default_path(tiny_model, tokenizer, rendered, tmp_path / "split", data, SHAPE)
    assert pipeline.IntermediatesCache is IntermediatesCache
    default_path(tiny_model, tokenizer, rendered, tmp_path / "default", data, SHAPE)
    assert stores.count(True) == stores.count(False) > 0
    split, default = (load_file(str(tmp_path / kind / "model.safetensors")) for kind in ("split", "default"))
    assert split.keys() == default.keys() and all(torch.equal(split[key], default[key]) for key in split)
    with pytest.raises(RuntimeError), gptq.gpu_first(1):
        raise RuntimeError("calibration failed")
    assert pipeline.IntermediatesCache is IntermediatesCache


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.mm's fp32 output from bf16 inputs runs on CUDA only")
def test_bf16_products_are_llmcompressors_hessian_within_bf16_rounding():
    from llmcompressor.modifiers.gptq.helpers import accumulate_hessian, make_empty_hessian

    linear = torch.nn.Linear(256, 128, device="cuda", dtype=torch.bfloat16)
    inp = torch.randn(4, 64, 256, device="cuda", dtype=torch.bfloat16)
    fp32, fp32_samples = accumulate_hessian(inp, linear, make_empty_hessian(linear), torch.zeros((), device="cuda"))
    bf16, bf16_samples = gptq.bf16_hessian(inp, make_empty_hessian(linear))
    assert bf16.dtype == torch.float32 and float(bf16_samples) == float(fp32_samples) == 4
    torch.testing.assert_close(bf16, fp32, rtol=1e-3, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_a_moved_batch_is_pinned_and_comes_back_to_the_gpu_unchanged():
    cache = gptq.GpuFirstCache.empty(2, torch.device("cpu"))
    cache.resident = 1
    outputs = [torch.randn(64, 256, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
    for index, output in enumerate(outputs):
        cache.update(index, {"hidden_states": output})
    moved = cache.batch_intermediates[1]["hidden_states"].value
    assert moved.device.type == "cpu" and moved.is_pinned()
    back = cache.fetch(1)["hidden_states"]
    assert back.is_cuda and torch.equal(back, outputs[1])
    assert cache.fetch(0)["hidden_states"] is outputs[0]
