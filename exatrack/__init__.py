"""exatrack: an MLflow-tracked lab for compressing EXAONE-4.0-1.2B for serving in vLLM."""

import os
from pathlib import Path

import click

__version__ = "0.1.0"
DATA_DIR = Path(__file__).parent / "data"


class ExatrackError(click.ClickException):
    """A mistake the user can fix: the message says what is wrong and how to fix it, in one line."""


def cache_dir() -> Path:
    """Where built things live between runs (tiny model, serving environments)."""
    root = os.environ.get("EXATRACK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "exatrack"
    return Path(root)
