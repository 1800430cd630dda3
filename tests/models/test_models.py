import json
from pathlib import Path

import mlflow
import pytest

from exatrack.core.basics import ExatrackError
from exatrack.models import models
from exatrack.models.tiny import ARCH


def test_tiny_is_a_small_exaone4_with_the_real_chat_format(tiny_model):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model)
    assert config.model_type == "exaone4" and config.tie_word_embeddings
    assert config.layer_types == ["full_attention"] * ARCH["num_hidden_layers"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "안녕"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "[|user|]\n안녕[|endofturn|]\n[|assistant|]\n<think>\n\n</think>\n\n"
    assert tokenizer.decode(tokenizer("한국어 text").input_ids) == "한국어 text"


def test_tiny_next_token_distributions_are_far_from_uniform(tiny_model):
    """An untrained model's near-uniform distributions would hide any quantization error."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = tokenizer("대한민국의 수도는 서울입니다.", return_tensors="pt").input_ids
    with torch.inference_mode():
        p = model(ids).logits.softmax(-1)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
    assert entropy < 0.75 * math.log(len(tokenizer))


def test_tiny_is_cached_and_deterministic(tiny_model):
    from exatrack.models.tiny import tiny_path

    assert tiny_path() == tiny_model


def test_local_folder_resolves_and_one_without_config_is_refused(tiny_model, tmp_path):
    resolved = models.resolve(str(tiny_model))
    assert resolved.folder == tiny_model and resolved.source == str(tiny_model) and resolved.run_id is None
    with pytest.raises(ExatrackError, match="has no config.json"):
        models.resolve(str(tmp_path))


def test_hub_id_without_network_says_so():
    with pytest.raises(ExatrackError, match="cannot download LGAI-EXAONE/EXAONE-4.0-1.2B from the Hugging Face Hub"):
        models.resolve("LGAI-EXAONE/EXAONE-4.0-1.2B")


def test_runs_and_models_uris_resolve_to_the_logged_folder(tiny_model):
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_model), "checkpoint")
    model = models.resolve(f"runs:/{run.info.run_id}/checkpoint")
    assert json.loads((model.folder / "config.json").read_text())["model_type"] == "exaone4"
    assert model.run_id == run.info.run_id
    client = mlflow.MlflowClient()
    client.create_registered_model("EXAONE-test")
    version = client.create_model_version("EXAONE-test", source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id)
    client.set_registered_model_alias("EXAONE-test", "champion", version.version)
    assert models.resolve("models:/EXAONE-test@champion").folder == model.folder
    assert models.resolve(f"models:/EXAONE-test/{version.version}").run_id == run.info.run_id


def test_a_local_artifact_store_is_read_in_place_and_leaves_no_temporary_copy(
    tiny_model, tmp_path, monkeypatch
):
    """Every runs:/ use used to copy the whole checkpoint into a /tmp folder that was never removed.

    The temporary folder is this process's own: the shared /tmp also gets the other xdist worker's
    files, which once failed this test in CI."""
    import tempfile

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tiny_model), "checkpoint")
    before = set(private_tmp.iterdir())
    model = models.resolve(f"runs:/{run.info.run_id}/checkpoint")
    assert str(model.folder).startswith(str(Path.cwd() / "mlruns"))
    assert set(private_tmp.iterdir()) == before


def test_lineage_and_requirements_come_with_the_resolved_model(tiny_model):
    tags = {models.SOURCE_MODEL: "tiny", models.REQUIRES + "compute_capability": "9.0"}
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_artifacts(str(tiny_model), "checkpoint")
    model = models.resolve(f"runs:/{run.info.run_id}/checkpoint")
    assert model.source == "tiny" and model.requires == {"compute_capability": "9.0"}


def test_unknown_run_is_a_clear_error():
    with pytest.raises(ExatrackError, match="no run 0123abcd in the tracking store"):
        models.resolve("runs:/0123abcd/checkpoint")


def test_a_tiny_build_killed_midway_leaves_nothing_the_next_build_keeps(tmp_path, monkeypatch):
    from exatrack.models import tiny

    class Built:  # stands in for the tokenizer and the model: what matters is where they are saved
        def to(self, dtype):
            return self

        def save_pretrained(self, folder):
            Path(folder).mkdir(exist_ok=True)
            (Path(folder) / "config.json").write_text("{}")

    monkeypatch.setattr(tiny, "train_tokenizer", Built)
    monkeypatch.setattr(tiny, "train_model", lambda tokenizer: Built())
    left = tmp_path / ".key.partial"  # what a build killed midway leaves
    left.mkdir()
    (left / "half.safetensors").write_text("")
    tiny.build(tmp_path / "key")
    assert not left.exists()
    assert [p.name for p in (tmp_path / "key").iterdir()] == ["config.json"]
