# make setup   venv, dependencies, the pinned llama.cpp (one build: tools + libllama), the
#              offline `dvc plots` page template; cached
# make repro   setup, then `dvc repro` on the committed params.yaml
# make test    setup, a headless browser (Debian's chromium) and phone-setup, then the test suite
# make runtimes  the LiteRT converter's own venv (.venv-litert, envs/litert.txt: litert-torch with
#              tensorflow-cpu, about 2 GB): for runtimes.litert (-S experiment=runtimes); cached
# make phone-setup  the aarch64 cross compiler and qemu (Debian's), and the pinned llama.cpp built for
#              an arm64 phone (build/llama.cpp/aarch64); cached
# make phone-check  the exported bundle (deploy/) on that build under qemu-aarch64, against the x86
#              build: reports/phone.json, then the report and bundle again (about 20 minutes)
# make pipeline-map  README.md's pipeline chart, rewritten from `dvc dag --md` (after a dvc.yaml change)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test runtimes browser compiler-cache phone-setup phone-check bench pipeline-map clean-build

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/build_llama_cpp.sh scripts/plots_template.sh | compiler-cache
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHON=$(BIN)/python scripts/build_llama_cpp.sh bindings
	# llama.cpp compiles while pip downloads and installs the rest: a fresh machine waits for the
	# longer of the two, not their sum
	PYTHON=$(BIN)/python scripts/build_llama_cpp.sh & build=$$!; \
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps build/llama.cpp/wheels/llama_cpp_python-*.whl \
	&& $(BIN)/python -m pip install --quiet --find-links build/llama.cpp/wheels -e '.[test,dialogue,onnx,executorch,litert]'; \
	installed=$$?; wait $$build && exit $$installed
	scripts/plots_template.sh build/plots/template.html
	$(BIN)/dvc config --local plots.html_template ../build/plots/template.html
	touch $@

repro: setup
	dvc repro
	@echo "summary:      reports/summary.md"
	@echo "pictures:     reports/plots/*.png (in the summary); dvc plots show, then open dvc_plots/index.html"
	@echo "bundle:       deploy/ (its README.md says how to run it)"
	@python -c 'import json; r = json.load(open("reports/metrics.json"))["recommended"]; print("recommended: ", r["variant"], "-", r["reason"])'

# the 25 slowest tests, on every run: a new test pays for its time (docs/testing.md)
test: setup runtimes browser phone-setup
	ruff check .
	ruff format --check .
	pytest -q --durations=25

runtimes: .venv-litert/.installed

.venv-litert/.installed: envs/litert.txt
	test -x .venv-litert/bin/python || $(PYTHON) -m venv .venv-litert
	.venv-litert/bin/python -m pip install --quiet -r envs/litert.txt
	touch $@

# Debian's ccache, where we may install it: both llama.cpp builds compile through it (~/.cache/ccache)
compiler-cache:
	@command -v ccache >/dev/null || [ "$$(id -u)" != 0 ] \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends ccache >/dev/null; } \
		|| echo "ccache could not be installed; llama.cpp compiles without a cache"

# tests/e2e/test_pictures.py opens the pictures as a person would, in headless chromium
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
		|| echo "chromium could not be installed (as root: apt-get install chromium); the browser tests will be skipped"

# without a cross compiler (not root) the phone tests are skipped; with one, a failed build fails
phone-setup: setup
	@{ command -v aarch64-linux-gnu-g++ && command -v qemu-aarch64; } >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu qemu-user >/dev/null; } \
		|| echo "the aarch64 cross compiler and qemu could not be installed (as root: apt-get install g++-aarch64-linux-gnu qemu-user); the phone tests will be skipped"
	@! command -v aarch64-linux-gnu-g++ >/dev/null || scripts/build_llama_cpp.sh aarch64

phone-check: phone-setup
	edgetune phone-check --bundle deploy --data data/processed/test.jsonl --out reports/phone.json
	dvc repro export   # summary.md's phone section and the bundle's card, from the new reports/phone.json

bench: setup
	python benchmarks/pipeline.py

# only dvc is needed (in .venv); tests/e2e/test_pipeline_map.py fails while the chart is out of date
pipeline-map:
	python scripts/pipeline_map.py

clean-build:
	rm -rf build/llama.cpp $(VENV)
