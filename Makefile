# Two commands on a fresh machine (Python and pip only): `make demo` and `make test`.
# Both bootstrap uv into .tools/ and the locked environment into .venv/ (uv sync --frozen).

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := $(CURDIR)/.tools
UV := $(TOOLS)/bin/uv
RUN := $(UV) run --frozen --no-sync

export UV_PYTHON_DOWNLOADS := never
# Precompiled bytecode: every run worker and check process imports dagster, pandera and GX;
# without .pyc files (PYTHONDONTWRITEBYTECODE is common in containers) that costs seconds each.
export UV_COMPILE_BYTECODE := 1
# The embedded default: Dagster's SQLite instance and the snapshot store live here.
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: demo test prerequisites lint check-defs ui bench sync clean
# Targets run in the order listed, so `make test` checks the system packages before any Python
# work even under -j.
.NOTPARALLEL:

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

.venv/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen
	@touch $@

sync: .venv/.synced

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

## demo: run the reference pipeline's stage jobs on the embedded default, show what they made
demo: sync $(DAGSTER_HOME)/dagster.yaml
	$(RUN) python scripts/demo.py

## test: check the system packages, lint, validate the code location, run the test suite
test: prerequisites lint check-defs
	$(RUN) pytest

## prerequisites: the Debian packages the tests start (nginx + njs, PostgreSQL, OpenSSL);
## installed as root with apt-get, else the one command to run is printed
prerequisites:
	@PYTHON=$(PYTHON) bash scripts/test-prerequisites.sh

lint: sync
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) lint-imports --no-cache

check-defs: sync $(DAGSTER_HOME)/dagster.yaml
	$(RUN) dagster definitions validate -w workspace.yaml
	$(RUN) dg check defs

## ui: the Dagster UI and daemon on http://127.0.0.1:3000
ui: sync $(DAGSTER_HOME)/dagster.yaml
	$(RUN) dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## bench: the performance figures (ratios against baselines run in the same process)
bench: sync
	$(RUN) python benchmarks/bench_import.py
	$(RUN) python benchmarks/bench_code_location.py
	$(RUN) python benchmarks/bench_local_store.py
	$(RUN) python benchmarks/bench_encrypted_store.py
	$(RUN) python benchmarks/bench_subject_lookup.py
	$(RUN) python benchmarks/bench_s3_store.py
	$(RUN) python benchmarks/bench_validation.py
	$(RUN) python benchmarks/bench_expectations.py
	$(RUN) python benchmarks/bench_streaming.py
	$(RUN) python benchmarks/bench_https_ingest.py
	$(RUN) python benchmarks/bench_ml_checks.py
	$(RUN) python benchmarks/bench_small_data_gates.py
	$(RUN) python benchmarks/bench_poisoning.py
	$(RUN) python benchmarks/bench_signing.py
	$(RUN) python benchmarks/bench_evidence.py
	$(RUN) python benchmarks/bench_landing_sensor.py
	$(RUN) python benchmarks/bench_pipeline_overhead.py
	$(RUN) python benchmarks/bench_gateway.py
	$(RUN) python benchmarks/bench_oci.py
	$(RUN) python benchmarks/bench_exporter.py
	$(RUN) python benchmarks/bench_live_recording.py
	$(RUN) python benchmarks/bench_recovery.py
	$(RUN) python benchmarks/bench_audit.py --quick
	$(RUN) python benchmarks/bench_serving.py

clean:
	rm -rf .venv $(TOOLS) .pytest_cache .ruff_cache
