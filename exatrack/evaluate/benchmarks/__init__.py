"""Benchmarks as small registered units, in the manner of lm-evaluation-harness.

A benchmark says where its rows come from (hub id and split, the fields each row must have, a bundled
sample), how a row becomes a conversation for the model, and how the answers are scored. Its
`primary` metric, in [0, 1], is what enters Perf; a benchmark that cannot score (KoMT-Bench without a
judge) returns None for it and is left out of Perf on both sides.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from exatrack.core.basics import ExatrackError, read_records

DATA_DIR = Path(__file__).parent / "data"  # the bundled samples, KoMT-Bench's judge prompts

REGISTRY: dict[str, "Benchmark"] = {}


def register(benchmark: "Benchmark") -> "Benchmark":
    REGISTRY[benchmark.name] = benchmark
    return benchmark


@dataclass
class Result:
    metrics: dict  # "<metric>": value; the primary metric may be None (not scored)
    predictions: list[dict]  # one row per item: id, prompt, output, parsed, gold, score
    notes: dict = field(default_factory=dict)  # tags worth keeping, e.g. which judge scored


@dataclass
class Benchmark:
    name: str
    title: str
    hub_id: str
    split: str
    fields: tuple
    primary: str
    version: int = 1  # raised whenever scoring changes: runs of another version compare as another fingerprint

    def location(self, source: str) -> str:
        """Where `hub`, `sample` (the bundled rows) or a local file in the hub's schema is."""
        if source == "hub":
            return self.hub_id
        return str(DATA_DIR / f"{self.name}.jsonl") if source == "sample" else str(Path(source).expanduser())

    def load(self, source: str) -> list[dict]:
        rows = self.from_hub() if source == "hub" else read_records(Path(self.location(source)))
        for i, row in enumerate(rows):
            missing = [f for f in self.fields if f not in row]
            if missing:
                raise ExatrackError(
                    f"{self.title} row {i} from {source} has no '{missing[0]}' field; "
                    f"each row needs {', '.join(self.fields)} (the hub schema of {self.hub_id})"
                )
            if problem := self.problem(row):
                raise ExatrackError(f"{self.title} row {i} from {source}: {problem} (the hub schema of {self.hub_id})")
        if not rows:
            raise ExatrackError(f"{self.title} source {source} holds no rows")
        if clash := self.clash(rows):
            raise ExatrackError(f"{self.title} source {source}: {clash}")
        return rows

    def problem(self, row: dict) -> str | None:
        """What is wrong with a row's values, or None. Checked when the rows load, before any engine
        starts: a bad value found by scoring would throw away every model's generation."""
        return None

    def check(self) -> None:
        """What the benchmark needs besides its rows (a judge and its prompts), refused in one line
        before any engine starts: found by scoring, it would throw away the session's generation."""

    def clash(self, rows: list[dict]) -> str | None:
        """What is wrong between rows (two with one id), or None; checked with `problem`."""
        return None

    def from_hub(self) -> list[dict]:
        import datasets
        from huggingface_hub.errors import GatedRepoError

        try:
            return list(datasets.load_dataset(self.hub_id, split=self.split))
        except GatedRepoError:
            raise ExatrackError(
                f"{self.hub_id} is gated: accept its terms on huggingface.co and set HF_TOKEN, "
                f"or pass data={self.name}=<local file>"
            )
        except Exception as err:
            raise ExatrackError(
                f"cannot load {self.hub_id} from the hub ({type(err).__name__}); "
                f"check your network and HF_TOKEN, or pass data=sample or data={self.name}=<local file>"
            )

    def conversations(self, rows: list[dict], greedy: bool) -> list[dict]:
        """Each row as {"turns": [user messages], "sampling": {overrides}} for the worker."""
        raise NotImplementedError

    def score(self, rows: list[dict], answers: list[list[str]]) -> Result:
        raise NotImplementedError

    def conditions(self) -> dict:
        """What else, beside the version, must be equal for two runs' scores to compare (a judge, say)."""
        return {}

    def item_scores(self, result: Result) -> list:
        """Per prediction, its share of the primary metric on the primary's scale (None: not scored):
        what the paired bootstrap resamples."""
        return [p["score"] for p in result.predictions]


def row_key(row: dict) -> str:
    return hashlib.sha1(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def subset(rows: list[dict], limit: int) -> list[dict]:
    """The `limit` rows with the smallest content hashes: the same rows whatever the file order."""
    if not limit or limit >= len(rows):
        return rows
    return sorted(rows, key=row_key)[:limit]


def content_hash(rows: list[dict]) -> str:
    return hashlib.sha1("".join(sorted(row_key(r) for r in rows)).encode()).hexdigest()[:12]


def answer_text(text: str) -> str:
    """What follows the reasoning block, when the model thought first."""
    return text.split("</think>")[-1].strip()


from exatrack.evaluate.benchmarks import komt, longrag, mcqa  # noqa: E402,F401  (registers the benchmarks)
