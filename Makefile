# Two commands on a fresh machine: `make demo` and `make test`; both run `make setup` first (idempotent).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines take the CPU build where a local wheel or index offers it; GPU machines get PyPI's CUDA build.
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup serving-env test demo clean

setup: $(VENV)/.installed

# torch through pip (it finds a machine's local CPU wheel; uv does not look there), the rest through uv:
# from a warm cache it installs in seconds where pip takes minutes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e ".[test]"
	touch $@

# The pinned vLLM environment evaluation runs in: built once (a few minutes), cached under ~/.cache/exatrack.
serving-env: setup
	$(BIN)/exatrack serving-env --build

test: setup serving-env
	$(BIN)/python -m pytest -q -ra

demo: setup serving-env
	$(BIN)/exatrack --experiment exatrack-demo pipeline --model tiny --data sample --max_tokens 48 --eager --lanes recipes/demo-lanes.yaml

clean:
	rm -rf mlflow.db mlruns/[0-9]* mlruns/models submit.zip
