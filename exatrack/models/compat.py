"""Checkpoint files that the project's stack and the grader's read as the same model.

exatrack writes with transformers 5 and compressed-tensors 0.19 (llmcompressor 0.14); the challenge's
grader serves with vLLM 0.14.1, which pins transformers <5 and compressed-tensors 0.13. What each
writes and reads, measured on 2026-12-01 with transformers 5.17 / 4.57.6, compressed-tensors 0.19 /
0.13 and vLLM 0.14.1's own config, quantization and tokenizer code (tests/publish/test_grader.py checks it):

- RoPE: transformers 5 saves it only as `rope_parameters` (theta inside). transformers 4 reads
  `rope_theta` and `rope_scaling`, and its configs default the theta (10000 for Exaone4Config, Llama
  and Qwen alike); vLLM 0.14.1's `patch_rope_parameters` (vllm/transformers_utils/config.py) then
  copies that default over the saved theta, silently.
- actorder: compressed-tensors 0.13 accepts `actorder` only with `strategy: group`
  (quantization/quant_args.py); llmcompressor 0.14 writes `actorder: static` on per-channel GPTQ
  weights. A per-channel checkpoint holds no `g_idx`, so nothing reads the field when serving.
- tokenizer: transformers 5 may write `tokenizer_class: TokenizersBackend`, a class transformers 4
  lacks (vLLM: "Failed to load the tokenizer"). It drops `additional_special_tokens`, from which
  transformers 4 builds `all_special_tokens` (4 special tokens instead of EXAONE's 307), or writes
  them as a list under `extra_special_tokens`, which transformers 4 reads as a dict of named tokens
  and then fails to load the fast tokenizer at all ("requires the protobuf library").

Every checkpoint exatrack writes passes through `for_both_stacks` (checkpoint.log_checkpoint for the
steps, tiny.build for the built-in model): it writes these fields for both stacks, for any model
family, and leaves the weights as they are.
"""

import json
from pathlib import Path

V5_ONLY_TOKENIZER_CLASSES = {"TokenizersBackend"}  # both mean "the tokenizer in tokenizer.json"
NAMED_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def for_both_stacks(folder: Path, source: Path | None = None) -> list[str]:
    """Rewrite the JSON files of a checkpoint written by transformers 5 so that transformers 4 and
    vLLM 0.14.1 read what transformers 5 reads; returns what changed."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    changes = legacy_rope(config) + channel_actorder(config)
    if changes:
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return changes + tokenizer_files(folder, source)


def legacy_rope(config: dict) -> list[str]:
    parameters = config.get("rope_parameters")
    if not isinstance(parameters, dict) or "rope_type" not in parameters:
        return []  # none, or one per layer type (not this family): nothing transformers 4 would read
    changes = []
    if "rope_theta" in parameters and config.get("rope_theta") != parameters["rope_theta"]:
        config["rope_theta"] = parameters["rope_theta"]
        changes.append(f"rope_theta = {parameters['rope_theta']}")
    scaling = None if parameters["rope_type"] == "default" else {k: v for k, v in parameters.items() if k != "rope_theta"}
    if config.get("rope_scaling") != scaling:
        config["rope_scaling"] = scaling
        changes.append(f"rope_scaling = {scaling}")
    return changes


def channel_actorder(config: dict) -> list[str]:
    changes = []
    for name, group in ((config.get("quantization_config") or {}).get("config_groups") or {}).items():
        for role in ("weights", "input_activations", "output_activations"):
            arguments = group.get(role) or {}
            if arguments.get("actorder") is not None and arguments.get("strategy") != "group":
                changes.append(f"{name}.{role}.actorder {arguments['actorder']} -> null (strategy {arguments.get('strategy')})")
                arguments["actorder"] = None
    return changes


def tokenizer_files(folder: Path, source: Path | None) -> list[str]:
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return []
    config, changes = json.loads(path.read_text()), []
    if config.get("tokenizer_class") in V5_ONLY_TOKENIZER_CLASSES and (folder / "tokenizer.json").exists():
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        changes.append("tokenizer_class = PreTrainedTokenizerFast")
    if isinstance(config.get("extra_special_tokens"), list):  # transformers 5's name for the list
        config.setdefault("additional_special_tokens", config.pop("extra_special_tokens"))
        changes.append("extra_special_tokens -> additional_special_tokens")
    if not config.get("additional_special_tokens") and (tokens := special_tokens(folder, source, config)):
        config["additional_special_tokens"] = tokens
        changes.append(f"additional_special_tokens = {len(tokens)} tokens")
    if changes:
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return changes


def special_tokens(folder: Path, source: Path | None, config: dict) -> list[str]:
    """The source's own list (EXAONE's 304), else the special tokens tokenizer.json adds beyond the
    named ones (a tokenizer built here, whose special tokens are all its own)."""
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if source is not None and (source / name).exists():
            if found := json.loads((source / name).read_text()).get("additional_special_tokens"):
                return [t["content"] if isinstance(t, dict) else t for t in found]
    if source is None and (folder / "tokenizer.json").exists():
        named = {config.get(k) for k in NAMED_SPECIAL_TOKENS}
        added = json.loads((folder / "tokenizer.json").read_text()).get("added_tokens", [])
        return [t["content"] for t in added if t.get("special") and t["content"] not in named]
    return []
