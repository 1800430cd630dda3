"""KMMLU-Pro and KMMLU-Redux: multiple choice, with the prompt and answer extraction of the
KMMLU-Redux/Pro paper (arXiv 2507.08924): the last `정답: X` wins, then fallbacks."""

import re
from dataclasses import dataclass

from exatrack.bench import Benchmark, Result, answer_text, register

LETTERS = "ABCDE"
INSTRUCTION = (
    '다음 문제에 대해 정답을 고르세요. 당신의 최종 정답은 {letters} 중 하나이고, "정답:" 뒤에 와야 합니다. '
    "정답을 고르기 전에 차근차근 생각하고 추론하세요."
)
# Tried in order; within a pattern the last match wins (models restate options before concluding).
# (?![A-Za-z]) rather than \b: Hangul is a word character, so "정답: B입니다" has no boundary after B.
PATTERNS = [
    r"정답\s*[:：]\s*\**\s*\(?([A-E])(?![A-Za-z])",
    r"\\boxed\{\s*\(?([A-E])\)?\s*\}",
    r"정답은\s*\**\s*\(?([A-E])(?![A-Za-z])",
    r"\(([A-E])\)",
    r"(?:^|\s)([A-E])[).]?\s*$",
]


def prompt(row: dict) -> str:
    letters = LETTERS[: len(row["options"])]
    options = "\n".join(f"{letter}) {option}" for letter, option in zip(letters, row["options"]))
    return f"{INSTRUCTION.format(letters=letters)}\n\n{row['question']}\n\n{options}"


def extract(text: str, n_options: int) -> str | None:
    allowed = LETTERS[:n_options]
    text = answer_text(text)
    for pattern in PATTERNS:
        found = [m for m in re.findall(pattern, text) if m in allowed]
        if found:
            return found[-1]
    return None


def gold(row: dict) -> str:
    return LETTERS[int(str(row["solution"]).strip()) - 1]


@dataclass
class MultipleChoice(Benchmark):
    def conversations(self, rows, greedy):
        return [{"turns": [prompt(row)]} for row in rows]

    def score(self, rows, answers):
        predictions = []
        for i, (row, (output,)) in enumerate(zip(rows, answers)):
            parsed = extract(output, len(row["options"]))
            predictions.append(
                {"id": row.get("id", i), "prompt": prompt(row), "output": output, "parsed": parsed,
                 "gold": gold(row), "score": float(parsed == gold(row))}
            )
        correct = sum(p["score"] for p in predictions)
        unparsed = sum(p["parsed"] is None for p in predictions)
        return Result({"accuracy": correct / len(predictions), "unparsed": unparsed, "n": len(predictions)}, predictions)


FIELDS = ("question", "options", "solution")
register(MultipleChoice("kmmlu_pro", "KMMLU-Pro", "LGAI-EXAONE/KMMLU-Pro", "test", FIELDS, "accuracy"))
register(MultipleChoice("kmmlu_redux", "KMMLU-Redux", "LGAI-EXAONE/KMMLU-Redux", "test", FIELDS, "accuracy"))
