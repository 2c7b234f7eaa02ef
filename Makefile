# The two commands of the README: `make up` runs a cluster (in Docker where an engine
# answers, else as local processes), `make test` runs the tests (the Docker ones too).
# Each one first makes the virtualenv (.venv) with everything installed.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: up test lint

# The root project ships the container library (`fum`) too. A distribution named `fum`
# in a venv made before that (libs/fum's old name, or PyPI's unrelated project) is removed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip setuptools wheel
	$(VENV)/bin/pip uninstall --quiet --yes fum
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $@

up: $(STAMP)
	deploy/up.sh

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The images are built first, outside pytest's per-test timeout (a first build from
# Debian packages takes minutes); the suite's own check is then skipped.
test: lint
	deploy/build-images.sh --only services,runtime,registry,prometheus
	FUM_IMAGES_READY=1 $(VENV)/bin/pytest
