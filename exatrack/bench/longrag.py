"""Ko-LongRAG: long-context QA over one or several documents, scored by normalised token F1 (the
challenge's metric); single-document and multi-document tasks are reported apart as well."""

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from exatrack.bench import Benchmark, Result, answer_text, register


def normalize(text: str) -> list[str]:
    """Lower case, punctuation and symbols to spaces, whitespace-split (Korean has no articles to drop)."""
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text.lower())
    return text.split()


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize(prediction), normalize(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


SEPARATORS = {"titles": ", ", "context": "\n\n", "question": " "}


def prompt(row: dict) -> str:
    """The dataset's own template; replace() rather than format(), since contexts hold braces."""
    text = row["prompt"]
    for name, separator in SEPARATORS.items():
        value = row[name]
        text = text.replace("{" + name + "}", separator.join(map(str, value)) if isinstance(value, list) else str(value))
    return text


def golds(row: dict) -> list[str]:
    return [str(a) for a in row["answer"]] if isinstance(row["answer"], list) else [str(row["answer"])]


@dataclass
class LongRAG(Benchmark):
    def conversations(self, rows, greedy):
        return [{"turns": [prompt(row)]} for row in rows]

    def score(self, rows, answers):
        predictions = []
        for i, (row, (output,)) in enumerate(zip(rows, answers)):
            answer = answer_text(output)
            predictions.append(
                {"id": row.get("id", i), "task": row["task"], "prompt": prompt(row)[-2000:], "output": output,
                 "parsed": answer, "gold": " | ".join(golds(row)), "score": max(f1(answer, g) for g in golds(row))}
            )
        metrics = {"f1": mean(p["score"] for p in predictions), "n": len(predictions)}
        for task in sorted({p["task"] for p in predictions}):
            metrics[f"f1_{re.sub(r'QA$', '', task).lower()}"] = mean(p["score"] for p in predictions if p["task"] == task)
        return Result(metrics, predictions)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


register(LongRAG("ko_longrag", "Ko-LongRAG", "LGAI-EXAONE/Ko-LongRAG", "test",
                 ("prompt", "context", "question", "answer", "titles", "task"), "f1"))
