"""Evaluation through the real vLLM CPU engine, in the serving environment; three engine starts in all."""

import json
from pathlib import Path

import mlflow
import pytest

from exatrack import compress, evaluate
from exatrack.evaluate import Settings
from tests.judge_server import FakeJudge

pytestmark = pytest.mark.vllm
SECRET = "sk-exatrack-test-7f3a9c1e"
SAMPLE = dict(data="sample", max_tokens=48, eager=True)


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
def base(judge):
    return mlflow.get_run(evaluate.evaluate("tiny", Settings(**SAMPLE), baseline=True))


@pytest.fixture(scope="module")
def w8a8(judge, base):
    run_id = compress.quantize("tiny", "w8a8", {"num_samples": "16", "max_seq_len": "128"})
    return mlflow.get_run(evaluate.evaluate(f"runs:/{run_id}/checkpoint", Settings(**SAMPLE)))


def test_baseline_logs_every_benchmark_speed_and_the_fingerprint(base, judge):
    m, tags = base.data.metrics, base.data.tags
    assert base.info.status == "FINISHED" and tags["exatrack.base"] == "true"
    for key in ("kmmlu_pro.accuracy", "kmmlu_redux.accuracy", "ko_longrag.f1", "ko_longrag.f1_singledoc",
                "ko_longrag.f1_multidoc", "komt_bench.score", "kmmlu_pro.unparsed"):
        assert key in m, key
    assert m["gen_tokens"] > 0 and m["gen_time_s"] > 0
    assert m["bench_sec_per_token"] == pytest.approx(m["gen_time_s"] / m["gen_tokens"])
    assert m["gen_tokens"] == sum(m[f"{b}.gen_tokens"] for b in ("kmmlu_pro", "kmmlu_redux", "ko_longrag", "komt_bench"))
    assert tags["exatrack.perf_benchmarks"] == "kmmlu_pro,kmmlu_redux,ko_longrag,komt_bench"
    assert m["perf"] == pytest.approx(
        (m["kmmlu_pro.accuracy"] + m["kmmlu_redux.accuracy"] + m["ko_longrag.f1"] + m["komt_bench.score"]) / 4
    )
    assert m["komt_bench.score"] > 0 and len(judge.requests) >= 8  # the fake judge rated every turn
    assert tags["exatrack.vllm_version"] == "0.32.0" and tags["exatrack.device"].startswith("CPU")
    print_ = json.loads(mlflow.artifacts.load_text(f"runs:/{base.info.run_id}/fingerprint.json"))
    assert print_["benchmarks"]["kmmlu_pro"]["rows"] == 6 and print_["generation"]["max_tokens"] == 48


def test_predictions_table_per_benchmark(base):
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{base.info.run_id}/predictions/kmmlu_pro.json"))
    assert table["columns"] == ["id", "prompt", "output", "parsed", "gold", "score"]
    assert len(table["data"]) == 6 and all(row[2] for row in table["data"])


def test_evaluate_logs_onto_the_quantize_run_with_the_same_fingerprint(w8a8, base):
    assert w8a8.data.tags["exatrack.kind"] == "quantize"
    assert "proxy_kl" in w8a8.data.metrics and "perf" in w8a8.data.metrics
    assert w8a8.data.metrics["gen_tokens"] > 0
    assert w8a8.data.tags["exatrack.fingerprint"] == base.data.tags["exatrack.fingerprint"]


def test_the_judge_key_never_reaches_the_store(base, w8a8):
    """Params, tags, artifacts and the database: the key appears in none of them."""
    store = Path.cwd()
    files = [store / "mlflow.db", *[p for p in (store / "mlruns").rglob("*") if p.is_file()]]
    assert len(files) > 10
    assert not [p for p in files if SECRET.encode() in p.read_bytes()]


def test_local_kmmlu_redux_file_in_the_hub_schema_scores_every_row(tiny_model, tmp_path):
    rows = [
        {"question": f"{a} 더하기 {b}는?", "options": [str(a + b + d) for d in (-1, 0, 1, 2)], "solution": "2",
         "category": "수학", "license_name": "기능사"}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2)]
    ]
    path = tmp_path / "kmmlu_redux_test.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    settings = Settings(benchmarks="kmmlu_redux", data=f"kmmlu_redux={path}", max_tokens=32, eager=True)
    run = mlflow.get_run(evaluate.evaluate("tiny", settings))
    assert run.data.metrics["kmmlu_redux.n"] == 5
    table = json.loads(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/predictions/kmmlu_redux.json"))
    assert [row[4] for row in table["data"]] == ["B"] * 5 and all(row[5] in (0.0, 1.0) for row in table["data"])
    assert run.data.tags["eval.source.kmmlu_redux"] == str(path)
