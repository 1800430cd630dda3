"""Lanes: skip what is done, force, resume after a failure, and one lane's crash leaves the others going.

The orchestration tests stand a recorded generator in for vLLM (evaluation through the real engine
is test_evaluate's job); the last test runs one small lane through the real engine end to end.
"""

import json
import zipfile

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack import ExatrackError, serving
from exatrack.evaluate import Settings
from exatrack.pipeline import load_lanes, pipeline
from tests.conftest import REPO

SMALL = {"num_samples": 8, "max_seq_len": 64}
SETTINGS = Settings(benchmarks="kmmlu_redux", data="sample", max_tokens=16, eager=True)


class RecordedGenerator:
    """Answers every MCQA prompt with 정답: B, faster on compressed checkpoints (as measured by a clock)."""

    def __init__(self):
        self.models = []

    def __call__(self, model, request):
        self.models.append(str(model))
        quantized = "quantization_config" in json.loads((model / "config.json").read_text())
        out = {}
        for name, conversations in request["benchmarks"].items():
            answers = [["정답: B"] * len(c["turns"]) for c in conversations]
            out[name] = {"answers": answers, "tokens": [[3]] * len(answers), "gen_tokens": 3 * len(answers),
                         "gen_time_s": (0.02 if quantized else 0.03) * len(answers), "timing": "engine"}
        return {"vllm_version": "recorded", "device": "CPU recorded", "load_time_s": 0.0, "kv_cache_dtype": "auto",
                "max_model_len": 8192, "benchmarks": out}


@pytest.fixture
def lanes_file(tmp_path):
    path = tmp_path / "lanes.yaml"
    path.write_text(json.dumps({"lanes": {"good": {"recipe": "w8a8", "damp": 0.02, **SMALL},
                                          "broken": {"recipe": "w8a8", "damp": 1.5, **SMALL}}}))
    return path


@pytest.fixture
def recorded(monkeypatch):
    generator = RecordedGenerator()
    monkeypatch.setattr(serving, "generate", generator)
    return generator


def test_lanes_run_fail_alone_resume_and_force(tiny_model, lanes_file, recorded, tmp_path):
    mlflow.set_experiment("pipeline-test")
    first = pipeline("tiny", str(lanes_file), SETTINGS, out=str(tmp_path / "a.zip"), model_name="EXAONE-pipeline-test")
    assert first.lanes["good"] == "done" and first.lanes["broken"].startswith("failed: damp=1.5 is out of range")
    assert len(recorded.models) == 2  # baseline + the good lane
    client = MlflowClient()
    failed = client.search_runs([mlflow.get_experiment_by_name("pipeline-test").experiment_id],
                                "tags.`exatrack.lane` = 'broken'")
    assert [r.info.status for r in failed] == ["FAILED"]
    assert first.submission.exists() and "model/config.json" in zipfile.ZipFile(first.submission).namelist()

    again = pipeline("tiny", str(lanes_file), SETTINGS, out=str(tmp_path / "b.zip"), model_name="EXAONE-pipeline-test")
    assert again.lanes["good"] == "reused" and again.lanes["broken"].startswith("failed")
    assert len(recorded.models) == 2  # baseline and the done lane were reused: nothing regenerated

    forced = pipeline("tiny", str(lanes_file), SETTINGS, force=True, out=str(tmp_path / "c.zip"),
                      model_name="EXAONE-pipeline-test")
    assert forced.lanes["good"] == "done" and len(recorded.models) == 4


def test_the_parent_run_groups_its_lanes(tiny_model, lanes_file, recorded, tmp_path):
    mlflow.set_experiment("pipeline-tree")
    pipeline("tiny", str(lanes_file), SETTINGS, out=str(tmp_path / "t.zip"), model_name="EXAONE-pipeline-tree")
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name("pipeline-tree").experiment_id
    parent = client.search_runs([experiment], "tags.`exatrack.kind` = 'pipeline'")[0]
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    kinds = sorted(r.data.tags["exatrack.kind"] for r in children)
    assert kinds == ["baseline", "promote", "quantize", "quantize", "rank"]


def test_unknown_lane_and_missing_file_are_clear_errors(lanes_file):
    with pytest.raises(ExatrackError, match="lane 'w2a2' is not in .* its lanes are good, broken"):
        load_lanes(str(lanes_file), "w2a2")
    with pytest.raises(ExatrackError, match="lanes file nowhere.yaml does not exist"):
        load_lanes("nowhere.yaml", None)


def test_shipped_lanes_mirror_the_challenge_teams_best():
    lanes = load_lanes(str(REPO / "recipes" / "lanes.yaml"), None)
    w8a8 = {(spec["damp"], spec["num_samples"]) for spec in lanes.values() if spec["recipe"] == "w8a8"}
    assert w8a8 == {(d, n) for d in (0.01, 0.02, 0.05) for n in (512, 2048)}
    assert {"w4a16", "fp8_dynamic", "fp8_static"} <= {spec["recipe"] for spec in lanes.values()}


@pytest.mark.vllm
def test_one_lane_through_the_real_engine_ends_in_a_registered_checked_submission(tiny_model, tmp_path):
    mlflow.set_experiment("pipeline-real")
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": {"w8a8": {"recipe": "w8a8", **SMALL}}}))
    settings = Settings(benchmarks="kmmlu_pro,kmmlu_redux", data="sample", max_tokens=24, eager=True)
    done = pipeline("tiny", str(lanes), settings, out=str(tmp_path / "submit.zip"), model_name="EXAONE-pipeline-real")
    client = MlflowClient()
    for alias in ("champion", "submission"):
        assert client.get_model_version_by_alias("EXAONE-pipeline-real", alias)
    lane = client.get_run(done.board.scored[0].run.info.run_id if not done.board.scored[0].is_base
                          else done.board.scored[1].run.info.run_id)
    base = client.get_run(lane.data.tags["base_run_id"])
    m, b = lane.data.metrics, base.data.metrics
    expected = max(0.5 * m["perf"] / b["perf"] + 0.5 * (1 - m["bench_sec_per_token"] / b["bench_sec_per_token"]), 0)
    assert m["score"] == pytest.approx(expected)
    assert "model/model.safetensors" in zipfile.ZipFile(done.submission).namelist()
