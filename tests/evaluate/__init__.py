"""Tests of exatrack/evaluate: benchmarks, the judge, the serving session through real vLLM."""
