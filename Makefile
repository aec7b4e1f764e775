# mailsift developer commands. The README's two: `make run` and `make test`.
#
# Everything installs into a project-local .venv; it is (re)built only when
# pyproject.toml changes (the stamp file .venv/.installed records the last install).

PYTHON  ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

HOST    ?= 127.0.0.1
PORT    ?= 8470
WORKERS ?= 1
CORPUS  ?= ../shared/corpora/spamassassin

.DEFAULT_GOAL := help
.PHONY: help venv run test lint bench bench-report eval clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

venv: $(STAMP)  ## create .venv and install mailsift with its dev tools

# Its output goes to stderr: `make eval > result.json` on a fresh checkout is JSON too.
$(STAMP): pyproject.toml
	@echo "installing mailsift and its dev tools into $(VENV)" >&2
	@$(PYTHON) -m venv $(VENV) >&2
	@$(BIN)/python -m pip install --disable-pip-version-check --upgrade pip >&2
	@$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]' >&2
	@touch $@

run: venv  ## start the service on HOST:PORT (127.0.0.1:8470) with WORKERS workers
	$(BIN)/mailsift serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: venv  ## run the whole test suite
	$(BIN)/pytest -q

lint: venv  ## ruff check, ruff format --check, mypy (runs all three, fails if any fails)
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/ruff format --check . || status=1; \
	$(BIN)/mypy mailsift || status=1; \
	exit $$status

# The targets that print a result print only it (`@`: make does not echo the command).
bench: venv  ## load benchmark on CORPUS, JSON on stdout
	@$(BIN)/mailsift bench $(CORPUS) --workers 2 --concurrency 16 --json

bench-report: venv  ## wall time of `mailsift report` (one process per report, as Dovecot runs it), JSON on stdout
	@$(BIN)/python -m benchmarks.report_latency 200

eval: venv  ## online (TREC immediate-feedback) evaluation on CORPUS, JSON on stdout
	@$(BIN)/mailsift eval $(CORPUS) --mode online --json

clean:  ## remove .venv, caches and build output (data/ is kept: it holds the training log)
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
