"""Tests, laid out as exatrack is: a folder per stage; the command line's and cross-stage tests on top."""
