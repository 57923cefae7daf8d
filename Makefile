# The two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the CPU wheel for the dev/CI install path; the library itself asks torch>=2.4.
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)
# pip's notes about local mirror folders that lack a package are noise, not problems.
PIP_QUIET := 2>&1 | { grep -v -e "^WARNING: Location 'file:" || true; }
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip

.PHONY: demo test lint venv clean bench

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing evalboard (torch pinned to $(TORCH_PIN))"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(PIP) install --quiet --upgrade pip $(PIP_QUIET)
	@set -o pipefail; $(PIP) install --quiet "$(TORCH_PIN)" $(PIP_QUIET)
	@set -o pipefail; $(PIP) install --quiet "$(TORCH_PIN)" -e ".[dev]" $(PIP_QUIET)
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/evalboard demo $(DEMO_ARGS)

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/scan.py
	$(BIN)/python benchmarks/eval_throughput.py
	$(BIN)/python benchmarks/eval_throughput.py --preset 8b-split
	$(BIN)/python benchmarks/dashboard.py
	$(BIN)/python benchmarks/queue_claims.py
	$(BIN)/python benchmarks/track_a_sweep.py
	$(BIN)/python benchmarks/callback_save.py
	$(BIN)/python benchmarks/bootstrap.py

clean:
	rm -rf $(VENV) .evalboard .pytest_cache .mypy_cache test-output
