# efx developer commands. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STANDIN ?= .cache/standin-b6

.PHONY: help install browser test check demo lint bench clean

help:  ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP)  ## Create .venv and install efx (editable) with OpenVINO, Ray, pyarrow, fsspec's s3/gcs/http and test tools

EXTRAS := .[dev,openvino,ray,arrow,parquet,s3,gcs,http]

# These machines set PYTHONDONTWRITEBYTECODE: Python would then compile every module it imports,
# TensorFlow's included, in every process, each time. The targets below let it write each
# module's compiled form (in __pycache__, which git ignores) the first time it is imported.
WRITE_PYC := env -u PYTHONDONTWRITEBYTECODE
# What an efx process imports, compiled once at install (about 11 s here; uv's --compile-bytecode
# compiled every file of every package, Ray's and OpenVINO's too: 30 s).
WARM_IMPORTS := import tensorflow, tensorflow_hub, h5py, pyarrow.parquet, efx.api, efx.cli, \
	efx.decode.pipeline, efx.model

# uv (from PyPI, into the venv) installs the rest: 4-40 s here (warm or cold cache), where pip
# took 117-148 s. uv does not read pip's configuration: pip's find-links (PIP_FIND_LINKS) is
# passed on, and should uv fail, pip installs instead.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --quiet --python $(PY) \
		$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) -e "$(EXTRAS)" \
		|| $(PY) -m pip install --quiet -e "$(EXTRAS)"
	TF_CPP_MIN_LOG_LEVEL=3 $(WRITE_PYC) $(PY) -c "$(WARM_IMPORTS)" 2>/dev/null \
		|| $(PY) -c "$(WARM_IMPORTS)"
	touch $(STAMP)

browser:  ## Chromium (contact-sheet tests) and jq (README recipes): Debian's packages; needs root
	@{ command -v chromium && command -v jq; } >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium jq >/dev/null) \
		|| echo "make: no Chromium or jq: the browser and jq recipe tests will skip"; }

test: install browser  ## Run the whole test suite
	$(WRITE_PYC) $(VENV)/bin/pytest -n 2 --dist loadgroup --durations=10

# In-process tests of every stage but the slow ones (kill -9, Ray, servers, the B6 stand-in):
# under 2 minutes on 2 cores, for the edit-test loop. CI runs the whole suite.
CHECK_TESTS = tests/test_formats.py tests/test_datasets_as_written.py tests/test_discover.py \
	tests/test_writers.py tests/test_names.py tests/test_decode.py tests/test_search.py \
	tests/test_inputs.py tests/test_cli.py

check: install  ## A quick part of the suite (about 100 s): decoding, sources, writers, search, CLI
	$(WRITE_PYC) $(VENV)/bin/pytest -n 2 -q $(CHECK_TESTS)

lint: install  ## Ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check efx tests
	$(VENV)/bin/ruff format --check efx tests
	$(VENV)/bin/mypy

demo: install  ## Embed the sample photos (offline: on the clearly labelled stand-in model)
	$(WRITE_PYC) bash scripts/demo.sh

bench: install  ## The performance targets, side by side: model alone, efx, the Keras recipe (B6 stand-in)
	$(WRITE_PYC) $(PY) scripts/bench_targets.py

clean:  ## Remove the venv, caches and demo output
	rm -rf $(VENV) .cache demo-out .pytest_cache .mypy_cache .ruff_cache
	find efx tests scripts -name __pycache__ -prune -exec rm -rf {} +
