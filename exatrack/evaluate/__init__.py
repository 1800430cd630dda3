"""Models measured as the challenge measures them: benchmarks in vLLM's own environment, one paired session."""
