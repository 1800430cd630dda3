"""Tests of exatrack/publish: ranking and the champion, the grader check, the package."""
