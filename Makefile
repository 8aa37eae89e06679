# Two commands on a fresh machine: `make demo` (the whole pipeline on the embedded stack) and `make test`.
PYTHON ?= python3
VENV   := .venv
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
# This machine's pip config names local index folders that may be absent; drop only those warnings.
QUIET_PIP := 2>&1 | { grep -v "^WARNING: Location 'file:" || true; }
BIN    := $(VENV)/bin

.PHONY: venv demo test lint lock golden stack-up stack-down bench clean

venv: $(VENV)/.installed

# One quiet install step from the lock file, then the project itself (editable, no dependency resolution).
$(VENV)/.installed: pyproject.toml requirements.lock requirements-tools.txt requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements-tools.txt $(QUIET_PIP)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock $(QUIET_PIP)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt $(QUIET_PIP)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e . $(QUIET_PIP)
	touch $@

demo: venv
	$(BIN)/tlpipe demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .

# Regenerate tests/pipeline/golden/pipeline.yaml after an intended change to the compiled pipeline
# (then read `git diff` of it: that is what changes for a user who compiles).
golden: venv
	$(BIN)/python -m tests.pipeline.golden

lock: venv
	{ echo "# Exact versions of the whole dependency tree (pip freeze of a venv built from pyproject.toml)."; \
	  echo "# Regenerate with: make lock"; $(BIN)/pip freeze --exclude-editable | grep -vxF -f <(grep -v '^#' requirements-nodeps.txt); } > requirements.lock

stack-up: venv
	$(BIN)/tlpipe stack up

stack-down: venv
	$(BIN)/tlpipe stack down

bench: venv
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Build the base image without a Docker engine (buildah + a debootstrap'ed stand-in base) and import the
# project inside it (`bash docker/images-check.sh spark`: the Spark image + its smoke job). Slow (minutes)
# and needs root + apt: not part of `make test`.
.PHONY: images-check
images-check:
	bash docker/images-check.sh
