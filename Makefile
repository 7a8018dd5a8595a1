# efx developer commands. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STANDIN ?= .cache/standin-b6

.PHONY: help install browser test demo lint bench clean

help:  ## List the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: $(STAMP)  ## Create .venv and install efx (editable) with OpenVINO, Ray, pyarrow, fsspec's s3/gcs/http and test tools

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,openvino,ray,arrow,parquet,s3,gcs,http]"
	touch $(STAMP)

browser:  ## Chromium (contact-sheet tests) and jq (README recipes): Debian's packages; needs root
	@{ command -v chromium && command -v jq; } >/dev/null || { [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium jq >/dev/null) \
		|| echo "make: no Chromium or jq: the browser and jq recipe tests will skip"; }

test: install browser  ## Run the whole test suite
	$(VENV)/bin/pytest -n 2 --dist loadgroup --durations=10

lint: install  ## Ruff (lint + format check) and mypy
	$(VENV)/bin/ruff check efx tests
	$(VENV)/bin/ruff format --check efx tests
	$(VENV)/bin/mypy

demo: install  ## Embed the sample photos (offline: on the clearly labelled stand-in model)
	bash scripts/demo.sh

bench: install  ## The performance targets, side by side: model alone, efx, the Keras recipe (B6 stand-in)
	$(PY) scripts/bench_targets.py

clean:  ## Remove the venv, caches and demo output
	rm -rf $(VENV) .cache demo-out .pytest_cache .mypy_cache .ruff_cache
