"""The submission package: only what vLLM needs, checked before the alias moves."""

import json
import shutil
import zipfile

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack import ExatrackError, models, quantize
from exatrack.package import check, promote, select_files


@pytest.fixture(scope="module")
def registered(tiny_model):
    mlflow.set_experiment("package-test")
    run_id = quantize.quantize("tiny", "w8a8", {"num_samples": "8", "max_seq_len": "64"})
    client = MlflowClient()
    client.create_registered_model("EXAONE-package-test")
    run = client.get_run(run_id)
    version = client.create_model_version("EXAONE-package-test", source=f"{run.info.artifact_uri}/checkpoint", run_id=run_id)
    client.set_registered_model_alias("EXAONE-package-test", "champion", version.version)
    return version


def test_promote_builds_a_zip_of_model_files_and_moves_the_alias(registered, tmp_path):
    out = promote(model_name="EXAONE-package-test", out=str(tmp_path / "submit.zip"))
    names = set(zipfile.ZipFile(out).namelist())
    assert {"model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/chat_template.jinja",
            "model/generation_config.json"} <= names
    assert "model/recipe.yaml" not in names and all(n.startswith("model/") for n in names)
    config = json.loads(zipfile.ZipFile(out).read("model/config.json"))
    assert config["quantization_config"]["format"] == "int-quantized"
    alias = MlflowClient().get_model_version_by_alias("EXAONE-package-test", "submission")
    assert alias.version == registered.version


def test_check_rejects_an_incomplete_model_folder(registered, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(models.resolve(f"models:/EXAONE-package-test/{registered.version}").folder, folder)
    assert check(folder) == []
    (folder / "tokenizer_config.json").unlink()
    assert check(folder) == ["missing tokenizer_config.json"]
    for weights in folder.glob("*.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    shutil.copy(models.resolve(f"models:/EXAONE-package-test/{registered.version}").folder / "tokenizer_config.json", folder)
    assert any("not readable safetensors" in p for p in check(folder))


def test_a_plain_bf16_checkpoint_is_complete_as_pruned_distilled_or_sft_ones_are(tiny_model, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for path in select_files(tiny_model):
        shutil.copy(path, folder)
    assert check(folder) == []
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "architectures"}))
    assert check(folder) == ["config.json names no architectures; vLLM cannot pick a model class"]


def test_an_incomplete_version_is_never_promoted(tiny_model, tmp_path):
    client = MlflowClient()
    with mlflow.start_run() as run:  # a checkpoint whose weights went missing
        for path in select_files(tiny_model):
            if path.suffix != ".safetensors":
                mlflow.log_artifact(str(path), "checkpoint")
    client.create_registered_model("EXAONE-broken")
    version = client.create_model_version("EXAONE-broken", source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id)
    out = tmp_path / "submit.zip"
    with pytest.raises(ExatrackError, match="is not a complete model: missing \\*.safetensors"):
        promote(version.version, "EXAONE-broken", str(out))
    assert not out.exists()
    with pytest.raises(Exception):
        client.get_model_version_by_alias("EXAONE-broken", "submission")
