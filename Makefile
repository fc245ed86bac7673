# One front door. `make run` and `make test` set everything up first.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
SAMPLE := sample/world
SAMPLE_OUT := sample/output
SAMPLE_DS := 2026-11-24

.PHONY: setup run sample test test-fast check bench clean

setup:
	bash scripts/setup.sh

# Generate the sample world (if absent) and run the nightly pipeline on it.
run: setup
	@[ -f $(SAMPLE)/_WORLD_COMPLETE ] || $(BIN)/ringfence generate --out $(SAMPLE) --accounts 20000 \
	    --days 30 --end-date $(SAMPLE_DS) --seed 7
	@bash scripts/dev_keys.sh
	set -a && source .secrets/dev.env && set +a && \
	    $(BIN)/ringfence run --input $(SAMPLE) --output $(SAMPLE_OUT) --ds $(SAMPLE_DS)

test: setup
	bash scripts/test.sh

# Local loop: everything but the slow end-to-end tests.
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

check: setup
	$(BIN)/ruff check graph jobs dags tests bench

clean:
	rm -rf sample .pytest_cache .ruff_cache
