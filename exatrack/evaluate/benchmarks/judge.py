"""An LLM judge behind any OpenAI-compatible chat endpoint (GPT-4 class, Gemini's compatible endpoint,
a local vLLM server), called through the `openai` client and its retry policy (exponential backoff,
Retry-After honoured, 408/409/429/5xx retried). Configured only by the environment, so the key never
reaches a file or a log:

    EXATRACK_JUDGE_URL      base URL, e.g. https://api.openai.com/v1
    EXATRACK_JUDGE_MODEL    e.g. gpt-4o
    EXATRACK_JUDGE_API_KEY  optional (local servers need none)
    EXATRACK_JUDGE_BUDGET_S seconds one model's judging may take in all (default 3600)

A judgment is cached on disk by (endpoint, model, prompt) only once its rating parses: a failed call,
an empty reply or an unparsable judgment is asked again next time, never remembered. Identical
requests (an A/A pair's equal answers) are asked once. A judge that never answers costs the budget,
not hours: a call's timeout never reaches past it, and what is unanswered then is given up.
"""

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from exatrack.core import console
from exatrack.core.basics import ExatrackError, cache_dir

# FastChat llm_judge (common.py), which KoMT-Bench forks: the FIRST [[N]] (re.search), else the first [N].
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
MAX_TOKENS = 2048  # FastChat's for OpenAI judges; temperature 0
BUDGET_S = 3600.0  # the 160 judgments of one model took minutes from GPT-4-class APIs; a stuck judge, hours


class JudgeUnavailable(Exception):
    """The judge kept failing after every retry."""


SCALE = (1.0, 10.0)  # what the judge prompts ask for ("strictly following this format: [[5]]", 1 to 10)


def parse_rating(judgment: str) -> float | None:
    """FastChat's rule; None where FastChat gives -1 (such judgments are left out of the mean). A
    rating off the prompts' 1-10 scale is not one either: FastChat would count [[11]] as 11."""
    match = RATING.search(judgment) or RATING_BACKUP.search(judgment)
    rating = float(match.group(1)) if match else None
    return rating if rating is not None and SCALE[0] <= rating <= SCALE[1] else None


@dataclass
class Judge:
    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    retries: int = 5
    timeout_s: float = 120.0
    concurrency: int = 8
    budget_s: float = BUDGET_S

    @classmethod
    def from_env(cls) -> "Judge | None":
        """None when no judge is configured; a half or malformed configuration is refused (it would
        otherwise skip KoMT-Bench, or fail after the generation)."""
        url, model = os.environ.get("EXATRACK_JUDGE_URL"), os.environ.get("EXATRACK_JUDGE_MODEL")
        if not (url or model):
            return None
        if not (url and model):
            given, missing = ("EXATRACK_JUDGE_URL", "EXATRACK_JUDGE_MODEL") if url else ("EXATRACK_JUDGE_MODEL", "EXATRACK_JUDGE_URL")
            raise ExatrackError(f"{given} is set but {missing} is not; set both to judge KoMT-Bench, or neither to skip it")
        where = urlparse(url)
        if where.scheme not in ("http", "https") or not where.hostname:  # the URL itself may hold a key: not echoed
            raise ExatrackError("EXATRACK_JUDGE_URL is not an http(s) URL with a host; set it to the API's base, "
                                "e.g. https://api.openai.com/v1")
        budget = os.environ.get("EXATRACK_JUDGE_BUDGET_S", "")
        try:
            budget_s = float(budget) if budget else BUDGET_S
        except ValueError:
            budget_s = -1.0
        if not budget_s > 0:  # NaN too
            raise ExatrackError(f"EXATRACK_JUDGE_BUDGET_S={budget!r} is not a number of seconds above 0; e.g. 3600")
        return cls(url.rstrip("/"), model, os.environ.get("EXATRACK_JUDGE_API_KEY"), budget_s=budget_s)

    @property
    def host(self) -> str:
        """What the fingerprint keeps of the endpoint: the host, never a path or credentials."""
        return urlparse(self.url).hostname or ""

    def cache_file(self, system: str, user: str) -> Path:
        key = hashlib.sha256(json.dumps([self.url, self.model, system, user]).encode()).hexdigest()
        return cache_dir() / "judgments" / key[:2] / f"{key}.json"

    def judge(self, system: str, user: str, deadline: float | None = None) -> str:
        cached = self.cache_file(system, user)
        try:
            judgment = json.loads(cached.read_text(encoding="utf-8"))["judgment"]
            if isinstance(judgment, str) and parse_rating(judgment) is not None:
                return judgment
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: asked again, rewritten
            pass
        judgment = self.ask(system, user, deadline)
        if parse_rating(judgment) is not None:  # written aside and renamed: a killed write leaves no half entry
            cached.parent.mkdir(parents=True, exist_ok=True)
            aside = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}.partial")
            aside.write_text(json.dumps({"model": self.model, "judgment": judgment}, ensure_ascii=False), encoding="utf-8")
            aside.replace(cached)
        return judgment

    def judge_all(self, requests: list[tuple[str, str]], what: str) -> list[str]:
        """Every (system, user) pair, each distinct one asked once, `concurrency` at a time, within the
        budget; in order. The bar counts judgments as they arrive, whichever comes first."""
        distinct = list(dict.fromkeys(requests))
        deadline = time.monotonic() + self.budget_s
        pool = ThreadPoolExecutor(self.concurrency)
        futures = {pool.submit(self.judge, system, user, deadline): (system, user) for system, user in distinct}
        answered = {}
        try:
            arrivals = as_completed(futures, timeout=self.budget_s)
            for future in console.bar(arrivals, total=len(futures), desc=what, unit="judgment"):
                answered[futures[future]] = future.result()
        except TimeoutError:
            raise JudgeUnavailable(f"judge {self.model} at {self.host} gave {len(answered)} of {len(distinct)} judgments "
                                   f"within its budget of {self.budget_s:g} s (EXATRACK_JUDGE_BUDGET_S)")
        finally:  # a judgment still out is given up, not waited for
            pool.shutdown(wait=False, cancel_futures=True)
        return [answered[r] for r in requests]

    def ask(self, system: str, user: str, deadline: float | None = None) -> str:
        import openai

        timeout, retries = self.timeout_s, self.retries
        if deadline is not None:  # every try, retries included, ends within the budget
            left = deadline - time.monotonic()
            if left <= 0:
                raise JudgeUnavailable(f"judge {self.model} at {self.host} spent its budget of {self.budget_s:g} s")
            timeout = min(timeout, left)
            retries = max(0, min(retries, int(left // timeout) - 1))
        client = openai.OpenAI(base_url=self.url, api_key=self.api_key or "none", max_retries=retries, timeout=timeout)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            try:
                reply = client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                       max_tokens=MAX_TOKENS)
            except openai.BadRequestError:  # reasoning models refuse temperature and max_tokens
                reply = client.chat.completions.create(model=self.model, messages=messages)
        except openai.APIStatusError as err:
            if err.status_code in (401, 403):
                raise JudgeUnavailable(f"judge {self.model} at {self.host} refused the key (HTTP {err.status_code}); "
                                       "check EXATRACK_JUDGE_API_KEY")
            raise JudgeUnavailable(f"judge {self.model} at {self.host} failed after {retries + 1} tries "
                                   f"(HTTP {err.status_code})")
        except openai.APIError as err:
            raise JudgeUnavailable(f"judge {self.model} at {self.host} failed after {retries + 1} tries "
                                   f"({type(err).__name__})")
        try:
            content = reply.choices[0].message.content if reply.choices else None
        except (AttributeError, IndexError, TypeError):  # a proxy's HTML page, or JSON of another shape
            raise JudgeUnavailable(f"judge {self.model} at {self.host} replied with no chat completion "
                                   f"(a {type(reply).__name__}); check that EXATRACK_JUDGE_URL is an OpenAI-compatible API")
        if not isinstance(content, str):
            raise JudgeUnavailable(f"judge {self.model} at {self.host} replied with no content")
        return content
