# Every target sets up what it needs from nothing: a fresh clone + `make test` works.
PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# The exact versions the test suite passed with (every package but torch, which is pinned
# above); `make lock` moves them to the newest releases. Another TORCH_VERSION may want
# other versions of torch's own dependencies: `make lock TORCH_VERSION=...` first.
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
PIP_INSTALL = -m pip install --quiet -c $(CONSTRAINTS)

.PHONY: install test test-fast test-kernels demo lint format lock clean browser

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first and pinned: an unpinned torch (or one pulled in by a dependency) would
# download the CUDA build. With the pin satisfied, the package's own floor is a no-op.
# Everything else (torch's own dependencies too) comes at the version in $(CONSTRAINTS).
$(STAMP): $(PY) pyproject.toml $(CONSTRAINTS)
	$(PY) -c "import torch" 2>/dev/null || $(PY) $(PIP_INSTALL) "torch==$(TORCH_VERSION)"
	$(PY) $(PIP_INSTALL) -e ".[dev,export,solvers,loggers,postgres,dashboard,video,serve]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# The tier to run after every change (under 2 minutes): the tests that neither train nor
# start a process; those carry the `slow` marker (tests/conftest.py fails one without it).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The tests that compare two float computation paths, again with PyTorch's portable kernels
# (they round differently from the vectorized ones): a test that only holds with one
# machine's rounding fails here. CI runs it after `make test`.
test-kernels: $(STAMP)
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest -q -m float_paths

# The browser the page tests drive (Debian's chromium; Playwright's own downloads need a
# network). Without it those tests skip, saying why. Needs root (apt).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

# The budget is configs/demo.yaml's (data.train_limit images, trainer.max_epochs): under
# 10 minutes from an empty cache on 2 cores; it prints its estimate first, its time last.
demo: $(STAMP)
	$(VENV)/bin/scenemtl demo

LINTED := src tests scripts

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports --no-cache --no-logo

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINTED)
	$(VENV)/bin/ruff format $(LINTED)

# Upgrade: resolve the newest releases in a throwaway venv (torch still $(TORCH_VERSION))
# and rewrite $(CONSTRAINTS) with them; the next `make test` installs them into $(VENV).
# Commit the new file once `make test` passes.
lock:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; py="$$tmp/venv/bin/python"; \
	$$py -m pip install --quiet --upgrade pip; \
	$$py -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	$$py -m pip install --quiet -e ".[dev,export,solvers,loggers,postgres,dashboard,video,serve]"; \
	{ echo "# Exact versions for make install/test/demo (pip -c), all but torch (TORCH_VERSION"; \
	  echo "# in the Makefile). Written by 'make lock' with $$($$py -V) on $$(uname -sm)."; \
	  $$py -m pip freeze --exclude-editable | grep -v -i '^torch=='; \
	} > $(CONSTRAINTS).tmp; \
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	@echo "$(CONSTRAINTS) rewritten: run make test, then commit it"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
