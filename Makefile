# The two entry points of the README: `make demo` and `make test`. Each creates .venv when missing.
# TORCH selects the PyTorch build: the default is the CPU wheel; use e.g. TORCH=torch for a CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test benchmark clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/sdfsmis demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/stages.py --json benchmarks/results/stages-cpu.json

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
