"""KoMT-Bench: 80 two-turn questions judged 1-10 by an LLM, following MT-Bench.

Reference: LG-AI-EXAONE/KoMT-Bench, a fork of FastChat's llm_judge. Single-answer grading with its
Korean judge prompts (shipped in exatrack/evaluate/benchmarks/data under LGPL-3.0; EXATRACK_JUDGE_PROMPTS points at
another file), reference answers for math, reasoning and coding, the rating parsed as FastChat does
(judge.parse_rating), and KoMT's non-Korean penalty (model_judgment/detector.py there): when a
language detector does not find Korean in the answer, the rating becomes sqrt(rating); questions 138
and 140 ask for JSON and are exempt. The reference runs MediaPipe's text language detector on the
whole answer; its model file is not on PyPI, so this uses langdetect, seeded, on the whole answer.
Unparsable judgments are left out of the mean (FastChat's -1). Without a judge, or when the judge
keeps failing, the benchmark is reported as skipped, never as 0.
"""

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from exatrack.core.basics import ExatrackError, read_records
from exatrack.evaluate.benchmarks import DATA_DIR, Benchmark, Result, answer_text, register
from exatrack.evaluate.benchmarks.judge import Judge, JudgeUnavailable, parse_rating

log = logging.getLogger(__name__)
NEEDS_REFERENCE = {"math", "reasoning", "coding"}
# MT-Bench's answer temperatures, used when sampling rather than greedy decoding is asked for.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}
PENALTY_EXEMPT = {138, 140}
PROMPTS = DATA_DIR / "komt_judge_prompts_ko.jsonl"


def prompts_file() -> Path:
    return Path(os.environ.get("EXATRACK_JUDGE_PROMPTS") or PROMPTS)


# the templates judge_request picks, and what each must leave room for (the official file's placeholders)
TEMPLATES = {"single-v1": ("question", "answer"),
             "single-v1-multi-turn": ("question_1", "answer_1", "question_2", "answer_2"),
             "single-math-v1": ("question", "answer", "ref_answer_1"),
             "single-math-v1-multi-turn": ("question_1", "answer_1", "question_2", "answer_2", "ref_answer_1", "ref_answer_2")}


def judge_prompts() -> dict[str, dict]:
    """The official Korean prompts, or those of the file EXATRACK_JUDGE_PROMPTS names, each template
    there with its system prompt and every placeholder its answers fill."""
    path = prompts_file()
    if not path.exists():
        raise ExatrackError(f"judge prompts {path} do not exist; point EXATRACK_JUDGE_PROMPTS at a jsonl like "
                            f"{PROMPTS.name}, or unset it for the official ones")
    prompts = {p.get("name"): p for p in read_records(path)}
    for name, placeholders in TEMPLATES.items():
        template = prompts.get(name, {})
        if not all(isinstance(template.get(k), str) for k in ("system_prompt", "prompt_template")):
            raise ExatrackError(f"judge prompts {path} have no '{name}' with a system_prompt and a prompt_template; "
                                f"KoMT-Bench needs {', '.join(TEMPLATES)} (see {PROMPTS.name}, shipped with exatrack)")
        if missing := [k for k in placeholders if "{" + k + "}" not in template["prompt_template"]]:
            raise ExatrackError(f"judge prompts {path}: '{name}' has no {{{missing[0]}}}, so the judge would never see it; "
                                f"its template needs {', '.join('{' + k + '}' for k in placeholders)}")
    return prompts


def prompts_hash() -> str:
    return hashlib.sha256(prompts_file().read_bytes()).hexdigest()[:12]


def language(text: str) -> str | None:
    """The most probable language of the text (langdetect, seeded: the same answer, the same call)."""
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0
    try:
        return detect(text)
    except LangDetectException:  # no letters at all: like the reference, not Korean
        return None


def is_korean(text: str) -> bool:
    return language(text) == "ko"


def judge_request(row: dict, answers: list[str], turn: int, prompts: dict) -> tuple[str, str]:
    """(system, user) for one turn, with MT-Bench's choice of template."""
    reference = row.get("reference") if row["category"] in NEEDS_REFERENCE else None
    name = ("single-math-v1" if reference else "single-v1") + ("-multi-turn" if turn == 1 else "")
    template = prompts[name]
    values = {"question": row["turns"][0], "answer": answers[0], "question_1": row["turns"][0], "answer_1": answers[0]}
    if turn == 1:
        values.update(question_2=row["turns"][1], answer_2=answers[1])
    if reference:
        values.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
    user = template["prompt_template"]
    for key, value in values.items():
        user = user.replace("{" + key + "}", value)
    return template["system_prompt"], user


def penalized(rating: float, row: dict, answer: str) -> float:
    return rating if row["question_id"] in PENALTY_EXEMPT or is_korean(answer) else rating**0.5


@dataclass
class KoMTBench(Benchmark):
    def problem(self, row):
        turns = row["turns"]
        if not isinstance(turns, list) or not 1 <= len(turns) <= 2 or not all(isinstance(t, str) and t.strip() for t in turns):
            return f"'turns' must be a list of 1 or 2 non-empty questions, not {str(turns)[:60]!r}"
        if "reference" in row and row["reference"] is not None and not isinstance(row["reference"], list):
            return "'reference' must be a list of reference answers, one per turn"
        return None

    def check(self):
        if Judge.from_env() is not None:  # without a judge KoMT-Bench is skipped: no prompts needed
            judge_prompts()

    def clash(self, rows):
        seen = {}
        for i, row in enumerate(rows):
            if row["question_id"] in seen:
                return (f"rows {seen[row['question_id']]} and {i} share question_id {row['question_id']!r}; "
                        "each question needs its own (answers are judged by it)")
            seen[row["question_id"]] = i
        return None

    def conversations(self, rows, greedy):
        sampling = lambda row: {} if greedy else {"temperature": TEMPERATURE.get(row["category"], 0.0)}  # noqa: E731
        return [{"turns": list(row["turns"]), "sampling": sampling(row)} for row in rows]

    def score(self, rows, answers, judge: Judge | None = None):
        judge = judge or Judge.from_env()
        predictions = [
            {"id": row["question_id"], "turn": turn + 1, "category": row["category"], "prompt": row["turns"][turn],
             "output": outputs[turn], "parsed": None, "gold": None, "score": None}
            for row, outputs in zip(rows, answers) for turn in range(len(row["turns"]))
        ]
        skipped = {"score": None, "n": len(rows)}
        if judge is None:
            log.warning("KoMT-Bench skipped: no judge configured (set EXATRACK_JUDGE_URL and EXATRACK_JUDGE_MODEL); "
                        "it is left out of Perf on both sides")
            return Result(skipped, predictions, {"judge": "none"})
        prompts = judge_prompts()
        by_id = {row["question_id"]: (row, [answer_text(a) for a in outputs]) for row, outputs in zip(rows, answers)}
        requests = [judge_request(*by_id[p["id"]], p["turn"] - 1, prompts) for p in predictions]
        try:
            judgments = judge.judge_all(requests, f"KoMT-Bench judged by {judge.model}")
        except JudgeUnavailable as err:
            log.warning("KoMT-Bench skipped: %s; it is left out of Perf on both sides", err)
            return Result(skipped, predictions, {"judge": judge.model, "judge_error": str(err)})
        for p, judgment in zip(predictions, judgments):
            row, clean = by_id[p["id"]]
            rating = parse_rating(judgment)
            p["parsed"] = judgment
            p["score"] = None if rating is None else penalized(rating, row, clean[p["turn"] - 1])
        rated = [p["score"] for p in predictions if p["score"] is not None]
        metrics = {
            "rating": sum(rated) / len(rated) if rated else None,
            "score": sum(rated) / len(rated) / 10 if rated else None,
            "unparsed_judgments": len(predictions) - len(rated),
            "n": len(rows),
        }
        for turn in (1, 2):
            turn_scores = [p["score"] for p in predictions if p["turn"] == turn and p["score"] is not None]
            if turn_scores:
                metrics[f"rating_turn{turn}"] = sum(turn_scores) / len(turn_scores)
        return Result(metrics, predictions, {"judge": judge.model})

    def conditions(self) -> dict:
        judge = Judge.from_env()
        return {"judge": judge.model if judge else None, "judge_host": judge.host if judge else None,
                "judge_prompts": prompts_hash(), "language_detector": "langdetect"}

    def item_scores(self, result):
        """Ratings are 1-10 and the primary score is their mean / 10."""
        return [None if p["score"] is None else p["score"] / 10 for p in result.predictions]


register(KoMTBench("komt_bench", "KoMT-Bench", "LGAI-EXAONE/KoMT-Bench", "train", ("question_id", "category", "turns"), "score",
                   version=2))  # 2: FastChat's first-match rating, language detector, official prompts
