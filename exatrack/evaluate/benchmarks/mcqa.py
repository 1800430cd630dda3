"""KMMLU-Pro and KMMLU-Redux: multiple choice, with the prompt of the KMMLU-Redux/Pro paper (arXiv
2507.08924): options lettered A, B, ... and the answer after "정답:".

Extraction: the last `정답: X` wins (models reason before they conclude), then `\\boxed{X}`, then
`정답은 X`, then a lone parenthesised letter, then a trailing letter. The paper's evaluation code is not
public; lm-evaluation-harness's kmmlu_pro/kmmlu_redux tasks (which number the options) take the last
standalone digit, so a digit ("정답: 2번") or a circled digit ("정답: ②") is read as the option of that
number too. A parenthesised letter counts only when it is the only one in the answer: a model that
restates "(A) ... (D)" has not chosen D.
"""

import re
from dataclasses import dataclass

from exatrack.evaluate.benchmarks import Benchmark, Result, answer_text, register

LETTERS = "ABCDEFGHIJ"  # up to ten options
CIRCLED = "①②③④⑤⑥⑦⑧⑨⑩"
INSTRUCTION = (
    '다음 문제에 대해 정답을 고르세요. 당신의 최종 정답은 {letters} 중 하나이고, "정답:" 뒤에 와야 합니다. '
    "정답을 고르기 전에 차근차근 생각하고 추론하세요."
)
CHOICE = rf"([A-J]|10|[1-9]|[{CIRCLED}])"
# (?![A-Za-z0-9]) rather than \b: Hangul is a word character, so "정답: B입니다" has no boundary after B.
END = r"(?![A-Za-z0-9])"
# Tried in order; within a pattern the last match wins.
PATTERNS = [
    rf"정답\s*[:：]\s*\**\s*[\(\[]?\s*{CHOICE}{END}",
    rf"\\boxed\{{\s*\(?{CHOICE}\)?\s*\}}",
    rf"정답은\s*\**\s*[\(\[]?\s*{CHOICE}{END}",
]
TRAILING = r"(?:^|\s)([A-J])[).]?\s*$"


def prompt(row: dict) -> str:
    letters = LETTERS[: len(row["options"])]
    options = "\n".join(f"{letter}) {option}" for letter, option in zip(letters, row["options"]))
    return f"{INSTRUCTION.format(letters=letters)}\n\n{row['question']}\n\n{options}"


def as_letter(choice: str) -> str:
    if choice in CIRCLED:
        return LETTERS[CIRCLED.index(choice)]
    if choice.isdigit():
        return LETTERS[int(choice) - 1] if 1 <= int(choice) <= len(LETTERS) else ""
    return choice


def extract(text: str, n_options: int) -> str | None:
    allowed = LETTERS[:n_options]
    text = answer_text(text)
    for pattern in PATTERNS:
        found = [as_letter(m) for m in re.findall(pattern, text)]
        found = [letter for letter in found if letter and letter in allowed]
        if found:
            return found[-1]
    parenthesised = set(re.findall(r"\(([A-J])\)", text)) & set(allowed)
    if len(parenthesised) == 1:
        return parenthesised.pop()
    trailing = re.findall(TRAILING, text)
    return trailing[-1] if trailing and trailing[-1] in allowed else None


def gold(row: dict) -> str:
    return LETTERS[int(str(row["solution"]).strip()) - 1]


@dataclass
class MultipleChoice(Benchmark):
    def problem(self, row):
        if not isinstance(row["question"], str) or not row["question"].strip():
            return f"'question' is {row['question']!r}: the model would be asked nothing"
        options = row["options"]
        if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS) or \
                not all(isinstance(o, (str, int, float)) and str(o).strip() for o in options):
            return f"'options' must be a list of 2 to {len(LETTERS)} non-empty options, not {str(options)[:60]!r}"
        solution = str(row["solution"]).strip()
        if not solution.isdigit() or not 1 <= int(solution) <= len(options):
            return (f"'solution' is {row['solution']!r}; it must be the 1-based number of the right option, "
                    f"1 to {len(options)}")
        return None

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
# version 2: digits and circled digits read as options, "(X)" only when unambiguous, up to ten options
register(MultipleChoice("kmmlu_pro", "KMMLU-Pro", "LGAI-EXAONE/KMMLU-Pro", "test", FIELDS, "accuracy", version=2))
register(MultipleChoice("kmmlu_redux", "KMMLU-Redux", "LGAI-EXAONE/KMMLU-Redux", "test", FIELDS, "accuracy", version=2))
