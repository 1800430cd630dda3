"""exatrack: an MLflow-tracked lab for compressing EXAONE-4.0-1.2B for serving in vLLM."""

import hashlib
import json
import os
from pathlib import Path

import click

__version__ = "0.1.0"
DATA_DIR = Path(__file__).parent / "data"


class ExatrackError(click.ClickException):
    """A mistake the user can fix: the message says what is wrong and how to fix it, in one line. It is
    printed and kept as the run's error tag, so any secret in it is masked here, once for all of them."""

    def __init__(self, message: str):
        from exatrack.tracking import redact

        super().__init__(redact(message))


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
