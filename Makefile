# bayeshlm developer commands.
#
#   make venv       build .venv (Python >= 3.12) and install bayeshlm[test] into it
#   make demo       run the demo:            .venv/bin/python -m bayeshlm demo
#   make test       run the tests:           .venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
#   make bench      run the core benchmark:  .venv/bin/python benchmarks/bench_core.py
#   make clean      remove caches and build products (keeps .venv)
#   make distclean  clean, and remove .venv too
#
# .ci/find-python picks the interpreter for a new .venv; `make PYTHON=/path/to/python3.12 ...`
# overrides its choice (run `make distclean` first to replace an existing .venv).
# Examples: make test PYTEST_ARGS="-x tests/test_datasets.py"
#           make test PYTEST_ARGS="-m statistical"
#           make test TEST_WORKERS=0      (one process: pytest-xdist's workers off)
# The suite runs in TEST_WORKERS processes (pytest-xdist), each test file in one of them; most of
# its time is numba compiling the kernels' variants, one core at a time, which the workers share
# through numba's on-disk cache.

SHELL := /bin/sh

VENV        := .venv
VENV_PYTHON := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
PIP_FLAGS   ?= --quiet --disable-pip-version-check --no-input
PYTEST_ARGS ?=
TEST_WORKERS ?= 2

# A .venv whose interpreter is missing, broken or older than 3.12 is rebuilt:
# the stamp rule then runs whatever the timestamps say.
VENV_OK := $(shell $(VENV_PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 12)))' 2>/dev/null)
ifneq ($(VENV_OK),1)
REBUILD_VENV := FORCE
endif

.PHONY: venv demo test bench clean distclean FORCE

venv: $(STAMP)

$(STAMP): pyproject.toml $(REBUILD_VENV)
	@set -e; \
	if ! $(VENV_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then \
	    py=$$(PYTHON='$(PYTHON)' sh .ci/find-python) || exit 1; \
	    echo "make: creating $(VENV) with $$py"; \
	    rm -rf $(VENV); \
	    "$$py" -m venv $(VENV); \
	fi
	@echo "make: installing bayeshlm with its test extra into $(VENV) (pip install -e '.[test]')"
	$(VENV_PYTHON) -m pip install $(PIP_FLAGS) -e ".[test]"
	@touch $@

$(BENCH_STAMP): $(STAMP)
	$(VENV_PYTHON) -m pip install $(PIP_FLAGS) -e ".[test,bench]"
	@touch $@

demo: $(STAMP)
	$(VENV_PYTHON) -m bayeshlm demo

test: $(STAMP)
	$(VENV_PYTHON) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

bench: $(BENCH_STAMP)
	$(VENV_PYTHON) benchmarks/bench_core.py

# __pycache__ directories also hold numba's on-disk cache (*.nbi index, *.nbc data).
clean:
	rm -rf build dist .pytest_cache .hypothesis .ruff_cache benchmarks/out
	find . \( -path ./.venv -o -path ./.git \) -prune -o \
	    -type d \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} + -o \
	    -type f \( -name '*.nbi' -o -name '*.nbc' \) -exec rm -f {} +

distclean: clean
	rm -rf $(VENV)

FORCE:
