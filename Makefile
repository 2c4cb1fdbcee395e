# Thin wrappers. A newcomer needs two targets: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
ATLAS := $(VENV)/bin/peft-atlas

.PHONY: help setup setup-test serve site validate test test-impls bench-generate chromium clean
.DEFAULT_GOAL := help

## List the targets and what they do (each target's `## ` comment).
help:
	@awk '/^## /{doc=substr($$0, 4); next} /^[a-z][a-z-]*:/{if (doc) printf "  make %-15s %s\n", substr($$1, 1, length($$1) - 1), doc} {doc=""}' $(MAKEFILE_LIST)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# The docs toolchain only: no torch.
$(VENV)/.docs-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e ".[docs]"
	touch $@

# Everything the tests need: the docs toolchain, torch/timm (pinned pair), HF PEFT, Playwright,
# and the packages whose bundled images VTAB-micro uses.
$(VENV)/.test-installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install "torch==2.14.1" "torchvision==0.29.1"
	$(PIP) install -e ".[docs,impls,dev,bench,vlm]"
	touch $@

## Create .venv and install the docs toolchain (no torch).
setup: $(VENV)/.docs-installed

## Install what the tests need: the docs toolchain, torch/timm (pinned), HF PEFT, Playwright, chromium.
setup-test: $(VENV)/.test-installed chromium

## Validate, generate and serve the site at http://127.0.0.1:8000 (live reload).
serve: setup
	$(ATLAS) serve --dev-addr 127.0.0.1:8000

## Validate, generate and write the static site to site/.
site: setup
	$(ATLAS) build --site-dir site

## Check every data file; print every problem with file, line and field.
validate: setup
	$(ATLAS) validate

## Install what the tests need and run all of them.
test: setup-test
	$(PY) -m pytest

## Run the reference implementations' tests alone.
test-impls: setup-test
	$(PY) -m pytest reference_impls

## Time page generation for synthetic knowledge bases of growing size.
bench-generate: setup
	$(PY) benchmarks/generation_scaling.py

## Install Debian's chromium for the browser test (Playwright drives it; no browser download).
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	elif command -v sudo >/dev/null; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "Install Debian's chromium package for the browser test (it is skipped without it)."; fi

## Remove the built site and caches.
clean:
	rm -rf site build .pytest_cache
