"""Lanes: validated before any work, resumed, forced, failing alone, and evaluated side by side with the
base in one session; an evaluation crash never damages a checkpoint run.

The orchestration tests stand a recorded session in for vLLM (evaluation through the real engine is
test_evaluate's job); the last test runs chained lanes through the real engine end to end.
"""

import json
import shutil
import zipfile
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack.core.basics import ExatrackError
from exatrack.evaluate import serving
from exatrack.evaluate.session import Settings
from exatrack.lanes.pipeline import load_lanes
from exatrack.lanes.pipeline import pipeline as run_pipeline
from tests.conftest import REPO
from tests.fakes import RecordedSession


def pipeline(*args, **kwargs):
    """A pipeline without the grader check: what is under test here is the orchestration (the check
    has its own tests in test_grader and test_package, and `make demo` runs it whole)."""
    return run_pipeline(*args, **{"grader_check": False, **kwargs})


SMALL = {"num_samples": 8, "max_seq_len": 64}
SETTINGS = Settings(benchmarks="kmmlu_redux", data="sample", max_tokens=16, eager=True, pattern="chunks", chunks=3)


@pytest.fixture
def lanes_file(tmp_path):
    path = tmp_path / "lanes.yaml"
    path.write_text(json.dumps({"lanes": {"good": {"recipe": "w8a8", "damp": 0.02, **SMALL},
                                          "broken": {"steps": [{"prune": {"drop": 4}}]}}}))  # fails when it runs
    return path


@pytest.fixture
def recorded(monkeypatch):
    session = RecordedSession()
    monkeypatch.setattr(serving, "run_session", session)
    return session


def runs_of(experiment: str, query: str = "") -> list:
    return MlflowClient().search_runs([mlflow.get_experiment_by_name(experiment).experiment_id], query)


def test_lanes_run_fail_alone_resume_and_force(tiny_model, lanes_file, recorded, tmp_path):
    mlflow.set_experiment("pipeline-test")
    first = pipeline("tiny", str(lanes_file), SETTINGS, out=str(tmp_path / "a.zip"), model_name="EXAONE-pipeline-test")
    assert first.lanes["good"] == "done" and first.lanes["broken"].startswith("failed: drop=4 keep=0")
    assert first.failed == ["broken"]
    assert len(recorded.requests) == 1 and len(recorded.models) == 2  # ONE session: the base beside the good lane
    assert [r.info.status for r in runs_of("pipeline-test", "tags.`exatrack.lane` = 'broken'")] == ["FAILED"]
    assert first.submission.exists() and "model/config.json" in zipfile.ZipFile(first.submission).namelist()

    again = pipeline("tiny", str(lanes_file), SETTINGS, out=str(tmp_path / "b.zip"), model_name="EXAONE-pipeline-test")
    assert again.lanes["good"] == "reused" and again.lanes["broken"].startswith("failed")
    assert len(recorded.requests) == 1  # the lane and its evaluation were reused: no session at all

    forced = pipeline("tiny", str(lanes_file), SETTINGS, force=True, out=str(tmp_path / "c.zip"),
                      model_name="EXAONE-pipeline-test")
    assert forced.lanes["good"] == "done" and len(recorded.requests) == 2


def test_a_pipeline_with_no_lane_scored_promotes_nothing(tiny_model, lanes_file, recorded, tmp_path):
    mlflow.set_experiment("pipeline-none")
    out = tmp_path / "none.zip"
    done = pipeline("tiny", str(lanes_file), SETTINGS, only="broken", out=str(out), model_name="EXAONE-pipeline-test")
    assert done.failed == ["broken"] and done.submission is None and not out.exists()
    assert done.board.verdict() == "no lane was scored" and not recorded.requests


def test_the_parent_run_groups_its_lanes_and_each_evaluation_nests_under_its_lane(tiny_model, lanes_file, recorded, tmp_path):
    mlflow.set_experiment("pipeline-tree")
    pipeline("tiny", str(lanes_file), SETTINGS, only="good", out=str(tmp_path / "t.zip"), model_name="EXAONE-pipeline-tree")
    parent = runs_of("pipeline-tree", "tags.`exatrack.kind` = 'pipeline'")[0]
    children = runs_of("pipeline-tree", f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.data.tags["exatrack.kind"] for r in children) == ["evaluation", "promote", "quantize", "rank"]
    lane = next(r for r in children if r.data.tags["exatrack.kind"] == "quantize")
    nested = runs_of("pipeline-tree", f"tags.`mlflow.parentRunId` = '{lane.info.run_id}'")
    assert [r.data.tags["exatrack.kind"] for r in nested] == ["evaluation"]
    assert nested[0].data.tags["exatrack.lane"] == "good" and "score" in nested[0].data.metrics


def test_an_evaluation_crash_leaves_the_checkpoint_run_finished_and_reusable(tiny_model, lanes_file, monkeypatch, tmp_path):
    mlflow.set_experiment("pipeline-crash")

    def crash(request, what, **_):
        raise ExatrackError("vLLM could not serve it: RuntimeError: simulated")

    monkeypatch.setattr(serving, "run_session", crash)
    with pytest.raises(ExatrackError, match="simulated"):
        pipeline("tiny", str(lanes_file), SETTINGS, only="good", out=str(tmp_path / "x.zip"), model_name="EXAONE-crash")
    lane = runs_of("pipeline-crash", "tags.`exatrack.kind` = 'quantize'")
    assert [r.info.status for r in lane] == ["FINISHED"]
    evaluations = runs_of("pipeline-crash", "tags.`exatrack.kind` = 'evaluation'")
    assert evaluations and {r.info.status for r in evaluations} == {"FAILED"}
    monkeypatch.setattr(serving, "run_session", RecordedSession())
    done = pipeline("tiny", str(lanes_file), SETTINGS, only="good", out=str(tmp_path / "y.zip"), model_name="EXAONE-crash")
    assert done.lanes["good"] == "done" and len(runs_of("pipeline-crash", "tags.`exatrack.kind` = 'quantize'")) == 1


def test_a_damaged_store_costs_only_what_it_lost(tiny_model, recorded, tmp_path, capsys):
    """An evaluation's deleted paired.json leaves that lane unscored with the reason and the rest of the
    board standing; a reused step whose checkpoint was deleted is made again, not reported reused."""
    from urllib.parse import urlparse

    from exatrack.score import leaderboard

    mlflow.set_experiment("pipeline-damaged")
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": {"fp8": {"recipe": "fp8_dynamic"}, "rtn": {"recipe": "rtn_w8a8"}}}))
    first = pipeline("tiny", str(lanes), SETTINGS, out=str(tmp_path / "a.zip"), model_name="EXAONE-damaged")
    entries = {e.name: e for e in first.board.entries}
    gone = urlparse(entries["fp8"].run.info.artifact_uri).path + "/paired.json"
    Path(gone).unlink()
    client = MlflowClient()
    board = leaderboard.for_scope(client, mlflow.get_experiment_by_name("pipeline-damaged").experiment_id, None, None)
    damaged = {e.name: e for e in board.entries}
    assert damaged["fp8"].score is None and damaged["fp8"].reason == (
        f"paired.json of evaluation run {entries['fp8'].run.info.run_id} cannot be read (MlflowException); evaluate it again")
    assert damaged["rtn"].score is not None and board.leader.name == "rtn"

    lost = entries["rtn"].checkpoint_run
    shutil.rmtree(urlparse(client.get_run(lost).info.artifact_uri).path + "/checkpoint")
    again = pipeline("tiny", str(lanes), SETTINGS, out=str(tmp_path / "b.zip"), model_name="EXAONE-damaged")
    assert again.lanes == {"fp8": "reused", "rtn": "done"}
    assert f"lane rtn: the quantize step's run {lost} has lost its checkpoint; making it again" in capsys.readouterr().err
    remade = next(e for e in again.board.entries if e.name == "rtn").checkpoint_run
    assert remade != lost and client.list_artifacts(remade, "checkpoint")


def test_the_whole_lanes_file_is_checked_before_any_run(tiny_model, tmp_path, recorded):
    path = tmp_path / "lanes.yaml"
    path.write_text(json.dumps({"lanes": {"good": {"recipe": "w8a8", **SMALL}, "bad": {"recipe": "w8a8", "damp": 1.5}}}))
    mlflow.set_experiment("pipeline-checked")
    with pytest.raises(ExatrackError, match="lane bad in .*, step quantize: damp=1.5 is out of range"):
        pipeline("tiny", str(path), SETTINGS, model_name="EXAONE-checked")
    assert not runs_of("pipeline-checked") and not recorded.requests


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
    assert len(recorded.models) == 3  # the base and both lane ends, in one session
    chain = next(e for e in first.board.entries if e.name == "prune-distill-w8a8")
    assert chain.score is not None and chain.run.data.tags["exatrack.source_model"] == "tiny"

    again = pipeline("tiny", str(lanes), SETTINGS, out=str(tmp_path / "b.zip"), model_name="EXAONE-chains")
    assert again.lanes == {"prune-distill-w8a8": "reused", "prune-distill": "reused"} and len(recorded.models) == 3
    assert kinds_made("pipeline-chains") == ["distill", "prune", "quantize"]

    forced = pipeline("tiny", str(lanes), SETTINGS, force=True, out=str(tmp_path / "c.zip"), model_name="EXAONE-chains")
    assert forced.lanes == {"prune-distill-w8a8": "done", "prune-distill": "done"} and len(recorded.models) == 6
    assert kinds_made("pipeline-chains") == ["distill", "distill", "prune", "prune", "quantize", "quantize"]


@pytest.mark.vllm
def test_chained_lanes_through_the_real_engine_are_scored_in_one_session(tiny_model, tmp_path):
    """One pipeline serves the checks of every step: the pruned-distilled and the LoRA-merged checkpoints
    are evaluated as they are, and prune -> distill -> quantize(W8A8) is scored, all beside the base."""
    mlflow.set_experiment("pipeline-real")
    lanes = tmp_path / "lanes.yaml"
    lanes.write_text(json.dumps({"lanes": CHAINS}))
    # one timed pass: the passes are test_evaluate's subject, one session of every lane is this test's
    settings = Settings(benchmarks="kmmlu_pro,kmmlu_redux", data="sample", max_tokens=24, eager=True, passes=1)
    done = pipeline("tiny", str(lanes), settings, out=str(tmp_path / "submit.zip"), model_name="EXAONE-pipeline-real",
                    grader_check=True)
    assert done.lanes == {name: "done" for name in CHAINS}
    entries = {e.name: e for e in done.board.entries}
    sessions = {e.run.data.tags["exatrack.session"] for e in entries.values()}
    assert len(sessions) == 1  # the base and every lane were timed side by side
    kinds = {MlflowClient().get_run(entries[name].checkpoint_run).data.tags["exatrack.kind"] for name in CHAINS}
    assert kinds == {"distill", "quantize", "sft"}
    for name in CHAINS:
        assert entries[name].run.data.metrics["gen_tokens"] > 0 and entries[name].score is not None, name
    leader = done.board.leader
    client = MlflowClient()
    if leader.score.score > 0.5:  # a champion only where it is earned
        assert client.get_model_version_by_alias("EXAONE-pipeline-real", "champion").run_id == leader.checkpoint_run
        assert "model/model.safetensors" in zipfile.ZipFile(done.submission).namelist()
    else:
        assert done.board.champion is None and done.submission is None
        assert done.board.verdict().startswith("no lane beats the base")
