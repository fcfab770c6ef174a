# Two commands on a fresh clone, each making its own virtual environment when needed:
#   make demo   run the demo job (1,000,000 generated rows → a local DuckDB file; no server)
#   make test   run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.ready

.PHONY: demo test test-casting-long fuzz fuzz-api lint schema bench bench-background bench-postgres bench-bigquery bench-dashboard bench-lifecycle bench-scale soak clean

$(READY): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11 or newer is needed; set PYTHON=python3.11" if sys.version_info < (3, 11) else 0)'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $@

demo: $(READY)
	$(BIN)/etl run configs/demo.yaml

test: $(READY)
	$(BIN)/pytest

# The fuzz tests of job files and masking, longer: FUZZ_EXAMPLES new examples for each property
# (the suite runs a fixed 100), then what hostile job files cost to refuse (prints figures).
FUZZ_EXAMPLES ?= 5000
fuzz: $(READY)
	ETL_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -p no:cacheprovider tests/test_fuzz_config.py tests/test_masking.py
	$(BIN)/python benchmarks/hostile_jobs.py

# The casting layer's property tests (tests/plugins/test_casting_properties.py) with many
# more generated values than `make test` gives them (needs PostgreSQL; about 20 minutes).
test-casting-long: $(READY)
	ETL_CAST_EXAMPLES=1000 $(BIN)/pytest -p no:cacheprovider tests/plugins/test_casting_properties.py

lint: $(READY)
	$(BIN)/ruff check etl plugins tests benchmarks
	$(BIN)/ruff format --check etl plugins tests benchmarks
	$(BIN)/lint-imports

# Regenerate the JSON Schema that editors use (a test fails when it is stale).
schema: $(READY)
	$(BIN)/etl schema -o docs/etl-job.schema.json

# The dashboard's API against its OpenAPI description, longer than `make test` does it: a new seed
# each time, EXAMPLES cases an operation and STEPS calls a sequence (needs Redis).
EXAMPLES ?= 1000
STEPS ?= 40
fuzz-api: $(READY)
	ETL_API_EXAMPLES=$(EXAMPLES) ETL_API_STEPS=$(STEPS) $(BIN)/pytest -p no:cacheprovider tests/background/test_api_contract.py

# Rows/s and peak memory of the demo job at 1M and 5M rows (prints figures; asserts nothing).
bench: $(READY)
	$(BIN)/python benchmarks/demo.py

# The queue's per-chunk overhead and a background run's rows/s with 1 and 2 workers (needs Redis).
bench-background: $(READY)
	$(BIN)/python benchmarks/background.py

# Parquet → PostgreSQL against a hand-written COPY, in process and with 2 workers, and a merge
# (needs PostgreSQL and Redis; 5,000,000 rows by default).
bench-postgres: $(READY)
	$(BIN)/python benchmarks/postgres.py

# BigQuery (an emulator) → PostgreSQL against a hand-written Storage Read API + COPY, in process
# and with 2 workers (needs PostgreSQL and Redis; 5,000,000 rows by default).
bench-bigquery: $(READY)
	$(BIN)/python benchmarks/bigquery.py

# What 1, 10 and 100 watchers of a run's event stream cost Redis (needs Redis).
bench-dashboard: $(READY)
	$(BIN)/python benchmarks/dashboard.py

# What recording a run costs per chunk, on the embedded store and on Redis (prints figures).
bench-lifecycle: $(READY)
	$(BIN)/python benchmarks/lifecycle.py

# Rows/s and speed-up of 1, 2, 4, … worker processes (etl worker --processes, up to the CPUs or
# MAX=N) on a pure-Python transform, an Arrow-only job and one-row chunks; the run store's
# transactions and conflicts per chunk at 1, 2, 4, 8, 14 workers (needs Redis; prints figures).
bench-scale: $(READY)
	$(BIN)/python benchmarks/scale.py $(if $(MAX),--max $(MAX))

# A soak: background runs into PostgreSQL in process, on the embedded queue and on Redis workers,
# while workers are killed and stopped, Redis restarts and fails over (Sentinel), PostgreSQL
# restarts; prints runs, faults, rows lost and duplicated, kill-to-rerun times. Starts its own
# Redis/Sentinel set and PostgreSQL cluster. `make soak DURATION=2m` for a short one.
DURATION ?= 10m
soak: $(READY)
	$(BIN)/python benchmarks/soak.py --duration $(DURATION)

clean:
	rm -rf $(VENV) out .etl .pytest_cache .hypothesis *.egg-info
