# wallaby-agent: set-up, tests, benchmarks and fuzzing. `make test` on a fresh clone does everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint fuzz bench clean demo chaos

install: $(STAMP)

# System packages the suite needs: the zstd CLI (archive interop) and wal2json (the oracle for the
# PostgreSQL decoder). PostgreSQL 15's server binaries come with the machine.
APT_PACKAGES := zstd postgresql-15-wal2json
PG_LIBDIR := /usr/lib/postgresql/15/lib

# Reinstall when the project's metadata or C sources change; system packages come from apt when missing.
$(STAMP): pyproject.toml Makefile $(wildcard agent/*.c wal/*.c)
	@if ! command -v zstd >/dev/null 2>&1 || [ ! -f $(PG_LIBDIR)/wal2json.so ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c "import wal; wal.require_crc_extension()"
	touch $(STAMP)

test: install
	$(BIN)/pytest -q

# The whole-system fault matrix against the real agent (a short version runs in `make test`);
# results go into docs/reliability.md. Needs root for the disk-full scenario's tmpfs.
chaos: install
	$(BIN)/python -m tests.chaos

# The agent end to end: a throwaway PostgreSQL, a workload, a file and an HTTP destination, a
# receiver outage, and a summary (examples/demo.py). `make demo DEMO_ARGS=--keep` keeps its files.
demo: install
	$(BIN)/python examples/demo.py $(DEMO_ARGS)

lint: install
	$(BIN)/ruff check wal agent cli tests fuzz
	$(BIN)/ruff format --check wal agent cli tests fuzz

fuzz: install
	$(BIN)/python -m fuzz --seconds $${FUZZ_SECONDS:-120}

bench: install
	$(BIN)/python -m tests.benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
