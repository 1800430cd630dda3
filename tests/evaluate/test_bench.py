"""Benchmark units: prompts, answer extraction, F1, subsets, sources, and the KoMT judge."""

import json
import re
import time

import pytest

from exatrack.core.basics import ExatrackError
from exatrack.evaluate.benchmarks import komt, longrag, mcqa
from exatrack.evaluate.benchmarks import REGISTRY, subset
from exatrack.evaluate.benchmarks.judge import Judge, JudgeUnavailable, parse_rating
from exatrack.evaluate.session import Settings
from tests.conftest import shared
from tests.judge_server import FakeJudge


@pytest.mark.parametrize(
    "output, expected",
    [
        ("먼저 각 보기를 살펴보면 A는 틀렸고 C도 아닙니다. 따라서 정답: B", "B"),
        ("정답: A라고 생각할 수 있지만 다시 계산하면\n정답: D", "D"),
        ("**정답: C**", "C"),
        ("정답：B입니다", "B"),
        ("정답: B입니다. 다른 보기는 모두 틀렸습니다.", "B"),
        ("정답: 2번", "B"),  # the option's number, as lm-evaluation-harness's KMMLU tasks read it
        ("정답: ④", "D"),  # a circled number
        ("정답: (3)", "C"),
        ("정답: 2024년 기준으로는 없다", None),  # a year is not option 2
        ("계산 결과는 \\boxed{C} 입니다.", "C"),
        ("따라서 정답은 (D)입니다.", "D"),
        ("정답은 1번입니다.", "A"),
        ("보기 중 (A)가 가장 적절합니다.", "A"),
        ("(A) 사과 (B) 배 (C) 감 (D) 귤 중에서 잘 모르겠습니다.", None),  # restating the options is no choice
        ("가장 알맞은 답은 B", "B"),
        ("<think>\n정답: A 인지 고민해 보자\n</think>\n\n정답: C", "C"),
        ("정답: E", None),  # four options: E is not an answer
        ("정답: 5", None),
        ("잘 모르겠습니다.", None),
    ],
)
def test_mcqa_extraction_on_realistic_outputs(output, expected):
    assert mcqa.extract(output, 4) == expected


def test_rows_with_more_than_five_options_are_lettered_and_scored():
    row = {"question": "q", "options": [str(i) for i in range(7)], "solution": "7"}
    assert mcqa.prompt(row).splitlines()[-1] == "G) 6" and "ABCDEFG 중 하나" in mcqa.prompt(row)
    assert mcqa.gold(row) == "G" and mcqa.extract("정답: G", 7) == "G" and mcqa.extract("정답: 7", 7) == "G"


def test_mcqa_prompt_follows_the_paper_and_gold_is_one_based():
    row = {"question": "질문?", "options": ["가", "나", "다", "라", "마"], "solution": "5"}
    text = mcqa.prompt(row)
    assert text.startswith('다음 문제에 대해 정답을 고르세요. 당신의 최종 정답은 ABCDE 중 하나이고, "정답:" 뒤에 와야 합니다.')
    assert text.endswith("질문?\n\nA) 가\nB) 나\nC) 다\nD) 라\nE) 마")
    assert mcqa.gold(row) == "E"


def test_mcqa_scoring_counts_unparsed_answers_as_wrong():
    rows = [{"question": "q", "options": ["a", "b", "c", "d"], "solution": "2"}] * 3
    result = REGISTRY["kmmlu_redux"].score(rows, [["정답: B"], ["정답: C"], ["모르겠다"]])
    assert result.metrics == {"accuracy": 1 / 3, "unparsed": 1, "n": 3}


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("신라", "신라", 1.0),
        ("신라!", "  신라 ", 1.0),
        ("Seoul, Korea.", "seoul korea", 1.0),
        ("신라입니다.", "신라", 1.0),  # a copula ending is not a wrong answer
        ("답은 신라이다", "신라", 2 * (1 / 2) * 1 / (1 / 2 + 1)),
        ("경주는 신라의 수도", "신라", 2 * (1 / 3) * 1 / (1 / 3 + 1)),  # particles cut, extra words still cost precision
        ("1,000", "1000", 1.0),  # a thousands separator splits no number
        ("인구는 1,000,000명", "1000000명", 2 * (1 / 2) * 1 / (1 / 2 + 1)),
        ("3,14", "314", 0.0),  # a comma not followed by three digits is no thousands separator
        ("백제", "신라", 0.0),
        ("", "", 1.0),  # an unanswerable item answered with nothing
        ("신라", "", 0.0),  # an unanswerable item answered anyway
    ],
)
def test_f1_on_korean_particles_numbers_and_unanswerable_items(prediction, gold, expected):
    assert longrag.f1(prediction, gold) == pytest.approx(expected)


def test_the_other_f1_candidates_are_logged_beside_the_primary():
    assert longrag.f1("신라입니다.", "신라", longrag.whitespace_tokens) == 0.0  # why it is not the primary
    assert longrag.f1("신라입니다.", "신라", longrag.char_tokens) == pytest.approx(2 * 0.4 / 1.4)
    rows = [dict(task="singledocQA", answer="신라", prompt="{question}", titles=[], context="", question="q")]
    metrics = REGISTRY["ko_longrag"].score(rows, [["신라입니다."]]).metrics
    assert (metrics["f1"], metrics["f1_whitespace"]) == (1.0, 0.0) and metrics["f1_char"] == pytest.approx(2 * 0.4 / 1.4)


def test_longrag_prompt_fills_the_dataset_template_even_with_braces_in_context():
    row = {"prompt": "제목: {titles}\n{context}\n질문: {question}", "titles": ["가", "나"],
           "context": ["코드 {x: 1}", "둘째"], "question": "무엇?"}
    assert longrag.prompt(row) == "제목: 가, 나\n코드 {x: 1}\n\n둘째\n질문: 무엇?"


def test_longrag_reports_single_and_multi_document_apart():
    rows = [dict(task="singledocQA", answer="신라"), dict(task="multidocQA", answer="제주도")]
    rows = [dict(r, prompt="{question}", titles=[], context="", question="q") for r in rows]
    result = REGISTRY["ko_longrag"].score(rows, [["신라"], ["서울"]])
    assert (result.metrics["f1"], result.metrics["f1_singledoc"], result.metrics["f1_multidoc"]) == (0.5, 1.0, 0.0)


def test_subset_is_the_same_whatever_the_order():
    rows = [{"question": str(i)} for i in range(20)]
    assert subset(rows, 5) == subset(list(reversed(rows)), 5)
    assert len(subset(rows, 5)) == 5 and subset(rows, 0) == rows


def test_a_file_missing_a_field_names_the_field(tmp_path):
    path = tmp_path / "redux.jsonl"
    path.write_text(json.dumps({"question": "q", "options": ["a", "b"]}) + "\n")
    with pytest.raises(ExatrackError, match="KMMLU-Redux row 0 .* has no 'solution' field"):
        REGISTRY["kmmlu_redux"].load(str(path))


def test_a_gated_hub_dataset_without_token_says_so(monkeypatch):
    import datasets
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise GatedRepoError.__new__(GatedRepoError)

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(ExatrackError, match="LGAI-EXAONE/KMMLU-Pro is gated: .* set HF_TOKEN"):
        REGISTRY["kmmlu_pro"].load("hub")


def test_data_setting_takes_a_default_and_per_benchmark_files():
    sources = Settings(data="sample,kmmlu_redux=/tmp/r.jsonl").sources()
    assert sources["kmmlu_redux"] == "/tmp/r.jsonl" and sources["kmmlu_pro"] == "sample"
    with pytest.raises(ExatrackError, match="names no benchmark"):
        Settings(data="kmmlu=/tmp/r.jsonl").sources()
    with pytest.raises(ExatrackError, match="unknown benchmark 'mmlu'"):
        Settings(benchmarks="mmlu").names()


def fastchat_rating(judgment: str) -> float:
    """FastChat llm_judge's run_judge_single, verbatim in effect (lm-sys/FastChat, common.py)."""
    import ast

    match = re.search(re.compile(r"\[\[(\d+\.?\d*)\]\]"), judgment)
    if not match:
        match = re.search(re.compile(r"\[(\d+\.?\d*)\]"), judgment)
    return ast.literal_eval(match.groups()[0]) if match else -1


def test_rating_parser_on_the_real_gpt4_judgments_parses_as_fastchat():
    lines = shared("data", "komt-bench", "mt_bench__model_judgment__gpt-4_single_final.jsonl").read_text().splitlines()
    judgments = [json.loads(line) for line in lines]
    assert len(judgments) == 160
    for j in judgments:
        ours, reference = parse_rating(j["judgment"]), fastchat_rating(j["judgment"])
        assert (ours if ours is not None else -1) == reference, j["judgment"][-200:]


@pytest.mark.parametrize("judgment", ["점수: [[7.5]]", "처음엔 [[3]]이라 했지만 최종 점수: [[6]]", "점수: [4]",
                                      "예시 [2] 다음 최종 [[9]]", "점수를 매길 수 없습니다"])
def test_rating_parser_edge_cases_follow_fastchat(judgment):
    ours = parse_rating(judgment)
    assert (ours if ours is not None else -1) == fastchat_rating(judgment)


@pytest.mark.parametrize("judgment", ["점수: [[11]]", "점수: [[0]]", "[[10.5]]", "점수: [42]"])
def test_a_rating_off_the_1_to_10_scale_is_not_counted(judgment):
    """FastChat would count [[11]] as 11 (Perf 1.1 for a perfect-looking model); it is no rating."""
    assert parse_rating(judgment) is None


def test_rating_takes_the_first_double_bracket_like_fastchat():
    assert parse_rating("처음엔 [[3]]이라 했지만 최종 점수: [[6]]") == 3


def test_official_judge_prompts_and_questions_fit_the_benchmark(monkeypatch):
    prompts_file = shared("data", "komt-bench", "judge_prompts_ko.jsonl")
    monkeypatch.setenv("EXATRACK_JUDGE_PROMPTS", str(prompts_file))
    rows = REGISTRY["komt_bench"].load(str(shared("data", "komt-bench", "mt_bench__question_ko.jsonl")))
    assert len(rows) == 80
    prompts = komt.judge_prompts()
    math_row = next(r for r in rows if r["category"] == "math" and r.get("reference"))
    for row in (rows[0], math_row):
        for turn in (0, 1):
            system, user = komt.judge_request(row, ["첫 답변", "둘째 답변"], turn, prompts)
            assert not re.search(r"\{(question|answer|ref_answer)_?\d?\}", user), user[:200]
            assert ("둘째 답변" in user) == (turn == 1)
    _, user = komt.judge_request(math_row, ["a", "b"], 0, prompts)
    assert math_row["reference"][0] in user


def test_non_korean_answers_get_the_square_root_except_138_and_140():
    assert komt.is_korean("서울은 한국의 수도입니다. 서울에는 많은 사람이 살고 있습니다.")
    assert not komt.is_korean("Seoul is the capital of Korea.")
    assert not komt.is_korean("首尔是韩国的首都。这是一个很长的句子。")  # no Hangul and no Latin: not Korean
    assert not komt.is_korean("")  # nothing to detect, as the reference: penalised
    assert komt.penalized(9, {"question_id": 81}, "This is English.") == 3
    assert komt.penalized(9, {"question_id": 81}, "首尔是韩国的首都。这是一个很长的句子。") == 3
    assert komt.penalized(9, {"question_id": 138}, "This is English.") == 9


@pytest.fixture
def komt_rows():
    return REGISTRY["komt_bench"].load("sample")


def test_komt_judged_through_an_openai_compatible_server(komt_rows, monkeypatch, tmp_path):
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    server = FakeJudge(fail_first=2)
    try:
        judge = Judge(server.url, "fake-judge", api_key="sk-test", concurrency=1)
        answers = [["한국어로 쓴 첫 번째 답변입니다.", "한국어로 쓴 두 번째 답변입니다."] for _ in komt_rows]
        result = REGISTRY["komt_bench"].score(komt_rows, answers, judge=judge)
        assert result.metrics["rating"] == 8 and result.metrics["score"] == 0.8
        assert len(server.requests) == 2 + 2 * len(komt_rows)  # two 429s retried, then one call per turn
        assert server.auth == {"Bearer sk-test"} and server.requests[-1]["temperature"] == 0
        REGISTRY["komt_bench"].score(komt_rows, answers, judge=judge)
        assert len(server.requests) == 2 + 2 * len(komt_rows)  # the second pass came from the cache
    finally:
        server.close()


def test_a_judge_that_keeps_failing_skips_komt_instead_of_scoring_zero(komt_rows, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    server = FakeJudge(always_fail=True)
    try:
        judge = Judge(server.url, "fake-judge", retries=1)
        result = REGISTRY["komt_bench"].score(komt_rows, [["a", "b"]] * len(komt_rows), judge=judge)
        assert result.metrics["score"] is None and "failed after 2 tries (HTTP 500)" in result.notes["judge_error"]
        assert "KoMT-Bench skipped: judge fake-judge at 127.0.0.1 failed" in caplog.text
        assert not (tmp_path / "judgments").exists()  # a failure is never cached
    finally:
        server.close()
    with pytest.raises(JudgeUnavailable):
        Judge("http://127.0.0.1:9/v1", "nobody", retries=0).judge("s", "u")


def test_an_empty_or_unparsable_judgment_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    for reply, raises in ((None, True), ("이 답변은 평가하기 어렵습니다.", False)):
        server = FakeJudge(reply=reply)
        try:
            judge = Judge(server.url, "fake-judge", retries=0)
            if raises:
                with pytest.raises(JudgeUnavailable, match="replied with no content"):
                    judge.judge("s", "u")
            else:
                assert parse_rating(judge.judge("s", "u")) is None
            judge.judge("s", "u") if not raises else None
            assert len(server.requests) == (1 if raises else 2)  # asked again: nothing was cached
            assert not (tmp_path / "judgments").exists()
        finally:
            server.close()


@pytest.mark.parametrize("server, says", [
    (dict(status=401), "refused the key (HTTP 401); check EXATRACK_JUDGE_API_KEY"),
    (dict(status=403), "refused the key (HTTP 403); check EXATRACK_JUDGE_API_KEY"),
    (dict(page="<html><body>Proxy login</body></html>"), "replied with no chat completion (a str); check that "
                                                         "EXATRACK_JUDGE_URL is an OpenAI-compatible API"),
], ids=["401", "403", "html-page"])
def test_a_judge_failing_in_its_own_way_is_named_for_what_it_is(server, says, monkeypatch, tmp_path):
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    fake = FakeJudge(**server)
    try:
        with pytest.raises(JudgeUnavailable, match=re.escape(says)):
            Judge(fake.url, "fake-judge", api_key="sk-wrong", retries=1).judge("s", "u")
        assert len(fake.requests) == 1 and not (tmp_path / "judgments").exists()  # not retried, not cached
    finally:
        fake.close()


def test_a_damaged_cache_entry_is_asked_again_and_rewritten_whole(monkeypatch, tmp_path):
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    fake = FakeJudge()
    try:
        judge = Judge(fake.url, "fake-judge", retries=0)
        entry = judge.cache_file("s", "u")
        entry.parent.mkdir(parents=True)
        entry.write_text('{"model": "fake-judge", "judgm')  # a write cut short
        assert parse_rating(judge.judge("s", "u")) == 8 and len(fake.requests) == 1
        assert parse_rating(json.loads(entry.read_text())["judgment"]) == 8
        assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # nothing written aside is left
        assert parse_rating(judge.judge("s", "u")) == 8 and len(fake.requests) == 1  # from the cache now
    finally:
        fake.close()


def test_a_judge_that_never_answers_in_time_costs_its_budget_not_hours(monkeypatch, tmp_path):
    """It took 736 s for 8 judgments (120 s timeouts, 6 tries each) with the bar stuck at 0/8: every try
    now ends within the budget, and what is still out then is given up."""
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    fake = FakeJudge(delay_s=30)
    requests = [("s", f"question {i}") for i in range(8)]
    started = time.monotonic()
    try:
        with pytest.raises(JudgeUnavailable, match=r"gave 0 of 8 judgments within its budget of 2 s \(EXATRACK_JUDGE_BUDGET_S\)"):
            Judge(fake.url, "slow-judge", retries=5, budget_s=2, concurrency=4).judge_all(requests, "judging")
        assert time.monotonic() - started < 10
        assert len(fake.requests) <= 4  # the four started; the rest were given up, never sent
    finally:
        fake.close()
    assert not (tmp_path / "judgments").exists()


def test_identical_requests_are_judged_once_and_answered_in_order(monkeypatch, tmp_path):
    """An A/A pair's equal answers make equal requests: asked once, at once (the cache alone would
    not help: both are asked before either is written)."""
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    fake = FakeJudge()
    try:
        requests = [("s", "same"), ("s", "other"), ("s", "same"), ("s", "same")]
        judgments = Judge(fake.url, "fake-judge", retries=0).judge_all(requests, "judging")
        assert len(judgments) == 4 and all(parse_rating(j) == 8 for j in judgments)
        assert sorted(r["messages"][1]["content"] for r in fake.requests) == ["other", "same"]
    finally:
        fake.close()


def test_a_reasoning_judge_refusing_sampling_parameters_is_asked_without_them(monkeypatch, tmp_path):
    monkeypatch.setenv("EXATRACK_CACHE", str(tmp_path))
    server = FakeJudge(reasoning=True)
    try:
        assert parse_rating(Judge(server.url, "o-reasoner", retries=0).judge("s", "u")) == 8
        assert "max_tokens" in server.requests[0] and "max_tokens" not in server.requests[1]
    finally:
        server.close()


def test_a_changed_benchmark_version_or_judge_prompt_changes_the_fingerprint(monkeypatch, tmp_path):
    from dataclasses import replace

    from exatrack.evaluate import session as evaluate

    settings = Settings(benchmarks="kmmlu_pro,komt_bench", data="sample")
    rows = {"kmmlu_pro": [{"question": "q", "options": ["a", "b"], "solution": "1"}], "komt_bench": []}
    response = {"vllm_version": "v", "stack": {"vllm": "v", "transformers": "5.19.0"}, "device": "d"}
    monkeypatch.setenv("EXATRACK_JUDGE_URL", "https://user:secret@judge.example/v1")
    monkeypatch.setenv("EXATRACK_JUDGE_MODEL", "gpt-4o")
    before = evaluate.fingerprint(settings, rows, response, 4096)
    assert before["benchmarks"]["komt_bench"]["judge_host"] == "judge.example"  # never the credentials
    monkeypatch.setitem(REGISTRY, "kmmlu_pro", replace(REGISTRY["kmmlu_pro"], version=REGISTRY["kmmlu_pro"].version + 1))
    bumped = evaluate.fingerprint(settings, rows, response, 4096)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(komt.prompts_file().read_text(encoding="utf-8").replace("공정한", "엄격한"), encoding="utf-8")
    monkeypatch.setenv("EXATRACK_JUDGE_PROMPTS", str(prompts))
    reprompted = evaluate.fingerprint(settings, rows, response, 4096)
    # the same vLLM beside another transformers reads a checkpoint as another model (the grader's RoPE base)
    restacked = evaluate.fingerprint(settings, rows, {**response, "stack": {"vllm": "v", "transformers": "4.57.6"}}, 4096)
    ids = {evaluate.fingerprint_id(f) for f in (before, bumped, reprompted, restacked)}
    assert len(ids) == 4


def test_serving_failure_names_the_engines_first_exception_not_its_death():
    from exatrack.evaluate.serving import root_cause

    lines = [
        "(Worker pid=1) ERROR [x.py:1] Traceback (most recent call last):",
        "(Worker pid=1) ERROR [x.py:1] AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'",
        "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue.",
    ]
    assert root_cause(lines) == "AttributeError: '_OpNamespace' '_C' object has no attribute 'cpu_gemm_wna16'"
    assert root_cause(["just a line"]) == "just a line"


def test_a_model_vllm_cannot_load_is_reported_with_the_engines_own_reason(monkeypatch, tmp_path):
    """The worker only knows 'Engine core initialization failed'; the engine logged the cause before it."""
    import sys

    from exatrack.evaluate import serving

    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys\n"
        "print('loaded base (1/2)', file=sys.stderr)\n"
        "print('(Worker pid=7) ERROR ValueError: Available memory on node 0 is less than requested', file=sys.stderr)\n"
        "print('could not load candidate0: RuntimeError: Engine core initialization failed. See root cause above.', file=sys.stderr)\n"
        "json.dump({'models': {'base': {}, 'candidate0': {'error': 'RuntimeError: Engine core initialization failed'}}},"
        " open(sys.argv[2], 'w'))\n")
    monkeypatch.setattr(serving, "WORKER", script)
    monkeypatch.setenv("EXATRACK_SERVING_PYTHON", sys.executable)
    response = serving.run_session({}, "two models")
    assert response["models"]["candidate0"]["error"] == "ValueError: Available memory on node 0 is less than requested"
    assert "error" not in response["models"]["base"]
