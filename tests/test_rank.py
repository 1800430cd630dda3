"""Ranking on runs logged as evaluations would log them: base matching, logged scores, registry, fit."""

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack import ExatrackError
from exatrack.rank import build_board, evaluated_runs, rank, record_official


def evaluated(name, fingerprint, spt, base=False, source="tiny", checkpoint=None, **scores):
    tags = {"exatrack.fingerprint": fingerprint, "exatrack.perf_benchmarks": ",".join(scores),
            "exatrack.kind": "baseline" if base else "quantize", "exatrack.source_model": source}
    if base:
        tags["exatrack.base"] = "true"
    with mlflow.start_run(run_name=name, tags=tags) as run:
        if not base:
            mlflow.log_params({"model": source, "recipe": name})
        mlflow.log_metrics({**{f"{k}.accuracy" if k.startswith("kmmlu") else f"{k}.f1": v for k, v in scores.items()},
                            "bench_sec_per_token": spt, "perf": sum(scores.values()) / len(scores)})
        if checkpoint:
            mlflow.log_artifacts(str(checkpoint), "checkpoint")
    return run.info.run_id


@pytest.fixture(scope="module")
def runs(tiny_model):
    mlflow.set_experiment("rank-test")
    return {
        "base_a": evaluated("base-a", "fpA", 0.010, base=True, kmmlu_pro=0.40, ko_longrag=0.60),
        "base_b": evaluated("base-b", "fpB", 0.020, base=True, kmmlu_pro=0.40, ko_longrag=0.60),
        "fast": evaluated("fast", "fpA", 0.008, checkpoint=tiny_model, kmmlu_pro=0.38, ko_longrag=0.57),
        "slow": evaluated("slow", "fpB", 0.030, checkpoint=tiny_model, kmmlu_pro=0.40, ko_longrag=0.60),
        "orphan": evaluated("orphan", "fpC", 0.001, checkpoint=tiny_model, kmmlu_pro=0.9, ko_longrag=0.9),
        "other_source": evaluated("other", "fpA", 0.001, source="LGAI-EXAONE/EXAONE-4.0-1.2B", kmmlu_pro=0.9, ko_longrag=0.9),
    }


@pytest.fixture(scope="module")
def board(runs):
    return rank("EXAONE-rank-test")


def entry(board, run_id):
    return next(e for e in board.entries if e.run.info.run_id == run_id)


def test_each_run_is_scored_against_the_base_of_its_own_fingerprint(board, runs):
    assert entry(board, runs["fast"]).base_run_id == runs["base_a"]
    assert entry(board, runs["slow"]).base_run_id == runs["base_b"]
    fast = entry(board, runs["fast"]).score
    assert fast.score == pytest.approx(0.5 * (0.475 / 0.5) + 0.5 * (1 - 0.008 / 0.010))


def test_runs_without_a_matching_base_are_unscored_with_the_reason(board, runs):
    orphan, other = entry(board, runs["orphan"]), entry(board, runs["other_source"])
    assert orphan.score is None and "no base run with fingerprint fpC" in orphan.reason
    assert other.score is None  # same fingerprint, but its source model has no base


def test_scores_are_logged_on_the_runs_and_equal_the_recomputed_formula(board, runs):
    client = MlflowClient()
    for name in ("fast", "slow"):
        run = client.get_run(runs[name])
        base = client.get_run(run.data.tags["base_run_id"])
        m, b = run.data.metrics, base.data.metrics
        perf_norm = m["perf"] / b["perf"]
        speed_norm = 1 - m["bench_sec_per_token"] / b["bench_sec_per_token"]
        assert m["perf_norm"] == pytest.approx(perf_norm) and m["speed_norm"] == pytest.approx(speed_norm)
        assert m["score"] == pytest.approx(max(0.5 * perf_norm + 0.5 * speed_norm, 0))


def test_champion_is_the_best_scored_checkpoint_and_leaderboard_is_logged(board, runs):
    client = MlflowClient()
    version = client.get_model_version_by_alias("EXAONE-rank-test", "champion")
    assert version.run_id == runs["fast"] == board.scored[0].run.info.run_id
    ranking = [r for r in client.search_runs([mlflow.get_experiment_by_name("rank-test").experiment_id],
                                             "tags.`exatrack.kind` = 'rank'")][0]
    names = {a.path for a in client.list_artifacts(ranking.info.run_id)}
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.png"} <= names
    text = mlflow.artifacts.load_text(f"runs:/{ranking.info.run_id}/leaderboard.md")
    assert "fast" in text and "no base run with fingerprint fpC" in text


def test_ranking_twice_registers_no_second_version(board, runs):
    rank("EXAONE-rank-test")
    assert len(MlflowClient().search_model_versions("name = 'EXAONE-rank-test'")) == 1


def test_registered_name_must_begin_with_exaone():
    with pytest.raises(ExatrackError, match="must begin with 'EXAONE'"):
        rank("my-model")


def test_official_scores_fit_an_estimate_once_two_exist(board, runs):
    record_official(runs["fast"], 0.55)
    experiment = mlflow.get_experiment_by_name("rank-test").experiment_id
    assert not build_board(evaluated_runs(MlflowClient(), experiment)).fit
    record_official(runs["slow"], 0.10)
    fitted = build_board(evaluated_runs(MlflowClient(), experiment))
    local = {e.run.info.run_id: e.score.score for e in fitted.scored}
    points = [(local[runs["fast"]], 0.55), (local[runs["slow"]], 0.10)]
    ratio = sum(l * o for l, o in points) / sum(l * l for l, _ in points)
    assert fitted.fit == {"ratio": pytest.approx(ratio), "points": 2}
    assert entry(fitted, runs["fast"]).estimate == pytest.approx(ratio * local[runs["fast"]])


def test_a_paired_speed_measurement_gives_a_controlled_score_beside_the_faithful_one(board, runs):
    client = MlflowClient()
    client.log_metric(runs["fast"], "speed_norm_paired", 0.1)
    client.set_tag(runs["fast"], "speed.base_model", "tiny")
    client.set_tag(runs["fast"], "speed.device", "CPU test")
    client.set_tag(runs["base_a"], "exatrack.device", "CPU test")
    experiment = mlflow.get_experiment_by_name("rank-test").experiment_id
    fast = entry(build_board(evaluated_runs(client, experiment)), runs["fast"])
    assert fast.paired == pytest.approx(0.5 * fast.score.perf_norm + 0.5 * 0.1)
    client.set_tag(runs["fast"], "speed.device", "another GPU")
    assert entry(build_board(evaluated_runs(client, experiment)), runs["fast"]).paired is None
