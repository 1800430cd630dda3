"""Tests of exatrack/lanes: lanes in turn and over Ray, resumed, forced, failing alone."""
