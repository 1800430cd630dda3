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
    single = [params for steps in lanes.values() if len(steps) == 1 for _, params in steps]
    w8a8 = {(p["damp"], p["num_samples"]) for p in single if p["recipe"] == "w8a8"}
    assert w8a8 == {(d, n) for d in (0.01, 0.02, 0.05) for n in (512, 2048)}
    assert {"w4a16", "fp8_dynamic", "fp8_static"} <= {p["recipe"] for p in single}
    assert [step for step, _ in lanes["prune2-distill-w8a8"]] == ["prune", "distill", "quantize"]
    demo = load_lanes(str(REPO / "recipes" / "demo-lanes.yaml"), None)
    assert [step for step, _ in demo["tiny-prune1-distill-w8a8"]] == ["prune", "distill", "quantize"]
    assert demo["w8a8-d0.01-n512"] == lanes["w8a8-d0.01-n512"]


def test_a_malformed_chain_is_refused_before_anything_runs(tmp_path):
    path = tmp_path / "lanes.yaml"
    path.write_text(json.dumps({"lanes": {"odd": {"steps": [{"prune": {"drop": 1}}, {"squash": {}}]}}}))
    with pytest.raises(ExatrackError, match="lane odd .* unknown step 'squash'; steps are quantize, prune, distill, sft"):
        load_lanes(str(path), None)
    path.write_text(json.dumps({"lanes": {"odd": {"steps": [{"quantize": {"damp": 0.01}}]}}}))
    with pytest.raises(ExatrackError, match="its quantize step needs a recipe"):
        load_lanes(str(path), None)


TRAIN = {"num_samples": 16, "max_seq_len": 64}
PRUNE_DISTILL = [{"prune": {"drop": 1, **SMALL}}, {"distill": TRAIN}]
CHAINS = {
    "prune-distill": {"steps": PRUNE_DISTILL},
    "prune-distill-w8a8": {"steps": [*PRUNE_DISTILL, {"quantize": {"recipe": "w8a8", **SMALL}}]},
    "sft": {"steps": [{"sft": TRAIN}]},
}


def kinds_made(experiment: str) -> list[str]:
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name(experiment).experiment_id], "attributes.status = 'FINISHED'")
    return sorted(r.data.tags["exatrack.kind"] for r in runs if r.data.tags["exatrack.kind"] in ("prune", "distill", "sft", "quantize"))


def test_chained_lanes_share_their_common_prefix_and_resume(tiny_model, recorded, tmp_path):
    mlflow.set_experiment("pipeline-chains")
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": {name: CHAINS[name] for name in ("prune-distill-w8a8", "prune-distill")}}))
    first = pipeline("tiny", str(lanes), SETTINGS, out=str(tmp_path / "a.zip"), model_name="EXAONE-chains")
    assert first.lanes == {"prune-distill-w8a8": "done", "prune-distill": "done"}
    assert kinds_made("pipeline-chains") == ["distill", "prune", "quantize"]  # the shorter lane reused the prefix
    assert len(recorded.models) == 3  # baseline and both lane ends
    chain = next(e for e in first.board.entries if e.name == "prune-distill-w8a8")
    assert chain.score is not None and chain.run.data.tags["exatrack.source_model"] == "tiny"

    again = pipeline("tiny", str(lanes), SETTINGS, out=str(tmp_path / "b.zip"), model_name="EXAONE-chains")
    assert again.lanes == {"prune-distill-w8a8": "reused", "prune-distill": "reused"} and len(recorded.models) == 3
    assert kinds_made("pipeline-chains") == ["distill", "prune", "quantize"]

    forced = pipeline("tiny", str(lanes), SETTINGS, force=True, out=str(tmp_path / "c.zip"), model_name="EXAONE-chains")
    assert forced.lanes == {"prune-distill-w8a8": "done", "prune-distill": "done"} and len(recorded.models) == 6
    assert kinds_made("pipeline-chains") == ["distill", "distill", "prune", "prune", "quantize", "quantize"]


@pytest.mark.vllm
def test_chained_lanes_through_the_real_engine_end_in_a_registered_checked_submission(tiny_model, tmp_path):
    """One pipeline serves the checks of every step: the distilled and the LoRA-merged checkpoints are
    evaluated as they are, and prune -> distill -> quantize(W8A8) is scored and ranked."""
    mlflow.set_experiment("pipeline-real")
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": CHAINS}))
    settings = Settings(benchmarks="kmmlu_pro,kmmlu_redux", data="sample", max_tokens=24, eager=True)
    done = pipeline("tiny", str(lanes), settings, out=str(tmp_path / "submit.zip"), model_name="EXAONE-pipeline-real")
    assert done.lanes == {name: "done" for name in CHAINS}
    client = MlflowClient()
    for alias in ("champion", "submission"):
        assert client.get_model_version_by_alias("EXAONE-pipeline-real", alias)
    entries = {e.name: e for e in done.board.entries}
    assert {entries[name].run.data.tags["exatrack.kind"] for name in CHAINS} == {"distill", "quantize", "sft"}
    for name in CHAINS:
        run = entries[name].run
        assert run.data.metrics["gen_tokens"] > 0 and entries[name].score is not None, name
    lane, base = entries["prune-distill-w8a8"].run, client.get_run(entries["prune-distill-w8a8"].base_run_id)
    m, b = lane.data.metrics, base.data.metrics
    expected = max(0.5 * m["perf"] / b["perf"] + 0.5 * (1 - m["bench_sec_per_token"] / b["bench_sec_per_token"]), 0)
    assert entries["prune-distill-w8a8"].score.score == pytest.approx(expected)
    assert "model/model.safetensors" in zipfile.ZipFile(done.submission).namelist()
