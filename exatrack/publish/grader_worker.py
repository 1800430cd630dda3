"""Runs inside the grader's environment (vLLM 0.14.1, transformers <5, compressed-tensors 0.13): reads
packages the way the challenge's grader does. Imports only that stack and the standard library.

    python grader_worker.py REQUEST.json RESPONSE.json

It calls vLLM's own functions rather than copies of them, since the point is to catch what vLLM's
code does with our files (its `patch_rope_parameters`, say):
- config:       vllm.config.ModelConfig, what `vllm serve` and LLM(...) build first (get_config with
                patch_rope_parameters, the model registry, dtype, max_model_len);
- quantization: VllmConfig.get_quantization_config -> CompressedTensorsConfig.from_config, then
                get_scheme for every Linear vLLM builds (its fused names: qkv_proj, gate_up_proj);
- tokenizer:    vllm.tokenizers.cached_tokenizer_from_config, and the chat rendered as LLM.chat does;
- logits:       transformers' own load (compressed-tensors decompressing), in float32.
Without a GPU vLLM runs on UnspecifiedPlatform, whose compute capability is None, and compressed-
tensors then silently picks weaker schemes (FP8 W8A8 becomes W8A16Fp8), so the grader GPU's
capability is pinned. A section that fails holds {"error": ...}: one defect never hides another.
"""

import json
import os
import sys
import traceback
from importlib.metadata import version

TOP_K = 5
FULL_LOGITS_MAX_VOCAB = 4096  # above it, the top-k of each position only (EXAONE's 102,400 would be MBs)
# vLLM's fused Linears of a Llama-family decoder layer and the class each is built as: recipe targets
# such as "Linear" are matched against the class name.
VLLM_LINEARS = {"self_attn.qkv_proj": "QKVParallelLinear", "self_attn.o_proj": "RowParallelLinear",
                "mlp.gate_up_proj": "MergedColumnParallelLinear", "mlp.down_proj": "RowParallelLinear"}


def section(check, *args) -> dict:
    try:
        return check(*args)
    except BaseException as err:  # pydantic's ValidationError, RuntimeError, SystemExit from deep imports
        cause = f" (cause: {type(err.__cause__).__name__}: {one_line(err.__cause__)})" if err.__cause__ else ""
        frames = [f for f in traceback.extract_tb(err.__traceback__) if "site-packages/" in f.filename]
        where = f" at {frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}" if frames else ""
        return {"error": f"{type(err).__name__}: {one_line(err)[:600]}{cause}{where}"}


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def pin_capability(capability: str | None) -> dict:
    from vllm.platforms import current_platform
    from vllm.platforms.interface import DeviceCapability

    if capability and current_platform.get_device_capability() is None:
        major, minor = (int(x) for x in capability.split("."))
        current_platform.get_device_capability = lambda device_id=0: DeviceCapability(major, minor)
        return {"platform": type(current_platform).__name__, "capability": capability, "pinned": True}
    return {"platform": type(current_platform).__name__, "capability": str(current_platform.get_device_capability())}


def model_config(folder: str):
    from vllm.config import ModelConfig

    return ModelConfig(model=folder, tokenizer=folder)


def config(mc) -> dict:
    return {"architecture": mc.architecture, "dtype": str(mc.dtype).replace("torch.", ""),
            "max_model_len": mc.max_model_len, "rope_parameters": getattr(mc.hf_text_config, "rope_parameters", None)}


def quantization(folder: str, mc) -> dict:
    raw = json.load(open(os.path.join(folder, "config.json"))).get("quantization_config")
    if raw is None:
        return {"method": None}
    import torch
    from vllm.config import DeviceConfig, LoadConfig, VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
        CompressedTensorsKVCacheMethod,
    )
    from vllm.model_executor.models import ModelRegistry

    parsed = VllmConfig.get_quantization_config(mc, LoadConfig())  # the engine's path; it validates here
    model_class, _ = ModelRegistry.resolve_model_cls(mc.architectures, mc)
    parsed.packed_modules_mapping = dict(getattr(model_class, "packed_modules_mapping", {}))  # as the loader does
    schemes = {}
    # FP8 schemes build a CustomOp that reads the current VllmConfig; one on the "cpu" device will do
    with set_current_vllm_config(VllmConfig(device_config=DeviceConfig(device="cpu"))):
        for i in range(mc.hf_text_config.num_hidden_layers):
            for suffix, class_name in VLLM_LINEARS.items():
                name = f"model.layers.{i}.{suffix}"
                try:
                    scheme = parsed.get_scheme(layer=type(class_name, (torch.nn.Module,), {})(), layer_name=name)
                    schemes[name] = type(scheme).__name__ if scheme else "unquantized"
                except Exception as err:
                    schemes[name] = f"error: {type(err).__name__}: {str(err)[:300]}"
    # lm_head is a ParallelLMHead, no Linear: vLLM serves it unquantized whatever the config says
    schemes["lm_head"] = "unquantized" if parsed.get_scheme_dict(torch.nn.Module(), "lm_head") is None else \
        "error: the config quantizes lm_head, which vLLM 0.14.1 loads as an unquantized ParallelLMHead"
    out = {"method": raw.get("quant_method"), "format": raw.get("format"), "schemes": schemes}
    if raw.get("kv_cache_scheme"):
        CompressedTensorsKVCacheMethod.validate_kv_cache_scheme(raw["kv_cache_scheme"])
        out["kv_cache_scheme"] = "valid"
    return out


def tokenizer(mc, conversation: list) -> dict:
    from vllm.entrypoints.chat_utils import (apply_hf_chat_template, parse_chat_messages,
                                             resolve_chat_template_content_format)
    from vllm.tokenizers import cached_tokenizer_from_config

    tok = cached_tokenizer_from_config(mc)
    # as LLM.chat renders a conversation: parse, the model's template, encoded without special tokens added
    content = resolve_chat_template_content_format(None, None, "auto", tok, model_config=mc)
    messages, _, _ = parse_chat_messages(conversation, mc, content_format=content)
    prompt = apply_hf_chat_template(tok, messages, None, None, model_config=mc, add_generation_prompt=True,
                                    enable_thinking=False)
    return {"class": type(tok).__mro__[1].__name__, "special_tokens": sorted(tok.all_special_tokens),
            "special_ids": {k: getattr(tok, f"{k}_id", None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
            "chat_ids": tok.encode(prompt, add_special_tokens=False)}


def logits(folder: str, prompts: list) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompts:
            values = model(torch.tensor([ids])).logits[0].float()
            top = values.topk(TOP_K, dim=-1)
            entry = {"top_ids": top.indices.tolist(), "top_values": top.values.tolist()}
            if values.shape[-1] <= FULL_LOGITS_MAX_VOCAB:
                entry["logits"] = values.tolist()
            out.append(entry)
    return {"prompts": out}


def reference_tokens(folder: str) -> dict:
    """The special tokens of the model a package was made from, as transformers 4 loads its tokenizer."""
    from transformers import AutoTokenizer

    return {"special_tokens": sorted(AutoTokenizer.from_pretrained(folder).all_special_tokens)}


def read(package: dict, conversation: list) -> dict:
    folder = os.path.abspath(package["folder"])
    out = {"reference": section(reference_tokens, package["reference"])} if package.get("reference") else {}
    try:
        mc = model_config(folder)
    except Exception:
        return {**out, "config": section(model_config, folder)}  # the same failure, as a section
    out |= {"config": section(config, mc), "quantization": section(quantization, folder, mc),
            "tokenizer": section(tokenizer, mc, conversation)}
    return out | ({"logits": section(logits, folder, package["prompts"])} if package["prompts"] else {})


def main(request_path: str, response_path: str) -> None:
    request = json.load(open(request_path, encoding="utf-8"))
    response = {"versions": {n: version(n) for n in ("vllm", "transformers", "compressed-tensors", "torch")},
                "platform": section(pin_capability, request.get("capability"))}
    response["packages"] = [read(p, request["conversation"]) for p in request["packages"]]
    with open(response_path, "w", encoding="utf-8") as out:
        json.dump(response, out, ensure_ascii=False)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    main(*sys.argv[1:3])
