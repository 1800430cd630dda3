"""The submission package: only what vLLM needs, checked before the alias moves."""

import json
import shutil
import zipfile

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack.compress import quantize
from exatrack.core.basics import ExatrackError
from exatrack.models import models
from exatrack.publish.package import check, promote, select_files


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
    # the grader check's record, on the promotion run and the version
    run = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`exatrack.kind` = 'promote'",
                             output_format="list", order_by=["attributes.start_time DESC"])[0]
    assert run.data.tags["exatrack.grader_check"] == "passed"
    assert run.data.tags["exatrack.grader_stack"].startswith("vllm 0.14.1, transformers 4.")
    checked = json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/grader_check.json"))
    assert checked["problems"] == [] and checked["read"]["quantization"]["format"] == "int-quantized"
    assert alias.tags["grader_check"].startswith("passed (vllm 0.14.1")


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


@pytest.mark.parametrize("defect, says", [("rope", "RoPE: the grader's vLLM reads"),
                                          ("actorder", "Must use group quantization strategy"),
                                          ("tokenizer", "tokenizer: the grader's stack fails to read it")])
def test_promote_refuses_a_package_the_grader_reads_as_another_model(registered, defect, says, tmp_path):
    """As transformers 5 and llmcompressor 0.14 write them unmended: one line naming the defect, the run
    FAILED, no zip, no alias moved."""
    from click.testing import CliRunner

    from exatrack.cli import main
    from tests.publish.test_grader import undo
    from tests.test_bad_input import assert_one_error_line

    folder = tmp_path / "checkpoint"
    shutil.copytree(models.resolve(f"models:/EXAONE-package-test/{registered.version}").folder, folder)
    undo(folder, defect)
    client = MlflowClient()
    with mlflow.start_run(tags={models.SOURCE_MODEL: "tiny"}) as run:
        mlflow.log_artifacts(str(folder), "checkpoint")
    name = f"EXAONE-unmended-{defect}"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/checkpoint", run_id=run.info.run_id)
    out = tmp_path / "submit.zip"
    result = CliRunner().invoke(main, ["promote", "--version", version.version, "--registered_model", name, "--out", str(out)])
    assert result.exit_code != 0
    assert_one_error_line(result.output, ("is not the model exatrack measured under the grader's stack", says))
    assert not out.exists() and not client.get_model_version(name, version.version).aliases
    promoted = client.search_runs([run.info.experiment_id], "tags.`exatrack.kind` = 'promote'",
                                  order_by=["attributes.start_time DESC"])[0]
    assert promoted.info.status == "FAILED" and promoted.data.tags["exatrack.grader_check"].startswith("refused: ")


def test_a_promotion_failing_after_the_zip_was_written_keeps_the_previous_one(registered, tmp_path, monkeypatch):
    """The store's disk full while the new zip is logged: the last submission stays as it was, the
    alias does not move and nothing is left beside it."""
    import errno

    out = tmp_path / "submit.zip"
    out.write_bytes(b"last week's submission")
    client = MlflowClient()
    before = [v.aliases for v in client.search_model_versions("name = 'EXAONE-package-test'")]

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mlflow, "log_artifact", disk_full)
    says = r"could not be logged to the tracking store \(No space left on device\); submit.zip is as it was"
    with pytest.raises(ExatrackError, match=says):
        promote(model_name="EXAONE-package-test", out=str(out), grader_check=False)
    assert out.read_bytes() == b"last week's submission"
    assert [p.name for p in tmp_path.iterdir()] == ["submit.zip"]
    assert [v.aliases for v in client.search_model_versions("name = 'EXAONE-package-test'")] == before


def test_promote_of_a_name_nobody_registered_names_the_ones_there(registered, tmp_path):
    """rank registers a non-EXAONE source under its own name, while promote's default stays EXAONE's."""
    with pytest.raises(ExatrackError, match=r"no registered model is named EXAONE-absent; run `exatrack rank` first, "
                                            r"or pass --registered_model \S+ \(this store holds .*\)$") as refused:
        promote(model_name="EXAONE-absent", out=str(tmp_path / "submit.zip"))
    assert registered.name in str(refused.value).split("holds ")[1] and not (tmp_path / "submit.zip").exists()
