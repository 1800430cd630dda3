"""Ranking real evaluation runs (a recorded session stands in for vLLM): scores with intervals, one board
per fingerprint and source model, a champion only where it is earned, the official-score estimate."""

import math
import shutil

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack.compress import quantize
from exatrack.core.basics import ExatrackError
from exatrack.evaluate import serving
from exatrack.evaluate import session as evaluate
from exatrack.evaluate.benchmarks import REGISTRY
from exatrack.evaluate.session import Settings
from exatrack.models import models
from exatrack.publish import registry
from exatrack.publish.rank import rank, record_official
from exatrack.score import leaderboard
from exatrack.score.render import markdown, to_csv
from tests.fakes import RecordedSession

SETTINGS = Settings(benchmarks="kmmlu_pro,kmmlu_redux", data="sample", max_tokens=16, pattern="chunks", chunks=6)
SMALL = {"num_samples": "8", "max_seq_len": "64"}


@pytest.fixture(autouse=True)
def experiment():
    """Every test ranks the study of this module unless it names its own."""
    mlflow.set_experiment("rank-test")


@pytest.fixture(scope="module")
def checkpoints(tiny_model):
    mlflow.set_experiment("rank-test")
    return {name: f"runs:/{quantize.quantize('tiny', 'w8a8', {**SMALL, 'damp': damp})}/checkpoint"
            for name, damp in (("a", "0.01"), ("b", "0.02"))}


def evaluated(base_ref: str, refs: list[str], session: RecordedSession, monkeypatch) -> evaluate.Evaluated:
    monkeypatch.setattr(serving, "run_session", session)
    return evaluate.evaluate(models.resolve(base_ref), [models.resolve(r) for r in refs], SETTINGS,
                             lanes={ref: f"lane-{i}" for i, ref in enumerate(refs)})


@pytest.fixture(scope="module")
def fast(checkpoints):
    """Quantized checkpoints a third faster than the base in the recorded clock."""
    mlflow.set_experiment("rank-test")  # module fixtures start before the autouse one, after any test's own
    with pytest.MonkeyPatch.context() as patch:
        return evaluated("tiny", list(checkpoints.values()), RecordedSession(0.02, 0.03), patch)


def entry(board, run_id):
    return next(e for e in board.entries if e.run.info.run_id == run_id)


def test_scores_with_intervals_are_logged_on_each_evaluation_and_are_the_formula(fast):
    board = rank("EXAONE-rank-test")
    client = MlflowClient()
    for run_id in fast.runs.values():
        m = client.get_run(run_id).data.metrics
        b = client.get_run(fast.base).data.metrics
        perf_norm, speed_norm = m["perf"] / b["perf"], 1 - m["bench_sec_per_token"] / b["bench_sec_per_token"]
        assert m["perf_norm"] == pytest.approx(perf_norm) and m["speed_norm"] == pytest.approx(speed_norm)
        assert m["score"] == pytest.approx(max(0.5 * perf_norm + 0.5 * speed_norm, 0))
        for key in ("perf_norm", "speed_norm", "score"):
            assert m[f"{key}_low"] <= m[key] <= m[f"{key}_high"], key
        assert entry(board, run_id).base_run_id == fast.base


def test_the_leader_is_registered_tied_lanes_are_named_and_ranking_twice_adds_no_version(fast):
    board = rank("EXAONE-rank-test")
    leader = board.leader
    assert leader.score.score > 0.5 and board.champion
    version = MlflowClient().get_model_version_by_alias("EXAONE-rank-test", "champion")
    assert version.run_id == leader.checkpoint_run  # the checkpoint's run, not the evaluation's
    # identical answers and a shared clock: the two W8A8 lanes cannot be told apart
    assert board.scored[1].tied and "is tied with it" in board.verdict()
    assert version.tags["tied_with"] == board.scored[1].name
    rank("EXAONE-rank-test")
    assert len(MlflowClient().search_model_versions("name = 'EXAONE-rank-test'")) == 1


def test_the_leaderboard_carries_intervals_and_a_verdict(fast):
    board = rank("EXAONE-rank-test")
    text, table = markdown(board), to_csv(board)
    assert "score [95% CI]" in text and "verdict: lane-" in text and " leads with score " in text
    header = table.splitlines()[0].split(",")
    assert {"score_low", "score_high", "perf_norm_low", "speed_norm_high", "tied"} <= set(header)
    ranking = MlflowClient().search_runs([mlflow.get_experiment_by_name("rank-test").experiment_id],
                                         "tags.`exatrack.kind` = 'rank'", order_by=["attributes.start_time DESC"])[0]
    assert {"leaderboard.md", "leaderboard.csv", "leaderboard.png", "recovery.png"} <= {
        a.path for a in MlflowClient().list_artifacts(ranking.info.run_id)}


def test_every_lane_of_the_session_carries_its_paired_difference_to_the_leader_and_its_recovery(fast):
    board = rank("EXAONE-rank-test")
    client = MlflowClient()
    for e in board.scored[1:]:  # one session: every lane is paired with the leader
        m, tags = client.get_run(e.run.info.run_id).data.metrics, client.get_run(e.run.info.run_id).data.tags
        assert m["to_leader_low"] <= m["to_leader"] <= m["to_leader_high"] and tags["exatrack.tie_rule"] == "paired"
        assert m["to_leader"] == pytest.approx(e.score.score - board.leader.score.score)
        for name in e.score.benchmarks:
            assert m[f"{name}.recovery"] == pytest.approx(m[f"{name}.{REGISTRY[name].primary}"] /
                                                          client.get_run(fast.base).data.metrics[f"{name}.{REGISTRY[name].primary}"])
            assert m[f"{name}.token_ratio"] > 0


def test_another_source_model_never_competes_nor_shares_a_registered_model(checkpoints, tmp_path, monkeypatch):
    mlflow.set_experiment("rank-two-sources")  # its own study: the module's newest base stays tiny's
    other = tmp_path / "real-model"  # another model in the same store
    shutil.copytree(models.resolve("tiny").folder, other)
    first = evaluated("tiny", list(checkpoints.values()), RecordedSession(0.02, 0.03), monkeypatch)
    slow = evaluated(str(other), [checkpoints["a"]], RecordedSession(0.01, 0.03), monkeypatch)
    fingerprint = MlflowClient().get_run(slow.base).data.tags["exatrack.fingerprint"]
    tiny = rank("EXAONE-rank-two", source="tiny", fingerprint=fingerprint)
    assert {e.run.info.run_id for e in tiny.entries} == {first.base, *first.runs.values()} and tiny.champion
    before = MlflowClient().search_model_versions("name = 'EXAONE-rank-two'")
    with pytest.raises(ExatrackError, match=f"EXAONE-rank-two holds versions of tiny, not {other}; .* "
                                            "--registered_model EXAONE-rank-two-real-model$"):
        rank("EXAONE-rank-two")  # the newest base's board is the other model's: its leader would become champion
    assert MlflowClient().search_model_versions("name = 'EXAONE-rank-two'") == before
    newest = rank("EXAONE-rank-two-other")
    assert newest.source == str(other) and {e.run.info.run_id for e in newest.entries} == {slow.base, *slow.runs.values()}


def test_another_family_ranks_under_its_own_name_and_the_exaone_rule_is_exaone_s(fast):
    assert MlflowClient().get_run(fast.base).data.tags[models.MODEL_TYPE] == "exaone4"
    assert registry.name_for("smollm2", "llama") == "smollm2-exatrack"
    assert registry.name_for("/models/SmolLM2 135M", "llama") == "SmolLM2-135M-exatrack"
    assert registry.name_for("tiny", "exaone4") == registry.name_for("old", None) == registry.REGISTERED_MODEL
    registry.check_name("smollm2-exatrack", "llama")
    with pytest.raises(ExatrackError, match="must begin with 'EXAONE'"):
        registry.check_name("smollm2-exatrack", "exaone4")


def test_a_lane_that_does_not_beat_the_base_is_never_registered(checkpoints, monkeypatch, caplog):
    mlflow.set_experiment("rank-slow")
    evaluated("tiny", [checkpoints["a"]], RecordedSession(0.06, 0.03), monkeypatch)  # twice as slow
    board = rank("EXAONE-rank-slow")
    assert board.leader.score.score < 0.5 and board.champion is None
    assert board.verdict().startswith("no lane beats the base")
    with pytest.raises(Exception):
        MlflowClient().get_registered_model("EXAONE-rank-slow")


def test_a_run_whose_base_lacks_a_benchmark_is_unscored_with_the_reason(fast):
    client = MlflowClient()
    client.set_tag(fast.base, "exatrack.perf_benchmarks", "kmmlu_pro")  # as if the base had no kmmlu_redux score
    try:
        runs = leaderboard.evaluation_runs(client, mlflow.get_experiment_by_name("rank-test").experiment_id)
        base = client.get_run(fast.base)
        board = leaderboard.build(runs, base.data.tags["exatrack.fingerprint"], "tiny")
        for run_id in fast.runs.values():
            assert entry(board, run_id).score is None
            assert "kmmlu_redux has a score on the run but not on the base" in entry(board, run_id).reason
    finally:
        client.set_tag(fast.base, "exatrack.perf_benchmarks", "kmmlu_pro,kmmlu_redux")


def test_registered_name_must_begin_with_exaone():
    with pytest.raises(ExatrackError, match="must begin with 'EXAONE'"):
        rank("my-model")


def test_official_scores_give_an_estimate_with_the_spread_of_their_ratios(fast):
    runs = list(fast.runs.values())
    board = rank("EXAONE-rank-test", source="tiny", fingerprint=MlflowClient().get_run(fast.base).data.tags["exatrack.fingerprint"])
    local = {e.run.info.run_id: e.score.score for e in board.scored}
    record_official(runs[0], 0.9 * local[runs[0]])
    record_official(runs[1], 0.6 * local[runs[1]])
    board = rank("EXAONE-rank-test", source="tiny", fingerprint=board.fingerprint)
    low, middle, high = entry(board, runs[0]).estimate
    assert low == pytest.approx(0.6 * local[runs[0]]) and high == pytest.approx(0.9 * local[runs[0]])
    assert low < middle < high and "k from 0.600 to 0.900" in markdown(board)


@pytest.mark.parametrize("score", [math.nan, -7.0, 1.5])
def test_an_official_score_outside_0_1_is_refused(fast, score):
    with pytest.raises(ExatrackError, match="is not an official challenge score"):
        record_official(next(iter(fast.runs.values())), score)


def test_a_registered_version_carries_its_model_card(fast):
    from exatrack.publish import card

    board = rank("EXAONE-rank-test", source="tiny", fingerprint=MlflowClient().get_run(fast.base).data.tags["exatrack.fingerprint"])
    client = MlflowClient()
    version = client.get_model_version_by_alias("EXAONE-rank-test", "champion")
    text = version.description
    for title in card.SECTIONS:
        assert f"### {title}\n" in text
    s = board.leader.score
    assert f"score {s.score:.4f} [{s.score_ci.low:.4f}, {s.score_ci.high:.4f}]" in text
    assert f"fingerprint {board.fingerprint}" in text and "quantize (run " in text and "source model: " in text
    assert "KMMLU-Redux: " in text or "KMMLU-Pro: " in text
    official = board.leader.official  # another test may have recorded one
    assert "not checked yet" in text and ("none recorded" if official is None else f"- {official:.4f}") in text
