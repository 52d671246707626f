# make setup   venv, dependencies and the pinned llama.cpp (wheel + tools), cached
# make repro   setup, then `dvc repro` on the committed params.yaml
# make test    setup, then the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test bench clean-build

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/build_llama_cpp.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHON=$(BIN)/python scripts/build_llama_cpp.sh
	# llama-cpp-python comes from the wheel just built from the pinned source, replacing an older
	# build of the same version
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps build/llama.cpp/wheels/llama_cpp_python-*.whl
	$(BIN)/python -m pip install --quiet --find-links build/llama.cpp/wheels -e '.[test]'
	touch $@

repro: setup
	dvc repro
	@echo "summary:      reports/summary.md"
	@echo "plots:        dvc plots show (then open dvc_plots/index.html)"
	@echo "bundle:       deploy/ (its README.md says how to run it)"
	@python -c 'import json; r = json.load(open("reports/metrics.json"))["recommended"]; print("recommended: ", r["variant"], "-", r["reason"])'

test: setup
	pytest -q

bench: setup
	python benchmarks/pipeline.py

clean-build:
	rm -rf build/llama.cpp $(VENV)
