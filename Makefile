# make demo      : set up .venv and train the quickstart (text -> image on the digits world)
# make test      : set up .venv with the test extras; ruff, then the unit and integration tests
# make test-unit : the quick loop (under a minute)
# make bench     : measure sampling, training and tokenize speed into bench.json
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo lint test test-unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/unitok train quickstart

lint: $(STAMP)
	$(BIN)/ruff check unitok tests

test: lint
	$(BIN)/python -m pytest -q tests/unit tests/integration

test-unit: lint
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/unitok bench --out bench.json

clean:
	rm -rf runs bench.json .pytest_cache
