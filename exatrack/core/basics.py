"""What every module of exatrack needs: the one-line error a user can fix (any secret in it masked),
a stable digest of inputs, the cache folder, the torch device, and rows read from a data file.

It sits below everything else and imports nothing of exatrack, so that any module may use it
without an import circle (ExatrackError once reached up into tracking for `redact`).
"""

import hashlib
import json
import os
import re
from pathlib import Path

import click


class ExatrackError(click.ClickException):
    """A mistake the user can fix: the message says what is wrong and how to fix it, in one line. It is
    printed and kept as the run's error tag, so any secret in it is masked here, once for all of them."""

    def __init__(self, message: str):
        super().__init__(redact(message))


# Environment variables whose values must never reach a param, tag, artifact or log line.
SECRET_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "EXATRACK_JUDGE_API_KEY", "OPENAI_API_KEY")
# scheme://user:pass@ or scheme://token@, and scheme:/user:pass@ as a Path spells a URL; never models:/name@alias
URL_CREDENTIALS = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*:)(//[^/\s@]+|/[^/\s@:]+:[^/\s@]*)@")


def redact(text: str) -> str:
    """The text with the secrets of SECRET_ENV and any credentials inside URLs (https://user:pass@host) masked."""
    for name in SECRET_ENV:
        if secret := os.environ.get(name):
            text = text.replace(secret, "***")
    return URL_CREDENTIALS.sub(r"\1//***@", text)


def digest(value) -> str:
    """A short, stable name for a JSON-able value: how runs with the same inputs or conditions are found."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where built things live between runs (tiny model, serving environments)."""
    root = os.environ.get("EXATRACK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "exatrack"
    return Path(root)


def torch_device() -> str:
    """Where the steps that run the model themselves (prune, distill, sft) run it."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def read_records(path: Path) -> list[dict]:
    """Rows of a local jsonl, json (a list) or parquet file, as the hub's datasets would give them."""
    if not path.exists():
        raise ExatrackError(f"{path} does not exist; pass an existing jsonl, json or parquet file")
    if path.suffix == ".parquet":
        import pyarrow
        import pyarrow.parquet

        try:
            return pyarrow.parquet.read_table(path).to_pylist()
        except pyarrow.ArrowException as err:
            raise ExatrackError(f"{path} is not a readable parquet file ({str(err)[:120]}); write it again")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ExatrackError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); "
                            "pass a jsonl, json or parquet file, its text written as UTF-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        rows = parse_json(text, path, 0)
    else:
        rows = [parse_json(line, path, number) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not all(isinstance(row, dict) for row in rows):
        raise ExatrackError(f"{path} holds rows that are not JSON objects; write one object per row, e.g. {{\"text\": \"...\"}}")
    return rows


def parse_json(text: str, path: Path, line: int):
    """`line`: the line of `path` that `text` is (0: `text` is the whole file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ExatrackError(f"{path} line {line or err.lineno} is not valid JSON; write one JSON object per line")
