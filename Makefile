# Set-up and everyday commands. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint up eval system-deps clean checkov

# The product alone for the demo; the test and lint tools on top for `make test` and `make lint`. uv installs them
# in seconds (pip took over half a minute from its cache); pip does it where uv cannot be had.
INSTALL = if [ -x $(BIN)/uv ] && $(BIN)/uv pip install --quiet --python $(BIN)/python -e $(1); then :; \
	else $(BIN)/python -m pip install --quiet -e $(1); fi

$(BIN)/quantum: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	-$(BIN)/python -m pip install --quiet uv
	$(call INSTALL,.)
	touch $@

$(VENV)/.dev: $(BIN)/quantum
	$(call INSTALL,'.[dev]')
	touch $@

# bubblewrap isolates generated code; without it the sandbox falls back to unshare + rlimits.
system-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq bubblewrap; \
	  else echo "bubblewrap not found: install it for the strongest sandbox"; fi; }
# promtool (Debian's prometheus package) checks the alert rules QSRE writes; without it they are written unchecked.
	@command -v promtool >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq prometheus; \
	  else echo "promtool not found: install prometheus so QSRE's alert rules are checked"; fi; }

demo: $(BIN)/quantum system-deps
	$(BIN)/quantum demo --auto-approve

up: $(BIN)/quantum system-deps
	$(BIN)/quantum up

# Builds the shipped tasks on the offline provider and judges them by their hidden tests; fails on a wrong-but-green.
eval: $(BIN)/quantum system-deps
	$(BIN)/quantum eval --provider offline

# checkov scans infrastructure manifests (QSecure) from a virtual environment of its own: installed with the
# project, it pulls an old openai. The worker finds it here (or QUANTUM_CHECKOV_BIN, or checkov on PATH).
CHECKOV_VENV ?= .venv-checkov

$(CHECKOV_VENV)/bin/checkov:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet checkov
	touch $@

.venv-checkov checkov: $(CHECKOV_VENV)/bin/checkov

test: $(VENV)/.dev system-deps $(CHECKOV_VENV)/bin/checkov
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The tests that need no server (all but those marked `server` at collection: tests/support/tiers.py), on every
# core with pytest-xdist; the few that must not run side by side take turns (ONE_WORKER there).
test-fast: $(VENV)/.dev system-deps $(CHECKOV_VENV)/bin/checkov
	$(BIN)/python -m pytest -m "not server" -n auto --dist loadgroup $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check quantum agents workflows events tests
	$(BIN)/mypy quantum agents workflows events

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .quantum .pytest_cache
