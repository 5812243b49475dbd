# tagvision: two commands on a fresh machine.
#   make serve        create .venv, install, start the server on 127.0.0.1:8000 (data in ./tagvision-data)
#   make test         create .venv, install with test tools, lint and run the tests
#   make test-fast    the inner loop: unit and in-process tests only (no real photos embedded, no processes)
# and a demo: make quickstart runs the whole CLI flow on a folder of class folders.

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DATA ?= $(firstword $(wildcard ../shared/datasets/clothing-small/train))
QUICKSTART_DIR ?= tagvision-data/quickstart
HOST ?= 127.0.0.1
PORT ?= 8000
DATA_DIR ?= tagvision-data

.PHONY: serve quickstart test test-fast venv lint bench clean

$(BIN)/tagvision: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/tagvision

# serve prints its data directory, endpoint and (at a terminal) the keys once it listens.
serve: venv
	$(BIN)/tagvision serve --host $(HOST) --port $(PORT) --data-dir $(DATA_DIR)

quickstart: venv
	@test -n "$(DATA)" || { echo "Give a folder of class folders: make quickstart DATA=path/to/folders"; exit 2; }
	rm -rf $(QUICKSTART_DIR)
	$(BIN)/tagvision project create quickstart --type multiclass --domain general-compact --data-dir $(QUICKSTART_DIR)
	$(BIN)/tagvision image add quickstart --from-folders "$(DATA)" --data-dir $(QUICKSTART_DIR)
	$(BIN)/tagvision train quickstart --data-dir $(QUICKSTART_DIR)
	$(BIN)/tagvision performance quickstart --data-dir $(QUICKSTART_DIR)
	$(BIN)/tagvision predict quickstart $$(find "$(DATA)" -mindepth 2 -type f | sort | awk 'NR % 400 == 1' | head -8) --data-dir $(QUICKSTART_DIR)
	$(BIN)/tagvision iteration list quickstart --data-dir $(QUICKSTART_DIR)

lint: venv
	$(BIN)/ruff check tagvision tests bench
	$(BIN)/ruff format --check tagvision tests bench
	$(BIN)/mypy

# --durations: the full run lists its 15 slowest tests, so CI's log shows where its time goes.
test: venv lint
	$(BIN)/python -m pytest --durations=15

# Markers in pyproject.toml: slow (embeds real photos with the backbone), process (starts or kills processes).
test-fast: venv
	$(BIN)/python -m pytest -m "not slow and not process"

bench: venv
	$(BIN)/python bench/embed.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/acquire.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/migrate.py

clean:
	rm -rf $(VENV) tagvision-data .pytest_cache
