"""The command line: MLproject mirrors it; runs, boards and promotion through it (bad input: test_bad_input.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import mlflow
import yaml
from click.testing import CliRunner

from exatrack.cli import main
from tests.conftest import REPO


def invoke(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def last_run():
    return mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1)[0]


UTILITIES = {"recipes", "serving-env", "grader-env", "leaderboard"}  # they track nothing, so they are no entry points


def test_mlproject_entry_points_mirror_cli_commands_one_to_one():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert set(project["entry_points"]) == set(main.commands) - UTILITIES
    for name, entry in project["entry_points"].items():
        command = main.commands[name]
        tracked = [p for p in command.params if not getattr(p, "is_flag", False)]  # --dry-run changes nothing tracked
        assert set(entry["parameters"]) == {p.name for p in tracked}, name
        assert entry["command"].startswith(f"exatrack {name} ")
        text = " ".join(entry["command"].split())
        for param in tracked:
            spelled = f"--{param.name} {{{param.name}}}" if isinstance(param, click.Option) else f"{{{param.name}}}"
            assert spelled in text, (name, param.name)


def test_mlflow_run_quantize_entry_point(tiny_model, tmp_path):
    """The headline: `mlflow run . -e quantize -P model=tiny -P damp=0.02 --env-manager local`."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    cmd = ["mlflow", "run", str(REPO), "-e", "quantize", "-P", "model=tiny", "-P", "damp=0.02", "-P", "num_samples=8",
           "-P", "max_seq_len=64", "--env-manager", "local"]
    done = subprocess.run(cmd, cwd=os.getcwd(), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = last_run()
    assert run.info.status == "FINISHED" and run.data.params["damp"] == "0.02"
    assert "dampening_frac: 0.02" in mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/recipe.yaml")
    config = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/checkpoint/config.json"))
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["format"] == "int-quantized"


def test_an_evaluation_typo_leaves_the_checkpoint_run_finished(tiny_model):
    """`evaluate --benchmarks kmmlu_pro,unknownbench` used to turn a good quantize run FAILED."""
    from exatrack.compress import quantize

    run_id = quantize.quantize("tiny", "w8a8", {"num_samples": "8", "max_seq_len": "64"})
    result = CliRunner().invoke(main, ["evaluate", "--model", f"runs:/{run_id}/checkpoint", "--benchmarks",
                                       "kmmlu_pro,unknownbench", "--data", "sample"])
    assert result.exit_code != 0 and "unknown benchmark 'unknownbench'" in result.output.strip().splitlines()[-1]
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_a_pipeline_with_a_failed_lane_exits_non_zero_and_says_which(tiny_model, tmp_path, monkeypatch):
    from exatrack.evaluate import serving
    from tests.fakes import RecordedSession

    monkeypatch.setattr(serving, "run_session", RecordedSession())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "")  # --experiment sets it for the process; restored after the test
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": {"cut-too-much": {"steps": [{"prune": {"drop": 4}}]}}}))
    result = CliRunner().invoke(main, ["--experiment", "cli-pipeline", "pipeline", "--model", "tiny", "--lanes", str(lanes),
                                       "--data", "sample", "--benchmarks", "kmmlu_redux", "--out", str(tmp_path / "s.zip")])
    assert result.exit_code == 1
    assert "1 of 1 lanes failed (cut-too-much)" in result.output.strip().splitlines()[-1]
    assert mlflow.get_experiment_by_name("cli-pipeline") is not None and not (tmp_path / "s.zip").exists()


def test_recipe_parameters_of_any_recipe_are_settable_from_quantize(tiny_model):
    result = invoke("quantize", "--model", "tiny", "--recipe", "smoothquant_w8a8", "--num_samples", "8",
                    "--max_seq_len", "64", "--recipe_params", "smoothing=0.5,actorder=weight")
    assert result.exit_code == 0, result.output
    run = last_run()
    recipe = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/recipe.yaml")
    assert "smoothing_strength: 0.5" in recipe and "actorder: weight" in recipe
    assert {d.dataset.name for d in run.inputs.dataset_inputs} >= {"corpus", "heldout"}  # the Dataset column


def test_leaderboard_is_read_only_and_promote_dry_run_changes_nothing(tiny_model, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from exatrack.evaluate import serving
    from tests.fakes import RecordedSession

    monkeypatch.setattr(serving, "run_session", RecordedSession())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "")
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": {"w8a8": {"recipe": "w8a8", "num_samples": 8, "max_seq_len": 64}}}))
    args = ["--experiment", "cli-board", "pipeline", "--model", "tiny", "--lanes", str(lanes), "--data", "sample",
            "--benchmarks", "kmmlu_redux", "--registered_model", "EXAONE-cli-board", "--out", str(tmp_path / "a.zip"),
            "--grader_check", "false"]  # the dry run below checks against the grader's stack
    assert CliRunner().invoke(main, args).exit_code == 0
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name("cli-board").experiment_id
    before = len(client.search_runs([experiment]))
    board = CliRunner().invoke(main, ["--experiment", "cli-board", "leaderboard"])
    assert board.exit_code == 0 and "verdict: w8a8 leads" in board.output
    dry = CliRunner().invoke(main, ["promote", "--registered_model", "EXAONE-cli-board", "--out", str(tmp_path / "b.zip"),
                                    "--dry-run"])
    assert dry.exit_code == 0 and "would package: " in dry.output and "config.json" in dry.output
    assert len(client.search_runs([experiment])) == before and not (tmp_path / "b.zip").exists()
    card = client.get_model_version_by_alias("EXAONE-cli-board", "champion").description
    assert "### Lineage" in dry.output and "### Recovery per benchmark" in dry.output  # the model card, printed
    assert card.strip() in dry.output  # what the registry holds, the dry run changing nothing


def test_boolean_options_work_as_flags_and_take_the_values_mlproject_passes():
    from exatrack.cli import option

    @click.command()
    @option("eager", default=False, type=bool)
    @option("data", default="hub")
    def probe(eager, data):
        click.echo(f"{eager} {data}")

    for args, expected in (([], "False hub"), (["--eager"], "True hub"), (["--eager", "false"], "False hub"),
                           (["--eager", "true", "--data", "x"], "True x"), (["--eager", "--data", "x"], "True x")):
        assert CliRunner().invoke(probe, args).output.strip() == expected, args


def test_read_only_commands_leave_the_folder_and_the_temp_folder_as_they_were(tmp_path):
    """`exatrack quantize --help` used to create mlflow.db (and take 10 s migrating it)."""
    work, temp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    env.pop("MLFLOW_TRACKING_URI", None)
    exatrack = str(Path(sys.executable).with_name("exatrack"))
    for args in (["--help"], ["--version"], ["recipes"], ["quantize", "--help"], ["pipeline", "--help"],
                 ["--experiment", "x", "rank", "--help"]):
        done = subprocess.run([exatrack, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not list(work.iterdir()) and not list(temp.iterdir()), args
