# docsach — two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test lint locales install install-dev migrate demo chat bench clean help

help:
	@echo "make run   - install into .venv, migrate, load the demo library, start the bot"
	@echo "make test  - install with dev extras, compile locales, ruff, the whole pytest suite"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

install: $(STAMP)
install-dev: $(DEVSTAMP)

# Compile every locales/<lang>/LC_MESSAGES/<domain>.po into a .mo next to it.
locales: $(STAMP)
	@for po in locales/*/LC_MESSAGES/*.po; do \
		$(BIN)/pybabel compile --statistics -i "$$po" -o "$${po%.po}.mo" >/dev/null || exit 1; \
	done

migrate: $(STAMP)
	$(BIN)/docsach db upgrade

run: $(STAMP) locales
	$(BIN)/docsach run

chat: $(STAMP) locales
	$(BIN)/docsach chat $(if $(AS),--as $(AS))

lint: $(DEVSTAMP)
	$(BIN)/ruff check .

# SQLite always; PostgreSQL too when DOCSACH_TEST_POSTGRES_URL is set (the db fixture runs each
# database test once per backend).
test: $(DEVSTAMP) locales lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Search engine vs Tantivy and pg_trgm on 280k real titles, pinned to one core (a few minutes).
# BENCH_ARGS="--rows 1000000" for the 1M run; see bench/README.md.
BENCH_CORE ?= 1
bench: $(DEVSTAMP)
	$(if $(shell command -v taskset),taskset -c $(BENCH_CORE)) $(BIN)/python bench/search.py --skip-brute $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find locales -name '*.mo' -delete
