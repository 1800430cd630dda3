"""The grader check, with the grader's real stack (vLLM 0.14.1's config, quantization and tokenizer code,
transformers 4.57, compressed-tensors 0.13; the grader environment): every checkpoint exatrack writes
is read by it as the model exatrack's own stack reads, and the checkpoints transformers 5 writes
unmended are refused, each defect in its own words. One grader process reads them all."""

import json
import shutil
from pathlib import Path

import pytest

from exatrack.compress import distill, prune, sft
from exatrack.models import compat, models
from exatrack.publish import grader
from tests.conftest import SHARED, WRITABLE_RECIPES

# the kernel scheme vLLM 0.14.1 picks for every decoder Linear, at an L4's compute capability
SCHEMES = {"w8a8": "CompressedTensorsW8A8Int8", "rtn_w8a8": "CompressedTensorsW8A8Int8",
           "smoothquant_w8a8": "CompressedTensorsW8A8Int8", "w8a8_kv_fp8": "CompressedTensorsW8A8Int8",
           "fp8_dynamic": "CompressedTensorsW8A8Fp8", "fp8_static": "CompressedTensorsW8A8Fp8",
           "w4a16": "CompressedTensorsWNA16", "w8a16": "CompressedTensorsWNA16", "rtn_w4a16": "CompressedTensorsWNA16",
           "rtn_w8a16": "CompressedTensorsWNA16"}
SMALL = {"num_samples": 16, "max_seq_len": 64}
REAL = SHARED / "data" / "exaone-4.0-1.2b"


def undo(folder: Path, defect: str) -> None:
    """Put back what transformers 5 and llmcompressor 0.14 write, one defect at a time."""
    config = json.loads((folder / "config.json").read_text())
    if defect == "rope":
        config.pop("rope_theta", None)
        config.pop("rope_scaling", None)
    elif defect == "actorder":
        config["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] = "static"
    elif defect == "tokenizer":
        tokens = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**tokens, "tokenizer_class": "TokenizersBackend"}))
    (folder / "config.json").write_text(json.dumps(config))


def small_model(config: dict, tokenizer_folder: Path, out: Path, mend_from: Path | None):
    """A model of `config`'s family and RoPE, a few layers wide, saved by transformers 5 (mended for the
    grader's stack unless `mend_from` is None) with the tokenizer of `tokenizer_folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    shrunk = AutoConfig.for_model(**{**config, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
                                     "layer_types": ["full_attention"] * 2})
    AutoModelForCausalLM.from_config(shrunk).to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(out)
    if mend_from is not None:
        compat.for_both_stacks(out, mend_from)


@pytest.fixture(scope="module")
def reports(quantized, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("grader")
    folders = {"tiny": tiny_model}
    folders.update({name: models.resolve(f"runs:/{run.info.run_id}/checkpoint").folder for name, run in quantized.items()})
    pruned = prune.prune("tiny", {"drop": 1, "ffn": 256, **SMALL})
    folders["prune"] = models.resolve(f"runs:/{pruned}/checkpoint").folder
    folders["distill"] = models.resolve(f"runs:/{distill.distill(f'runs:/{pruned}/checkpoint', {**SMALL, 'epochs': 1})}"
                                        "/checkpoint").folder
    folders["sft"] = models.resolve(f"runs:/{sft.sft('tiny', {**SMALL, 'epochs': 1})}/checkpoint").folder
    for defect, base in (("rope", "tiny"), ("actorder", "w8a8"), ("tokenizer", "tiny")):
        folders[f"unmended-{defect}"] = root / f"unmended-{defect}"
        shutil.copytree(folders[base], folders[f"unmended-{defect}"])
        undo(folders[f"unmended-{defect}"], defect)
    # another family: transformers 5 writes rope_parameters for Llama too, where transformers 4 defaults the base
    llama = {"model_type": "llama", "vocab_size": 2048, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
             "max_position_embeddings": 4096, "tie_word_embeddings": True, "architectures": ["LlamaForCausalLM"]}
    for mended in (True, False):
        folders[f"llama-{'mended' if mended else 'unmended'}"] = root / f"llama-{mended}"
        small_model(llama, tiny_model, root / f"llama-{mended}", tiny_model if mended else None)
    if REAL.exists():  # EXAONE-4.0-1.2B's own config (llama3 RoPE scaling) and tokenizer (307 special tokens)
        real = json.loads((REAL / "config.json").read_text())
        real = {k: v for k, v in real.items() if k not in ("transformers_version", "torch_dtype")}
        for mended in (True, False):
            folders[f"real-{'mended' if mended else 'unmended'}"] = root / f"real-{mended}"
            small_model(real, REAL, root / f"real-{mended}", REAL if mended else None)
    references = [REAL if name.startswith("real") else tiny_model for name in folders]
    stack, found = grader.check(list(folders.values()), references)
    return stack, dict(zip(folders, found))


@pytest.mark.parametrize("name", ["tiny", *WRITABLE_RECIPES, "prune", "distill", "sft", "llama-mended", "real-mended"])
def test_every_checkpoint_exatrack_writes_is_read_alike_by_the_grader_stack(reports, name):
    stack, found = reports
    if name not in found:
        pytest.skip(f"{REAL} is not on this machine")
    report = found[name]
    assert stack["vllm"] == "0.14.1" and stack["transformers"].startswith("4.")
    assert report.passed, report.problems
    assert report.read["logits"]["max_abs_diff"] <= grader.LOGIT_BOUND and report.read["logits"]["positions"] > 0
    schemes = set(report.read["quantization"].get("schemes", {}).values()) - {"unquantized"}
    assert schemes == ({SCHEMES[name]} if name in SCHEMES else set())


@pytest.mark.parametrize("name, says", [
    ("unmended-rope", "RoPE: the grader's vLLM reads {'rope_theta': 10000.0"),
    ("unmended-actorder", "Must use group quantization strategy in order to apply activation ordering"),
    ("unmended-tokenizer", "tokenizer: the grader's stack fails to read it"),
    ("llama-unmended", "RoPE: the grader's vLLM reads {'rope_theta': 10000.0"),
    ("real-unmended", "RoPE: the grader's vLLM reads {"),
])
def test_what_transformers_5_writes_unmended_is_refused_naming_the_defect(reports, name, says):
    stack, found = reports
    if name not in found:
        pytest.skip(f"{REAL} is not on this machine")
    assert any(says in problem for problem in found[name].problems), found[name].problems


def test_the_real_tokenizer_keeps_its_307_special_tokens_only_when_mended(reports):
    _, found = reports
    if "real-mended" not in found:
        pytest.skip(f"{REAL} is not on this machine")
    assert len(found["real-mended"].read["tokenizer"]["special_tokens"]) == 307
    assert any("special tokens" in p for p in found["real-unmended"].problems), found["real-unmended"].problems
