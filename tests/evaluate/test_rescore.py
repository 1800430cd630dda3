"""`rescore`: a session's kept answers scored again on the same runs, with nothing generated again
(issue 22: generation is never thrown away)."""

import json
import shutil

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack.core import tracking
from exatrack.core.basics import ExatrackError
from exatrack.evaluate import serving
from exatrack.evaluate import session as evaluate
from exatrack.evaluate.benchmarks import REGISTRY
from exatrack.evaluate.rescore import rescore
from exatrack.models import models
from tests.fakes import RecordedSession
from tests.judge_server import FakeJudge

SETTINGS = evaluate.Settings(benchmarks="kmmlu_redux,komt_bench", data="sample", pattern="chunks", chunks=2)


@pytest.fixture
def session(tmp_path, monkeypatch):
    """The base and a twin evaluated with no judge configured: KoMT-Bench left out of Perf."""
    for name in ("EXATRACK_JUDGE_URL", "EXATRACK_JUDGE_MODEL", "EXATRACK_JUDGE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    recorded = RecordedSession()
    monkeypatch.setattr(serving, "run_session", recorded)
    twin = tmp_path / "tiny-twin"
    shutil.copytree(models.resolve("tiny").folder, twin)
    mlflow.set_experiment(f"rescore-{tmp_path.name}")
    done = evaluate.evaluate(models.resolve("tiny"), [models.resolve(str(twin))], SETTINGS)
    return {"done": done, "runs": [done.base, *done.runs.values()], "recorded": recorded}


def judged(monkeypatch):
    judge = FakeJudge()
    monkeypatch.setenv("EXATRACK_JUDGE_URL", judge.url)
    monkeypatch.setenv("EXATRACK_JUDGE_MODEL", "fake-judge")
    return judge


def predictions(run_id: str, name: str) -> int:
    return len(json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/predictions/{name}.json"))["data"])


def test_a_judge_configured_later_scores_the_whole_session_from_its_answers_without_generating(session, monkeypatch):
    client = MlflowClient()
    before = {rid: client.get_run(rid) for rid in session["runs"]}
    tables = {(rid, name): predictions(rid, name) for rid in session["runs"] for name in ("kmmlu_redux", "komt_bench")}
    assert all(r.data.tags["exatrack.perf_benchmarks"] == "kmmlu_redux" for r in before.values())
    judge = judged(monkeypatch)
    try:
        rescored = rescore(session["done"].runs[next(iter(session["done"].runs))])  # any run of the session
    finally:
        judge.close()
    assert set(rescored) == set(session["runs"])
    assert len(session["recorded"].requests) == 1  # nothing generated again
    after = {rid: client.get_run(rid) for rid in session["runs"]}
    for rid, run in after.items():
        assert run.info.status == "FINISHED" and run.data.tags["exatrack.perf_benchmarks"] == "kmmlu_redux,komt_bench"
        assert "komt_bench.score" in run.data.metrics and judge.requests
        for name in ("kmmlu_redux", "komt_bench"):  # replaced, not appended to
            assert predictions(rid, name) == tables[rid, name] > 0
        # the judge is part of the fingerprint: the whole session moved to the judged one, together
        assert run.data.tags[evaluate.FINGERPRINT] != before[rid].data.tags[evaluate.FINGERPRINT]
    assert len({r.data.tags[evaluate.FINGERPRINT] for r in after.values()}) == 1
    experiment = client.get_run(session["done"].base).info.experiment_id
    assert len(client.search_runs([experiment])) == len(session["runs"])  # the same runs, no new ones


def test_a_run_that_failed_after_its_generation_is_finished_by_a_rescore(session, monkeypatch):
    """A failure after generation (here MLflow refusing the predictions table) used to cost the whole
    session's generation; now the answers are kept and a rescore finishes the run."""
    client = MlflowClient()
    broken = RecordedSession()
    monkeypatch.setattr(serving, "run_session", broken)

    def refuses(table, artifact_file):
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(tracking, "log_table", refuses)
        with pytest.raises(OSError):
            evaluate.evaluate(models.resolve("tiny"), [], SETTINGS)
    experiment = client.get_run(session["done"].base).info.experiment_id
    (failed,) = client.search_runs([experiment], "attributes.status = 'FAILED'")
    assert "disk full" in failed.data.tags["exatrack.error"]
    rescore(failed.info.run_id)
    mended = client.get_run(failed.info.run_id)
    assert mended.info.status == "FINISHED" and "exatrack.error" not in mended.data.tags
    assert mended.data.metrics["perf"] > 0 and len(broken.requests) == 1


def test_rows_that_changed_since_the_answers_are_refused_before_anything_is_scored(session, monkeypatch, tmp_path):
    client = MlflowClient()
    stamp = {rid: client.get_run(rid).data.metrics for rid in session["runs"]}
    generation = json.loads(mlflow.artifacts.load_text(f"runs:/{session['done'].base}/generation.json"))
    original = REGISTRY["kmmlu_redux"].load
    monkeypatch.setattr(REGISTRY["kmmlu_redux"], "load",
                        lambda where: [{**row, "question": row["question"] + " (edited)"} for row in original(where)])
    with pytest.raises(ExatrackError, match="KMMLU-Redux's rows are not those run .* answered"):
        rescore(session["done"].base)
    assert {rid: client.get_run(rid).data.metrics for rid in session["runs"]} == stamp
    assert generation["content"]["kmmlu_redux"]


def test_a_run_that_is_not_an_evaluation_is_refused_in_one_line(session):
    with mlflow.start_run() as other:
        pass
    with pytest.raises(ExatrackError, match="is a non-exatrack run, not an evaluation"):
        rescore(other.info.run_id)
    with pytest.raises(ExatrackError, match="no run 0123 in this tracking store"):
        rescore("0123")
