# Quick start:   make demo   (set up .venv, build, run `fastxai attribute` on the bundled digits CNN)
#                make test   (set up .venv, build, lint, type-check, compile CUDA, the peers' own
#                             suites against the drop-in, then the test suite)
# Also:          make bench  (benchmark suite and its ratio report)
#                make gpu-check  (on a lent GPU: build for sm_90, test, sanitize, benchmark; README "GPU check")

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet -c requirements/constraints.txt
SOURCES := pyproject.toml setup.py CMakeLists.txt requirements/constraints.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: setup demo test test-peers lint bench gpu-check clean

$(VENV)/.installed: $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0 setuptools wheel pybind11 ninja numpy
	FASTXAI_REQUIRE_NATIVE=1 $(PIP) --no-build-isolation -e '.[triton,peers,test,viz,models]'
	# torchattacks (peer tests): --no-deps, because its requirements would replace the pinned torch
	$(PIP) --no-deps torchattacks==3.5.1
	# zennit (LRP peer tests): --no-deps for the same reason (it requires an unpinned torch and
	# torchvision); its other requirements, click, Pillow and numpy, come with the peers extra
	$(PIP) --no-deps zennit==0.5.1
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/fastxai attribute --out fastxai-out

lint: setup
	$(BIN)/ruff check fastxai kernels tests benchmarks setup.py
	$(BIN)/mypy

test: lint
	bash scripts/compile_cuda.sh
	bash scripts/peer_suites.sh $(BIN)/python
	TRITON_INTERPRET=1 FASTXAI_REQUIRE_NATIVE=1 $(BIN)/python -m pytest tests

# Captum's and torchattacks' own tests with fastxai's drop-in classes swapped in; fails below
# 95% of Captum's or on any torchattacks failure (skipped where ../shared/peer-suites is absent).
test-peers: setup
	bash scripts/peer_suites.sh $(BIN)/python

bench: setup
	$(BIN)/python -m pytest benchmarks --benchmark-enable --benchmark-only \
		--benchmark-json=benchmarks/latest.json -p no:cacheprovider
	$(BIN)/python benchmarks/report.py benchmarks/latest.json

# The first command on a lent GPU (README "GPU check"): no setup, the machine's own python3 and
# torch; results in $OUT. GPU_CHECK_ARGS=--dry-run runs the same stages on the CPU.
gpu-check:
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info fastxai/_C*.so
