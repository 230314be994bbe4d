# wg-kube: `make demo` runs the whole system on this machine; `make test` passes the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup system lint test test-host test-kernel controlplane demo demo-clean bench bench-quick clean

system:
	@scripts/setup-system.sh

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: system $(VENV)/.installed

lint: setup
	$(BIN)/ruff check wgkube tests bench
	$(BIN)/ruff format --check wgkube tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test-host: setup
	$(BIN)/pytest -q

test-kernel: setup
	tests/vm/run.sh

# kube-apiserver, etcd and kubectl built from their Go modules (tools/controlplane):
# ~10 min on a fresh machine, a no-op when current.
controlplane:
	@tools/controlplane/build.sh

test: lint controlplane test-host test-kernel

# Benchmarks against baselines measured in the same run (N up to 10,000: about 13 min on 2
# cores, the control plane built first); needs root.
bench: setup controlplane
	$(PY) -m bench.run

bench-quick: setup controlplane
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache

# Each run starts fresh in .demo (removing what a kept, failed or killed run left there);
# a failure ends in one line `demo failed: ...` naming the step and its log.
demo: setup
	$(PY) -m wgkube.demo $(if $(KEEP),--keep)

demo-clean: $(VENV)/.installed
	$(PY) -m wgkube.demo --clean
