"""exatrack: an MLflow-tracked lab for compressing EXAONE-4.0-1.2B for serving in vLLM."""

__version__ = "0.1.0"
