"""An LLM judge behind any OpenAI-compatible chat endpoint (GPT-4 class, Gemini's compatible endpoint,
a local vLLM server). Configured only by the environment, so the key never reaches a file or a log:

    EXATRACK_JUDGE_URL      base URL, e.g. https://api.openai.com/v1
    EXATRACK_JUDGE_MODEL    e.g. gpt-4o
    EXATRACK_JUDGE_API_KEY  optional (local servers need none)

Judgments are cached on disk by (model, prompt), so a re-run or a retry after a rate limit costs nothing.
"""

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from exatrack import cache_dir

RATING = [re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]")]
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeUnavailable(Exception):
    """The judge kept failing after every retry."""


def parse_rating(judgment: str) -> float | None:
    """MT-Bench's rule: the rating is the number in [[N]] (falling back to [N]); None if absent."""
    for pattern in RATING:
        found = pattern.findall(judgment)
        if found:
            return float(found[-1])
    return None


@dataclass
class Judge:
    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 120.0

    @classmethod
    def from_env(cls) -> "Judge | None":
        url, model = os.environ.get("EXATRACK_JUDGE_URL"), os.environ.get("EXATRACK_JUDGE_MODEL")
        if not (url and model):
            return None
        return cls(url.rstrip("/"), model, os.environ.get("EXATRACK_JUDGE_API_KEY"))

    def cache_file(self, system: str, user: str) -> Path:
        key = hashlib.sha256(json.dumps([self.url, self.model, system, user]).encode()).hexdigest()
        return cache_dir() / "judgments" / key[:2] / f"{key}.json"

    def judge(self, system: str, user: str) -> str:
        cached = self.cache_file(system, user)
        if cached.exists():
            return json.loads(cached.read_text(encoding="utf-8"))["judgment"]
        judgment = self.ask(system, user)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps({"model": self.model, "judgment": judgment}, ensure_ascii=False), encoding="utf-8")
        return judgment

    def ask(self, system: str, user: str) -> str:
        import requests

        body = {"model": self.model, "temperature": 0, "max_tokens": 2048,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        problem = ""
        for attempt in range(self.retries + 1):
            try:
                reply = requests.post(f"{self.url}/chat/completions", json=body, headers=headers, timeout=self.timeout_s)
                if reply.status_code == 200:
                    return reply.json()["choices"][0]["message"]["content"]
                problem = f"HTTP {reply.status_code}"
                if reply.status_code not in RETRY_STATUS:
                    break
                wait = float(reply.headers.get("Retry-After", 0) or 0)
            except (requests.RequestException, KeyError, ValueError) as err:
                problem, wait = type(err).__name__, 0.0
            if attempt < self.retries:
                time.sleep(max(wait, self.backoff_s * 2**attempt))
        raise JudgeUnavailable(f"judge {self.model} at {self.url} failed after {self.retries + 1} tries ({problem})")
