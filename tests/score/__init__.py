"""Tests of exatrack/score: the challenge's score arithmetic."""
