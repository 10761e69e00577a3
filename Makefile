# make demo : set up .venv and run the quickstart recipe (text -> image on digits world)
# make test : set up .venv with the test extras and run the test suite
# make bench: measure sampling and training speed into bench.json
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/unitok train recipes/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/unitok bench --out bench.json

clean:
	rm -rf runs bench.json .pytest_cache
