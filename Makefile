# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and
# installs the project into it first (again only when pyproject.toml changed).
# `make matrix` runs the tests on every Python that pyproject.toml claims and this
# machine has (noxfile.py), then says which ran and which were not found.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH  := $(VENV)/.installed-bench
CODE   := src tests benchmarks examples noxfile.py

.PHONY: demo test lint matrix bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(BENCH): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

demo: $(STAMP)
	$(BIN)/taskfan demo

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy --strict src

test: lint
	$(BIN)/pytest

# Extra pytest arguments for every version: make matrix ARGS='-x -k timeout'
matrix: $(STAMP)
	rm -f .nox/report.json
	$(BIN)/nox $(if $(ARGS),-- $(ARGS)); status=$$?; $(BIN)/python noxfile.py summary; exit $$status

bench: $(BENCH)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .nox build dist .mypy_cache .ruff_cache
