"""Tests of exatrack/core: the built environments, the run store's filters, faults of processes."""
