"""exatrack: an MLflow-tracked lab for compressing EXAONE-4.0-1.2B for serving in vLLM."""

from pathlib import Path

__version__ = "0.1.0"
DATA_DIR = Path(__file__).parent / "data"
