# Two commands on a fresh machine: `make demo` and `make test`; both run `make setup` first (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines take the CPU build where a local wheel or index offers it; GPU machines get PyPI's CUDA build.
TORCH ?= torch==2.13.0
# Every version `make setup` installs, the installers' included (locks/project.txt; `make lock` rewrites it).
LOCK := locks/project.txt
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup serving-env grader-env test demo lock clean

setup: $(VENV)/.installed

# pip and uv at the lock's versions first: their command lines below are written for those versions.
# torch through pip (it finds a machine's local CPU wheel; uv does not look there), the rest through uv:
# from a warm cache it installs in seconds where pip takes minutes. uv compiles the bytecode pip would
# (exatrack/core/environments.py, UV_INSTALL, says why and what it saves).
$(VENV)/.installed: pyproject.toml $(LOCK) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(LOCK) pip uv
	$(BIN)/python -m pip install -q --disable-pip-version-check -c $(LOCK) $(TORCH)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c $(LOCK) -e ".[test]"
	touch $@

# The pinned vLLM environment evaluation runs in, and the grader's stack `promote` checks packages
# against: each built once (a few minutes), cached under ~/.cache/exatrack.
serving-env: setup
	$(BIN)/exatrack serving-env --build

grader-env: setup
	$(BIN)/exatrack grader-env --build

# Two pytest workers, each process one thread: on 2 cores the suite took 685 s in one worker and
# 482 s in two (most of its time is single-threaded imports and processes starting). Tests that start
# engines or Ray, or look for leftover processes, share one worker (tests/conftest.py, ONE_AT_A_TIME).
TEST_WORKERS ?= 2
test: setup serving-env grader-env
	OMP_NUM_THREADS=1 VLLM_CPU_OMP_THREADS_BIND=nobind $(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup --durations=15

demo: setup serving-env grader-env
	$(BIN)/exatrack --experiment exatrack-demo pipeline --model tiny --data sample --max_tokens 48 --eager --lanes recipes/demo-lanes.yaml

# For developers: resolve every lock again (the project's, the serving and grader environments').
lock: setup
	$(BIN)/python -m exatrack.core.environments

clean:
	rm -rf mlflow.db mlruns/[0-9]* mlruns/models submit.zip
