"""Tests of exatrack/models: references resolved, the tiny model, remote checkpoints downloaded."""
