# Two commands on a fresh machine: `make demo` and `make test` (README quick start).
# torch is installed first, pinned to the CPU wheel, so nothing pulls CUDA builds on a CPU machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
JOBS    ?= 2

.PHONY: demo test setup clean capi bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[cpu,test,triton]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/precipfast demo --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/precipfast bench

clean:
	rm -rf $(VENV) out build
