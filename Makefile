# sbitk: the two commands a newcomer runs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint format docs bench clean

setup: $(STAMP)

# torch first, by tools/install-torch: the CUDA build where there is an NVIDIA driver, else the
# CPU build, so that no CUDA packages are downloaded.
$(STAMP): pyproject.toml simulators/pyproject.toml tools/install-torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	tools/install-torch $(PIP)
	$(PIP) install -q -e ".[dev,compare]" -e simulators
	# sbibm (reference posteriors and observations the tests compare against) pins an old sbi:
	# its files are all we read, so it goes in without its dependencies.
	$(PIP) install -q --no-deps "sbibm==1.1.0" future
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Each test file runs on one worker, so that its module fixtures are built once, in collection
# order: tests/conftest.py puts the longest files first, so that no worker is left with one at
# the end while the other idles. The suite builds the documentation site strictly, as `make docs`
# does (tests/test_docs_site.py), on one of its workers: building it here as well took one core
# for half a minute while the other idled.
test: setup lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The documentation site (mkdocs.yml): strict, so a broken link, a missing page or a docstring
# that does not render fails the build. Its hook redraws the calibration pictures first.
docs: setup
	NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=1 $(VENV)/bin/mkdocs build --strict

# The whole chain on two_moons: simulate, train NPE, sample the observation, diagnose; it ends by
# printing where the NetCDF result and the HTML report are. A rerun reuses the bank and the model
# (see runs/demo/manifest.json). Exit 1 means a check failed: the report says which.
demo: setup
	$(VENV)/bin/sbitk run two_moons --observed examples/two_moons_observed.csv -o runs/demo --seed 0 \
		|| { test $$? -eq 1 && echo "a check failed: see runs/demo/report.html"; }

bench: setup
	$(PY) benchmarks/simulate.py

clean:
	rm -rf $(VENV) runs site .pytest_cache .ruff_cache
